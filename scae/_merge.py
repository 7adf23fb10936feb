"""The merge of code clusters: greedy agglomeration of count-weighted group means, its unit and rule.

:func:`group_centroids` is what every mode (in memory, backed, torchrun, re-cut) runs on the per-cluster sums
and sums of squares of the merge features (:mod:`scae._accumulator`); :func:`scae.cluster.merge_clusters` is its
public form over cells.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh
from scipy.spatial import cKDTree

#: Default merge distance (Euclidean, in units of :func:`common_scale`; over more than :data:`MERGE_COMPONENTS`
#: features, of :func:`merge_unit`): groups of code clusters whose mean input values (count-weighted) lie closer
#: than this are merged. Chosen by re-cutting default fits (8 passes,
#: 2026-11-27) at several thresholds: on flowsom_bal_flow (80 seeds, 10-89) 2.3 gives automatic F1 0.938 on
#: average with 6 fits of 80 below 0.85 (NK and NK T cells in one cluster: their means lie 2.3-2.6 apart in
#: some fits), 2.4 gives 0.923 with 14 of 80; on levine3k (40 seeds) 2.3 gives 0.949, 2.4 0.955 (more
#: sub-populations of the 3 reference groups kept apart); 2.1-2.2 split levine3k further (0.927-0.948 over
#: 20 seeds). Earlier, 2.8 merged more flow populations, and the UPGMA tree it replaced split the CD4 T cells
#: (halves 1.65 apart).
DEFAULT_MERGE_THRESHOLD = 2.3

#: Pairs of groups at least this far apart (same units) are merged only when their cells overlap: when their
#: *separation* is below :data:`MAX_SEPARATION` (see :func:`separation`); closer pairs always merge.
SEPARATION_FROM = 2.0

#: Largest separation (distance of the two means over the pooled within-group standard deviation along the
#: line joining them) of a pair that may merge at distances from :data:`SEPARATION_FROM` up to the merge
#: threshold. Chosen by re-cutting saved default fits (2026-11-28): NK and NK T cells of flowsom_bal_flow lie
#: 2.0-2.6 apart and 2.8-4 pooled deviations; the halves of one population lie at most ~2.0 apart or overlap
#: (the B cells of one fit: 1.82 apart, separation 3.6). On 68 flowsom_bal_flow fits (60 CPU, 8 CUDA) the
#: automatic F1 went from 0.931 on average (8 below 0.85, 4 below 0.78; the CUDA fit of seed 1 0.76) to 0.948
#: (none below 0.89; seed 1 0.95), on 30 levine3k fits from 0.948 to 0.946; 2.5 gave the same, 3.2 let
#: 2 flow fits fall below 0.78 again, and starting the rule at 1.8 instead of 2.0 split the B cells (0.904).
#: With ``n_clusters`` the same pairs merge last: flow k=7 F1 0.950 -> 0.952 (fits below 0.93: 9 -> 7 of 68,
#: lowest 0.860 -> 0.901; CUDA seed 1 0.919 -> 0.954), levine3k k=3 unchanged (0.964).
#: Above the default threshold it grows in proportion (``MAX_SEPARATION * merge_threshold / 2.3``): held fixed, it
#: kept every separated pair apart whatever the threshold, so ``merge_threshold`` above 2.5 hardly acted on
#: cytometry (from 2.5 to 12, 2026-11-29: flowsom_bal_flow 8-9 clusters, levine3k 5-7, CytoNorm 12-15); scaled, levine3k
#: reaches its 3 reference groups at 3-4 (seeds 0-2: F1 0.97-0.99, against 5-7 clusters and 0.94-0.96 held fixed)
#: and CytoNorm goes from 13-16 clusters at 2.3 to 8-11 at 4 and 5-8 at 6.
MAX_SEPARATION = 2.8

#: The separation test applies to merge features of at most this many dimensions (cytometry panels; the
#: same bound as :data:`scae._pair_space.PAIR_COMPONENTS`). Over hundreds of genes every pair of code groups
#: scores far above :data:`MAX_SEPARATION` (the variances along a mean difference spread over many genes), so
#: the test kept every pair 2.0 or more apart and ``merge_threshold`` stopped acting: log-normalized CellBench
#: (2,000 genes, seed 0) at threshold 30 kept 14 clusters (2 without the test), pbmc68k_reduced (765 genes)
#: at 15 kept 12 (2 without). At the default threshold RNA clusters were the same with and without it.
SEPARATION_MAX_FEATURES = 50

#: Merge features of more than this many dimensions (RNA, bulk omics) are measured in the unit of their top this
#: many principal components (:func:`merge_unit`), the number of components scanpy's neighbours use. In the unit
#: of one gene's spread a distance grows with the number of genes that differ: code groups of CellBench (2,000
#: genes) lay 10-40 units apart and of pbmc68k_reduced (765) 5-20, so the default threshold merged nothing there
#: and ``merge_threshold`` from 2.3 to 8 gave the same clusters. At or below this many features the unit is
#: :func:`common_scale` unchanged (cytometry panels). A larger default for these inputs was measured and not taken
#: (default fits re-cut, seeds 0-2, 2026-11-29, mean F1): 5 raised CellBench (3 cell lines) from 0.82 to 0.89 and
#: TCGA CRC (2 CMS classes) from 0.52 to 0.64 but lowered pbmc68k_reduced (10 sorted populations) from 0.46 to
#: 0.41. Subtracting the sampling noise of small groups' means from their squared distances (sum over features of
#: variance / cells, per group) changed little (CellBench 0.82 -> 0.83 at 2.3).
MERGE_COMPONENTS = 50

#: :func:`merge_unit` decomposes the dense covariance up to this many features, above it uses Lanczos iterations.
DENSE_UNIT_FEATURES = 2000

#: With ``n_clusters``, a group of code clusters holding less than this share of the cells is not counted as
#: one of the ``n_clusters``: its cells join the nearest counted group (outlying debris cannot take a slot).
MIN_GROUP_SHARE = 0.01


def separation(mean_a, mean_b, var_a, var_b, weight_a: float, weight_b: float) -> float:
    """Distance of two group means over the pooled within-group standard deviation along the line joining them.

    The within-group variances are per feature (``var_a``, ``var_b``), pooled count-weighted; along the unit
    vector ``u`` from one mean to the other the pooled variance is ``sum(u**2 * var)`` (features taken as
    uncorrelated within a group). Well-separated populations score high (3 and more: few cells between
    them); two halves of one population, or groups that overlap, score low.

    Examples
    --------
    >>> from scae.cluster import separation
    >>> separation([0.0, 0.0], [3.0, 0.0], [1.0, 1.0], [1.0, 1.0], 10, 10)  # 3 apart, deviation 1 along the line
    3.0
    >>> separation([0.0, 0.0], [3.0, 0.0], [9.0, 100.0], [9.0, 100.0], 10, 10)  # deviation 3: they overlap
    1.0
    """
    diff = np.asarray(mean_a, dtype=np.float64) - np.asarray(mean_b, dtype=np.float64)
    d2 = float(diff @ diff)
    if d2 == 0.0:
        return 0.0
    pooled = (weight_a * np.asarray(var_a) + weight_b * np.asarray(var_b)) / (weight_a + weight_b)
    spread = float(np.square(diff) @ np.maximum(pooled, 0.0)) / d2
    return np.inf if spread <= 0.0 else float(np.sqrt(d2 / spread))


def merge_unit(
    centroids: np.ndarray, counts: np.ndarray, second_moments: np.ndarray, *, components: int = MERGE_COMPONENTS
) -> float:
    """Root mean square standard deviation along the top ``components`` principal axes of the cells behind
    group ``centroids``: the unit of merge distances over more than ``components`` features.

    The covariance of the cells is taken as the count-weighted covariance of the group means plus, on the
    diagonal, the pooled within-group variance of each feature (from ``second_moments``, the per-group means of
    the squared values): what the per-group sums and sums of squares of a streamed pass hold, so every mode
    gets the same unit. Its trace is the cells' total variance, so with at most ``components`` features the
    unit is the root mean square of the per-feature standard deviations (:func:`common_scale` of the cells).

    Examples
    --------
    >>> import numpy as np
    >>> from scae.cluster import common_scale, merge_unit
    >>> centroids = np.array([[0.0, 0.0], [2.0, 0.0]])  # two groups of 10 cells, within-group variance 0.5
    >>> round(merge_unit(centroids, np.array([10, 10]), centroids**2 + 0.5), 3)
    1.0
    >>> round(common_scale(np.sqrt([1.5, 0.5])), 3)  # the same cells' variances: 1 + 0.5 and 0.5
    1.0
    """
    mean = np.asarray(centroids, dtype=np.float64)
    weight = np.asarray(counts, dtype=np.float64)
    weight = weight / weight.sum()
    spread = (mean - weight @ mean) * np.sqrt(weight)[:, None]  # B = spread.T @ spread
    within = weight @ np.maximum(np.asarray(second_moments, dtype=np.float64) - np.square(mean), 0.0)
    n_features = mean.shape[1]
    if n_features <= components:
        return float(np.sqrt((np.einsum("ij,ij->", spread, spread) + within.sum()) / n_features))
    if not (np.any(spread) or np.any(within)):  # every cell alike
        return 0.0
    if n_features <= DENSE_UNIT_FEATURES:  # the dense matrix: exact, and ~0.4 s for 2,000 features
        cov = spread.T @ spread
        cov[np.diag_indices(n_features)] += within
        top = np.linalg.eigvalsh(cov)[-components:]
    else:  # Lanczos on the low-rank-plus-diagonal operator (no n_features^2 matrix; 36,000 genes, 300 codes: ~9 s)

        def times(v: np.ndarray) -> np.ndarray:
            v = v.ravel()
            return spread.T @ (spread @ v) + within * v

        op = LinearOperator((n_features, n_features), matvec=times, dtype=np.float64)
        start = 1.0 + 0.5 * np.sin(np.arange(n_features))  # fixed (same unit on every run), not all-ones
        top = eigsh(op, k=components, which="LA", v0=start, return_eigenvectors=False)
    return float(np.sqrt(max(float(np.sum(top)), 0.0) / components))


def common_scale(std) -> float:
    """Root mean square of per-feature standard deviations: the one unit that merge distances are measured in.

    Examples
    --------
    >>> from scae.cluster import common_scale
    >>> common_scale([1.0, 7.0])  # sqrt((1 + 49) / 2)
    5.0
    """
    return float(np.sqrt(np.mean(np.square(np.asarray(std, dtype=np.float64)))))


def warn_if_fewer(n_clusters: int | None, n_found: int) -> None:
    """Log a warning when ``n_clusters`` asked for more clusters than there were code clusters to merge."""
    if n_clusters is not None and n_found < n_clusters:
        logging.getLogger("scae").warning(
            "n_clusters=%d, but the codes form only %d cluster%s, which merging cannot split: %d made. For more, "
            "lower `min_cluster_size` or `threshold` (scae.tl.cluster), or refit with a smaller `lambda_c`",
            n_clusters, n_found, "" if n_found == 1 else "s", n_found,
        )  # fmt: skip


def group_centroids(
    centroids: np.ndarray,
    counts: np.ndarray,
    *,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
    min_share: float = MIN_GROUP_SHARE,
    second_moments: np.ndarray | None = None,
    max_separation: float | None = MAX_SEPARATION,
) -> np.ndarray:
    """Group of every code-cluster centre ``0..g-1`` (see :func:`scae.cluster.merge_clusters`).

    ``counts`` are the cells per centre: groups are joined closest pair first, the distance of two groups being that of
    their count-weighted means. ``second_moments`` (per centre, the mean of the squared values, same units as
    ``centroids``) give the within-group spread: with them, a pair at least :data:`SEPARATION_FROM` apart whose
    :func:`separation` is ``max_separation`` or more is kept apart (features of at most :data:`SEPARATION_MAX_FEATURES`
    dimensions only; above the default threshold ``max_separation`` grows in proportion to ``merge_threshold``). With
    ``n_clusters`` such a pair is only put off: when every remaining pair is kept apart, the closest of them merges, so
    the count is always reached; of those pairs, only ones with a group holding ``min_share`` of the cells (two outlying
    smaller groups merged there would pass the bar together and take one of the ``n_clusters``: levine3k resampled to
    100,000 cells, seed 1, k=3 F1 0.58). Over more than :data:`MERGE_COMPONENTS` features with ``second_moments``,
    ``merge_threshold`` is in units of :func:`merge_unit`; at most that many features keep the units given.

    Examples
    --------
    >>> import numpy as np, scae.cluster
    >>> scae.cluster.group_centroids(np.array([[0.0], [1.0], [9.0]]), np.array([5, 5, 5])).tolist()  # 1.0 apart: join
    [0, 0, 1]
    """
    if n_clusters is not None and n_clusters < 1:
        msg = f"`n_clusters` must be >= 1, got {n_clusters}"
        raise ValueError(msg)
    if max_separation is not None and not max_separation > 0:
        msg = f"`max_separation` must be > 0 or None, got {max_separation}"
        raise ValueError(msg)
    n = centroids.shape[0]
    if n <= 1 or (n_clusters is not None and n_clusters >= n):
        return np.arange(n)
    if n_clusters is None and (merge_threshold is None or merge_threshold <= 0):
        return np.arange(n)
    wide = centroids.shape[1] > SEPARATION_MAX_FEATURES
    rule = max_separation if second_moments is not None and not wide else None
    if rule is not None and n_clusters is None and merge_threshold > DEFAULT_MERGE_THRESHOLD:
        rule *= merge_threshold / DEFAULT_MERGE_THRESHOLD  # a coarser cut lets more separated pairs merge too
    limit = np.inf if n_clusters is not None else merge_threshold**2
    if n_clusters is None and second_moments is not None and centroids.shape[1] > MERGE_COMPONENTS:
        unit = merge_unit(centroids, counts, second_moments)
        if unit > 0:  # (the order of merges of ``n_clusters`` does not depend on the unit)
            centroids = np.asarray(centroids, dtype=np.float64) / unit
    merger = _Merger(centroids, counts, second_moments if rule is not None else None, rule, limit)

    def next_pair(bar: float | None = None) -> tuple[int, int]:
        i, j, d2 = merger.closest()
        return (i, j) if np.isfinite(d2) else merger.closest_kept_apart(bar)  # all kept apart: the closest of them

    if n_clusters is None:
        while merger.n_alive > 1:
            i, j, d2 = merger.closest()
            if d2 >= limit:
                break
            merger.merge(i, j)
        return merger.groups()
    weights = np.asarray(counts, dtype=np.float64)
    bar = min_share * weights.sum()
    if np.count_nonzero(weights >= bar) < n_clusters:  # too few large groups to start with: plain count
        while merger.n_alive > n_clusters:
            merger.merge(*next_pair())
        return merger.groups()
    # merge until exactly n_clusters groups hold >= min_share of the cells (each merge changes that by <= 1);
    # the groups below the bar then join the nearest counted group (debris cannot take one of the clusters)
    while np.count_nonzero(merger.alive & (merger.weight >= bar)) > n_clusters:
        merger.merge(*next_pair(bar))
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
    merge costs O(g) plus a rescan of the rows whose nearest group took part in it. With ``second_moments``
    (mean squared values per point, pooled alongside the means) and ``max_separation``, pairs at least
    :data:`SEPARATION_FROM` and less than ``sqrt(limit)`` apart whose :func:`separation` reaches
    ``max_separation`` are *kept apart*: their entry of the matrix that :meth:`closest` searches is infinite
    (the true distances stay in ``raw``). A group's pairs are tested when it forms, all at once, so a pair
    kept apart is tested again exactly when one of its groups changes.
    """

    def __init__(
        self,
        centroids: np.ndarray,
        counts: np.ndarray,
        second_moments: np.ndarray | None = None,
        max_separation: float | None = None,
        limit: float = np.inf,
    ) -> None:
        self.mean = np.asarray(centroids, dtype=np.float64).copy()
        self.weight = np.maximum(np.asarray(counts, dtype=np.float64), 1e-12)
        self.rule = second_moments is not None and max_separation is not None
        self.moment = np.asarray(second_moments, dtype=np.float64).copy() if self.rule else None
        self.max_separation, self.limit = max_separation, limit
        n = self.mean.shape[0]
        if self.rule:
            self.var, self.mean_var, self.mean_sq = (np.empty_like(self.mean) for _ in range(3))
            self.sq_var = np.empty(n)
            self._spread_cache(slice(None))
        self.alive = np.ones(n, dtype=bool)
        self.owner = np.arange(n)
        sq = np.einsum("ij,ij->i", self.mean, self.mean)
        self.raw = np.maximum(sq[:, None] + sq[None, :] - 2.0 * self.mean @ self.mean.T, 0.0)
        np.fill_diagonal(self.raw, np.inf)
        self.d2 = self.raw.copy() if self.rule else self.raw
        if self.rule:
            for i in range(n - 1):
                apart = self._kept_apart_from(i, self.raw[i])
                apart = apart[apart > i]  # each pair tested once: the matrix stays symmetric
                self.d2[i, apart] = self.d2[apart, i] = np.inf
        self.nn = np.argmin(self.d2, axis=1)
        self.nn_d2 = self.d2[np.arange(n), self.nn]

    @property
    def n_alive(self) -> int:
        return int(self.alive.sum())

    def _spread_cache(self, rows) -> None:
        """Per-group terms of the separation, refreshed for ``rows``: within-group variances ``var``, ``mean *
        var``, ``sum(mean**2 * var)`` and ``mean**2`` (products with one group's vectors then give the pooled
        variance along the mean difference of that group and every other at once, by matrix-vector products).
        """
        var = np.maximum(self.moment[rows] - np.square(self.mean[rows]), 0.0)
        self.var[rows] = var
        self.mean_var[rows] = self.mean[rows] * var
        self.mean_sq[rows] = np.square(self.mean[rows])
        self.sq_var[rows] = np.einsum("...j,...j->...", self.mean_sq[rows], var)

    def _kept_apart_from(self, i: int, d2: np.ndarray) -> np.ndarray:
        """Groups that group ``i`` (at squared distances ``d2``) is kept apart from (:func:`separation`)."""
        others = np.flatnonzero(self.alive & (d2 >= SEPARATION_FROM**2) & (d2 < self.limit))
        if not others.size:
            return others
        m_i, v_i = self.mean[i], self.var[i]
        # sum_k (m_o - m_i)_k**2 * v_k, expanded, for v = the other group's variances and for v = group i's
        # (over all rows: matrix-vector products without copies of the rows, then the rows of ``others``)
        by_other = (self.sq_var - 2.0 * (self.mean_var @ m_i) + self.var @ self.mean_sq[i])[others]
        by_self = (self.mean_sq @ v_i - 2.0 * (self.mean @ self.mean_var[i]))[others] + self.sq_var[i]
        w_i, w_o = self.weight[i], self.weight[others]
        spread = np.maximum(w_i * by_self + w_o * by_other, 0.0) / ((w_i + w_o) * d2[others])
        return others[d2[others] >= self.max_separation**2 * spread]

    def closest(self) -> tuple[int, int, float]:
        """The closest pair ``(i, j)`` of live groups not kept apart, and their squared distance (inf: none)."""
        i = int(np.argmin(self.nn_d2))
        return i, int(self.nn[i]), float(self.nn_d2[i])

    def closest_kept_apart(self, bar: float | None = None) -> tuple[int, int]:
        """The closest pair of live groups by true distance (when :meth:`closest` offers none); with ``bar``, of
        the pairs in which at least one group weighs ``bar`` or more (see :func:`group_centroids`).
        """
        raw = self.raw  # rows and columns of the dead: inf
        if bar is not None:
            small = self.weight < bar
            if np.any(self.alive & ~small):
                raw = raw.copy()
                raw[np.ix_(small, small)] = np.inf
        a, b = np.unravel_index(int(np.argmin(raw)), raw.shape)
        return int(a), int(b)

    def merge(self, i: int, j: int) -> None:
        """Group ``j`` joins group ``i`` (which keeps its index)."""
        w = self.weight[i] + self.weight[j]
        self.mean[i] = (self.mean[i] * self.weight[i] + self.mean[j] * self.weight[j]) / w
        if self.rule:
            self.moment[i] = (self.moment[i] * self.weight[i] + self.moment[j] * self.weight[j]) / w
            self._spread_cache([i])
        self.weight[i], self.weight[j] = w, 0.0
        self.alive[j] = False
        self.owner[self.owner == j] = i
        d = np.einsum("ij,ij->i", self.mean - self.mean[i], self.mean - self.mean[i])
        d[~self.alive] = np.inf
        d[i] = np.inf
        if self.rule:
            self.raw[i], self.raw[:, i] = d, d
            self.raw[j], self.raw[:, j] = np.inf, np.inf
            d = d.copy()
            d[self._kept_apart_from(i, d)] = np.inf
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
