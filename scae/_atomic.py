"""Outputs written atomically, folders a failed run created removed again, signals that stop a run safely.

* :func:`atomic_path` / :func:`write_h5ad_atomic`: a file is written to a temporary file beside the target and
  renamed into place only on success, and never after a signal was received (see :func:`stop_on_signals`).
  :func:`atomic_dir` / :func:`write_zarr_atomic` do the same for a folder (a zarr store).
* :func:`make_dirs` is the one place that creates output folders; inside :func:`remove_created_on_failure` it
  records them (and :func:`record_created` records new outputs), so that a failed run removes what it added.
* :func:`stop_on_signals` turns SIGTERM (and Ctrl-C) into an exception that stops the run; the handler also
  records the signal, so that a stop swallowed somewhere (a callback, a ``finally``, a destructor) is still seen
  by :func:`check_signals` at the safe points: before every rename and wherever the caller checks.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

#: Signal received while :func:`stop_on_signals` is active (the first one), else ``None``.
_received: int | None = None
#: Depth of :func:`deferred_signals` blocks (and :func:`defer_signals` calls); above 0 the handler only records.
_deferred = 0
#: Depth of active :func:`stop_on_signals` blocks.
_active = 0
#: Stack of the journals of the active :func:`remove_created_on_failure` blocks.
_journals: list[list[Path]] = []


class SignalExit(SystemExit):
    """Raised for a signal received under :func:`stop_on_signals`; ``code`` is ``128 + signum`` (143 for SIGTERM).

    A ``SystemExit``, so that ``except Exception`` in library code does not catch it.
    """

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _raise_for(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SignalExit(signum)


def _handler(signum, frame) -> None:
    global _received
    first = _received is None
    if first:
        _received = signum
    if first and _deferred == 0:  # a repeated signal does not break off the cleanup of the first one
        _raise_for(signum)


def check_signals() -> None:
    """Raise for a signal that arrived under :func:`stop_on_signals` (no-op when none did).

    Raises
    ------
    SignalExit
        For SIGTERM, with exit code 143.
    KeyboardInterrupt
        For SIGINT (Ctrl-C).
    """
    if _received is not None:
        _raise_for(_received)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Within the block the signal handler of :func:`stop_on_signals` only records a signal.

    For code where an exception raised by the handler could be swallowed (h5py callbacks during a write); the
    recorded signal is acted on by the next :func:`check_signals`, at the latest before the rename of
    :func:`atomic_path`.
    """
    global _deferred
    _deferred += 1
    try:
        yield
    finally:
        _deferred -= 1


def defer_signals() -> None:
    """From now to the end of the enclosing :func:`stop_on_signals` block, signals are only recorded.

    For the last stage of a command (writing its output): a signal then stops the run only before the output is
    renamed into place (:func:`atomic_path`); after the rename the run has succeeded and the signal is dropped.
    Outside a :func:`stop_on_signals` block this does nothing.
    """
    global _deferred
    if _active:
        _deferred += 1


@contextlib.contextmanager
def stop_on_signals(signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> Iterator[None]:
    """Install the stopping signal handler for the block; restore the previous handlers at its end.

    SIGTERM raises :class:`SignalExit` (code 143) and SIGINT ``KeyboardInterrupt``, at once unless inside
    :func:`deferred_signals`. Signals whose handler is ``SIG_IGN`` stay ignored, SIGINT is only taken over from
    Python's default handler, and outside the main thread (where handlers cannot be set) nothing is installed.
    A signal that was recorded but not acted on before the block ends is dropped.
    """
    global _received, _deferred, _active
    previous: dict[int, object] = {}
    saved = (_received, _deferred)
    _active += 1
    if threading.current_thread() is threading.main_thread():
        for s in signals:
            current = signal.getsignal(s)
            if current is signal.SIG_IGN or (s == signal.SIGINT and current is not signal.default_int_handler):
                continue
            previous[s] = signal.signal(s, _handler)
    try:
        yield
    finally:
        _deferred += 1  # from here on a signal cannot break off the restoring
        for s, handler in previous.items():
            signal.signal(s, handler)
        _received, _deferred = saved
        _active -= 1


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
    with deferred_signals():  # no stop between making a folder and recording it
        for p in reversed(missing):
            try:
                p.mkdir()
            except FileExistsError:
                if not p.is_dir():
                    raise
            else:  # only what this call created, not a folder made at the same time by someone else
                record_created(p)
    check_signals()


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

    Failure is any exception, ``KeyboardInterrupt`` and :class:`SignalExit` included. Only recorded paths are
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
        with deferred_signals():
            _journals.pop()
            if ok:
                record_created(*journal)
            else:
                _remove(journal)


def _new_mode(bits: int) -> int:
    """``bits`` with the process umask applied: the mode of a newly created file (0o666) or folder (0o777)."""
    mask = os.umask(0)
    os.umask(mask)
    return bits & ~mask


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; rename it to ``out`` when the block ends without error.

    On any error (``KeyboardInterrupt`` and ``SystemExit`` included) the temporary file is removed and an
    earlier ``out`` stays as it was; so it is when a signal arrived under :func:`stop_on_signals`, even one
    whose exception was swallowed (:func:`check_signals` runs right before the rename). The file gets the
    permissions of a newly created file (umask applied). A new ``out`` is recorded by :func:`record_created`.
    """
    out = Path(out)
    with deferred_signals():  # no stop between making the temporary file and the `try` that removes it
        fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        check_signals()
        yield tmp
        os.chmod(tmp, _new_mode(0o666))
        with deferred_signals():  # the check, the rename and its record as one step
            new = not out.exists()
            check_signals()
            os.replace(tmp, out)
            if new:
                record_created(out)
    finally:
        tmp.unlink(missing_ok=True)


def write_h5ad_atomic(adata, out: str | os.PathLike) -> None:
    """``adata.write_h5ad(out)`` through :func:`atomic_path` (the folder is created by :func:`make_dirs`).

    A signal that arrives during the write is recorded, not raised inside h5py, and stops the run before the
    rename.
    """
    out = Path(out)
    make_dirs(out.parent)
    with atomic_path(out) as tmp, deferred_signals():
        adata.write_h5ad(tmp)


def is_zarr_store(path: str | os.PathLike) -> bool:
    """True for a folder holding a zarr group (format 3: ``zarr.json``, format 2: ``.zgroup``)."""
    path = Path(path)
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zgroup").is_file())


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``out``; it replaces ``out`` when the block ends without error.

    As :func:`atomic_path`, for a folder: on any error (or after a signal) the temporary folder is removed and an
    earlier ``out`` stays as it was. An earlier ``out`` is first renamed aside, the new folder renamed into its
    place (the earlier one is renamed back if that fails), and only then is the earlier one deleted. A new ``out``
    is recorded by :func:`record_created`.
    """
    out = Path(out)
    with deferred_signals():
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old: Path | None = None
    try:
        check_signals()
        yield tmp
        os.chmod(tmp, _new_mode(0o777))  # mkdtemp made it private
        with deferred_signals():
            new = not out.exists() and not out.is_symlink()
            check_signals()
            if not new:
                old = tmp.with_name(tmp.name + ".old")  # unique: tmp's name is
                os.rename(out, old)
            try:
                os.rename(tmp, out)
            except BaseException:
                if old is not None:
                    os.rename(old, out)
                    old = None
                raise
            if new:
                record_created(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def write_zarr_atomic(adata, out: str | os.PathLike) -> None:
    """``adata.write_zarr(out)`` through :func:`atomic_dir` (the parent folder is created by :func:`make_dirs`)."""
    out = Path(out)
    make_dirs(out.parent)
    with atomic_dir(out) as tmp, deferred_signals():
        adata.write_zarr(tmp)
