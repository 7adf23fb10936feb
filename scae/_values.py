"""Checks of the input values: empty, non-numeric, non-finite, untransformed-looking, counts, 0/1, feature names.

Each check raises ``ValueError`` naming the matrix and the problem, or logs a warning; none changes the data.
:mod:`scae._blocks` picks the check of each feature block by its likelihood (``VALUE_CHECKS``).
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import _backed

logger = logging.getLogger("scae")

#: Absolute input values above this suggest an untransformed matrix: raw CyTOF intensities (levine3k's raw layer
#: up to 7,603), raw counts (CellBench up to 2,970). Transformed inputs stay below it: arcsinh and log1p values
#: (CytoNorm up to 7.9), log2 bulk expression (TCGA CRC up to 28.6) or proteomics intensities (~20-40), scaled
#: values (pbmc68k_reduced up to 28.4). It was 20, which warned on the last three.
LARGE_VALUE_WARNING = 100.0
#: Non-negative whole numbers above this (and up to :data:`LARGE_VALUE_WARNING`) look like raw counts, which
#: stay under the first bar in gene panels and shallow data: 1,878 of CellBench's 2,000 most variable genes
#: (seurat_v3) never exceed 100 counts. Smaller whole numbers may be categories or dosages (0/1/2): no warning.
COUNT_VALUE_WARNING = 10.0
#: Above this many features, a ``var["highly_variable"]`` column that marks fewer of them gets a warning: scae
#: trains on every feature it is given (CellBench, 450 cells: 25.8 s on all 15,072 genes, 3.3 s on 2,000).
HIGHLY_VARIABLE_HINT = 5000
#: Cytometry channels that record the acquisition, never a marker (names compared without case, spaces, ``_``,
#: ``-``, ``#``): a fit on them follows them (``Time`` is a ramp over the run). CytoNorm's and flowsom_bal_flow's files
#: hold ``Time``, ``Event_length``, ``beadDist``; CyTOF's Gaussian parameters are ``Center``, ``Offset``, ``Width``,
#: ``Residual``. Scatter (``FSC-A``, ``SSC-A``) is left alone: flow panels use it to tell cell types apart.
ACQUISITION_CHANNELS = frozenset(
    {"time", "eventlength", "celllength", "event", "eventnumber", "center", "offset", "width", "residual", "beaddist"}
)


def validate_matrix(X, *, where: str, float32: bool = True) -> None:
    """Raise ``ValueError`` for empty, non-numeric or non-finite data, and with ``float32`` (data to train on, not
    to transform) for values beyond float32.
    """
    if _backed.is_backed(X):
        scan_backed(X, where)
        return
    if X.shape[0] == 0 or X.shape[1] == 0:
        msg = f"{where} is empty (shape {X.shape}); scae needs at least one cell and one feature"
        raise ValueError(msg)
    dtype = X.dtype
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)) or np.issubdtype(
        dtype, np.complexfloating
    ):
        msg = f"{where} has non-numeric dtype {dtype}; scae needs a real-valued numeric matrix"
        raise ValueError(msg)
    values = X.data if sp.issparse(X) else np.asarray(X)
    n_bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if n_bad:
        n_nan = int(np.count_nonzero(np.isnan(values)))
        msg = f"{where} contains {n_nan} NaN and {n_bad - n_nan} infinite values; remove or impute them first"
        raise ValueError(msg)
    if float32 and np.issubdtype(dtype, np.floating) and dtype.itemsize > 4 and np.size(values):
        _backed.check_float32_range(max(float(values.max()), -float(values.min())), where=where)


def warn_if_highly_variable_unused(adata: AnnData) -> None:
    """Log a warning when ``var["highly_variable"]`` marks a subset of many genes that scae will not use.

    scanpy's PCA uses that subset by default; scae trains on (and imputes) every feature of the matrix it is
    given, so a user who selected genes most likely meant to pass only those.
    """
    column = adata.var.get("highly_variable")
    if column is None or adata.n_vars <= HIGHLY_VARIABLE_HINT or not pd.api.types.is_bool_dtype(column):
        return
    n_marked = int(column.fillna(False).astype(bool).sum())  # (a nullable column may hold NA)
    if 0 < n_marked < adata.n_vars:
        logger.warning(
            "adata.var['highly_variable'] marks %d of %d genes, but scae trains on all of them (time grows with "
            "the genes); to train on the marked ones, pass adata[:, adata.var['highly_variable']].copy()",
            n_marked,
            adata.n_vars,
        )


def acquisition_channels(var_names) -> list[str]:
    """The names among ``var_names`` that are acquisition channels (:data:`ACQUISITION_CHANNELS`), in order."""
    return [str(n) for n in var_names if re.sub(r"[\s_\-#]", "", str(n)).lower() in ACQUISITION_CHANNELS]


def warn_if_acquisition_channels(adata: AnnData) -> None:
    """Log a warning naming the acquisition channels (``Time``, ``Event_length``, ...) among the features."""
    found = acquisition_channels(adata.var_names)
    if not found:
        return
    column = adata.var.get("is_marker")
    subset = (
        "adata[:, adata.var['is_marker']].copy()"
        if column is not None and pd.api.types.is_bool_dtype(column)
        else "adata[:, markers].copy()"
    )
    logger.warning(
        "adata.var_names include %s, which record the acquisition, not a marker: the embedding and clusters "
        "would follow them; pass the marker channels only, e.g. %s (or scae.pp.read_fcs(..., markers_only=True))",
        ", ".join(repr(n) for n in found),
        subset,
    )


def warn_if_untransformed(X, *, where: str) -> None:
    """Log a warning when values look untransformed (SAUCIE users often hit NaNs/one giant cluster there)."""
    if _backed.is_backed(X):
        report_range(scan_backed(X, where)[2], where=where)
        return
    report_range(_backed.value_range(X.data if sp.issparse(X) else X), where=where)


def report_range(vrange: np.ndarray, *, where: str) -> None:
    """The untransformed-input warning from :func:`scae._backed.value_range` of the whole matrix.

    Values above :data:`LARGE_VALUE_WARNING` are untransformed; so are non-negative whole numbers above
    :data:`COUNT_VALUE_WARNING` (raw counts of shallow data or of a gene subset stay below the first bar).
    """
    vmax, not_counts = float(vrange[0]), bool(vrange[1])
    if vmax > LARGE_VALUE_WARNING:
        logger.warning(
            "%s has values up to %.3g: scae expects transformed data (arcsinh for cytometry, "
            "log1p of normalized counts for RNA); see `scae.pp.arcsinh`. Features are standardized internally.",
            where,
            vmax,
        )
    elif not not_counts and vmax > COUNT_VALUE_WARNING:
        logger.warning(
            "%s holds whole numbers from 0 to %d, like raw counts: scae expects transformed data "
            "(sc.pp.normalize_total and sc.pp.log1p for RNA), or counts fitted with likelihood='nb'",
            where,
            int(vmax),
        )


def count_violations(X) -> tuple[int, int]:
    """Numbers of negative and of non-integer entries of ``X`` (dense or sparse, in memory)."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    return int(np.count_nonzero(values < 0)), int(np.count_nonzero(values != np.round(values)))


def check_counts(n_neg: int, n_frac: int, *, where: str) -> None:
    """Raise ``ValueError`` for negative or non-integer entries (NB/ZINB need raw counts)."""
    if n_neg:
        msg = (
            f"{where} has {n_neg} negative values, but a count likelihood ('nb'/'zinb') needs raw non-negative "
            "integer counts; pass `layer=` naming the raw counts, or use likelihood='mse' for transformed data"
        )
        raise ValueError(msg)
    if n_frac:
        msg = (
            f"{where} has {n_frac} non-integer values, but a count likelihood ('nb'/'zinb') needs raw integer "
            "counts (not normalized or log-transformed); pass `layer=` naming the raw counts, or use likelihood='mse'"
        )
        raise ValueError(msg)


def validate_counts(X, *, where: str) -> None:
    """Raise ``ValueError`` unless every entry is a non-negative integer (NB/ZINB need raw counts)."""
    check_counts(*count_violations(X), where=where)


def binary_violations(X) -> int:
    """Number of entries of ``X`` other than 0 and 1."""
    values = X.data if sp.issparse(X) else np.asarray(X)
    return int(np.count_nonzero((values != 0) & (values != 1)))


def check_binary(n_bad: int, *, where: str) -> None:
    """Raise ``ValueError`` when ``n_bad`` entries are not 0/1 (the Bernoulli likelihood)."""
    if n_bad:
        msg = f"{where} has {n_bad} values other than 0 and 1, but the 'bernoulli' likelihood needs binary data"
        raise ValueError(msg)


def validate_binary(X, *, where: str) -> None:
    """Raise ``ValueError`` unless every entry is 0 or 1 (the Bernoulli likelihood)."""
    check_binary(binary_violations(X), where=where)


def repeated_names(names) -> list[str]:
    """The names that occur more than once, each once, in order of their second occurrence."""
    index = pd.Index([str(n) for n in names])
    return index[index.duplicated()].unique().tolist()


def check_unique_var_names(adata: AnnData) -> None:
    """Raise ``ValueError`` naming the repeated features when ``adata.var_names`` has duplicates.

    A model keeps its features by name (saved with it, matched by :func:`scae.data.align_var_names` in
    ``transform`` and ``load``, and by gene sets), so two columns of one name would be told apart by position only.
    """
    dup = repeated_names(adata.var_names)
    if dup:
        msg = (
            f"adata.var_names has {len(dup)} duplicated name{'s' if len(dup) > 1 else ''} "
            f"(e.g. {dup[:5]}); a model matches features by name: call "
            "`adata.var_names_make_unique()` first (or drop the repeated columns)"
        )
        raise ValueError(msg)


_SCAN: list = []


def scan_backed(X, where: str):
    """One validating pass over a backed matrix, remembered for the last matrix scanned."""
    if not (_SCAN and _SCAN[0] is X):
        _SCAN[:] = [X, _backed.scan(X, where=where)]
    return _SCAN[1]
