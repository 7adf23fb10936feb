"""The one pipeline every mode runs: row source → training loop → chunked forward pass → cluster accumulator → sink.

- **Row source** (``model.row_source()``): the rows the model was set up with, as :class:`scae.data.RowSource`
  (in memory, dense or sparse) or :class:`scae._backed.BackedRowSource` (a backed h5ad), restricted to this
  rank's shard under torchrun (:mod:`scae._dist`).
- **Training loop** (:func:`train_model`): :func:`scae.train.train_net` on that source, DDP-wrapped under
  torchrun, with the convergence rule of :mod:`scae._stopping`.
- **Chunked forward pass** (:func:`forward_chunks`): the network over the rows in order, one chunk at a time;
  under torchrun rank 0 receives every rank's chunks (the rank-0 gather).
- **Cluster accumulator** (:class:`scae._accumulator.ClusterAccumulator`): fed with slices of the arrays in
  memory (:func:`scae._features.cut`) or, for backed data, with the chunks of repeated forward passes
  (:func:`stream_outputs`).
- **Sinks**: the arrays of an in-memory fit (:func:`infer_arrays`), or :class:`scae._outofcore.FileSink` for
  ``out_path`` (AnnData I/O stays out of this torch module).

The AnnData contract is written by :mod:`scae._contract` from what the pipeline returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from . import _features, data
from ._accumulator import Chunk, ClusterAccumulator
from ._reproducible import deterministic_algorithms
from ._stopping import StopRule, step_budget, steps_per_epoch
from ._torch_state import trains
from .train import INFER_CHUNK_ROWS, chunk_outputs, fill_arrays, train_net

MAX_AUTO_EPOCHS = 1000


def default_max_epochs(n_cells: int, batch_size: int, n_steps: int | None = None) -> int:
    """Epochs giving about ``n_steps`` optimizer steps (default the step budget of :func:`scae._stopping.step_budget`;
    at least 1, at most ``MAX_AUTO_EPOCHS``): the length of a fit with ``early_stopping=False`` and no ``max_epochs``.
    """
    if n_steps is None:
        n_steps = step_budget(n_cells, batch_size)
    return int(min(MAX_AUTO_EPOCHS, max(1, round(n_steps / steps_per_epoch(n_cells, batch_size)))))


@trains
def train_model(model, max_epochs: int | None, *, progress: bool, early_stopping: bool | None) -> dict:
    """Train ``model.net`` on the model's row source; returns the runtime entries (steps, why it stopped, ...).

    Under torchrun every rank draws ``batch_size // world_size`` cells per step from its shard, the same
    number of steps per epoch on every rank, and the loss values that decide when to stop are averaged.
    """
    n_cells = model.n_cells
    if early_stopping is None:
        early_stopping = max_epochs is None
    stop = None
    if early_stopping:  # the user's max_epochs bounds the steps; without it, the data-sized budget does
        if max_epochs is None:
            budget = step_budget(n_cells, model.batch_size)
        else:
            budget = max_epochs * steps_per_epoch(n_cells, model.batch_size)
        stop = StopRule(max_steps=budget)
    if stop is None and max_epochs is None:
        max_epochs = default_max_epochs(n_cells, model.batch_size)
    t0 = time.perf_counter()
    source = model.row_source()
    t_load = time.perf_counter() - t0
    group = model.group
    rank = 0 if group is None else group.rank
    batch_size = model.batch_size if group is None else max(2, model.batch_size // group.world)
    if group is not None:  # every rank takes the same number of steps per epoch (DDP steps together)
        source.steps = math.ceil(math.ceil(n_cells / group.world) / batch_size)
    start, stop_row = model.shard
    batches = model.batches
    if batches is not None:
        batch_codes = torch.from_numpy(batches.codes[start:stop_row]).to(model.device)
        n_batches, reference = len(batches.categories), batches.reference
    else:
        batch_codes, n_batches, reference = None, 1, 0
    t1 = time.perf_counter()
    with deterministic_algorithms(model.deterministic, model.device):
        result = train_net(
            model.net if group is None else group.wrap(model.net),
            source,
            batch_codes=batch_codes,
            n_batches=n_batches,
            reference=reference,
            weights=model.weights,
            max_epochs=max_epochs,
            batch_size=batch_size,
            learning_rate=model.learning_rate,
            generator=torch.Generator(device=model.device).manual_seed(model.random_state + 1000 * rank),
            progress=progress and rank == 0,
            variants=model.variants,
            autocast_dtype=model.autocast_dtype,
            compile=model.compile,
            reduce_history=None if group is None else group.mean,
            stop=stop,
        )
    t_train = time.perf_counter() - t1
    reason = result.stop_reason
    if reason == "max_steps" and max_epochs is not None and result.epochs == max_epochs:
        reason = "max_epochs"  # the user's bound and the step bound coincide: name the user's
    for k, v in result.history.items():
        model.history.setdefault(k, []).extend(v)
    batch = int(min(model.batch_size, n_cells))
    return {
        "load_s": t_load,
        "train_s": t_train,
        "epochs": int(result.epochs),
        "steps": int(result.steps),
        "stop_reason": reason,
        "max_steps": int(stop.max_steps) if stop is not None else int(result.steps),
        "batch_size": batch,
        "learning_rate": float(model.learning_rate),
        "cuda_graphs": bool(result.graphs),
        "cpu_threads": int(torch.get_num_threads()),  # CPU results depend on it (README "Determinism")
        "train_cells_per_s": result.steps * batch / max(t_train, 1e-9),
    }


@torch.no_grad()
def forward_chunks(
    model, *, counts: str = "counts", rows: bool = False, gene_sets: bool = False, numpy: bool = True
) -> Iterator[dict]:
    """The network over the model's rows in order: one dict of float32 arrays per chunk of rows.

    Keys: ``start`` (first row), ``embedding``, ``codes``, ``reconstruction`` (input units; count blocks in
    ``counts`` units, see :meth:`scae.nn.network.SAUCIENet.predict`), with ``rows`` the input rows, with
    ``gene_sets`` the oriented gene-set activities. Under torchrun every rank runs its shard and rank 0 yields
    every rank's chunks (rank by rank within a step; ``start`` places them); other ranks yield nothing but
    must iterate to the end, as the gathers are collective. ``numpy=False`` (one process only) yields float32
    tensors on the device instead of arrays.
    """
    net = model.net
    net.eval()
    source = model.row_source()
    chunk_rows = min(getattr(source, "block_rows", INFER_CHUNK_ROWS), INFER_CHUNK_ROWS)

    def local():
        start = model.shard[0]
        for x in source.chunks(chunk_rows):
            yield {"start": start, **chunk_outputs(net, x, counts=counts, rows=rows, gene_sets=gene_sets, numpy=numpy)}
            start += x.shape[0]

    group = model.group
    if group is None:
        yield from local()
        return
    mine = local()
    for _ in range(group.max(math.ceil(len(source) / chunk_rows))):
        gathered = group.gather(next(mine, None))
        for item in gathered or ():
            if item is not None:
                yield item


def infer_arrays(model, *, counts: str = "counts") -> dict[str, np.ndarray]:
    """Embedding, codes and reconstruction of every row, float32, each allocated once and filled chunk by chunk."""
    local = model.group is None  # in one process the rows go from the device straight into the arrays
    chunks = ((item.pop("start"), item) for item in forward_chunks(model, counts=counts, numpy=not local))
    return fill_arrays(chunks, model.n_cells)


def cut_labels(model, codes: np.ndarray, values: np.ndarray, *, units: str = "counts", on_device: bool | None = None,
               **options) -> np.ndarray:  # fmt: skip
    """Cluster labels of an in-memory model from its ``codes`` and the reconstruction ``values``.

    On a CUDA model the codes are binarized, packed and hashed on the device (:func:`scae._device_cut.device_cut`,
    the same labels), elsewhere on the host (:func:`scae._features.cut`); ``on_device`` forces either.
    ``options``: ``threshold``, ``min_cluster_size``, ``merge_threshold``, ``n_clusters``.
    """
    if on_device is None:
        on_device = model.device.type == "cuda" and model.group is None
    if on_device:
        from ._device_cut import device_cut

        with deterministic_algorithms(model.deterministic, model.device):
            return device_cut(model, values, units=units, **options)
    mean, std = model.net.feature_mean.cpu().numpy(), model.net.feature_std.cpu().numpy()
    return _features.cut(codes, values, model.X, blocks=model.blocks, mean=mean, std=std, units=units, **options)


def _cluster_chunk(model, item: dict, units: str) -> Chunk:
    mean, std = model.net.feature_mean.cpu().numpy(), model.net.feature_std.cpu().numpy()
    features, merge, _ = _features.cluster_inputs(item["reconstruction"], item["rows"], model.blocks, mean, std,
                                                  units=units)  # fmt: skip
    return Chunk(item["start"], item["codes"], features, merge)


def stream_outputs(model, acc: ClusterAccumulator, *, sink=None, counts: str = "counts", cut_units: str = "counts",
                   imputed_units: str | None = None):  # fmt: skip
    """Streamed outputs of every row (backed data, torchrun): embedding, gene-set activities and labels.

    Pass 1 sends codes and the reconstruction (in ``counts`` units) to ``sink`` chunk by chunk and keeps the
    embedding; passes 2 and 3 re-run the network to feed ``acc`` (reconstruction in ``cut_units``). With
    ``imputed_units`` (batch-corrected fits that also keep imputed values) one more pass sends ``"imputed"``:
    the reconstruction in those units, each batch put back to its own per-feature mean and spread for
    all-``mse`` models (as :meth:`scae.SAUCIE.get_reconstruction`). Only the embedding, gene-set activities
    and one label per cell are held. Returns ``(embedding, activities or None, labels)``; labels are ``None``
    on ranks other than 0.
    """
    n = model.n_cells
    want_sets = model.gene_set_mask is not None
    restore = imputed_units is not None and model.plain and model.batches is not None and model.weights.lambda_b != 0
    moments = _BatchMoments(model) if restore else None
    embedding = activities = None
    for item in forward_chunks(model, counts=counts, gene_sets=want_sets, rows=restore):
        a, m = item["start"], item["codes"].shape[0]
        if embedding is None:
            embedding = np.empty((n, item["embedding"].shape[1]), dtype=np.float32)
            activities = np.empty((n, item["gene_sets"].shape[1]), dtype=np.float32) if want_sets else None
        embedding[a : a + m] = item["embedding"]
        if want_sets:
            activities[a : a + m] = item["gene_sets"]
        acc.add_max(item["codes"])
        if moments is not None:
            moments.add(a, item["rows"], item["reconstruction"])
        if sink is not None:
            sink.write("codes", a, item["codes"])
            sink.write("reconstruction", a, item["reconstruction"])
    if imputed_units is not None:
        for item in forward_chunks(model, counts=imputed_units):
            rec = item["reconstruction"] if moments is None else moments.restore(item["start"], item["reconstruction"])
            if sink is not None:
                sink.write("imputed", item["start"], rec)
    for item in forward_chunks(model, counts=cut_units, rows=True):
        acc.add_codes(_cluster_chunk(model, item, cut_units))
    main = model.group is None or model.group.is_main
    absorb = acc.needs_absorb() if main else False
    if model.group is not None:
        absorb = model.group.broadcast(absorb)
    if absorb:
        for item in forward_chunks(model, counts=cut_units, rows=True):
            acc.absorb(_cluster_chunk(model, item, cut_units))
    return embedding, activities, (acc.labels() if main else None)


class _BatchMoments:
    """Per-batch feature sums of the input and of the reconstruction, to put each batch back to its own moments
    (the streamed form of :func:`scae.data.restore_batch_moments`).
    """

    def __init__(self, model) -> None:
        self.codes = model.batches.codes
        self.k = len(model.batches.categories)
        self.sums = np.zeros((2, 2, self.k, model.n_features))  # (input, reconstruction) × (sum, square sum)
        self.counts = np.bincount(self.codes, minlength=self.k)

    def add(self, start: int, rows: np.ndarray, rec: np.ndarray) -> None:
        """Fold in the cells ``start:start + len(rows)``."""
        codes = self.codes[start : start + rows.shape[0]]
        self.sums[0] += data.batch_sums(rows, codes, self.k)
        self.sums[1] += data.batch_sums(rec, codes, self.k)

    def restore(self, start: int, rec: np.ndarray) -> np.ndarray:
        """``rec`` of the cells from ``start`` with each batch shifted and scaled to its input moments."""
        return data.moments_restore(rec, self.codes[start : start + rec.shape[0]], self.sums, self.counts)


def categorical_labels(labels: np.ndarray) -> pd.Categorical:
    """Cluster labels ``0..k-1`` as the categorical column scae writes (categories ``"0"``, ``"1"``, ...)."""
    k = int(labels.max()) + 1
    return pd.Categorical.from_codes(labels, categories=[str(i) for i in range(k)])
