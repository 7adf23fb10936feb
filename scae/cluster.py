"""Binary codes → clusters: binarize, hash, absorb rare codes, merge near-identical clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial import cKDTree
from sklearn.cluster import KMeans


def binarize(codes: np.ndarray, *, threshold: float = 0.1) -> np.ndarray:
    """A unit fires (1) when its activation exceeds ``threshold`` times that unit's maximum over all cells.

    Parameters
    ----------
    codes
        Clustering-layer activations, shape ``(n_cells, n_units)``, non-negative.
    threshold
        Relative firing threshold in [0, 1).
    """
    unit_max = codes.max(0, keepdims=True)
    return codes > threshold * np.where(unit_max > 0, unit_max, np.inf)


def hash_codes(binary: np.ndarray) -> np.ndarray:
    """Integer id per distinct binary code in O(n).

    Rows are packed into 64-bit words and the word tuples hashed by pandas (no sorting).
    """
    packed = np.packbits(binary.astype(bool), axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    words = np.ascontiguousarray(packed).view(np.uint64)
    if words.shape[1] == 1:
        ids, _ = pd.factorize(words[:, 0])
    else:
        ids, _ = pd.MultiIndex.from_arrays(list(words.T)).factorize()
    return np.asarray(ids, dtype=np.int64)


def _centroids(labels: np.ndarray, features: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    sums = np.zeros((n, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / np.maximum(counts, 1)[:, None], counts


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


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1, largest cluster first."""
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv].astype(np.int64)


def merge_clusters(
    labels: np.ndarray,
    features: np.ndarray,
    *,
    merge_threshold: float | None = 2.0,
    n_clusters: int | None = None,
) -> np.ndarray:
    """Merge clusters whose centres are close, by hierarchical clustering of the cluster centres.

    The distance between two centres is the largest absolute difference over features (Chebyshev), in
    the units of ``features`` (scae passes standardized denoised expression, so 1 = one standard deviation
    of that feature). Centres are joined by weighted average linkage (WPGMA) and the tree is cut at
    ``merge_threshold``: clusters whose centres differ by less than about ``merge_threshold`` standard
    deviations in every feature end up together. The distance does not grow with the number of features, so
    the same threshold serves 10-marker flow panels and 40-marker CyTOF panels.

    With ``n_clusters`` the code clusters are instead grouped into exactly that many by k-means of their
    centres weighted by their cell counts (the within-cluster sum of squares of the cells, with every code
    kept whole; 10 restarts, fixed seed). Unlike cutting the tree, this cannot spend clusters on a few
    outlying codes of a handful of cells.
    """
    if n_clusters is not None and n_clusters < 1:
        msg = f"`n_clusters` must be >= 1, got {n_clusters}"
        raise ValueError(msg)
    n = labels.max() + 1
    if n <= 1:
        return labels
    centroids, counts = _centroids(labels, features, n)
    if n_clusters is not None:
        if n_clusters >= n:
            return relabel_by_size(labels)
        # size-weighted k-means of the code-cluster centres = k-means of the cells with each code kept whole
        km = KMeans(n_clusters=n_clusters, n_init=10, random_state=0).fit(centroids, sample_weight=counts)
        return relabel_by_size(km.labels_[labels])
    tree = linkage(centroids, method="weighted", metric="chebyshev")
    if merge_threshold is not None and merge_threshold > 0:
        merged = fcluster(tree, t=merge_threshold, criterion="distance")
    else:
        return labels
    return relabel_by_size(merged[labels] - 1)


def codes_to_clusters(
    codes: np.ndarray,
    features: np.ndarray,
    *,
    threshold: float = 0.1,
    min_cluster_size: int | None = None,
    merge_threshold: float | None = 2.0,
    n_clusters: int | None = None,
) -> np.ndarray:
    """Full pipeline from activations to cluster labels ``0..k-1`` (largest first).

    Parameters
    ----------
    codes
        Clustering-layer activations ``(n_cells, n_units)``.
    features
        Per-cell coordinates used to absorb rare codes and merge clusters (scae uses the standardized
        reconstruction, i.e. the denoised expression profile).
    threshold
        Relative firing threshold of :func:`binarize`.
    min_cluster_size
        Codes with fewer cells are absorbed into the nearest larger cluster; default ``max(5, n_cells // 1000)``.
    merge_threshold, n_clusters
        See :func:`merge_clusters`.
    """
    n_cells = codes.shape[0]
    if min_cluster_size is None:
        min_cluster_size = max(5, n_cells // 1000)
    labels = hash_codes(binarize(codes, threshold=threshold))
    labels = absorb_small(labels, features, min_cells=min_cluster_size)
    return merge_clusters(labels, features, merge_threshold=merge_threshold, n_clusters=n_clusters)
