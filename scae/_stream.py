"""Streaming inference and clustering: outputs of every cell without holding codes or reconstructions.

Used for backed (out-of-core) data. Only the 2-D embedding and one integer label per cell stay in
memory; codes and reconstructions go chunk by chunk to ``sink(name, start, array)`` (for example an
h5 file) or are dropped. The clusters equal those of :func:`scae.cluster.codes_to_clusters` on the full
arrays; the network is re-run over the data instead of keeping its outputs (three passes).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree

from .cluster import (
    DEFAULT_MERGE_THRESHOLD,
    common_scale,
    default_min_cluster_size,
    group_centroids,
    label_sums,
    pack_bits,
    relabel_by_size,
)


@torch.no_grad()
def stream_outputs(
    net,
    source,
    *,
    chunk_size: int,
    threshold: float = 0.1,
    min_cluster_size: int | None = None,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
    sink: Callable[[str, int, np.ndarray], None] | None = None,
    write_reconstruction: bool = False,
    counts: str = "counts",
) -> tuple[np.ndarray, np.ndarray]:
    """Embedding ``(n, n_latent)`` and cluster labels ``(n,)`` of all rows of ``source``.

    ``sink("codes", start, codes)`` and, with ``write_reconstruction``, ``sink("reconstruction", start,
    rows)`` (input units; count blocks in ``counts`` units, see :meth:`SAUCIENet.predict`) receive the per-chunk
    outputs in row order. Rare codes are absorbed and code clusters merged in the standardized units of the
    prediction (:meth:`SAUCIENet.standardized_prediction`), as for in-memory data.
    """
    net.eval()
    n = len(source)
    # merge on the cluster means of the input values, as SAUCIE.get_clusters (the standardized
    # reconstruction where count/binary blocks make input units incomparable)
    plain = all(b.likelihood == "mse" for b in net.heads.blocks)
    scale = common_scale(net.feature_std.cpu().numpy()) if plain else 1.0
    embedding = None
    unit_max = None
    # pass 1: embedding, codes to the sink, per-unit maximum of the codes
    start = 0
    for x in source.chunks(chunk_size):
        out = net(x)
        emb = out.embedding.float().cpu().numpy()
        codes = out.codes.float().cpu().numpy()
        if embedding is None:
            embedding = np.empty((n, emb.shape[1]), dtype=np.float32)
            unit_max = np.zeros(codes.shape[1], dtype=np.float32)
        embedding[start : start + len(x)] = emb
        unit_max = np.maximum(unit_max, codes.max(0))
        if sink is not None:
            sink("codes", start, codes)
            if write_reconstruction:
                sink("reconstruction", start, net.predict(x, out, counts=counts).float().cpu().numpy())
        start += len(x)
    cut = threshold * np.where(unit_max > 0, unit_max, np.inf)
    # pass 2: code id per cell, per-code sums of the standardized reconstruction (absorbing rare codes)
    # and of the merge features
    keys: dict[tuple, int] = {}
    labels = np.empty(n, dtype=np.int64)
    total = np.zeros((0, 0))
    merge_total = np.zeros((0, 0))
    start = 0
    for x in source.chunks(chunk_size):
        out = net(x)
        words = pack_bits(out.codes.float().cpu().numpy() > cut)
        local, uniq = (
            pd.MultiIndex.from_arrays(list(words.T)).factorize() if words.shape[1] > 1 else pd.factorize(words[:, 0])
        )
        uniq = [tuple(u) if isinstance(u, tuple) else (u,) for u in uniq]
        ids = np.array([keys.setdefault(u, len(keys)) for u in uniq], dtype=np.int64)
        lab = ids[np.asarray(local)]
        labels[start : start + len(x)] = lab
        feats = net.standardized_prediction(x, out).float().cpu().numpy()
        if total.shape[0] < len(keys):
            total = np.pad(total, ((0, len(keys) - total.shape[0]), (0, feats.shape[1] - total.shape[1])))
        total += label_sums(lab, feats, len(keys))
        mfeats = x.float().cpu().numpy() if plain else feats
        if merge_total.shape[0] < len(keys):
            grow = ((0, len(keys) - merge_total.shape[0]), (0, mfeats.shape[1] - merge_total.shape[1]))
            merge_total = np.pad(merge_total, grow)
        merge_total += label_sums(lab, mfeats, len(keys))
        start += len(x)
    k = len(keys)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    if min_cluster_size is None:
        min_cluster_size = default_min_cluster_size(n)
    # pass 3: cells of rare codes join the nearest frequent code (by centroid), as in absorb_small
    big = np.flatnonzero(counts >= min_cluster_size)
    if big.size == 0:
        big = np.array([int(np.argmax(counts))])
    is_small = counts < min_cluster_size
    if is_small[labels].any():
        tree = cKDTree(total[big] / counts[big][:, None])
        start = 0
        for x in source.chunks(chunk_size):
            lab = labels[start : start + len(x)].copy()
            rows = np.flatnonzero(is_small[lab])
            if rows.size:
                xs = x[torch.as_tensor(rows, device=x.device)]
                feats = net.standardized_prediction(xs, net(xs)).float().cpu().numpy()
                _, nearest = tree.query(feats)
                target = big[nearest]
                labels[start + rows] = target
                mfeats = xs.float().cpu().numpy() if plain else feats
                merge_total += label_sums(target, mfeats, k) - label_sums(lab[rows], mfeats, k)
            start += len(x)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    labels = relabel_by_size(labels)
    # merge: the same rule on the same centroids as scae.cluster.merge_clusters
    keep = np.flatnonzero(counts > 0)
    order = keep[np.argsort(-counts[keep], kind="stable")]
    if len(order) <= 1:
        return embedding, labels
    centroids = merge_total[order] / counts[order][:, None] / scale
    groups = group_centroids(centroids, counts[order], merge_threshold=merge_threshold, n_clusters=n_clusters)
    return embedding, relabel_by_size(groups[labels])
