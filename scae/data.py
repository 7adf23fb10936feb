"""From AnnData to tensors: validated matrix, batch codes and a row source on the training device."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from . import _backed, _fast, _values
from .nn.likelihoods import log_normalize_np

logger = logging.getLogger("scae")

#: Inputs whose dense float32 copy is below this many bytes are densified once on the device.
DENSE_BUDGET_BYTES = 4 * 1024**3


def get_matrix(adata: AnnData, layer: str | None):
    """Return ``adata.X`` or ``adata.layers[layer]``, with a clear error for a missing layer."""
    if layer is None:
        X = adata.X
    else:
        names = [k for k in adata.layers.keys() if k is not None]  # anndata >= 0.13 lists X as layers[None]
        if not isinstance(layer, str) or layer not in names:
            msg = f"layer {layer!r} not found in adata.layers (available: {names})"
            raise ValueError(msg)
        X = adata.layers[layer]
    if X is None:
        msg = "adata.X is None: pass `layer=` naming a layer that holds the data"
        raise ValueError(msg)
    if is_dask(X):
        # a dask array (anndata.experimental.read_lazy, or set by the user) is computed once, here: training
        # draws random rows every step, which a chunked lazy array serves one task graph at a time
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        logger.info(
            "%s is a dask array %s: loading it into memory; for data larger than memory open the .h5ad with "
            "backed='r' instead",
            where,
            X.shape,
        )
        X = X.compute()
    return X


def is_dask(X) -> bool:
    """True for a dask array (checked by module, so dask need not be installed)."""
    return type(X).__module__.split(".")[0] == "dask"


def column(frame, key: str) -> pd.Series:
    """``frame[key]`` as a pandas Series, also from the lazy frames of ``anndata.experimental.read_lazy``."""
    if isinstance(frame, pd.DataFrame):
        return frame[key]
    return frame[[key]].to_memory()[key]  # anndata's Dataset2D: its columns are xarray DataArrays


def feature_moments(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (constant features get std 1), without densifying."""
    if _backed.is_backed(X):
        return _values.scan_backed(X, "backed matrix")[:2]
    if sp.issparse(X):
        mean = np.asarray(X.mean(0), dtype=np.float64).ravel()
        sq = np.asarray(X.multiply(X).mean(0), dtype=np.float64).ravel()
    else:
        Xd = np.asarray(X, dtype=np.float64)
        mean = Xd.mean(0)
        sq = (Xd**2).mean(0)
    std = np.sqrt(np.clip(sq - mean**2, 0, None))
    std[std < 1e-6] = 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def library_size(X) -> np.ndarray:
    """Total count per cell (row sums, float64), without densifying sparse input; backed input by row chunks."""
    if _backed.is_backed(X):
        rows = _backed.default_chunk_rows(X.shape[1], budget=_backed.SCAN_BYTES)
        return np.concatenate([block.sum(1, dtype=np.float64) for _, block in _backed.iter_chunks(X, rows)])
    return np.asarray(X.sum(1), dtype=np.float64).ravel()


def log_normalize(X, target_sum: float):
    """``log1p(x / library × target_sum)`` per cell (float32; sparse stays sparse, zero-count rows stay 0).

    The transform the network applies to count blocks before standardization
    (:func:`scae.nn.likelihoods.log_normalize_np`); ``X`` may also be backed.
    """
    return log_normalize_np(X, library_size(X), target_sum)


def block_matrix(X, index: np.ndarray):
    """Columns ``index`` of ``X`` (a view-free copy; sparse stays sparse)."""
    if sp.issparse(X):
        return sp.csc_matrix(X)[:, index] if not sp.isspmatrix_csc(X) else X[:, index]
    return np.asarray(X)[:, index]


@dataclass
class BatchInfo:
    """Batch codes of the cells and the reference batch."""

    codes: np.ndarray  # int64 (n_cells,)
    categories: list[str]
    reference: int


def label_column(frame, key: str, *, param: str, where: str, each: str) -> pd.Series:
    """``frame[key]``, the column that ``param`` names; ``ValueError`` when it is absent or has missing values.

    ``where`` names the frame (``"adata.obs"``), ``each`` what every row needs (``"every cell needs a batch"``).
    """
    if key not in frame.columns:
        msg = f"{param} {key!r} not found in {where} (columns: {list(frame.columns)})"
        raise ValueError(msg)
    col = column(frame, key)
    if col.isna().any():
        msg = f"{where}[{key!r}] has {int(col.isna().sum())} missing values; {each}"
        raise ValueError(msg)
    return col


def get_batches(
    adata: AnnData,
    batch_key: str | None,
    reference_batch=None,
    *,
    batch_size: int = 256,
    shrinks: bool = False,
    mapping: bool = False,
) -> BatchInfo | None:
    """Read ``adata.obs[batch_key]`` into integer codes, checking for missing values and too small batches.

    Every minibatch draws ``batch_size // n_batches`` cells from each batch, so each batch needs at least
    that many cells (and at least 2). ``shrinks``: ``batch_size`` is a default minibatch, which shrinks to what
    the smallest batch can fill (:func:`scae._fast.batch_size_for_batches`), so a batch needs only
    :func:`scae._fast.min_cells_per_batch` cells. ``mapping``: new cells mapped onto a trained model (any batch
    size, one batch is fine).
    """
    if batch_key is None:
        if reference_batch is not None:
            msg = "`reference_batch` was given without `batch_key`"
            raise ValueError(msg)
        return None
    col = label_column(adata.obs, batch_key, param="batch_key", where="adata.obs", each="every cell needs a batch")
    cat = pd.Categorical(col.astype(str))
    cat = cat.remove_unused_categories()
    categories = [str(c) for c in cat.categories]
    codes = np.asarray(cat.codes, dtype=np.int64)
    counts = np.bincount(codes, minlength=len(categories))
    if mapping:
        need = 1
    elif len(categories) == 1:
        need = 2
    elif shrinks:
        need = _fast.min_cells_per_batch(len(categories))
    else:
        need = max(2, batch_size // len(categories))
    small = [f"{c!r} ({n} cells)" for c, n in zip(categories, counts, strict=True) if n < need]
    if small:
        listed = ", ".join(small[:5]) + (f" and {len(small) - 5} more" if len(small) > 5 else "")
        if len(categories) > max(10, len(codes) // 2):  # a per-cell value (a score, a barcode), not batches
            msg = (
                f"adata.obs[{batch_key!r}] has {len(categories)} distinct values for {len(codes)} cells, which "
                f"leaves batches too small to correct ({listed}); batch_key names a column of batches (samples, "
                "donors, runs), not a per-cell value"
            )
        elif shrinks:
            msg = (
                f"batches of adata.obs[{batch_key!r}] with fewer than {need} cells, the fewest a default minibatch "
                f"draws from each batch to compare it with the others: {listed}; merge small batches or drop "
                "them (or pass `batch_size`: every minibatch then draws batch_size // n_batches cells from each batch)"
            )
        else:
            msg = (
                f"batches of adata.obs[{batch_key!r}] with fewer cells than the {need} that every minibatch draws "
                f"from each batch (batch_size={batch_size}, {len(categories)} batches): {listed}; "
                "lower `batch_size`, merge small batches or drop them"
            )
        raise ValueError(msg)
    if len(categories) == 1 and not mapping:  # (new cells mapped onto a model may well be one batch)
        logger.warning(
            "adata.obs[%r] holds a single batch (%r): there is no batch effect to correct; batch_key names a "
            "column of several batches (samples, donors, runs)", batch_key, categories[0],
        )  # fmt: skip
    if reference_batch is None:
        reference = int(np.argmax(counts))
    else:
        if str(reference_batch) not in categories:
            msg = f"reference_batch {reference_batch!r} is not a batch of adata.obs[{batch_key!r}] ({categories})"
            raise ValueError(msg)
        reference = categories.index(str(reference_batch))
    return BatchInfo(codes=codes, categories=categories, reference=reference)


is_backed = _backed.is_backed


def make_row_source(X, device: torch.device, *, block_rows: int | None = None, start: int = 0, stop: int | None = None):
    """The row-source protocol of the pipeline (``len``, ``rows(idx)``, ``chunks(n)``) over rows ``start:stop``.

    :class:`RowSource` for in-memory matrices, :class:`scae._backed.BackedRowSource` for backed ones.
    """
    stop = X.shape[0] if stop is None else stop
    if _backed.is_backed(X):
        return _backed.BackedRowSource(X, device, block_rows=block_rows, start=start, stop=stop)
    return RowSource(X if (start, stop) == (0, X.shape[0]) else X[start:stop], device)


class RowSource:
    """Rows of the input matrix held on the training device, gathered by an index tensor on that device.

    Dense matrices (and sparse ones whose dense copy fits ``DENSE_BUDGET_BYTES``) are stored as one dense
    float32 tensor; larger sparse matrices are stored as a sparse COO tensor and densified per minibatch.
    """

    def __init__(self, X, device: torch.device) -> None:
        self.shape = X.shape
        self.device = device
        dense_bytes = X.shape[0] * X.shape[1] * 4
        self._sparse = None
        self._dense = None
        if sp.issparse(X) and dense_bytes > DENSE_BUDGET_BYTES:
            coo = sp.coo_matrix(X)
            idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
            vals = torch.from_numpy(coo.data.astype(np.float32))
            self._sparse = torch.sparse_coo_tensor(idx, vals, X.shape).coalesce().to(device)
        else:
            if sp.issparse(X):
                arr = np.empty(X.shape, dtype=np.float32)
                step = max(1, int(2**26 // max(1, X.shape[1])))
                for start in range(0, X.shape[0], step):
                    arr[start : start + step] = X[start : start + step].toarray()
            else:
                arr = np.ascontiguousarray(X, dtype=np.float32)
            self._dense = torch.from_numpy(arr).to(device)

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        """Dense float32 rows ``idx`` (a long tensor on the device)."""
        if self._dense is not None:
            return self._dense.index_select(0, idx)
        return self._sparse.index_select(0, idx).to_dense()

    def chunks(self, chunk_size: int):
        """Yield consecutive dense row blocks (for inference)."""
        for start in range(0, len(self), chunk_size):
            idx = torch.arange(start, min(start + chunk_size, len(self)), device=self.device)
            yield self.rows(idx)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; otherwise ``torch.device(device)`` with a clear error."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        msg = f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        raise ValueError(msg) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"device {device!r} requested but CUDA is not available on this machine; use device='auto' or 'cpu'"
        raise ValueError(msg)
    return dev


def align_var_names(adata: AnnData, var_names: list[str]) -> AnnData:
    """``adata`` with its features in the model's order (a view when reordering or subsetting is needed).

    Raises ``ValueError`` naming the missing features when some of the model's features are absent.
    """
    names = pd.Index(adata.var_names.astype(str))
    if names.size == len(var_names) and (names == pd.Index(var_names)).all():
        return adata
    _values.check_unique_var_names(adata)
    idx = names.get_indexer(pd.Index(var_names))
    if (idx < 0).any():
        missing = [g for g, i in zip(var_names, idx, strict=True) if i < 0]
        msg = (
            f"{len(missing)} of the model's {len(var_names)} features are missing from adata.var_names "
            f"(e.g. {missing[:5]}); the new data must measure every feature the model was trained on"
        )
        raise ValueError(msg)
    if names.size > len(var_names):
        logger.info("using %d of %d features of the new data (the model's features)", len(var_names), names.size)
    else:
        logger.info("reordered the new data's features to the model's order")
    return adata[:, idx]


def restore_batch_moments(rec: np.ndarray, X, codes: np.ndarray, *, chunk_rows: int = 65536) -> np.ndarray:
    """Shift and scale each batch of ``rec`` to the per-feature mean/std that batch has in ``X``.

    One pass over row chunks for the moments (:func:`batch_sums`) and one to write the result, so no copy of a
    whole batch is made (10^7 cells: seconds instead of a minute of float64 copies).
    """
    codes = np.asarray(codes)
    k = int(codes.max()) + 1 if codes.size else 0
    sums = np.zeros((2, 2, k, rec.shape[1]))  # (input, reconstruction) × (sum, square sum)
    for a in range(0, rec.shape[0], chunk_rows):
        c = codes[a : a + chunk_rows]
        sums[0] += batch_sums(X[a : a + chunk_rows], c, k)
        sums[1] += batch_sums(rec[a : a + chunk_rows], c, k)
    counts = np.bincount(codes, minlength=k)
    out = np.empty_like(rec)
    for a in range(0, rec.shape[0], chunk_rows):
        out[a : a + chunk_rows] = moments_restore(rec[a : a + chunk_rows], codes[a : a + chunk_rows], sums, counts)
    return out


def batch_sums(block, codes: np.ndarray, k: int) -> np.ndarray:
    """``(2, k, n_features)`` float64 per-batch sums and square sums of the rows ``block`` (dense or sparse)."""
    block = block.toarray() if sp.issparse(block) else np.asarray(block)
    block = block.astype(np.float64)
    codes = np.asarray(codes)
    onehot = sp.csr_matrix((np.ones(codes.size), (codes, np.arange(codes.size))), shape=(k, codes.size))
    return np.stack([onehot @ block, onehot @ (block * block)])


def moments_restore(rec: np.ndarray, codes: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Rows ``rec`` of batches ``codes`` moved from their batch's reconstruction moments to its input moments.

    ``sums``: ``(2, 2, k, n_features)`` — input and reconstruction, each its :func:`batch_sums` over all cells;
    ``counts``: cells per batch. Constant features (std < 1e-6) keep a std of 1.
    """
    n = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)[:, None]
    mean = sums[:, 0] / n
    std = np.sqrt(np.clip(sums[:, 1] / n - mean**2, 0, None))
    std[std < 1e-6] = 1.0
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return ((rec - mean[1][codes]) / std[1][codes] * std[0][codes] + mean[0][codes]).astype(np.float32)
