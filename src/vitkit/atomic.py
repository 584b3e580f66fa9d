"""Writing without ever leaving a half-written file: one owner for every write vitkit makes.

`atomic_path(path)` yields a temporary path beside `path` (in a temporary directory of the same folder, so the
final rename never crosses file systems); on success it replaces `path` in one rename, on failure it is removed
and `path` is untouched. Files and directories alike. An existing `path` is refused unless `overwrite`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another path or pass overwrite=True (--force on the command line)")


@contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on failure it
    is removed and `path` is untouched. Works for files and directories."""
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / "out"
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            backup = path.with_name(f".{path.name}.old")
            os.replace(path, backup)
            os.replace(tmp, path)
            shutil.rmtree(backup)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    """`text` at `path`, atomically (replacing what is there unless overwrite=False)."""
    path = Path(path)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(text)
    return path


def write_json(path: str | os.PathLike, obj: Any, overwrite: bool = True) -> Path:
    """`obj` as indented JSON at `path`, atomically."""
    return write_text(path, json.dumps(obj, indent=2), overwrite)
