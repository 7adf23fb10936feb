"""The first two cluster passes on the training device: unit maxima, binarize, pack, hash, per-code sums.

:func:`scae._features.cut` runs every pass of :class:`scae._accumulator.ClusterAccumulator` on the host from
the codes array. For 10^7 cells × 256 units that is 10 GB of float32 codes to binarize, pack into words and
hash with numpy and pandas. On a GPU, :func:`device_cut` re-runs the network over the rows already on the
device instead (a forward pass of 10^7 cells takes well under a second there), binarizes and packs the codes
in chunks on the device, numbers the distinct codes there, and accumulates the per-code sums of the absorb
and merge features there; only the packed words of the distinct codes, one code id per cell and the sums
come to the host. The rare-code pass (few cells) and the merge (one row per code) then run on the host as
always, so the labels are those of :func:`scae._features.cut` (``tests/test_cluster.py`` compares them).

The packed words are bit for bit those of :func:`scae.cluster.pack_bits` (``numpy.packbits``, big-endian
bits within a byte, bytes read as little-endian uint64), so the code table saved with a model is the same
whichever device clustered.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _features
from ._accumulator import ClusterAccumulator, array_chunks
from ._merge import DEFAULT_MERGE_THRESHOLD
from .train import INFER_CHUNK_ROWS

#: Value of local bit ``j`` (0-63) of a packed word, as :func:`scae.cluster.pack_bits` lays bits out.
_BIT_SHIFTS = torch.tensor([8 * (j // 8) + 7 - j % 8 for j in range(64)], dtype=torch.int64)


def pack_words(binary: torch.Tensor) -> torch.Tensor:
    """Pack a boolean ``(n, n_bits)`` tensor into ``(n, ceil(n_bits / 64))`` int64 words on its device.

    The words are those of :func:`scae.cluster.pack_bits` read as int64 (``.numpy().view(np.uint64)`` gives
    the same uint64 values). Distinct bits never carry, so the sum of their values is their bitwise OR.
    """
    n, n_bits = binary.shape
    n_words = -(-n_bits // 64)
    if n_bits % 64:
        binary = torch.nn.functional.pad(binary, (0, n_words * 64 - n_bits))
    values = torch.ones((), dtype=torch.int64, device=binary.device) << _BIT_SHIFTS.to(binary.device)
    return (binary.reshape(n, n_words, 64).to(torch.int64) * values).sum(-1)


def first_appearance_ids(words: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Code id per row of ``words`` numbered by first appearance, and the words of each id (``(k, n_words)``).

    The numbering of :func:`scae.cluster.word_ids` (pandas factorize), computed by sorting on the device.
    """
    uniq, inverse = torch.unique(words, dim=0, return_inverse=True)
    n, k = words.shape[0], uniq.shape[0]
    rows = torch.arange(n, device=words.device)
    first = torch.full((k,), n, dtype=torch.int64, device=words.device).scatter_reduce_(0, inverse, rows, "amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(k, device=words.device)
    return rank[inverse], uniq[order]


@torch.no_grad()
def device_cut(
    model,
    values: np.ndarray,
    *,
    units: str = "counts",
    threshold: float = 0.1,
    min_cluster_size: int | None = None,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
    chunk_rows: int = INFER_CHUNK_ROWS,
) -> np.ndarray:
    """Labels of :func:`scae._features.cut` for an in-memory model, binarizing and hashing on ``model.device``.

    ``values`` is the reconstruction the clusters are cut on (as :func:`scae._features.cut`); the codes are
    recomputed on the device by the network, chunk by chunk, as the forward pass that produced the codes array.
    """
    net, source = model.net, model.row_source()
    device = model.device
    mean, std = model.net.feature_mean.cpu().numpy(), model.net.feature_std.cpu().numpy()
    features, merge_features, scale = _features.cluster_inputs(values, model.X, model.blocks, mean, std, units=units)
    acc = ClusterAccumulator(
        model.n_cells,
        threshold=threshold,
        min_cluster_size=min_cluster_size,
        merge_threshold=merge_threshold,
        n_clusters=n_clusters,
        merge_scale=scale,
    )
    net.eval()
    unit_max = None
    for x in source.chunks(chunk_rows):
        m = net(x).codes.float().amax(0)
        unit_max = m if unit_max is None else torch.maximum(unit_max, m)
    cut = torch.where(unit_max > 0, threshold * unit_max, torch.full_like(unit_max, float("inf")))
    words = torch.cat([pack_words(net(x).codes.float() > cut) for x in source.chunks(chunk_rows)])
    ids, code_words = first_appearance_ids(words)
    del words
    k = code_words.shape[0]
    feature_sums = torch.zeros((k, features.shape[1]), dtype=torch.float64, device=device)
    feature_squares = torch.zeros_like(feature_sums) if merge_features is None else None
    merge_sums = None if merge_features is None else torch.zeros_like(feature_sums)
    merge_squares = None if merge_features is None else torch.zeros_like(feature_sums)
    start = 0
    for x in source.chunks(chunk_rows):
        stop = start + x.shape[0]
        rows = ids[start:stop]
        f = torch.from_numpy(features[start:stop]).to(device, torch.float64)
        feature_sums.index_add_(0, rows, f)
        if merge_sums is None:  # the absorb features are the merge features
            feature_squares.index_add_(0, rows, f * f)
        else:  # merge features of all-mse models: the input rows, already on the device
            x = x.to(torch.float64)
            merge_sums.index_add_(0, rows, x)
            merge_squares.index_add_(0, rows, x * x)
        start = stop
    feature_sums = feature_sums.cpu().numpy()
    acc.set_codes(
        unit_max.cpu().numpy(),
        ids.cpu().numpy(),
        code_words.cpu().numpy().view(np.uint64),
        feature_sums,
        feature_sums.copy() if merge_sums is None else merge_sums.cpu().numpy(),
        (feature_squares if merge_squares is None else merge_squares).cpu().numpy(),
    )
    if acc.needs_absorb():
        for chunk in array_chunks(features, features, merge_features, chunk_rows=chunk_rows)():
            acc.absorb(chunk)
    return acc.labels()
