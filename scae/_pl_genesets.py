"""Plot of gene-set activities by group (heatmap of group means or dot plot)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scanpy as sc
from anndata import AnnData
from matplotlib.axes import Axes

from ._tl_genesets import grouped_activities


def _top_sets(adata: AnnData, act: AnnData, groupby: str, n_sets: int, key: str, rank_key: str | None) -> list[str]:
    """Top ``n_sets`` per group from a matching ranking, else the sets whose group means vary most."""
    rank_key = rank_key or f"{key}_rank_gene_sets"
    ranking = adata.uns.get(rank_key)
    if ranking is not None and ranking.get("params", {}).get("groupby") == groupby:
        names = pd.DataFrame(ranking["names"])
        chosen = [str(n) for g in names.columns for n in names[g][:n_sets]]
        return list(dict.fromkeys(chosen))
    means = pd.DataFrame(act.X, columns=act.var_names).groupby(act.obs[groupby].to_numpy(), observed=True).mean()
    spread = (means.max() - means.min()) / pd.DataFrame(act.X, columns=act.var_names).std().replace(0, 1)
    n_groups = means.shape[0]
    return list(spread.sort_values(ascending=False).index[: n_sets * n_groups])


def gene_sets(
    adata: AnnData,
    *,
    groupby: str,
    gene_sets: Sequence[str] | None = None,
    n_sets: int = 5,
    kind: Literal["heatmap", "dotplot"] = "heatmap",
    key: str = "scae",
    rank_key: str | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    **kwargs,
):
    """Gene-set activities by group: heatmap of mean z-scored activity per group, or a dot plot.

    Activities are z-scored per set across cells first, so colours read as "above / below the average
    cell" (red = set up). In the dot plot, dot size is the fraction of the group's cells above average.

    Parameters
    ----------
    adata
        AnnData after ``scae.tl.fit(adata, gene_sets=...)``.
    groupby
        Categorical ``adata.obs`` column (e.g. subtypes or ``"scae_cluster"``).
    gene_sets
        Sets to show; default the top ``n_sets`` per group of :func:`scae.tl.rank_gene_sets` when it was run
        with the same ``groupby``, else the sets whose group means differ most.
    n_sets
        Sets per group when ``gene_sets`` is not given.
    kind
        ``"heatmap"`` (:func:`scanpy.pl.matrixplot`) or ``"dotplot"`` (:func:`scanpy.pl.dotplot`).
    key
        The ``key_added`` of the fit.
    rank_key
        ``uns`` key of the ranking; default ``f"{key}_rank_gene_sets"``.
    ax
        Axes to draw into.
    show
        Show the figure; ``None`` follows scanpy's settings.
    **kwargs
        Passed to the scanpy plotting function.

    Returns
    -------
    The scanpy plot's dict of Axes when ``show`` is False.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.tcga_coread()  # doctest: +SKIP
    >>> scae.tl.fit(adata, gene_sets=scae.datasets.hallmark_gmt(), max_epochs=5)  # doctest: +SKIP
    >>> scae.tl.rank_gene_sets(adata, groupby="cms_label")  # doctest: +SKIP
    >>> axes = scae.pl.gene_sets(adata, groupby="cms_label", show=False)  # doctest: +SKIP
    """
    if kind not in ("heatmap", "dotplot"):
        msg = f"`kind` must be 'heatmap' or 'dotplot', got {kind!r}"
        raise ValueError(msg)
    act = grouped_activities(adata, groupby, key=key)
    X = act.X
    act.X = ((X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1.0)).astype(np.float32)
    if gene_sets is None:
        sets = _top_sets(adata, act, groupby, n_sets, key, rank_key)
    else:
        sets = [str(s) for s in gene_sets]
        unknown = [s for s in sets if s not in act.var_names]
        if unknown:
            msg = f"gene sets {unknown} not among the fitted sets (uns[{key!r}]['gene_sets'])"
            raise KeyError(msg)
    common = {"var_names": sets, "groupby": groupby, "ax": ax, "show": show, "cmap": "RdBu_r", "vcenter": 0.0}
    common.update(kwargs)
    if kind == "heatmap":
        common.setdefault("colorbar_title", "mean activity\n(z-score)")
        return sc.pl.matrixplot(act, **common)
    common.setdefault("colorbar_title", "mean activity\n(z-score)")
    common.setdefault("size_title", "fraction of cells\nabove average")
    return sc.pl.dotplot(act, expression_cutoff=0.0, **common)
