"""Binary codes → clusters: binarize, hash, absorb rare codes, merge near-identical clusters.

The public functions of the clustering. The primitives live in :mod:`scae._codes`; the algorithm that every
mode runs (in memory, backed, torchrun) is the chunked :class:`scae._accumulator.ClusterAccumulator`, which
:func:`codes_to_clusters` runs over arrays held in memory.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from ._accumulator import cluster_arrays
from ._codes import (
    DEFAULT_MERGE_THRESHOLD,
    MIN_GROUP_SHARE,
    _centroids,
    binarize,
    code_words,
    common_scale,
    default_min_cluster_size,
    group_centroids,
    hash_codes,
    label_sums,
    pack_bits,
    relabel_by_size,
    word_ids,
)

__all__ = [
    "DEFAULT_MERGE_THRESHOLD",
    "MIN_GROUP_SHARE",
    "absorb_small",
    "binarize",
    "code_words",
    "codes_to_clusters",
    "common_scale",
    "default_min_cluster_size",
    "group_centroids",
    "hash_codes",
    "label_sums",
    "merge_clusters",
    "pack_bits",
    "relabel_by_size",
    "word_ids",
]


def absorb_small(labels: np.ndarray, features: np.ndarray, *, min_cells: int) -> np.ndarray:
    """Give cells of codes with fewer than ``min_cells`` cells the nearest large cluster (by centroid)."""
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
) -> np.ndarray:
    """Merge code clusters whose centres are close, by hierarchical clustering of the cluster centres.

    The centre of a code cluster is the mean of ``features`` over its cells, divided by ``scale``. scae
    passes the input values (arcsinh markers, log-normalized expression) and the root mean square of the
    per-feature standard deviations (:func:`common_scale`): one unit for all features, so a marker that
    barely varies cannot split a population, and the thresholds do not depend on the units of the data.

    The centres are joined by average linkage (UPGMA) of their Euclidean distances, each code cluster one
    point (as FlowSOM's metaclustering treats its SOM nodes). Without ``n_clusters`` the tree is cut at
    height ``merge_threshold``: groups whose centres lie closer than that on average are merged, and the
    count this gives is data-driven. With ``n_clusters`` the same tree is cut into exactly that many
    groups, where a group holding less than ``min_share`` of the cells does not count: its cells join the
    nearest counted group, so outlying codes of a few cells (debris, doublets) cannot take one of the
    ``n_clusters``.

    Average linkage was chosen over the earlier weighted-average/Chebyshev (automatic) and Ward (fixed
    count) trees because its cuts moved least when the training's floating-point path changed (seeds,
    BLAS threads, float32 moments): a large population split into many codes is not cut in two, as Ward
    cut it, and one code cluster of in-between cells does not chain two populations together.

    Parameters
    ----------
    labels
        Code cluster of every cell, ``0..n-1``.
    features
        ``(n_cells, n_features)`` values, dense, sparse or backed (read in row blocks).
    merge_threshold
        Cut height of the UPGMA tree (Euclidean distance in units of ``scale``); ``None`` or 0: no merging.
    n_clusters
        Exact number of clusters (overrides ``merge_threshold``).
    scale
        Unit of the distances.
    min_share
        See above.
    """
    if n_clusters is not None and n_clusters < 1:
        msg = f"`n_clusters` must be >= 1, got {n_clusters}"
        raise ValueError(msg)
    n = labels.max() + 1
    if n <= 1:
        return labels
    centroids, counts = _centroids(labels, features, n)
    groups = group_centroids(
        centroids / scale, counts, merge_threshold=merge_threshold, n_clusters=n_clusters, min_share=min_share
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
