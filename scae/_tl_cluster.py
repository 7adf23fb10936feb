"""``scae.tl.cluster_stats``: per-cluster marker means and medians, written to ``uns``."""

from __future__ import annotations

import numpy as np
from anndata import AnnData

from ._stats import group_stats
from .data import get_matrix


def cluster_stats(
    adata: AnnData,
    *,
    groupby: str | None = None,
    layer: str | None = None,
    key_added: str = "scae",
    copy: bool = False,
) -> AnnData | None:
    """Marker mean, median and size of every cluster (what a cytometrist reads to name clusters).

    :func:`scae.tl.fit` calls this on its clusters; call it again for another grouping (e.g. manual gates)
    or another layer.

    Parameters
    ----------
    adata
        AnnData with a categorical ``obs`` column to summarize.
    groupby
        ``obs`` column; default ``f"{key_added}_cluster"``.
    layer
        Values to summarize instead of ``adata.X`` (e.g. ``f"{key_added}_imputed"``).
    key_added
        ``uns[key_added]`` receives the results.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a new AnnData (``copy=True``). Writes into ``uns[key_added]``:

    ``cluster_means``, ``cluster_medians``
        DataFrames, clusters × features.
    ``cluster_sizes``
        Cells per cluster (int array, same order as the frames' rows).
    ``cluster_stats_params``
        ``{"groupby": ..., "layer": ...}``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.cluster_stats(adata, groupby="batch")
    >>> adata.uns["scae"]["cluster_means"].shape
    (3, 37)
    """
    groupby = f"{key_added}_cluster" if groupby is None else groupby
    if groupby not in adata.obs:
        hint = " run `scae.tl.fit(adata)` first" if groupby == f"{key_added}_cluster" else ""
        msg = f"adata.obs[{groupby!r}] not found;{hint or ' pass an existing obs column as `groupby`'}"
        raise KeyError(msg)
    X = get_matrix(adata, layer)
    stats = group_stats(X, adata.obs[groupby].to_numpy(), adata.var_names)
    adata = adata.copy() if copy else adata
    out = adata.uns.setdefault(key_added, {})
    out["cluster_means"] = stats["means"]
    out["cluster_medians"] = stats["medians"]
    out["cluster_sizes"] = np.asarray(stats["sizes"].to_numpy(), dtype=np.int64)
    out["cluster_stats_params"] = {"groupby": groupby, "layer": "X" if layer is None else layer}
    return adata if copy else None
