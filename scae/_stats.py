"""Per-cluster summaries of marker values (AnnData-free numpy/pandas helpers)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp


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
    ``{"means": DataFrame, "medians": DataFrame, "sizes": Series}``, groups × features (string index).
    """
    cat = pd.Categorical(labels)
    present = np.flatnonzero(np.bincount(cat.codes[cat.codes >= 0], minlength=len(cat.categories)))
    groups = [str(cat.categories[i]) for i in present]
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    X = X.astype(np.float64, copy=False)
    means = np.empty((present.size, X.shape[1]))
    medians = np.empty_like(means)
    sizes = np.empty(present.size, dtype=np.int64)
    order = np.argsort(cat.codes, kind="stable")
    sorted_codes = cat.codes[order]
    for j, code in enumerate(present):
        rows = order[np.searchsorted(sorted_codes, code) : np.searchsorted(sorted_codes, code, side="right")]
        sizes[j] = rows.size
        means[j] = X[rows].mean(0)
        medians[j] = np.median(X[rows], axis=0)
    cols = pd.Index([str(v) for v in var_names])
    idx = pd.Index(groups)
    return {
        "means": pd.DataFrame(means, index=idx, columns=cols),
        "medians": pd.DataFrame(medians, index=idx, columns=cols),
        "sizes": pd.Series(sizes, index=idx),
    }
