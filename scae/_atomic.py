"""Outputs written atomically, and folders a failed run created removed again.

* :func:`atomic_path` / :func:`write_h5ad_atomic`: a file is written to a temporary file beside the target and
  renamed into place only on success.
* :func:`make_dirs` is the one place that creates output folders; inside :func:`remove_created_on_failure` it
  records them (and :func:`record_created` records new outputs), so that a failed run removes what it added.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: Stack of the journals of the active :func:`remove_created_on_failure` blocks.
_journals: list[list[Path]] = []


def make_dirs(folder: str | os.PathLike) -> None:
    """``mkdir -p folder``: the one place that creates output folders.

    Each folder it creates is recorded in the journal of the innermost :func:`remove_created_on_failure`.

    Raises
    ------
    OSError
        When a folder cannot be created (``FileExistsError`` where a file has the name of a folder).
    """
    missing = []
    p = Path(folder)
    while not p.is_dir() and p.parent != p:
        missing.append(p)
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            if not p.is_dir():
                raise
        else:  # only what this call created, not a folder made at the same time by someone else
            record_created(p)


def record_created(*paths: str | os.PathLike) -> None:
    """Record new outputs (files, folders; inner ones after their folder) for :func:`remove_created_on_failure`."""
    if _journals:
        _journals[-1].extend(Path(p) for p in paths)


def _remove(journal: list[Path]) -> None:
    """Remove the recorded paths, innermost first; folders only when empty (other content stays)."""
    for p in reversed(journal):
        try:
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink(missing_ok=True)
        except OSError:
            pass


@contextlib.contextmanager
def remove_created_on_failure() -> Iterator[list[Path]]:
    """Journal of the folders and outputs created in the block; removed again when the block fails.

    Failure is any exception, ``KeyboardInterrupt`` and ``SystemExit`` included. Only recorded paths are
    removed (files, then folders that are empty by then), so folders that existed before, and anything others
    wrote into a new folder, stay. On success the journal is handed on to an enclosing block.
    """
    journal: list[Path] = []
    _journals.append(journal)
    ok = False
    try:
        yield journal
        ok = True
    finally:
        _journals.pop()
        if ok:
            record_created(*journal)
        else:
            _remove(journal)


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; rename it to ``out`` when the block ends without error.

    On any error (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary file is removed and an
    earlier ``out`` stays as it was. The file gets the permissions of a newly created file (umask applied). A
    new ``out`` is recorded by :func:`record_created`.
    """
    out = Path(out)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        new = not out.exists()
        os.replace(tmp, out)
        if new:
            record_created(out)
    finally:
        tmp.unlink(missing_ok=True)


def write_h5ad_atomic(adata, out: str | os.PathLike) -> None:
    """``adata.write_h5ad(out)`` through :func:`atomic_path` (the folder is created by :func:`make_dirs`)."""
    out = Path(out)
    make_dirs(out.parent)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
