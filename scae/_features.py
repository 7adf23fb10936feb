"""The features clusters are cut on: one definition for `tl.fit`, `SAUCIE.get_clusters` and `tl.cluster`.

Rare codes join the nearest code cluster, and code clusters are merged, by per-cell features computed here
from the reconstruction as stored in the AnnData, so re-cutting a fitted AnnData reproduces the fit exactly:

- all-``mse`` models: the reconstruction standardized by the feature moments; merging compares cluster means
  of the input values in units of :func:`scae.cluster.common_scale` (over more than 50 features, of
  :func:`scae.cluster.merge_unit`);
- models with count or binary blocks: the prediction in the encoder's standardized units (count blocks as
  ``log1p`` of the normalized expected counts, the network's input transform) for both steps.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from . import cluster, data
from ._accumulator import ClusterAccumulator, cluster_arrays
from .cluster import DEFAULT_MERGE_THRESHOLD
from .nn.likelihoods import get_likelihood, is_plain


def standardized(values: np.ndarray, X, blocks, mean: np.ndarray, std: np.ndarray, *, units: str) -> np.ndarray:
    """``values`` (cells × features, count blocks in ``units``) in the standardized units of the encoder input.

    Each block's likelihood maps its values to the encoder's units
    (:meth:`~scae.nn.likelihoods.Likelihood.expected_to_encoder_np`): count blocks are turned into ``log1p`` of
    expected counts per 10,000 (``"counts"`` are divided by each cell's observed library size in ``X``, at
    least 1, as the network does); every feature is then centred and scaled by ``mean``/``std`` (the
    network's ``feature_mean``/``feature_std``).
    """
    mean, std = np.asarray(mean, np.float32).ravel(), np.asarray(std, np.float32).ravel()
    out = np.empty(values.shape, dtype=np.float32)
    for b in blocks:
        index = np.arange(values.shape[1]) if b.index is None else np.asarray(b.index)
        v = values if b.index is None else values[:, index]
        library = partial(_library_size, X, None if b.index is None else index)
        v = get_likelihood(b.likelihood).expected_to_encoder_np(v, units, library)
        out[:, index] = (v - mean[index]) / std[index]
    return out


def _library_size(X, index: np.ndarray | None) -> np.ndarray:
    """Observed library size per cell of the columns ``index`` of ``X`` (every column for ``None``)."""
    return data.library_size(X if index is None else data.block_matrix(X, index))


def absorb_features(values: np.ndarray, X, blocks, mean, std, *, units: str = "counts") -> np.ndarray:
    """Per-cell features by which cells of rare codes join a cluster, in training and when placing new cells."""
    if is_plain(blocks):
        return (values - np.asarray(mean, np.float32).ravel()) / np.asarray(std, np.float32).ravel()
    return standardized(values, X, blocks, mean, std, units=units)


def cut(codes: np.ndarray, values: np.ndarray, X, **options) -> np.ndarray:
    """Cluster labels from clustering-layer ``codes`` and the reconstruction ``values`` (see the module docstring).

    ``X`` is the model's input matrix (merge features of ``mse`` models, library sizes of count blocks);
    ``options`` as :func:`cut_accumulator`.
    """
    return cut_accumulator(codes, values, X, **options).final


def cut_accumulator(
    codes: np.ndarray,
    values: np.ndarray,
    X,
    *,
    blocks,
    mean: np.ndarray,
    std: np.ndarray,
    units: str = "counts",
    threshold: float = 0.1,
    min_cluster_size: int | None = None,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
) -> ClusterAccumulator:
    """The accumulator behind :func:`cut` after every pass (labels in ``final``): calling its ``labels()`` again
    after changing ``merge_threshold`` re-runs only the merge (:func:`scae.tl.granularity`).
    """
    features, merge_features, scale = cluster_inputs(values, X, blocks, mean, std, units=units)
    return cluster_arrays(
        codes,
        features,
        merge_features,
        merge_scale=scale,
        threshold=threshold,
        min_cluster_size=min_cluster_size,
        merge_threshold=merge_threshold,
        n_clusters=n_clusters,
    )


def cluster_inputs(values: np.ndarray, X, blocks, mean, std, *, units: str = "counts"):
    """Absorb features, merge features and merge unit of the cells ``values`` (rows of ``X``), see the module
    docstring; used on whole arrays by :func:`cut` and on chunks by the streamed outputs (:mod:`scae._pipeline`).
    """
    features = absorb_features(values, X, blocks, mean, std, units=units)
    if is_plain(blocks):
        return features, X, cluster.common_scale(np.asarray(std, np.float32).ravel())
    return features, None, 1.0
