"""Every setting of the public entry points, checked once, before any data is read or any step is trained.

``scae.tl.fit``, :class:`scae.SAUCIE` (and its ``train``), ``scae.tl.transform``, ``scae.tl.query`` and
``scae.tl.cluster`` call the ``check_*`` function of their own table first thing. A wrong type raises
``TypeError``, a value out of range or not allowed raises ``ValueError``; every message names the
parameter, the value given (``repr``) and what is allowed, e.g.
"`hidden` must be a non-empty sequence of positive ints, got [64, 0, 16]".

Checks that need the data (a ``batch_key`` missing from ``obs``, non-finite values) stay where it is read.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from pathlib import Path

import anndata as ad
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


#: The tables (parameter → check), one per entry point; first :class:`scae.SAUCIE` (``adata`` is checked apart).
POSITIVE_WEIGHT = real(0)
MODEL = {
    "layer": name_or_none,
    "batch_key": name_or_none,
    "reference_batch": batch_name,
    "hidden": hidden_widths,
    "n_latent": integer(1),
    "lambda_b": POSITIVE_WEIGHT,
    "lambda_c": POSITIVE_WEIGHT,
    "lambda_d": POSITIVE_WEIGHT,
    "learning_rate": real(0, lo_open=True),
    "batch_size": integer(2, optional=True),
    "pairwise_cells": integer(2, optional=True),
    "random_state": integer(0, hi=2**63 - 1),
    "device": device,
    "batch_reconstruction": choice(("zscore", "distance")),
    "gene_sets": gene_sets,
    "min_genes": integer(1),
    "n_free_nodes": integer(0),
    "gene_set_layer": choice(("encoder", "decoder"), note=" ('encoder' (GSAE) or 'decoder' (expiMap style))"),
    "likelihood": likelihood,
    "block_key": name_or_none,
    "block_weights": block_weights,
    "input_dropout": real(0, 1, hi_open=True),
    "input_noise": POSITIVE_WEIGHT,
    "l1_activity": POSITIVE_WEIGHT,
    "contractive": POSITIVE_WEIGHT,
    "variational": flag,
    "lambda_kl": POSITIVE_WEIGHT,
    "precision": choice(("32", "bf16")),
    "compile": flag,
    "block_rows": integer(1, optional=True),
}
MAX_EPOCHS = integer(1, optional=True)
CLUSTERING = {
    "merge_threshold": real(0, optional=True),
    "n_clusters": integer(1, optional=True),
    "min_cluster_size": integer(1, optional=True),
}
#: ``scae.tl.fit``; ``adata`` is checked apart, ``progress`` accepts anything truthy.
FIT = {
    **MODEL,
    **CLUSTERING,
    "max_epochs": MAX_EPOCHS,
    "early_stopping": flag_or_none,
    "impute": flag,
    "imputed_units": choice(("counts", "normalized", "log1p")),
    "save_model": path_or_none,
    "key_added": key_name,
    "copy": flag,
    "out_path": path_or_none,
}
TRANSFORM = {
    "batch_key": name_or_none,
    "fine_tune_epochs": integer(0),
    "fine_tune_learning_rate": real(0, lo_open=True, optional=True),
    "impute": flag,
    "random_state": integer(0, hi=2**63 - 1),
    "key_added": key_name,
    "copy": flag,
}
THRESHOLD = real(0, 1, hi_open=True)
QUERY = {
    "k": integer(1),
    "codes_key": key_name,
    "threshold": THRESHOLD,
    "tie_break": name_or_none,
    "transfer": names,
    "key_added": key_name,
    "copy": flag,
}
CLUSTER_OPTIONS = {**CLUSTERING, "threshold": THRESHOLD}  # also of SAUCIE.get_clusters
CLUSTER = {**CLUSTER_OPTIONS, "key_added": key_name, "copy": flag}
#: Parameters with nothing to check (any value works), per entry point.
UNCHECKED = {"fit": ("progress",), "train": ("progress",), "transform": ("progress",), "model": (), "query": (),
             "cluster": ()}  # fmt: skip


def check_table(table: Mapping[str, Check], values: Mapping[str, object]) -> None:
    """Run the check of every parameter of ``table`` on ``values`` (in the table's order)."""
    for name, check in table.items():
        check(name, values[name])


def check_given(table: Mapping[str, Check], func, values: Mapping[str, object]) -> None:
    """``table``'s checks of the options ``values`` given to ``func`` by name (the CLI's), before any file is read."""
    defaults = {n: p.default for n, p in inspect.signature(func).parameters.items()}
    check_table(table, {**defaults, **values})


def check_anndata(name: str, value) -> None:
    """``value`` must be an AnnData."""
    if not isinstance(value, ad.AnnData):
        msg = f"expected an AnnData for `{name}`, got {type(value).__name__} {reprlib.repr(value)}"
        raise TypeError(msg)


def _check_n_clusters(n_clusters, n_cells: int) -> None:  # n_clusters was checked to be None or an int
    if n_clusters is not None and n_clusters > n_cells:
        msg = f"`n_clusters` must be at most the number of cells ({n_cells}), got {n_clusters!r}"
        raise ValueError(msg)


def check_model(values: Mapping[str, object]) -> None:
    """Settings of :class:`scae.SAUCIE` (``values``: its arguments, e.g. ``locals()``)."""
    check_anndata("adata", values["adata"])
    check_table(MODEL, values)
    _check_model_pairs(values)


def _check_model_pairs(values: Mapping[str, object]) -> None:
    if values["reference_batch"] is not None and values["batch_key"] is None:
        msg = "`reference_batch` was given without `batch_key`"
        raise ValueError(msg)
    if values["n_free_nodes"] and values["gene_sets"] is None:
        msg = f"`n_free_nodes` only applies together with `gene_sets`, got n_free_nodes={values['n_free_nodes']!r}"
        raise ValueError(msg)


def check_train(max_epochs, early_stopping=None) -> None:
    """``max_epochs`` and ``early_stopping`` of :meth:`scae.SAUCIE.train`."""
    MAX_EPOCHS("max_epochs", max_epochs)
    flag_or_none("early_stopping", early_stopping)


def check_fit(values: Mapping[str, object]) -> None:
    """Settings of ``scae.tl.fit``, including the backed-file rules for ``out_path`` and ``copy``."""
    adata = values["adata"]
    check_anndata("adata", adata)
    check_table(FIT, values)
    _check_model_pairs(values)
    _check_n_clusters(values["n_clusters"], adata.n_obs)
    backed = bool(getattr(adata, "isbacked", False))
    if backed and values["copy"]:
        msg = "`copy=True` is not supported for a backed AnnData; results are written into it (and `out_path`)"
        raise ValueError(msg)
    out_path = values["out_path"]
    if out_path is None:
        return
    if not backed:
        msg = (
            "`out_path` is only used with a backed AnnData (`anndata.read_h5ad(path, backed='r')`), "
            f"got {out_path!r} with an in-memory one"
        )
        raise ValueError(msg)
    out = Path(out_path)
    if adata.filename is not None and out.resolve() == Path(adata.filename).resolve():
        msg = f"`out_path` must differ from the backed input file, got {os.fspath(out_path)!r} (the input file)"
        raise ValueError(msg)
    if not out.parent.is_dir():
        msg = f"`out_path` must be in an existing folder, got {os.fspath(out_path)!r} ({out.parent} does not exist)"
        raise ValueError(msg)
    if out.is_dir():
        msg = f"`out_path` must be a file path, got {os.fspath(out_path)!r} (a folder)"
        raise ValueError(msg)


def check_transform(model, adata, values: Mapping[str, object], *, model_type: type) -> None:
    """Settings of ``scae.tl.transform``: a trained ``model_type`` (``scae.SAUCIE``), an AnnData, the options."""
    if not isinstance(model, model_type):
        msg = f"expected a scae.SAUCIE for `model`, got {type(model).__name__} {reprlib.repr(model)}"
        raise TypeError(msg)
    if not model.is_trained:
        msg = "the model is not trained: train it (`model.train()`) or load a trained one (`scae.SAUCIE.load`)"
        raise ValueError(msg)
    check_anndata("adata", adata)
    check_table(TRANSFORM, values)


def check_query(adata_ref, adata_query, values: Mapping[str, object]) -> None:
    """Settings of ``scae.tl.query``."""
    check_anndata("adata_ref", adata_ref)
    check_anndata("adata_query", adata_query)
    check_table(QUERY, values)


def check_codes(codes: np.ndarray, where: str) -> None:
    """Codes must be a finite 2-D numeric array (NaN codes would hash to arbitrary buckets)."""
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.number):
        msg = f"{where} must be a 2-D numeric array of codes, got shape {codes.shape} and dtype {codes.dtype}"
        raise ValueError(msg)
    n_bad = int(codes.size - np.count_nonzero(np.isfinite(codes)))
    if n_bad:
        msg = f"{where} holds {n_bad} non-finite (NaN or infinite) values; codes must be finite"
        raise ValueError(msg)


def check_cluster(adata, values: Mapping[str, object]) -> None:
    """Settings of ``scae.tl.cluster``."""
    check_anndata("adata", adata)
    check_table(CLUSTER, values)
    _check_n_clusters(values["n_clusters"], adata.n_obs)
