"""Plots of scae outputs."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes

from ._pl_genesets import gene_sets

__all__ = ["clusters", "embedding", "gene_sets", "granularity", "loss_history"]


def _show(show: bool | None) -> None:
    """Show the figure when asked, or by default in interactive sessions."""
    if show or (show is None and plt.isinteractive()):
        plt.show()


def _require(adata: AnnData, key_added: str) -> None:
    if f"X_{key_added}" not in adata.obsm:
        msg = f"adata.obsm['X_{key_added}'] not found: run `scae.tl.fit(adata)` first"
        raise KeyError(msg)


def embedding(
    adata: AnnData,
    *,
    color: str | Sequence[str] | None = None,
    key_added: str = "scae",
    ax: Axes | None = None,
    show: bool | None = None,
    **kwargs,
):
    """Scatter plot of the scae embedding, coloured by cluster by default.

    Parameters
    ----------
    adata
        AnnData after :func:`scae.tl.fit`.
    color
        ``obs`` columns or var names to colour by; default ``f"{key_added}_cluster"``.
    key_added
        The ``key_added`` used in :func:`scae.tl.fit`.
    ax
        Axes to draw into (single ``color`` only).
    show
        Show the figure; ``None`` follows scanpy's settings.
    **kwargs
        Passed to :func:`scanpy.pl.embedding`.

    Returns
    -------
    The Axes (or list of Axes for several colours) when ``show`` is False.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=2, progress=False)
    >>> ax = scae.pl.embedding(adata, show=False)
    """
    _require(adata, key_added)
    color = f"{key_added}_cluster" if color is None else color
    return sc.pl.embedding(adata, basis=f"X_{key_added}", color=color, ax=ax, show=show, **kwargs)


def loss_history(adata: AnnData, *, key_added: str = "scae", ax: Axes | None = None, show: bool | None = None) -> Axes:
    """Per-term training loss by epoch (log scale), from ``uns[key_added]["history"]``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=2, progress=False)
    >>> ax = scae.pl.loss_history(adata, show=False)
    """
    if key_added not in adata.uns or "history" not in adata.uns[key_added]:
        msg = f"adata.uns[{key_added!r}]['history'] not found: run `scae.tl.fit(adata)` first"
        raise KeyError(msg)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    for name, values in adata.uns[key_added]["history"].items():
        values = np.asarray(values, dtype=float)
        ax.plot(np.arange(1, values.size + 1), np.abs(values), label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False, fontsize=8)
    _show(show)
    return ax


def granularity(
    adata: AnnData,
    *,
    thresholds: Sequence[float] | None = None,
    key_added: str = "scae",
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes:
    """Clusters against ``merge_threshold`` (:func:`scae.tl.granularity`), the threshold in use marked.

    Plateaus are levels of structure the data support; the dotted line is the threshold the clusters in
    ``obs`` were cut at (unless they were cut to ``n_clusters``).

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=2, progress=False)
    >>> ax = scae.pl.granularity(adata, show=False)
    """
    from ._tl_cluster import granularity as table_of

    table = table_of(adata, thresholds=thresholds, key_added=key_added)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    x = table.index.to_numpy()
    ax.plot(x, table["n_clusters"], marker="o", label="clusters")
    ax.plot(x, table["n_large"], marker="o", linestyle="--", label="clusters with ≥ 1% of the cells")
    info = adata.uns[key_added]
    cut = info.get("cluster_params", info.get("params", {}))
    used, k = float(cut.get("merge_threshold", 0.0) or 0.0), int(cut.get("n_clusters", -1) or -1)
    if used > 0 and k < 1:
        ax.axvline(used, color="grey", linestyle=":", label=f"in use ({used:g})")
    ax.set_xlabel("merge_threshold")
    ax.set_ylabel("clusters")
    ax.set_ylim(bottom=0)
    ax.legend(frameon=False, fontsize=8)
    _show(show)
    return ax


def clusters(
    adata: AnnData,
    *,
    stat: str = "median",
    standard_scale: str | None = "var",
    key_added: str = "scae",
    cmap: str = "viridis",
    ax: Axes | None = None,
    show: bool | None = None,
) -> Axes:
    """Heatmap of marker values per cluster, from ``uns[key_added]["cluster_medians"/"cluster_means"]``.

    Rows are clusters (labelled with their cell counts), columns markers. With ``standard_scale="var"``
    each marker is scaled to [0, 1] across clusters, so low and high populations stand out on every marker.

    Parameters
    ----------
    adata
        AnnData after :func:`scae.tl.fit` (or :func:`scae.tl.cluster_stats`).
    stat
        ``"median"`` or ``"mean"``.
    standard_scale
        ``"var"`` to scale each marker to [0, 1], ``None`` to show the values themselves.
    key_added
        The ``key_added`` used in :func:`scae.tl.fit`.
    cmap
        Matplotlib colour map.
    ax
        Axes to draw into.
    show
        Show the figure; ``None`` shows it in interactive sessions.

    Returns
    -------
    The Axes.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=2, progress=False)
    >>> ax = scae.pl.clusters(adata, show=False)
    """
    if stat not in ("median", "mean"):
        msg = f"`stat` must be 'median' or 'mean', got {stat!r}"
        raise ValueError(msg)
    if standard_scale not in ("var", None):
        msg = f"`standard_scale` must be 'var' or None, got {standard_scale!r}"
        raise ValueError(msg)
    key = f"cluster_{stat}s"
    if key not in adata.uns.get(key_added, {}):
        msg = f"adata.uns[{key_added!r}][{key!r}] not found: run `scae.tl.fit(adata)` or `scae.tl.cluster_stats(adata)`"
        raise KeyError(msg)
    frame = adata.uns[key_added][key]
    values = np.asarray(frame, dtype=float)
    sizes = np.asarray(adata.uns[key_added].get("cluster_sizes", np.full(values.shape[0], -1)))
    if standard_scale == "var":
        lo, hi = values.min(0, keepdims=True), values.max(0, keepdims=True)
        values = (values - lo) / np.where(hi > lo, hi - lo, 1.0)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * values.shape[1] + 2.5, 0.35 * values.shape[0] + 1.5))
    im = ax.imshow(values, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xticks(np.arange(values.shape[1]), labels=list(frame.columns), rotation=90)
    ax.set_yticks(np.arange(values.shape[0]), labels=[f"{c} ({n})" for c, n in zip(frame.index, sizes, strict=True)])
    groupby = adata.uns[key_added].get("cluster_stats_params", {}).get("groupby", f"{key_added}_cluster")
    ax.set_ylabel(f"{groupby} (cells)")
    ax.figure.colorbar(im, ax=ax, label=f"{stat}{' (scaled per marker)' if standard_scale else ''}", shrink=0.8)
    _show(show)
    return ax
