"""Binary codes → clusters: binarize, hash, absorb rare codes, merge near-identical clusters.

The public functions of the clustering. The primitives live in :mod:`scae._codes` and :mod:`scae._merge`; the
algorithm that every mode runs (in memory, backed, torchrun) is the chunked
:class:`scae._accumulator.ClusterAccumulator`, which :func:`codes_to_clusters` runs over arrays held in memory.

In :func:`merge_clusters` count-weighted group means replaced the average-linkage (UPGMA) tree of the code centres, each
code one point, in which the many small codes at the fringe of a large population pull the average distance up: after
the shorter default fits the UPGMA tree cut the CD4 T cells of flowsom_bal_flow in two in 4 of 9 runs (seeds, BLAS
threads, float32 moments; ARI 0.62-0.65) although the two halves' means lay 1.65 apart; the group means kept ARI >= 0.95
in all 9 (see tests/test_cluster_stability.py).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ._accumulator import cluster_arrays
from ._codes import (
    _centroids,
    binarize,
    code_words,
    default_min_cluster_size,
    hash_codes,
    label_moments,
    label_sums,
    pack_bits,
    relabel_by_size,
    word_ids,
)
from ._merge import (
    DEFAULT_MERGE_THRESHOLD,
    MAX_SEPARATION,
    MERGE_COMPONENTS,
    MIN_GROUP_SHARE,
    SEPARATION_FROM,
    SEPARATION_MAX_FEATURES,
    common_scale,
    group_centroids,
    merge_unit,
    separation,
    warn_if_fewer,
)

__all__ = [
    "DEFAULT_MERGE_THRESHOLD",
    "MAX_SEPARATION",
    "MERGE_COMPONENTS",
    "MIN_GROUP_SHARE",
    "SEPARATION_FROM",
    "SEPARATION_MAX_FEATURES",
    "absorb_small",
    "binarize",
    "code_words",
    "codes_to_clusters",
    "common_scale",
    "default_min_cluster_size",
    "group_centroids",
    "hash_codes",
    "label_moments",
    "label_sums",
    "merge_clusters",
    "merge_unit",
    "pack_bits",
    "relabel_by_size",
    "separation",
    "word_ids",
]


def absorb_small(labels: np.ndarray, features: np.ndarray, *, min_cells: int) -> np.ndarray:
    """Give cells of codes with fewer than ``min_cells`` cells the nearest large cluster (by centroid).

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import absorb_small
    >>> labels = np.array([0, 0, 0, 1, 1, 1, 2])  # code 2: one cell, at 4.0
    >>> features = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [4.0]])
    >>> absorb_small(labels, features, min_cells=2).tolist()  # it joins the code at 5 (now the largest: 0)
    [1, 1, 1, 0, 0, 0, 0]
    """
    n = labels.max() + 1
    centroids, counts = _centroids(labels, features, n)
    big = np.flatnonzero(counts >= min_cells)
    if big.size == 0:
        big = np.array([int(np.argmax(counts))])
    small_cells = np.flatnonzero(counts[labels] < min_cells)
    if small_cells.size:
        _, nearest = cKDTree(centroids[big]).query(features[small_cells])
        labels = labels.copy()
        labels[small_cells] = big[nearest]
    return relabel_by_size(labels)


def merge_clusters(
    labels: np.ndarray,
    features,
    *,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
    scale: float = 1.0,
    min_share: float = MIN_GROUP_SHARE,
    max_separation: float | None = MAX_SEPARATION,
) -> np.ndarray:
    """Merge code clusters whose centres are close, closest pair of groups first.

    The centre of a code cluster is the mean of ``features`` over its cells, divided by ``scale``. scae passes the input
    values (arcsinh markers, log-normalized expression) and the root mean square of the per-feature standard deviations
    (:func:`common_scale`): one unit for all features, so a marker that barely varies cannot split a population, and the
    thresholds do not depend on the units of the data. Over more than :data:`MERGE_COMPONENTS` (50) features (RNA, bulk
    omics) distances are measured in :func:`merge_unit` instead, the root mean square standard deviation of the top 50
    principal components (``scale`` then does not matter): in the unit of one feature a distance grows with the number
    of features that differ, and ``merge_threshold`` stopped acting on RNA.

    Groups are joined greedily: the two groups whose count-weighted means (the mean input values of all their cells) are
    closest merge, and the merged group's mean is recomputed. Without ``n_clusters`` merging stops when no two groups
    are closer than ``merge_threshold``, so the count is data-driven; a pair at least :data:`SEPARATION_FROM` (2.0)
    apart is then joined only when its cells overlap, i.e. when the distance of the two means is less than
    ``max_separation`` pooled within-group standard deviations along the line joining them (:func:`separation`; above
    :data:`DEFAULT_MERGE_THRESHOLD`, ``max_separation * merge_threshold / DEFAULT_MERGE_THRESHOLD``, so larger
    thresholds still coarsen the clusters): two distinct populations whose means lie a little closer than the threshold
    (NK and NK T cells in flowsom_bal_flow) stay apart, while the halves of one population, which overlap, still merge.
    With ``n_clusters`` such pairs are put off instead: they merge only when no other pair may, closest first. The test
    applies to at most :data:`SEPARATION_MAX_FEATURES` (50) features, i.e. cytometry panels: over hundreds of genes
    every pair looks separated and the test would stop ``merge_threshold``. With ``n_clusters`` it goes on until exactly
    that many groups hold at least ``min_share`` of the cells; the smaller groups then join the nearest of them, so
    outlying codes of a few cells (debris, doublets) cannot take one of the ``n_clusters``.

    Parameters
    ----------
    labels
        Code cluster of every cell, ``0..n-1``.
    features
        ``(n_cells, n_features)`` values, dense, sparse or backed (read in row blocks).
    merge_threshold
        Merge distance of group means (Euclidean, in units of ``scale``, or of :func:`merge_unit` over more
        than 50 features); ``None`` or 0: no merging.
    n_clusters
        Exact number of clusters (overrides ``merge_threshold``); with fewer labels than this, the labels are
        kept and a warning is logged.
    scale
        Unit of the distances.
    min_share
        See above.
    max_separation
        See above; ``None``: merge every pair closer than ``merge_threshold``.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import merge_clusters
    >>> labels, features = np.array([0, 0, 1, 1, 2, 2]), np.array([[0.0], [0.2], [1.0], [1.2], [9.0], [9.2]])
    >>> merge_clusters(labels, features).tolist()  # codes 0 and 1 lie 1.0 apart and merge, code 2 stays
    [0, 0, 0, 0, 1, 1]
    """
    if n_clusters is not None and n_clusters < 1:
        msg = f"`n_clusters` must be >= 1, got {n_clusters}"
        raise ValueError(msg)
    n = labels.max() + 1
    warn_if_fewer(n_clusters, int(n))
    if n <= 1:
        return labels
    centroids, counts, moments = _centroids(labels, features, n, square=True)
    groups = group_centroids(
        centroids / scale,
        counts,
        merge_threshold=merge_threshold,
        n_clusters=n_clusters,
        min_share=min_share,
        second_moments=moments / scale**2,
        max_separation=max_separation,
    )
    return relabel_by_size(groups[labels])


def codes_to_clusters(
    codes: np.ndarray,
    features: np.ndarray,
    *,
    merge_features=None,
    merge_scale: float = 1.0,
    threshold: float = 0.1,
    min_cluster_size: int | None = None,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
) -> np.ndarray:
    """Full pipeline from activations to cluster labels ``0..k-1`` (largest first).

    Parameters
    ----------
    codes
        Clustering-layer activations ``(n_cells, n_units)``.
    features
        Per-cell coordinates used to absorb rare codes (scae uses the standardized reconstruction, i.e.
        the denoised expression profile, which new cells mapped onto the model also have).
    merge_features, merge_scale
        Per-cell values whose cluster means are compared when merging, and their unit (see
        :func:`merge_clusters`); default ``features`` in their own units. scae passes the input data and
        :func:`common_scale` of its standard deviations.
    threshold
        Relative firing threshold of :func:`binarize`.
    min_cluster_size
        Codes with fewer cells are absorbed into the nearest larger cluster; default
        :func:`default_min_cluster_size`.
    merge_threshold, n_clusters
        See :func:`merge_clusters`.

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import codes_to_clusters
    >>> sizes = [6, 5, 5, 1]  # cells per code: units 0, 1, 2 fire alone, one cell fires units 0 and 1
    >>> codes = np.repeat([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], sizes, axis=0)
    >>> features = np.repeat([[0.0, 0.0], [1.0, 0.0], [8.0, 8.0], [0.2, 0.0]], sizes, axis=0)
    >>> codes_to_clusters(codes, features).tolist()  # the lone cell is absorbed; the codes 1.0 apart merge
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0]
    >>> codes_to_clusters(codes, features, merge_threshold=None).tolist()
    [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 0]
    """
    acc = cluster_arrays(
        codes,
        features,
        merge_features,
        threshold=threshold,
        min_cluster_size=min_cluster_size,
        merge_threshold=merge_threshold,
        n_clusters=n_clusters,
        merge_scale=merge_scale,
    )
    return acc.final
