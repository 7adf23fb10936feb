"""The checks of one setting's value that the tables of :mod:`scae._settings` are made of.

A check is called as ``check(name, value)`` and returns nothing or raises: ``TypeError`` for a wrong type,
``ValueError`` for a value out of range or not allowed, with a message naming the parameter, the value given
(``repr``) and what is allowed. ``integer``, ``real`` and ``choice`` build a check for given bounds or options;
the others are checks themselves.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from .nn.heads import LIKELIHOODS

Check = Callable[[str, object], None]

_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def _fail(kind: type[Exception], name: str, value, allowed: str, prefix: str = "") -> None:
    msg = f"{prefix}`{name}` must be {allowed}, got {value!r}"
    raise kind(msg)


def _is_int(v) -> bool:  # bools are ints to Python, not to a user
    return isinstance(v, int | np.integer) and not isinstance(v, bool | np.bool_)


def _is_real(v) -> bool:
    return _is_int(v) or isinstance(v, float | np.floating)


def integer(lo: int, *, optional: bool = False, hi: int | None = None) -> Check:
    """An int ``>= lo`` (``<= hi``); bools and floats such as ``2.7`` or ``2.0`` are refused."""
    allowed = ("None or " if optional else "") + (f"an int >= {lo}" if hi is None else f"an int in [{lo}, {hi}]")

    def check(name: str, value) -> None:
        if value is None and optional:
            return
        if not _is_int(value):
            _fail(TypeError, name, value, allowed)
        if value < lo or (hi is not None and value > hi):
            _fail(ValueError, name, value, allowed)

    return check


def real(lo: float, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False, optional: bool = False):
    """A finite number in the given interval (ints accepted, bools and strings refused)."""
    if hi is None:
        allowed = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
        allowed = f"a finite number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    allowed = ("None or " if optional else "") + allowed

    def check(name: str, value) -> None:
        if value is None and optional:
            return
        if not _is_real(value):
            _fail(TypeError, name, value, allowed)
        v = float(value)
        bad = not math.isfinite(v) or v < lo or (lo_open and v == lo)
        bad = bad or (hi is not None and (v > hi or (hi_open and v == hi)))
        if bad:
            _fail(ValueError, name, value, allowed)

    return check


def choice(options: tuple[str, ...], *, note: str = "", optional: bool = False) -> Check:
    """One of the string ``options``."""
    allowed = ("None or " if optional else "") + "one of " + ", ".join(map(repr, options)) + note

    def check(name: str, value) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str):
            _fail(TypeError, name, value, allowed)
        if value not in options:
            _fail(ValueError, name, value, allowed)

    return check


def flag(name: str, value) -> None:
    """``True`` or ``False`` (a string such as ``"no"`` would silently count as true)."""
    if not isinstance(value, bool | np.bool_):
        _fail(TypeError, name, value, "True or False")


def flag_or_none(name: str, value) -> None:
    """``None`` (the default decides), ``True`` or ``False``."""
    if value is not None and not isinstance(value, bool | np.bool_):
        _fail(TypeError, name, value, "None, True or False")


def name_or_none(name: str, value) -> None:
    """``None`` or a non-empty str (a layer, an ``obs``/``var`` column, an ``obsm`` key)."""
    if value is None:
        return
    if not isinstance(value, str):
        _fail(TypeError, name, value, "None or a non-empty str")
    if not value:
        _fail(ValueError, name, value, "None or a non-empty str")


def key_name(name: str, value) -> None:
    """A non-empty str without ``/`` (it becomes keys of ``obsm``, ``obs``, ``layers`` and ``uns``)."""
    allowed = "a non-empty str without '/'"
    if not isinstance(value, str):
        _fail(TypeError, name, value, allowed)
    if not value or "/" in value:
        _fail(ValueError, name, value, allowed)


def batch_name(name: str, value) -> None:
    """``None``, a str or an int naming a batch."""
    if value is not None and not (isinstance(value, str) or _is_int(value)):
        _fail(TypeError, name, value, "None, a str or an int naming a batch")


def path_or_none(name: str, value) -> None:
    """``None`` or a non-empty path (str or ``os.PathLike``)."""
    if value is None:
        return
    if not isinstance(value, str | os.PathLike):
        _fail(TypeError, name, value, "None or a path (str or os.PathLike)")
    if not os.fspath(value):
        _fail(ValueError, name, value, "None or a non-empty path")


def names(name: str, value) -> None:
    """``None``, a non-empty str or a list/tuple of non-empty strs (``obs`` columns)."""
    allowed = "None, a non-empty str or a list of non-empty strs"
    items = [] if value is None else [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        _fail(TypeError, name, value, allowed)
    if not all(items):
        _fail(ValueError, name, value, allowed)


def hidden_widths(name: str, value) -> None:
    """A non-empty list/tuple (or 1-D array) of positive ints."""
    allowed = "a non-empty sequence of positive ints"
    if isinstance(value, np.ndarray) and value.ndim == 1:
        value = value.tolist()
    if not isinstance(value, list | tuple) or not all(_is_int(v) for v in value):
        _fail(TypeError, name, value, allowed)
    if not value or any(v < 1 for v in value):
        _fail(ValueError, name, value, allowed)


def likelihood(name: str, value) -> None:
    """One of the likelihoods, or a mapping ``{block: likelihood}`` (with ``block_key``)."""
    allowed = "one of " + ", ".join(map(repr, LIKELIHOODS)) + ", or a mapping {block: likelihood} with `block_key`"
    values = list(value.values()) if isinstance(value, Mapping) else [value]
    if not all(isinstance(v, str) for v in values):
        _fail(TypeError, name, value, allowed)
    unknown = [v for v in values if v not in LIKELIHOODS]
    if unknown:
        _fail(ValueError, name, value, allowed, prefix=f"unknown likelihood {unknown[0]!r}: ")


def block_weights(name: str, value) -> None:
    """``None`` or a mapping ``{block: finite weight >= 0}``."""
    allowed = "None or a mapping {block: finite number >= 0}"
    if value is None:
        return
    if not isinstance(value, Mapping) or not all(_is_real(v) for v in value.values()):
        _fail(TypeError, name, value, allowed)
    if not all(math.isfinite(float(v)) and v >= 0 for v in value.values()):
        _fail(ValueError, name, value, allowed)


def device(name: str, value) -> None:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``."""
    import torch

    allowed = "'auto', 'cpu', 'cuda' or 'cuda:N'"
    if isinstance(value, torch.device):
        return
    if not isinstance(value, str):
        _fail(TypeError, name, value, allowed)
    if not _DEVICE.fullmatch(value):
        _fail(ValueError, name, value, allowed, prefix=f"unknown device {value!r}: ")


def gene_sets(name: str, value) -> None:
    """``None``, a GMT path, a dict ``{set: [genes]}`` or a genes × sets DataFrame."""
    allowed = "None, a GMT path, a non-empty dict {set: [genes]} or a genes × sets DataFrame"
    if value is not None and not isinstance(value, str | os.PathLike | Mapping | pd.DataFrame):
        _fail(TypeError, name, value, allowed)
    size = value.shape[1] if isinstance(value, pd.DataFrame) else len(value) if isinstance(value, Mapping) else 1
    if size == 0:
        _fail(ValueError, name, value, allowed)


#: The file that marks a folder as a saved scae model (:mod:`scae._save`).
MODEL_JSON = "model.json"


def model_folder_problem(path) -> OSError | None:
    """Why the folder ``path`` cannot receive a saved model (the error to raise), or ``None``; nothing is created.

    An existing ``path`` must be a folder that is empty or holds a model, in a writable folder (it is replaced by
    a rename, its other files moved into the new one); a new one needs a writable nearest existing folder above
    it (the missing ones are made there).
    """
    path = os.path.abspath(os.fspath(path))
    exists = os.path.exists(path)
    if exists:
        if not os.path.isdir(path):
            return FileExistsError(f"{path} exists and is not a folder")
        if os.listdir(path) and not os.path.isfile(os.path.join(path, MODEL_JSON)):
            return FileExistsError(f"{path} exists and is not a scae model folder; refusing to replace it")
        if not os.access(path, os.W_OK | os.X_OK):
            return PermissionError(f"{path} cannot be replaced: it is not writable")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    verb = "replaced" if exists else "made"
    if not os.path.isdir(parent):
        return NotADirectoryError(f"{path} cannot be {verb}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        return PermissionError(f"{path} cannot be {verb}: {parent} is not writable")
    return None
