"""Writing without ever leaving a half-written file: one owner for every write vitkit makes.

`atomic_path(path)` yields a temporary path beside `path` (in a temporary directory of the same folder, so the
final rename never crosses file systems); on success it replaces `path` in one rename, on failure it is removed
and `path` is untouched. Files and directories alike. An existing `path` is refused unless `overwrite`.
What lands at `path` has the modes a plain open() / mkdir() would have given it (0o666 / 0o777 less the umask),
whatever the writer did: safetensors writes through a temporary file of its own and leaves 0600.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def plain_modes(where: Path) -> tuple[int, int]:
    """The modes a plain open() and mkdir() give in the directory `where` (0o666 / 0o777 less the umask, or what a
    default ACL there says), measured by making one of each. Reading the umask would mean setting it (os.umask),
    process-wide, and every thread creating a file meanwhile would get the wrong mode; caching it at import would
    miss a later os.umask."""
    file, folder = where / ".mode-probe-file", where / ".mode-probe-dir"
    os.close(os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        folder.mkdir()
        try:
            return stat.S_IMODE(file.stat().st_mode), stat.S_IMODE(folder.stat().st_mode)
        finally:
            folder.rmdir()
    finally:
        file.unlink()


def settle_modes(tree: Path, where: Path) -> None:
    """Give `tree` (a file, or a directory and all it holds) the modes a plain open() / mkdir() in `where` gives;
    executable files stay executable (for whom the umask allows). Links are left as they are."""
    file_mode, dir_mode = plain_modes(where)
    below = [] if tree.is_symlink() else [Path(root, n) for root, dirs, files in os.walk(tree) for n in dirs + files]
    for p in [tree, *below]:
        mode = p.lstat().st_mode
        if stat.S_ISDIR(mode):
            os.chmod(p, dir_mode)
        elif stat.S_ISREG(mode):
            os.chmod(p, file_mode | (dir_mode & 0o111) if mode & 0o111 else file_mode)


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
        settle_modes(tmp, tmp.parent)
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
