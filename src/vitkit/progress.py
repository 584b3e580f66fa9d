"""Progress on long work: tqdm bars on stderr, shown as tqdm shows them (only on a terminal), off everywhere with
`disable()` (the `vitkit` command's `--quiet`) or `VITKIT_PROGRESS=0`, forced on with `VITKIT_PROGRESS=1`.

Every verb that runs for more than a moment (eval, fewshot, analyze, export, convert, train) reports through
`bar`, so one switch governs them all, as Hugging Face's `disable_progress_bars()` does for its libraries.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

_disabled = False


def disable() -> None:
    """No progress bars from here on (the `vitkit` command's --quiet)."""
    global _disabled
    _disabled = True


def enable() -> None:
    """Progress bars again, where tqdm would show them."""
    global _disabled
    _disabled = False


def _disable_flag() -> bool | None:
    """tqdm's `disable`: True (off), False (on, even into a file or pipe), None (on a terminal only)."""
    forced = os.environ.get("VITKIT_PROGRESS", "")
    if forced not in ("", "0", "1"):
        raise ValueError(f"VITKIT_PROGRESS={forced!r}: set 0 (no progress bars), 1 (always), or unset it (on a terminal)")
    if _disabled or forced == "0":
        return True
    return False if forced == "1" else None


def bar(iterable: Iterable[Any] | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        leave: bool = False, enabled: bool = True, **kw: Any):
    """A tqdm bar on stderr that follows the switches above (`enabled=False`: none, e.g. on ranks other than 0);
    use it as tqdm (iterate, or update / close)."""
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr, dynamic_ncols=True,
                disable=_disable_flag() if enabled else True, **kw)


def tqdm_class():
    """A tqdm class that follows the switches above, for libraries that draw their own bars (huggingface_hub's
    downloads take it as `tqdm_class`); none on ranks other than 0."""
    from tqdm import tqdm

    from vitkit.runtime import is_main_process

    class Bar(tqdm):
        def __init__(self, *args: Any, **kw: Any):
            flag = _disable_flag() if is_main_process() else True  # ours decides; on a terminal only, unless the library
            kw["disable"] = flag if flag is not None else (kw.get("disable") or None)  # turned its own bars off
            kw.setdefault("file", sys.stderr)
            super().__init__(*args, **kw)

    return Bar


class Stages:
    """A bar over the named stages of one job (export: read, graph, check): `with Stages("export", names) as s:`
    ... `s.next()` after each; the bar shows the stage under way."""

    def __init__(self, desc: str, names: list[str]):
        self.names, self.i = names, 0
        self.bar = bar(total=len(names), desc=desc, unit="stage")
        self._show()

    def _show(self) -> None:
        if self.i < len(self.names):
            self.bar.set_postfix_str(self.names[self.i])

    def next(self) -> None:
        self.i += 1
        self.bar.update(1)
        self._show()

    def __enter__(self) -> "Stages":
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
