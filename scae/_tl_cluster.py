"""``scae.tl.cluster`` (re-cut clusters from stored codes), ``scae.tl.granularity`` (clusters per merge threshold)
and ``scae.tl.cluster_stats`` (per-cluster markers).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real

import numpy as np
import pandas as pd
from anndata import AnnData

from . import _blocks, _features, _settings
from ._contract import stats_entries
from ._merge import MIN_GROUP_SHARE
from .cluster import DEFAULT_MERGE_THRESHOLD
from .data import column, get_matrix


def cluster(
    adata: AnnData,
    *,
    n_clusters: int | None = None,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    min_cluster_size: int | None = None,
    threshold: float = 0.1,
    key_added: str = "scae",
    copy: bool = False,
) -> AnnData | None:
    """Re-derive clusters from the codes and denoised values that :func:`scae.tl.fit` stored, without retraining.

    Steps (see :mod:`scae.cluster`): binarize the clustering-layer activations (a unit fires above
    ``threshold`` × its maximum), hash each binary code to an integer (O(n)), give codes with fewer than
    ``min_cluster_size`` cells to the nearest larger code cluster (by denoised profile), then merge code
    clusters whose mean input values are close (:func:`scae.cluster.merge_clusters`).

    How to steer granularity:

    - ``merge_threshold`` (default 2.3): groups of code clusters whose mean marker values lie closer than
      this (Euclidean distance over all markers, between the count-weighted means) are merged, closest first;
      the unit is the root mean square of the markers' standard deviations, about 1 for arcsinh CyTOF; over
      more than 50 features (RNA) that of the top 50 principal components (:func:`scae.cluster.merge_unit`),
      e.g. CellBench's 3 cell lines at 6-8.
      Larger → fewer, coarser clusters; the count it gives is data-driven and varies a little between seeds.
      A pair 2.0 or more apart merges only when its cells overlap (means less than 2.8 pooled within-group
      standard deviations apart along the line joining them, 2.8 × ``merge_threshold`` / 2.3 above the
      default; :func:`scae.cluster.separation`), so two distinct populations whose means happen to lie a
      little closer than the threshold stay apart (inputs of at most 50 features, i.e. cytometry panels).
      :func:`granularity` counts the clusters at a range of thresholds without writing anything.
    - ``n_clusters``: merge the same way until exactly this many clusters remain (e.g. the number of manual
      gates, as FlowSOM's metaclustering does with its SOM nodes); groups holding less
      than 1% of the cells do not count as one of them. The count is then identical across seeds. Pairs of
      separated populations (see above) merge last.
    - ``lambda_c`` in :func:`scae.tl.fit` (needs retraining): stronger ID regularization → fewer units fire
      → fewer distinct codes before merging.

    Parameters
    ----------
    adata
        AnnData after :func:`scae.tl.fit` with ``impute=True``.
    n_clusters
        Exact number of clusters; overrides ``merge_threshold``. Merging cannot split a code cluster: when the
        codes form fewer clusters than this, those are kept and a warning says how many were made.
    merge_threshold
        Merge distance (see above); ``None`` or 0 keeps every code cluster.
    min_cluster_size
        Codes with fewer cells join the nearest cluster; default
        :func:`scae.cluster.default_min_cluster_size` (20 cells between 2,000 and 20,000 cells).
    threshold
        Relative firing threshold of a unit.
    key_added
        The ``key_added`` of :func:`scae.tl.fit`.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None`` or a new AnnData (``copy=True``). Overwrites ``obs[f"{key_added}_cluster"]``,
    ``uns[key_added]["n_clusters"]``, the cluster statistics of :func:`cluster_stats` and records the
    options in ``uns[key_added]["cluster_params"]``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=3, progress=False)
    >>> scae.tl.cluster(adata, n_clusters=4)
    >>> adata.obs["scae_cluster"].cat.categories.size
    4
    """
    _settings.check_cluster(adata, locals())
    options = {"n_clusters": n_clusters, "merge_threshold": merge_threshold, "min_cluster_size": min_cluster_size}
    labels = _cut_stored_codes(adata, key_added, threshold=threshold, **options)
    adata = adata.copy() if copy else adata
    _write_labels(adata, labels, key_added, threshold=threshold, **options)
    cluster_stats(adata, layer=_fit_params(adata, key_added).get("layer"), key_added=key_added)
    return adata if copy else None


#: Merge thresholds :func:`granularity` tries by default: around the default 2.3 (cytometry) up to where RNA
#: cell types merge (CellBench's 3 cell lines at 6-8, see README "Granularity of clusters").
GRANULARITY_THRESHOLDS = (1.5, 2.0, 2.3, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0)


def granularity(
    adata: AnnData,
    *,
    thresholds: Sequence[float] | None = None,
    min_share: float = MIN_GROUP_SHARE,
    min_cluster_size: int | None = None,
    threshold: float = 0.1,
    key_added: str = "scae",
) -> pd.DataFrame:
    """Number of clusters at each of several merge thresholds, from the codes one fit stored (writes nothing).

    The codes are binarized and rare codes absorbed once; only the merge is repeated, so a row is exactly
    what ``scae.tl.cluster(adata, merge_threshold=t)`` would give. Use it to choose ``merge_threshold``: a
    range of thresholds over which the count stays put is a level of structure the data support.

    Parameters
    ----------
    adata
        AnnData after :func:`scae.tl.fit` with ``impute=True``.
    thresholds
        Merge thresholds to try (positive); default :data:`GRANULARITY_THRESHOLDS`.
    min_share
        Clusters holding at least this share of the cells are counted in ``n_large``.
    min_cluster_size, threshold, key_added
        As in :func:`cluster`.

    Returns
    -------
    DataFrame indexed by ``merge_threshold`` (ascending) with ``n_clusters``, ``n_large`` (clusters holding at
    least ``min_share`` of the cells) and ``largest_share`` (share of the cells in the largest cluster).

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, max_epochs=3, progress=False)
    >>> table = scae.tl.granularity(adata)
    >>> bool(table["n_clusters"].iloc[0] >= table["n_clusters"].iloc[-1])
    True
    """
    _settings.check_anndata("adata", adata)
    grid = GRANULARITY_THRESHOLDS if thresholds is None else thresholds
    try:
        grid = np.unique(np.asarray(list(grid), dtype=np.float64))
    except (TypeError, ValueError):
        grid = np.array([np.nan])
    if grid.size == 0 or not np.all(np.isfinite(grid) & (grid > 0)):
        msg = f"`thresholds` must be a non-empty sequence of positive numbers, got {thresholds!r}"
        raise ValueError(msg)
    if isinstance(min_share, bool) or not isinstance(min_share, Real) or not 0.0 <= min_share < 1.0:
        msg = f"`min_share` must be in [0, 1), got {min_share!r}"
        raise ValueError(msg)
    _settings.check_cluster(
        adata, {"n_clusters": None, "merge_threshold": float(grid[0]), "min_cluster_size": min_cluster_size,
                "threshold": threshold, "key_added": key_added, "copy": False},
    )  # fmt: skip
    acc = _features.cut_accumulator(
        **_stored_inputs(adata, key_added),
        threshold=threshold,
        min_cluster_size=min_cluster_size,
        merge_threshold=float(grid[0]),
    )
    rows = []
    for t in grid:
        acc.merge_threshold = float(t)
        sizes = np.bincount(acc.labels()) / adata.n_obs
        rows.append((int(sizes.size), int(np.count_nonzero(sizes >= min_share)), float(sizes.max())))
    table = pd.DataFrame(rows, columns=["n_clusters", "n_large", "largest_share"], index=pd.Index(grid))
    table.index.name = "merge_threshold"
    return table


def _fit_params(adata: AnnData, key_added: str) -> dict:
    """The ``params`` that :func:`scae.tl.fit` recorded in ``uns[key_added]`` (empty when it recorded none)."""
    return adata.uns[key_added].get("params", {})


def _stored_inputs(adata: AnnData, key_added: str) -> dict:
    """The codes, reconstruction and input that :func:`scae.tl.fit` stored under ``key_added``, as
    :func:`scae._features.cut` takes them.
    """
    codes_key, imputed_key = f"X_{key_added}_codes", f"{key_added}_imputed"
    if codes_key not in adata.obsm or key_added not in adata.uns:
        msg = f"adata.obsm[{codes_key!r}] not found: run `scae.tl.fit(adata)` first"
        if adata.isbacked and key_added in adata.uns:
            msg = (
                f"adata.obsm[{codes_key!r}] not found: a backed fit writes the codes and imputed values to its "
                "`out_path`, not into the backed AnnData; to re-cut, read that file into memory, set its `.X` (or "
                "the fitted layer) from the input and call `scae.tl.cluster` on it, or refit with `n_clusters=` "
                "or `merge_threshold=`"
            )
        raise KeyError(msg)
    if imputed_key not in adata.layers:
        msg = (
            f"adata.layers[{imputed_key!r}] not found: run `scae.tl.fit(adata, impute=True)` (or `scae.tl.transform` "
            "with `impute=True`) first"
        )
        raise KeyError(msg)
    params = _fit_params(adata, key_added)
    adata = _model_features(adata, adata.layers[imputed_key], key_added)
    block_key = params.get("block_key")
    if block_key is not None and block_key not in adata.var.columns:
        msg = (
            f"adata.var[{block_key!r}] not found: the model was fitted with block_key={block_key!r}; to re-cut, add "
            "that column (each feature's block, as in the training AnnData's var)"
        )
        raise KeyError(msg)
    X = get_matrix(adata, params.get("layer"))
    blocks = _blocks.resolve_blocks(
        adata, likelihood=params.get("likelihood", "mse"), block_key=params.get("block_key"), block_weights=None
    )
    mean, std = _blocks.validate_and_moments(X, blocks, where="input", validate=False)
    corrected_key = f"{key_added}_corrected"
    values, units = recut_values(
        adata.layers[corrected_key] if corrected_key in adata.layers else None,
        adata.layers[imputed_key],
        params.get("imputed_units", "counts"),
    )
    codes = np.asarray(adata.obsm[codes_key])
    values = np.asarray(values, dtype=np.float32)
    return {"codes": codes, "values": values, "X": X, "blocks": blocks, "mean": mean, "std": std, "units": units}


def _model_features(adata: AnnData, imputed, key_added: str) -> AnnData:
    """``adata``, or its view on the features of the model when a transform gave others NaN (extra features)."""
    if adata.uns[key_added].get("mode") != "transform" or adata.n_obs == 0:
        return adata
    known = ~np.isnan(np.asarray(imputed[:1], dtype=np.float32)).ravel()  # a feature the model lacks: NaN column
    return adata if known.all() else adata[:, known]


def _cut_stored_codes(
    adata: AnnData,
    key_added: str,
    *,
    threshold: float,
    min_cluster_size: int | None,
    merge_threshold: float | None,
    n_clusters: int | None,
) -> np.ndarray:
    """Cluster labels cut from the codes and reconstruction that :func:`scae.tl.fit` stored under ``key_added``."""
    return _features.cut(
        **_stored_inputs(adata, key_added),
        threshold=threshold,
        min_cluster_size=min_cluster_size,
        merge_threshold=merge_threshold,
        n_clusters=n_clusters,
    )


def _write_labels(
    adata: AnnData,
    labels: np.ndarray,
    key_added: str,
    *,
    threshold: float,
    min_cluster_size: int | None,
    merge_threshold: float | None,
    n_clusters: int | None,
) -> None:
    """Write the clusters ``labels`` (0 … k - 1), their count and the options that cut them into ``adata``."""
    k = int(labels.max()) + 1
    adata.obs[f"{key_added}_cluster"] = pd.Categorical(labels.astype(str), categories=[str(i) for i in range(k)])
    adata.uns[key_added]["n_clusters"] = k
    adata.uns[key_added]["cluster_params"] = {
        "n_clusters": -1 if n_clusters is None else int(n_clusters),
        "merge_threshold": 0.0 if merge_threshold is None else float(merge_threshold),
        "min_cluster_size": -1 if min_cluster_size is None else int(min_cluster_size),
        "threshold": float(threshold),
    }


def recut_values(corrected, imputed, imputed_units: str, fallback=None):
    """The reconstruction that clusters are cut on, and the units of its count blocks.

    The batch-corrected layer when there is one (every batch in the reference's units, the network's own
    output, in expected counts), else the imputed layer (in ``imputed_units``); ``fallback`` (expected counts)
    when a fit keeps neither.
    """
    if corrected is not None:
        return corrected, "counts"
    if imputed is not None:
        return imputed, imputed_units
    return fallback, "counts"


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
        ``{"groupby": ..., "layer": ..., "median_sample": ...}`` (``median_sample``: 0 when the medians are of
        all cells; for a backed AnnData the most cells per cluster they were taken from, see
        :func:`scae._stats.group_stats`).

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
    stats = stats_entries(X, column(adata.obs, groupby).values, adata.var_names, groupby=groupby, layer=layer)
    adata = adata.copy() if copy else adata
    adata.uns.setdefault(key_added, {}).update(stats)
    return adata if copy else None
