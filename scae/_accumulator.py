"""The cluster accumulator: binarize, pack, hash, absorb rare codes and merge, over chunks of cells.

One clustering algorithm for every mode. Cells arrive in row order, in chunks (:class:`Chunk`), over up to
three passes:

1. the clustering-layer activations give every unit's maximum (:meth:`ClusterAccumulator.add_max`): a unit
   fires in a cell when it exceeds ``threshold`` times that maximum;
2. the binary codes are packed into 64-bit words and hashed to one code id per cell; per code, the sums of
   the *absorb features* (the standardized reconstruction, see :mod:`scae._features`) and of the *merge
   features* (the input values for all-``mse`` models) and of their squares are accumulated
   (:meth:`~ClusterAccumulator.add_codes`);
3. only when some code has fewer than ``min_cluster_size`` cells: those cells join the nearest frequent
   code by centroid of the absorb features (:meth:`~ClusterAccumulator.absorb`).

Then the code clusters are merged, closest count-weighted means first, on their merge-feature centroids
(:func:`scae.cluster.group_centroids`; the squares give the within-group spread that keeps separated
populations apart) in :meth:`~ClusterAccumulator.labels`. Only per-code sums and one
integer per cell are held, so the same code serves arrays in memory (chunks are slices, see
:func:`cluster_arrays`), backed files (the network is re-run for every pass) and torchrun (rank 0 receives
every rank's chunks). :meth:`~ClusterAccumulator.reference` gives the table that places new cells
(:class:`scae._mapping.ClusterReference`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from ._codes import code_words, default_min_cluster_size, label_moments, label_sums, relabel_by_size
from ._merge import DEFAULT_MERGE_THRESHOLD, group_centroids, warn_if_fewer


@dataclass
class Chunk:
    """Consecutive cells ``start:start + len(codes)`` of one pass."""

    start: int
    codes: np.ndarray  # (m, n_units) clustering-layer activations
    features: np.ndarray | None = None  # (m, f) absorb features (passes 2 and 3)
    merge_features: object = None  # (m, g) dense or sparse merge features; None: the absorb features


def _add_by_label(totals: list[np.ndarray], labels: np.ndarray, values, n_labels: int, sign: float = 1.0):
    """``totals[0][label] += sign * value`` for every row and, when a second total is given,
    ``totals[1][label] += sign * value ** 2`` (one read of ``values``); the totals grow to ``n_labels`` rows
    and are returned as a list.

    Summed over the labels present in the chunk only, so the temporaries are (labels in the chunk × features),
    not (all codes × features).
    """
    present, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.ravel()
    parts = (
        label_moments(inverse, values, present.size)
        if len(totals) == 2
        else (label_sums(inverse, values, present.size),)
    )
    out = []
    for total, part in zip(totals, parts, strict=True):
        if total.shape[0] < n_labels:
            grown = np.zeros((max(n_labels, total.shape[0] + total.shape[0] // 4), values.shape[1]))
            if total.size:
                grown[: total.shape[0]] = total
            total = grown
        total[present] += part if sign == 1.0 else sign * part
        out.append(total)
    return out


class ClusterAccumulator:
    """Streamed clustering of ``n_cells`` cells (see the module docstring for the passes).

    Parameters
    ----------
    n_cells
        Number of cells of all chunks together.
    threshold
        Relative firing threshold of a unit.
    min_cluster_size
        Codes with fewer cells join the nearest frequent code; default
        :func:`scae.cluster.default_min_cluster_size`.
    merge_threshold, n_clusters
        Merge distance of the code clusters (see :func:`scae.cluster.merge_clusters`).
    merge_scale
        Unit of the merge distances (:func:`scae.cluster.common_scale` of the input's standard deviations; over
        more than 50 merge features :func:`scae.cluster.group_centroids` measures in :func:`scae.cluster.merge_unit`).
    """

    def __init__(
        self,
        n_cells: int,
        *,
        threshold: float = 0.1,
        min_cluster_size: int | None = None,
        merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
        n_clusters: int | None = None,
        merge_scale: float = 1.0,
    ) -> None:
        self.n_cells = int(n_cells)
        self.threshold = float(threshold)
        self.min_cluster_size = default_min_cluster_size(n_cells) if min_cluster_size is None else int(min_cluster_size)
        self.merge_threshold = merge_threshold
        self.n_clusters = n_clusters
        self.merge_scale = float(merge_scale)
        self.unit_max: np.ndarray | None = None
        self.code_ids = np.full(self.n_cells, -1, dtype=np.int64)  # code of every cell (pass 2)
        self.absorbed: np.ndarray | None = None  # code cluster of every cell after absorbing (pass 3)
        self._keys: dict[tuple, int] = {}
        self._words: list[np.ndarray] = []  # packed words of every code id
        self._feature_sums = np.zeros((0, 0))
        self._merge_sums = np.zeros((0, 0))
        self._merge_squares = np.zeros((0, 0))
        self._code_counts = np.zeros(0)
        self._big = self._tree = None
        self.final: np.ndarray | None = None  # labels after merging (set by `labels`)

    # ------------------------------------------------------------------ pass 1
    def add_max(self, codes: np.ndarray) -> None:
        """Fold the per-unit maximum of a chunk of activations into the running maximum."""
        if len(codes) == 0:
            return
        m = np.asarray(codes).max(0).astype(np.float32)
        self.unit_max = m if self.unit_max is None else np.maximum(self.unit_max, m)

    # ------------------------------------------------------------------ pass 2
    def add_codes(self, chunk: Chunk) -> None:
        """Code id of every cell of ``chunk`` and the per-code feature sums."""
        if self.unit_max is None:
            msg = "the per-unit maximum is not known: feed every chunk to `add_max` first"
            raise RuntimeError(msg)
        words = code_words(chunk.codes, threshold=self.threshold, unit_max=self.unit_max)
        if words.shape[1] == 1:
            local, uniq = pd.factorize(words[:, 0])
            uniq_rows = [(u,) for u in uniq]
        else:
            local, uniq = pd.MultiIndex.from_arrays(list(words.T)).factorize()
            uniq_rows = [tuple(u) for u in uniq]
        ids = np.empty(len(uniq_rows), dtype=np.int64)
        for i, key in enumerate(uniq_rows):
            code = self._keys.get(key)
            if code is None:
                code = self._keys[key] = len(self._keys)
                self._words.append(np.asarray(key, dtype=np.uint64))
            ids[i] = code
        lab = ids[np.asarray(local)]
        self.code_ids[chunk.start : chunk.start + len(lab)] = lab
        k = len(self._keys)
        (self._feature_sums,) = _add_by_label([self._feature_sums], lab, chunk.features, k)
        merge = chunk.features if chunk.merge_features is None else chunk.merge_features
        moments = [self._merge_sums, self._merge_squares]
        self._merge_sums, self._merge_squares = _add_by_label(moments, lab, merge, k)

    def set_codes(
        self,
        unit_max: np.ndarray,
        code_ids: np.ndarray,
        words: np.ndarray,
        feature_sums: np.ndarray,
        merge_sums: np.ndarray,
        merge_squares: np.ndarray,
    ) -> None:
        """Passes 1 and 2 done elsewhere (on the training device, :mod:`scae._device_cut`): their results.

        ``code_ids`` numbers the codes by first appearance (as :meth:`add_codes`), ``words`` holds the packed
        uint64 words of every code id, the sums (and sums of squares of the merge features) one row per code id.
        """
        code_ids = np.asarray(code_ids, dtype=np.int64)
        words = np.asarray(words, dtype=np.uint64)
        if code_ids.shape != (self.n_cells,) or feature_sums.shape[0] != words.shape[0]:
            msg = f"set_codes: {code_ids.shape} code ids and {words.shape[0]} codes for {self.n_cells} cells"
            raise ValueError(msg)
        self.unit_max = np.asarray(unit_max, dtype=np.float32)
        self.code_ids = code_ids
        self._words = list(words)
        self._keys = {tuple(w): i for i, w in enumerate(words.tolist())}
        self._feature_sums = np.asarray(feature_sums, dtype=np.float64)
        self._merge_sums = np.asarray(merge_sums, dtype=np.float64)
        self._merge_squares = np.asarray(merge_squares, dtype=np.float64)

    # ------------------------------------------------------------------ pass 3
    def needs_absorb(self) -> bool:
        """Whether some cells have a rare code (then every chunk must go through :meth:`absorb`)."""
        if (self.code_ids < 0).any():
            msg = "some cells were never given a code: feed every chunk to `add_codes`"
            raise RuntimeError(msg)
        counts = np.bincount(self.code_ids, minlength=len(self._keys)).astype(np.float64)
        self._code_counts = counts
        big = np.flatnonzero(counts >= self.min_cluster_size)
        self._big = big if big.size else np.array([int(np.argmax(counts))])
        self.absorbed = self.code_ids.copy()
        small = counts < self.min_cluster_size
        small[self._big] = False
        self._small = small
        if not small[self.code_ids].any():
            return False
        self._tree = cKDTree(self._feature_sums[self._big] / counts[self._big][:, None])
        return True

    def absorb(self, chunk: Chunk) -> None:
        """Cells of rare codes in ``chunk`` join the nearest frequent code (by absorb-feature centroid)."""
        lab = self.code_ids[chunk.start : chunk.start + len(chunk.codes)]
        rows = np.flatnonzero(self._small[lab])
        if not rows.size:
            return
        _, nearest = self._tree.query(chunk.features[rows])
        target = self._big[nearest]
        self.absorbed[chunk.start + rows] = target
        merge = chunk.features if chunk.merge_features is None else chunk.merge_features
        merge = merge[rows]
        k = len(self._keys)
        moments = _add_by_label([self._merge_sums, self._merge_squares], target, merge, k)
        self._merge_sums, self._merge_squares = _add_by_label(moments, lab[rows], merge, k, sign=-1.0)

    # ------------------------------------------------------------------ result
    def labels(self) -> np.ndarray:
        """Final cluster labels ``0..k-1`` (largest first) after merging."""
        if self.absorbed is None:
            self.needs_absorb()
        counts = np.bincount(self.absorbed, minlength=len(self._keys)).astype(np.float64)
        labels = relabel_by_size(self.absorbed)
        keep = np.flatnonzero(counts > 0)
        order = keep[np.argsort(-counts[keep], kind="stable")]
        if len(order) > 1:
            per_cell = counts[order][:, None]
            centroids = self._merge_sums[order] / per_cell / self.merge_scale
            moments = self._merge_squares[order] / per_cell / self.merge_scale**2
            groups = group_centroids(
                centroids,
                counts[order],
                merge_threshold=self.merge_threshold,
                n_clusters=self.n_clusters,
                second_moments=moments,
            )
            labels = relabel_by_size(groups[labels])
        warn_if_fewer(self.n_clusters, int(labels.max()) + 1 if labels.size else 0)
        self.final = labels
        return labels

    def reference(self, final: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Frequent codes (packed words), their absorb-feature centroids and final labels, and ``unit_max``.

        The table :class:`scae._mapping.ClusterReference` places new cells with. ``final``: labels of every
        cell to record instead of those of :meth:`labels` (e.g. re-cut with other merge settings).
        """
        final = self.final if final is None else np.asarray(final, dtype=np.int64)
        if self.absorbed is None:
            self.needs_absorb()
        code_label = np.empty(len(self._keys), dtype=np.int64)
        code_label[self.absorbed] = final  # the cells of a frequent code keep it, so this is its label
        big = self._big
        return {
            "unit_max": self.unit_max,
            "keys": np.stack([self._words[i] for i in big]).astype(np.uint64),
            "centroids": self._feature_sums[big] / self._code_counts[big][:, None],
            "labels": code_label[big],
        }


def run_passes(acc: ClusterAccumulator, passes: Callable[[], Iterable[Chunk]], *, with_max: bool = True) -> np.ndarray:
    """Feed the chunks of ``passes()`` (a new iterator per pass) through every pass; return the labels.

    ``with_max=False`` when the caller already fed :meth:`ClusterAccumulator.add_max` (e.g. while writing
    the codes).
    """
    if with_max:
        for chunk in passes():
            acc.add_max(chunk.codes)
    for chunk in passes():
        acc.add_codes(chunk)
    if acc.needs_absorb():
        for chunk in passes():
            acc.absorb(chunk)
    return acc.labels()


def array_chunks(codes: np.ndarray, features: np.ndarray, merge_features=None, *, chunk_rows: int = 65536):
    """A ``passes`` callable of :func:`run_passes` over arrays held in memory (row slices, no copies)."""

    def passes():
        for a in range(0, codes.shape[0], chunk_rows):
            b = a + chunk_rows
            yield Chunk(a, codes[a:b], features[a:b], None if merge_features is None else merge_features[a:b])

    return passes


def cluster_arrays(codes: np.ndarray, features: np.ndarray, merge_features=None, **options) -> ClusterAccumulator:
    """Run every pass over arrays in memory; the accumulator holds the labels (``final``) and the reference."""
    acc = ClusterAccumulator(codes.shape[0], **options)
    run_passes(acc, array_chunks(codes, features, merge_features))
    return acc
