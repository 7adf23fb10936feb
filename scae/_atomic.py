"""Outputs written atomically: to a temporary file beside the target, renamed into place only on success."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; rename it to ``out`` when the block ends without error.

    On any error (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary file is removed and an
    earlier ``out`` stays as it was. The file gets the permissions of a newly created file (umask applied).
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
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_h5ad_atomic(adata, out: str | os.PathLike) -> None:
    """``adata.write_h5ad(out)`` through :func:`atomic_path` (the folder is created when missing)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
