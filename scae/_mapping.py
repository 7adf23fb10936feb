"""What a trained model keeps to place new cells: cluster lookup table, reference-batch sample, batches.

Clusters of new cells are assigned exactly as :func:`scae.cluster.codes_to_clusters` treated the training
cells: a cell whose binary code is one of the training codes that formed a cluster (codes with at least
``min_cluster_size`` cells) gets that cluster; any other cell joins the cluster of the nearest such code
centroid in standardized denoised expression (the rule that absorbed rare codes during training). On the
training cells themselves this reproduces the training labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from . import _features
from ._accumulator import Chunk, ClusterAccumulator
from ._codes import pack_bits

#: Reference-batch cells kept for fine-tuning are capped at this many bytes of float32 values.
REFERENCE_SAMPLE_BYTES = 32 * 1024**2
REFERENCE_SAMPLE_CELLS = 2000


def binarize_with(codes: np.ndarray, unit_max: np.ndarray, threshold: float) -> np.ndarray:
    """Binarize ``codes`` against a fixed per-unit maximum (the training cells'), as :func:`cluster.binarize`."""
    return codes > np.where(unit_max > 0, threshold * unit_max, np.inf)[None, :]


@dataclass
class ClusterReference:
    """Training codes that formed clusters, their centroids and labels."""

    unit_max: np.ndarray  # (n_units,) float32: per-unit maximum activation over the training cells
    threshold: float  # relative firing threshold used for binarization
    keys: np.ndarray  # (n_codes, n_words) uint64: packed binary codes with >= min_cluster_size cells
    centroids: np.ndarray  # (n_codes, n_features) float64: mean standardized reconstruction per code
    labels: np.ndarray  # (n_codes,) int64: final cluster of each code
    n_clusters: int

    @classmethod
    def build(
        cls,
        codes: np.ndarray,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        threshold: float = 0.1,
        min_cluster_size: int | None = None,
    ) -> ClusterReference:
        """From training activations, the features used for clustering, and the final labels."""
        acc = ClusterAccumulator(codes.shape[0], threshold=threshold, min_cluster_size=min_cluster_size)
        acc.add_max(codes)
        acc.add_codes(Chunk(0, codes, features))
        return cls.from_accumulator(acc, labels)

    @classmethod
    def from_accumulator(cls, acc: ClusterAccumulator, labels: np.ndarray | None = None) -> ClusterReference:
        """The table of a :class:`scae._accumulator.ClusterAccumulator` that has seen every cell (``labels``:
        final labels to record instead of the accumulator's own).
        """
        table = acc.reference(labels)
        return cls(
            unit_max=table["unit_max"],
            threshold=acc.threshold,
            keys=table["keys"],
            centroids=table["centroids"],
            labels=table["labels"],
            n_clusters=int(table["labels"].max()) + 1 if labels is None else int(np.max(labels)) + 1,
        )

    def assign(self, codes: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cluster of each new cell and whether it was found by its code (``True``) or by nearest centroid."""
        keys = pack_bits(binarize_with(codes, self.unit_max, self.threshold))
        both = np.concatenate([self.keys, keys])
        _, inverse = np.unique(both, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        code_of = np.full(inverse.max() + 1, -1, dtype=np.int64)
        code_of[inverse[: len(self.keys)]] = np.arange(len(self.keys))
        matched = code_of[inverse[len(self.keys) :]]
        labels = np.empty(codes.shape[0], dtype=np.int64)
        by_code = matched >= 0
        labels[by_code] = self.labels[matched[by_code]]
        if (~by_code).any():
            _, nearest = cKDTree(self.centroids).query(features[~by_code])
            labels[~by_code] = self.labels[nearest]
        return labels, by_code

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for the model's safetensors file."""
        return {
            "cluster.unit_max": self.unit_max,
            "cluster.keys": self.keys,
            "cluster.centroids": self.centroids,
            "cluster.labels": self.labels,
        }

    def to_json(self) -> dict:
        """Scalars for the model's JSON file."""
        return {"threshold": self.threshold, "n_clusters": self.n_clusters, "n_codes": int(len(self.keys))}

    @classmethod
    def from_saved(cls, meta: dict, arrays: dict[str, np.ndarray]) -> ClusterReference:
        """Inverse of :meth:`to_arrays` / :meth:`to_json`."""
        return cls(
            unit_max=arrays["cluster.unit_max"],
            threshold=float(meta["threshold"]),
            keys=arrays["cluster.keys"],
            centroids=arrays["cluster.centroids"],
            labels=arrays["cluster.labels"],
            n_clusters=int(meta["n_clusters"]),
        )


@dataclass
class MappingState:
    """Everything beyond the weights needed to map new cells onto a trained model."""

    clusters: ClusterReference
    reference_rows: np.ndarray | None  # (n, n_features) float32 sample of reference-batch (or all) training cells
    batch_categories: list[str] | None  # training batches (None without batch_key)
    reference_batch: str | None


def reference_sample(X, rows: np.ndarray, *, random_state: int = 0) -> np.ndarray:
    """Dense float32 copy of at most ``REFERENCE_SAMPLE_CELLS`` rows (and ``REFERENCE_SAMPLE_BYTES``)."""
    n_max = min(REFERENCE_SAMPLE_CELLS, max(100, REFERENCE_SAMPLE_BYTES // (4 * X.shape[1])))
    if rows.size > n_max:
        rows = np.sort(np.random.default_rng(random_state).choice(rows, n_max, replace=False))
    sub = X[rows]
    sub = sub.toarray() if hasattr(sub, "toarray") else np.asarray(sub)
    return np.ascontiguousarray(sub, dtype=np.float32)


def build_mapping_state(model, labels: np.ndarray | None = None, **cluster_kwargs) -> MappingState:
    """Mapping state of an in-memory trained model; ``labels`` are its training clusters (default: recomputed).

    ``cluster_kwargs`` are those of :meth:`scae.SAUCIE.get_clusters` (``threshold`` and ``min_cluster_size``
    are also used to rebuild the code table).
    """
    if labels is None:
        labels = model.get_clusters(**cluster_kwargs)
    out = model.outputs()
    mean, std = model.net.feature_mean.cpu().numpy(), model.net.feature_std.cpu().numpy()
    features = _features.absorb_features(out["reconstruction"], model.X, model.blocks, mean, std)
    clusters = ClusterReference.build(
        out["codes"],
        features,
        labels,
        threshold=cluster_kwargs.get("threshold", 0.1),
        min_cluster_size=cluster_kwargs.get("min_cluster_size"),
    )
    return mapping_state(model, clusters)


def mapping_state(model, clusters: ClusterReference) -> MappingState:
    """The mapping state of a trained model given its cluster table (the reference sample is read from ``model.X``)."""
    if model.batches is not None:
        rows = np.flatnonzero(model.batches.codes == model.batches.reference)
        cats, ref = list(model.batches.categories), model.batches.categories[model.batches.reference]
    else:
        rows, cats, ref = np.arange(model.n_cells), None, None
    sample = reference_sample(model.X, rows, random_state=model.random_state)
    return MappingState(clusters=clusters, reference_rows=sample, batch_categories=cats, reference_batch=ref)


def get_mapping_state(model) -> MappingState:
    """The model's mapping state, built (default cluster settings) and kept on first use."""
    if getattr(model, "mapping_state", None) is None:
        model.mapping_state = build_mapping_state(model)
    return model.mapping_state
