"""Tools on gene-set activities: rank the sets that differ between groups (Wilcoxon via scanpy)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData


def activity_adata(adata: AnnData, *, key: str = "scae", obs_keys: Sequence[str] = ()) -> AnnData:
    """Cells × gene sets AnnData of the activities written by :func:`scae.tl.fit` with ``gene_sets``.

    Parameters
    ----------
    adata
        AnnData after ``scae.tl.fit(adata, gene_sets=...)``.
    key
        The ``key_added`` of that fit.
    obs_keys
        ``adata.obs`` columns to copy over.

    Returns
    -------
    New AnnData: ``X`` = activities (float32), ``var_names`` = gene-set names, ``obs`` = the chosen columns.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.tcga_coread()  # doctest: +SKIP
    >>> scae.tl.fit(adata, gene_sets=scae.datasets.hallmark_gmt(), max_epochs=5)  # doctest: +SKIP
    >>> act = scae.tl.activity_adata(adata, obs_keys=["cms_label"])  # doctest: +SKIP
    """
    obsm_key = f"X_{key}_genesets"
    if obsm_key not in adata.obsm or key not in adata.uns or "gene_sets" not in adata.uns[key]:
        msg = f"adata.obsm[{obsm_key!r}] not found: run `scae.tl.fit(adata, gene_sets=..., key_added={key!r})` first"
        raise KeyError(msg)
    names = [str(n) for n in adata.uns[key]["gene_sets"]]
    X = np.asarray(adata.obsm[obsm_key], dtype=np.float32)
    if X.shape[1] != len(names):
        msg = f"adata.obsm[{obsm_key!r}] has {X.shape[1]} columns but uns[{key!r}]['gene_sets'] names {len(names)} sets"
        raise ValueError(msg)
    missing = [k for k in obs_keys if k not in adata.obs]
    if missing:
        msg = f"columns {missing} not found in adata.obs (available: {list(adata.obs.columns)})"
        raise KeyError(msg)
    obs = adata.obs[list(obs_keys)]
    obs = obs.copy() if isinstance(obs, pd.DataFrame) else obs.to_memory()  # lazy obs (anndata read_lazy)
    return AnnData(X=X.copy(), obs=obs, var=pd.DataFrame(index=pd.Index(names, name="gene_set")))


def grouped_activities(adata: AnnData, groupby: str, *, key: str = "scae") -> AnnData:
    """:func:`activity_adata` with ``obs[groupby]`` as string categories, cells without a group dropped."""
    act = activity_adata(adata, key=key, obs_keys=[groupby])
    act = act[act.obs[groupby].notna().to_numpy()].copy()
    act.obs[groupby] = act.obs[groupby].astype(str).astype("category")
    return act


def rank_gene_sets(
    adata: AnnData,
    *,
    groupby: str,
    groups: str | Sequence[str] = "all",
    reference: str = "rest",
    method: str = "wilcoxon",
    key: str = "scae",
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Rank gene sets whose activities differ between groups (scanpy's ``rank_genes_groups`` on activities).

    Parameters
    ----------
    adata
        AnnData after ``scae.tl.fit(adata, gene_sets=...)``.
    groupby
        Categorical ``adata.obs`` column with the groups (e.g. subtypes or ``"scae_cluster"``).
    groups
        Groups to test (``"all"`` or a list).
    reference
        ``"rest"`` or one group to compare against.
    method
        Test of :func:`scanpy.tl.rank_genes_groups` (``"wilcoxon"``, ``"t-test"``, ...).
    key
        The ``key_added`` of the fit that wrote the activities.
    key_added
        Where the ranking is written; default ``f"{key}_rank_gene_sets"``.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``. Writes ``uns[key_added]`` in the format of
    :func:`scanpy.tl.rank_genes_groups` (so :func:`scanpy.get.rank_genes_groups_df` reads it), except that
    ``logfoldchanges`` holds the **difference of mean activities** (group − reference): activities are not
    log counts. :func:`rank_gene_sets_df` gives it as a table.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.tcga_coread()  # doctest: +SKIP
    >>> scae.tl.fit(adata, gene_sets=scae.datasets.hallmark_gmt(), max_epochs=5)  # doctest: +SKIP
    >>> scae.tl.rank_gene_sets(adata, groupby="cms_label")  # doctest: +SKIP
    >>> scae.tl.rank_gene_sets_df(adata, group="CMS1").head()  # doctest: +SKIP
    """
    act = grouped_activities(adata, groupby, key=key)
    cats = list(act.obs[groupby].cat.categories)
    if len(cats) < 2:
        msg = f"adata.obs[{groupby!r}] needs at least two groups to rank gene sets, found {cats}"
        raise ValueError(msg)
    if reference != "rest" and reference not in cats:
        msg = f"reference {reference!r} is not a group of adata.obs[{groupby!r}] ({cats})"
        raise ValueError(msg)
    import scanpy as sc  # (here: a fit does not wait for scanpy's import)

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # scanpy's log fold change assumes log1p data; it is replaced by the mean difference below
        warnings.simplefilter("ignore", RuntimeWarning)
        sc.tl.rank_genes_groups(act, groupby, groups=groups, reference=reference, method=method, key_added="rank")
    result = act.uns["rank"]
    names = pd.DataFrame(result["names"])
    X = pd.DataFrame(act.X, columns=act.var_names)
    diffs = {}
    for g in names.columns:
        in_group = (act.obs[groupby] == g).to_numpy()
        other = ~in_group if reference == "rest" else (act.obs[groupby] == reference).to_numpy()
        delta = X[in_group].mean() - X[other].mean()
        diffs[g] = delta.loc[names[g]].to_numpy(np.float32)
    result["logfoldchanges"] = pd.DataFrame(diffs).to_records(index=False)
    result["params"] = {**dict(result["params"]), "key": key, "statistic_logfoldchanges": "mean_difference"}
    adata = adata.copy() if copy else adata
    adata.uns[key_added or f"{key}_rank_gene_sets"] = result
    return adata if copy else None


def rank_gene_sets_df(
    adata: AnnData, *, group: str | Sequence[str] | None = None, key: str = "scae", key_added: str | None = None
) -> pd.DataFrame:
    """Table of :func:`rank_gene_sets` results, best first within each group.

    Parameters
    ----------
    adata
        AnnData after :func:`scae.tl.rank_gene_sets`.
    group
        Group(s) to return; all when ``None``.
    key, key_added
        As in :func:`rank_gene_sets`.

    Returns
    -------
    DataFrame with columns ``group`` (when several), ``gene_set``, ``score`` (Wilcoxon z), ``mean_diff``
    (group − reference mean activity), ``pval`` and ``pval_adj``.

    Examples
    --------
    >>> import scae
    >>> scae.tl.rank_gene_sets_df(adata, group="CMS1").head()  # doctest: +SKIP
    """
    uns_key = key_added or f"{key}_rank_gene_sets"
    if uns_key not in adata.uns:
        msg = f"adata.uns[{uns_key!r}] not found: run `scae.tl.rank_gene_sets(adata, groupby=...)` first"
        raise KeyError(msg)
    import scanpy as sc

    df = sc.get.rank_genes_groups_df(adata, group=group, key=uns_key)
    columns = {"names": "gene_set", "scores": "score", "logfoldchanges": "mean_diff", "pvals": "pval"}
    return df.rename(columns={**columns, "pvals_adj": "pval_adj"})
