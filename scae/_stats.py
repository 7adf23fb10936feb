"""Per-cluster summaries of marker values (AnnData-free numpy/pandas helpers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import _backed

#: Bytes of sampled rows held to take the medians of a backed matrix.
MEDIAN_BUDGET_BYTES = 16 * 1024**2


def group_stats(X, labels, var_names) -> dict[str, pd.DataFrame | pd.Series]:
    """Mean, median and size of each group.

    Parameters
    ----------
    X
        Cells × features, dense or sparse.
    labels
        Group of each cell, shape ``(n_cells,)`` (categorical order is kept).
    var_names
        Feature names (columns of the returned frames).

    Returns
    -------
    ``{"means": DataFrame, "medians": DataFrame, "sizes": Series}``, groups × features (string index), and
    ``"median_sample"``: 0 when medians are of all cells; for a backed ``X`` (read in row chunks, never whole)
    the largest number of cells per group the medians were taken from (an evenly drawn sample, exact for
    groups up to that size; means and sizes are always exact).
    """
    cat = pd.Categorical(labels)
    present = np.flatnonzero(np.bincount(cat.codes[cat.codes >= 0], minlength=len(cat.categories)))
    groups = [str(cat.categories[i]) for i in present]
    if _backed.is_backed(X):
        return _chunked_stats(X, cat.codes, present, groups, var_names)
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    means = np.empty((present.size, X.shape[1]))
    medians = np.empty_like(means)
    sizes = np.empty(present.size, dtype=np.int64)
    order = np.argsort(cat.codes, kind="stable")
    sorted_codes = cat.codes[order]
    for j, code in enumerate(present):
        rows = order[np.searchsorted(sorted_codes, code) : np.searchsorted(sorted_codes, code, side="right")]
        sizes[j] = rows.size
        block = X[rows].astype(np.float64)  # one group at a time: no float64 copy of the whole matrix
        means[j] = block.mean(0)
        medians[j] = np.median(block, axis=0, overwrite_input=True)
    cols = pd.Index([str(v) for v in var_names])
    idx = pd.Index(groups)
    return {
        "means": pd.DataFrame(means, index=idx, columns=cols),
        "medians": pd.DataFrame(medians, index=idx, columns=cols),
        "sizes": pd.Series(sizes, index=idx),
        "median_sample": 0,
    }


def _chunked_stats(X, codes: np.ndarray, present: np.ndarray, groups: list[str], var_names) -> dict:
    """:func:`group_stats` of a backed matrix in one pass of row chunks: exact means, sampled medians."""
    n_groups, n_features = len(present), X.shape[1]
    slot = np.full(max(int(codes.max()) + 1, 1), -1)
    slot[present] = np.arange(n_groups)
    row_slot = np.where(codes >= 0, slot[np.maximum(codes, 0)], -1)
    sizes = np.bincount(row_slot[row_slot >= 0], minlength=n_groups).astype(np.int64)
    cap = int(max(100, MEDIAN_BUDGET_BYTES // (4 * n_features * max(n_groups, 1))))
    rng = np.random.default_rng(0)
    picked = np.zeros(codes.size, dtype=bool)
    for g in range(n_groups):
        rows = np.flatnonzero(row_slot == g)
        picked[rows if rows.size <= cap else rng.choice(rows, cap, replace=False)] = True
    sums = np.zeros((n_groups, n_features))
    sample: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
    for start, block in _backed.iter_chunks(X, max(1, _backed.SCAN_BYTES // 4 // (4 * n_features))):
        lab = row_slot[start : start + block.shape[0]]
        keep = lab >= 0
        ones = np.ones(int(keep.sum()), dtype=block.dtype)  # float32 sums per chunk, float64 across chunks
        sums += sp.csr_matrix((ones, (lab[keep], np.flatnonzero(keep))), (n_groups, lab.size)) @ block
        take = keep & picked[start : start + block.shape[0]]
        for g in np.unique(lab[take]):
            sample[g].append(block[take & (lab == g)])
    medians = np.stack([np.median(np.concatenate(parts).astype(np.float64), axis=0) for parts in sample])
    cols, idx = pd.Index([str(v) for v in var_names]), pd.Index(groups)
    return {
        "means": pd.DataFrame(sums / sizes[:, None], index=idx, columns=cols),
        "medians": pd.DataFrame(medians, index=idx, columns=cols),
        "sizes": pd.Series(sizes, index=idx),
        "median_sample": int(cap) if (sizes > cap).any() else 0,
    }
