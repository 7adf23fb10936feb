"""Primitives of the clustering: binarize and pack codes, hash them, per-label sums, the merge of code clusters."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree


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


def pack_bits(binary: np.ndarray) -> np.ndarray:
    """Pack a boolean ``(n, n_bits)`` matrix into ``(n, ceil(n_bits / 64))`` uint64 words."""
    packed = np.packbits(np.asarray(binary, dtype=bool), axis=1)
    pad = (-packed.shape[1]) % 8
    if pad:
        packed = np.pad(packed, ((0, 0), (0, pad)))
    return np.ascontiguousarray(packed).view(np.uint64)


def code_words(
    codes: np.ndarray, *, threshold: float = 0.1, unit_max: np.ndarray | None = None, chunk_rows: int = 65536
) -> np.ndarray:
    """Binary codes of :func:`binarize` packed into uint64 words, ``(n_cells, ceil(n_units / 64))``.

    Binarized and packed in row blocks, so no ``n_cells × n_units`` boolean matrix is ever held (8 bytes
    per 64 units and cell instead of 64). ``unit_max`` defaults to the per-unit maximum of ``codes``.
    """
    if unit_max is None:
        unit_max = codes.max(0)
    cut = threshold * np.where(unit_max > 0, unit_max, np.inf)
    words = np.empty((codes.shape[0], -(-codes.shape[1] // 64)), dtype=np.uint64)
    for start in range(0, codes.shape[0], chunk_rows):
        words[start : start + chunk_rows] = pack_bits(codes[start : start + chunk_rows] > cut)
    return words


def word_ids(words: np.ndarray) -> np.ndarray:
    """Integer id ``0..k-1`` per distinct row of packed codes, in order of first appearance, O(n) (hashing)."""
    if words.shape[1] == 1:
        ids, _ = pd.factorize(words[:, 0])
    else:
        ids, _ = pd.MultiIndex.from_arrays(list(words.T)).factorize()
    return np.asarray(ids, dtype=np.int64)


def hash_codes(binary: np.ndarray) -> np.ndarray:
    """Integer id per distinct binary code in O(n).

    Rows are packed into 64-bit words and the word tuples hashed by pandas (no sorting).
    """
    return word_ids(pack_bits(binary))


#: Default merge distance (Euclidean, in units of :func:`common_scale`): groups of code clusters whose mean
#: input values (count-weighted) lie closer than this are merged. Chosen by re-cutting default fits (8 passes,
#: 2026-11-27) at several thresholds: on flowsom_bal_flow (80 seeds, 10-89) 2.3 gives automatic F1 0.938 on
#: average with 6 fits of 80 below 0.85 (NK and NK T cells in one cluster: their means lie 2.3-2.6 apart in
#: some fits), 2.4 gives 0.923 with 14 of 80; on levine3k (40 seeds) 2.3 gives 0.949, 2.4 0.955 (more
#: sub-populations of the 3 reference groups kept apart); 2.1-2.2 split levine3k further (0.927-0.948 over
#: 20 seeds). Earlier, 2.8 merged more flow populations, and the UPGMA tree it replaced split the CD4 T cells
#: (halves 1.65 apart).
DEFAULT_MERGE_THRESHOLD = 2.3

#: With ``n_clusters``, a group of code clusters holding less than this share of the cells is not counted as
#: one of the ``n_clusters``: its cells join the nearest counted group (outlying debris cannot take a slot).
MIN_GROUP_SHARE = 0.01


def label_sums(labels: np.ndarray, X, n: int, *, chunk_rows: int = 65536) -> np.ndarray:
    """Per-label sums of the rows of ``X`` (dense, sparse or backed): ``(n, n_features)`` float64, by row blocks."""
    out = np.zeros((n, X.shape[1]))
    for start in range(0, X.shape[0], chunk_rows):
        lab = labels[start : start + chunk_rows]
        block = X[start : start + chunk_rows]
        onehot = sp.csr_matrix((np.ones(lab.size), (lab, np.arange(lab.size))), shape=(n, lab.size))
        summed = onehot @ (block.astype(np.float64) if sp.issparse(block) else np.asarray(block, dtype=np.float64))
        out += summed.toarray() if sp.issparse(summed) else summed
    return out


def _centroids(labels: np.ndarray, features, n: int) -> tuple[np.ndarray, np.ndarray]:
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    return label_sums(labels, features, n) / np.maximum(counts, 1)[:, None], counts


def common_scale(std) -> float:
    """Root mean square of per-feature standard deviations: the one unit that merge distances are measured in."""
    return float(np.sqrt(np.mean(np.square(np.asarray(std, dtype=np.float64)))))


def group_centroids(
    centroids: np.ndarray,
    counts: np.ndarray,
    *,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
    min_share: float = MIN_GROUP_SHARE,
) -> np.ndarray:
    """Group of every code-cluster centre ``0..g-1`` (see :func:`scae.cluster.merge_clusters`).

    ``counts`` are the cells per centre: groups are joined closest pair first, the distance of two groups
    being that of their count-weighted means (the mean input values of all their cells).
    """
    if n_clusters is not None and n_clusters < 1:
        msg = f"`n_clusters` must be >= 1, got {n_clusters}"
        raise ValueError(msg)
    n = centroids.shape[0]
    if n <= 1 or (n_clusters is not None and n_clusters >= n):
        return np.arange(n)
    if n_clusters is None and (merge_threshold is None or merge_threshold <= 0):
        return np.arange(n)
    merger = _Merger(centroids, counts)
    if n_clusters is None:
        while merger.n_alive > 1:
            i, j, d2 = merger.closest()
            if d2 >= merge_threshold**2:
                break
            merger.merge(i, j)
        return merger.groups()
    weights = np.asarray(counts, dtype=np.float64)
    bar = min_share * weights.sum()
    if np.count_nonzero(weights >= bar) < n_clusters:  # too few large groups to start with: plain count
        while merger.n_alive > n_clusters:
            merger.merge(*merger.closest()[:2])
        return merger.groups()
    # merge until exactly n_clusters groups hold >= min_share of the cells (each merge changes that by <= 1);
    # the groups below the bar then join the nearest counted group (debris cannot take one of the clusters)
    while np.count_nonzero(merger.alive & (merger.weight >= bar)) > n_clusters:
        merger.merge(*merger.closest()[:2])
    counted = merger.alive & (merger.weight >= bar)
    small = np.flatnonzero(merger.alive & ~counted)
    if small.size:
        big = np.flatnonzero(counted)
        _, nearest = cKDTree(merger.mean[big]).query(merger.mean[small])
        for g, b in zip(small, big[nearest], strict=True):
            merger.merge(b, g)
    return merger.groups()


class _Merger:
    """Greedy agglomeration of weighted points: the two groups whose weighted means are closest merge first.

    Squared distances between group means are kept in a matrix with each row's nearest group cached, so a
    merge costs O(g) plus a rescan of the rows whose nearest group took part in it.
    """

    def __init__(self, centroids: np.ndarray, counts: np.ndarray) -> None:
        self.mean = np.asarray(centroids, dtype=np.float64).copy()
        self.weight = np.maximum(np.asarray(counts, dtype=np.float64), 1e-12)
        n = self.mean.shape[0]
        self.alive = np.ones(n, dtype=bool)
        self.owner = np.arange(n)
        sq = np.einsum("ij,ij->i", self.mean, self.mean)
        self.d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * self.mean @ self.mean.T, 0.0)
        np.fill_diagonal(self.d2, np.inf)
        self.nn = np.argmin(self.d2, axis=1)
        self.nn_d2 = self.d2[np.arange(n), self.nn]

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())

    def closest(self) -> tuple[int, int, float]:
        """The closest pair ``(i, j)`` of live groups and their squared distance."""
        i = int(np.argmin(self.nn_d2))
        return i, int(self.nn[i]), float(self.nn_d2[i])

    def merge(self, i: int, j: int) -> None:
        """Group ``j`` joins group ``i`` (which keeps its index)."""
        w = self.weight[i] + self.weight[j]
        self.mean[i] = (self.mean[i] * self.weight[i] + self.mean[j] * self.weight[j]) / w
        self.weight[i], self.weight[j] = w, 0.0
        self.alive[j] = False
        self.owner[self.owner == j] = i
        d = np.einsum("ij,ij->i", self.mean - self.mean[i], self.mean - self.mean[i])
        d[~self.alive] = np.inf
        d[i] = np.inf
        self.d2[i], self.d2[:, i] = d, d
        self.d2[j], self.d2[:, j] = np.inf, np.inf
        self.nn_d2[j] = np.inf
        stale = np.flatnonzero(self.alive & ((self.nn == i) | (self.nn == j)))
        stale = np.union1d(stale, [i])
        self.nn[stale] = np.argmin(self.d2[stale], axis=1)
        self.nn_d2[stale] = self.d2[stale, self.nn[stale]]
        closer = self.alive & (d < self.nn_d2)  # rows whose nearest group is now the merged one
        self.nn[closer], self.nn_d2[closer] = i, d[closer]

    def groups(self) -> np.ndarray:
        """Group ``0..k-1`` of every original point."""
        return np.unique(self.owner, return_inverse=True)[1].astype(np.int64)


def default_min_cluster_size(n_cells: int) -> int:
    """Codes with fewer cells than this are absorbed: 1% of the cells (at least 5) up to 2,000 cells, 20 cells up
    to 20,000 cells, 0.1% above.

    Codes of a handful of cells are noise of the binarization; left alone, a few of them far from everything
    else form an outlying group that takes one of ``n_clusters`` (levine3k, 3,000 cells: a 32-cell group
    made k=3 F1 0.58 instead of 0.99).
    """
    return int(max(5, min(20, n_cells // 100), n_cells // 1000))


def relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 0..k-1, largest cluster first."""
    uniq, inv, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inv].astype(np.int64)
