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
import os
import reprlib
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np

from . import _options
from ._checks import (
    Check,
    flag,
    flag_or_none,
    integer,
    key_name,
    model_folder_problem,
    name_or_none,
    names,
    real,
)

#: The tables (parameter → check), one per entry point. Those of :class:`scae.SAUCIE` and ``scae.tl.fit`` are
#: built from the option groups of :mod:`scae._options`, where each option is declared with its default and check.
MODEL = _options.table(*_options.MODEL_GROUPS)
MAX_EPOCHS = _options.table(_options.Schedule)["max_epochs"]
CLUSTERING = _options.table(_options.Clustering)
#: ``scae.tl.fit``; ``adata`` is checked apart, ``progress`` accepts anything truthy.
FIT = _options.table(*_options.FIT_GROUPS)
TRANSFORM = {
    "batch_key": name_or_none,
    "fine_tune_epochs": integer(0),
    "fine_tune_learning_rate": real(0, lo_open=True, optional=True),
    "impute": flag,
    "random_state": integer(0, hi=2**63 - 1, optional=True),
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


def check_anndata(name: str, value, *, writes: bool = False) -> None:
    """``value`` must be an AnnData; with ``writes`` (outputs go into it) not a view of a backed one."""
    if not isinstance(value, ad.AnnData):
        msg = f"expected an AnnData for `{name}`, got {type(value).__name__} {reprlib.repr(value)}"
        raise TypeError(msg)
    if writes and value.is_view and value.isbacked:
        # anndata turns a view into an actual object when written to, which a backed view cannot be
        msg = (
            f"`{name}` is a view of a backed AnnData (a subset of `anndata.read_h5ad(..., backed='r')`), which "
            "cannot hold scae's outputs: load the subset with `.to_memory()`, or write it to a file with "
            "`.copy(filename=...)` and open that backed"
        )
        raise ValueError(msg)


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
    check_anndata("adata", adata, writes=True)
    check_table(FIT, values)
    _check_model_pairs(values)
    _check_n_clusters(values["n_clusters"], adata.n_obs)
    backed = bool(getattr(adata, "isbacked", False))
    if backed and values["copy"]:
        msg = "`copy=True` is not supported for a backed AnnData; results are written into it (and `out_path`)"
        raise ValueError(msg)
    if values["save_model"] is not None and (problem := model_folder_problem(values["save_model"])) is not None:
        msg = f"`save_model`: {problem}"
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
    check_anndata("adata", adata, writes=True)
    check_table(TRANSFORM, values)


def check_query(adata_ref, adata_query, values: Mapping[str, object]) -> None:
    """Settings of ``scae.tl.query``."""
    check_anndata("adata_ref", adata_ref)
    check_anndata("adata_query", adata_query, writes=True)
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
    check_anndata("adata", adata, writes=True)
    check_table(CLUSTER, values)
    _check_n_clusters(values["n_clusters"], adata.n_obs)
