"""The training loop (pure torch): minibatches drawn on the device, per-term loss history per epoch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from . import losses, objectives
from ._align import align, fit_constants, rows_alignment
from ._stopping import Convergence, StopRule
from ._torch_state import computes
from .nn.clustering_head import ClusterLosses
from .nn.network import SAUCIENet
from .objectives import Variants

NO_VARIANTS = Variants()

#: Rows per forward pass at inference: bounds the activations held at once (65,536 cells × 512 units of the
#: default network = 128 MB per layer), whatever the size of the blocks read from disk.
INFER_CHUNK_ROWS = 65536


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (names follow the SAUCIE paper)."""

    lambda_b: float = 0.1
    lambda_c: float = 0.1
    lambda_d: float = 0.2
    nonref_weight: float = 1.0
    #: how non-reference batches are reconstructed: "moments" (inputs moved to the reference batch's
    #: per-feature mean/std), "zscore" (per-batch standardized MSE) or "distance" (within-batch pairwise
    #: distances kept)
    nonref_loss: str = "moments"
    #: the pairwise terms (MMD, within-cluster distance, "distance" reconstruction) cost O(batch²) and are
    #: computed on an evenly strided subset of at most this many cells of each minibatch (stratified when
    #: the minibatch is: the sampler lays batches out in equal contiguous runs); ``None`` uses all cells
    pairwise_cells: int | None = 256


def pairwise_subset(n_rows: int, pairwise_cells: int | None) -> slice:
    """Rows of a minibatch used by the pairwise terms: every ``ceil(n_rows / pairwise_cells)``-th row."""
    if pairwise_cells is None or n_rows <= pairwise_cells:
        return slice(None)
    return slice(None, None, math.ceil(n_rows / pairwise_cells))


def host_generator(generator: torch.Generator) -> torch.Generator:
    """``generator`` itself on the CPU; elsewhere a CPU generator with the same seed (see :class:`Sampler`)."""
    if generator.device.type == "cpu":
        return generator
    return torch.Generator().manual_seed(generator.initial_seed())


class Sampler:
    """Draws minibatch indices for rows held on ``device``; stratified by batch when batch codes are given.

    Without batches, each epoch is a random permutation cut into minibatches. With batches, every
    minibatch holds the same number of cells from each batch (drawn with replacement within a batch), so
    small batches are always present next to the reference.

    The random numbers come from ``generator``. A CPU generator for rows on a GPU draws each epoch's numbers
    at once on the CPU (one copy to the device per epoch): the same numbers as a CPU fit with the same seed
    draws step by step, so a CUDA fit sees the minibatches of the CPU fit of the same seed.
    """

    def __init__(
        self,
        n_cells: int,
        batch_size: int,
        *,
        batch_codes: torch.Tensor | None,
        n_batches: int,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        self.n_cells = n_cells
        self.batch_size = min(batch_size, n_cells)
        self.generator = generator
        self.device = device
        self.batch_codes = batch_codes
        self.steps_per_epoch = max(1, math.ceil(n_cells / self.batch_size))
        self._per_epoch = generator.device.type != device.type
        if batch_codes is not None:
            order = torch.argsort(batch_codes, stable=True)
            counts = torch.bincount(batch_codes, minlength=n_batches)
            self._order = order
            self._sizes = counts.to(torch.float32)
            self._starts = torch.cumsum(counts, 0) - counts
            per_batch = max(1, self.batch_size // n_batches)
            self._which = torch.arange(n_batches, device=device).repeat_interleave(per_batch)

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self.generator.device, dtype=torch.float32).to(
            self.device
        )

    def epoch(self):
        """Yield the index tensors of one epoch."""
        if self.batch_codes is None:
            perm = torch.randperm(self.n_cells, generator=self.generator, device=self.generator.device)
            perm = perm.to(self.device)
            for s in range(self.steps_per_epoch):
                yield perm[s * self.batch_size : (s + 1) * self.batch_size]
            return
        n = self._which.shape[0]
        if self._per_epoch:  # every index of the epoch at once: no kernel launches between the steps
            drawn = self._rand(self.steps_per_epoch, n)
            rows = self._order[self._starts[self._which] + (drawn * self._sizes[self._which]).long()]
            yield from rows
            return
        for _ in range(self.steps_per_epoch):
            u = self._rand(n)
            pos = self._starts[self._which] + (u * self._sizes[self._which]).long()
            yield self._order[pos]


def compute_losses(
    net: SAUCIENet,
    x: torch.Tensor,
    batch: torch.Tensor | None,
    *,
    weights: LossWeights,
    reference: int,
    n_batches: int,
    variants: Variants = NO_VARIANTS,
    generator: torch.Generator | None = None,
    pair_projection: torch.Tensor | None = None,
    batch_alignment: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """All loss terms for one minibatch ``x`` (input units); key ``"total"`` is the weighted sum.

    The reconstruction is routed to each block's likelihood by :func:`scae.objectives.reconstruction_loss`;
    ``variants`` adds the seed-variant terms (:mod:`scae.objectives`), drawing noise from ``generator``.
    The within-cluster term measures distances on ``z @ pair_projection`` when given (:mod:`scae._pair_space`).
    When correcting batches, it and the ``"moments"`` reconstruction use the inputs aligned onto the reference
    batch by ``batch_alignment`` (:mod:`scae._align`), or by the minibatch's own moments when not given.
    """
    z = net.encoder_input(x)
    sub = pairwise_subset(x.shape[0], weights.pairwise_cells)
    aligned = z
    if batch is not None and weights.lambda_b > 0:
        if batch_alignment is None:  # a caller without the fit's alignment: this minibatch's moments
            batch_alignment = rows_alignment(z, batch, reference=reference, n_batches=n_batches)
        aligned = align(z, batch, batch_alignment)
    pairs = aligned[sub].detach()
    if pair_projection is not None:
        pairs = pairs @ pair_projection
    request = None
    if weights.lambda_c > 0 or weights.lambda_d > 0:
        request = ClusterLosses(pairs, sub.step or 1, weights.lambda_c > 0, weights.lambda_d > 0)
    out, z_in = objectives.forward_train(net, x, z, variants, generator, cluster_losses=request)
    terms: dict[str, torch.Tensor] = {}
    if batch is None or weights.lambda_b == 0:
        terms["reconstruction"], block_terms = objectives.reconstruction_loss(net, x, z, out)
    else:
        is_ref = (batch == reference).to(z.dtype)
        row_err, block_terms = objectives.reconstruction_loss(net, x, z, out, per_cell=True)
        block_terms = {k: (v * is_ref).sum() / is_ref.sum().clamp_min(1.0) for k, v in block_terms.items()}
        ref_term = (row_err * is_ref).sum() / is_ref.sum().clamp_min(1.0)
        pred = net.standardized_prediction(x, out)
        if weights.nonref_loss == "distance":
            z_nonref = losses.within_batch_distance_mse(z[sub], pred[sub], batch[sub], reference=reference)
        elif weights.nonref_loss == "zscore":
            z_nonref = losses.batch_standardized_mse(z, pred, batch, n_batches=n_batches)
        else:
            z_nonref = losses.reference_moments_mse(aligned, pred, batch, reference=reference)
        terms["reconstruction"] = ref_term + weights.nonref_weight * z_nonref
        terms["mmd"] = losses.mmd(out.embedding[sub], batch[sub], reference=reference, n_batches=n_batches)
    if out.cluster_losses is not None:  # computed with the clustering layer (scae.nn.clustering_head)
        terms.update(out.cluster_losses)
    else:
        if weights.lambda_c > 0:
            terms["id_regularization"] = losses.id_regularization(out.codes)
        if weights.lambda_d > 0:
            terms["within_cluster"] = losses.within_cluster_distance(pairs, out.codes[sub])
    extra = objectives.variant_terms(net, out, z_in, variants)
    total = terms["reconstruction"]
    for name, lam in (
        ("mmd", weights.lambda_b),
        ("id_regularization", weights.lambda_c),
        ("within_cluster", weights.lambda_d),
    ):
        if name in terms:
            total = total + lam * terms[name]
    if extra:
        total = total + objectives.weighted_variant_total(extra, variants)
    terms.update(extra)
    terms.update({f"reconstruction_{k}": v.detach() for k, v in block_terms.items()})
    terms["total"] = total
    return terms


@dataclass
class TrainResult:
    """What :func:`train_net` did: per-epoch loss means, steps and epochs taken, and why it stopped."""

    history: dict[str, list[float]]
    steps: int
    epochs: int
    stop_reason: str  # one of scae._stopping.STOP_REASONS
    graphs: bool = False  # whether steps were replayed from CUDA graphs (scae._step.GraphStep)


def train_net(
    net: SAUCIENet,
    source,
    *,
    batch_codes: torch.Tensor | None,
    n_batches: int,
    reference: int,
    weights: LossWeights,
    max_epochs: int | None,
    batch_size: int,
    learning_rate: float,
    generator: torch.Generator,
    progress: bool = True,
    variants: Variants = NO_VARIANTS,
    autocast_dtype: torch.dtype | None = None,
    compile: bool = False,
    reduce_history=None,
    stop: StopRule | None = None,
    graphs: bool | None = None,
) -> TrainResult:
    """Train ``net`` on rows of ``source``; the result holds the per-epoch mean of every loss term.

    Loss values stay on the device and are read once per epoch (and once per ``stop.window`` steps when a
    convergence rule is given), so the training step rarely waits for the host. Training ends after
    ``max_epochs`` passes, or with ``stop`` (:class:`scae._stopping.StopRule`) when the loss has converged
    or after ``stop.max_steps`` steps, whichever comes first (a last partial epoch counts as an epoch in
    the history). A ``source`` with a ``make_sampler`` method (backed data, shards) supplies its own
    sampler. ``autocast_dtype`` (e.g. ``torch.bfloat16``) runs the step under autocast; ``compile`` uses
    ``torch.compile`` on the loss (see :mod:`scae._fast`). ``reduce_history(dict) -> dict`` averages loss
    values across processes (distributed training), so every process takes the same decisions. ``graphs``
    replays the step from CUDA graphs (:class:`scae._step.GraphStep`); default: where
    :func:`scae._step.graph_capable` allows it.
    """
    from ._step import make_step

    if max_epochs is None and stop is None:
        msg = "train_net needs `max_epochs`, a stop rule, or both"
        raise ValueError(msg)
    device = next(net.parameters()).device
    make_sampler = getattr(source, "make_sampler", None)  # minibatches in memory: a CPU generator (see Sampler)
    make_sampler, sampling = (Sampler, host_generator(generator)) if make_sampler is None else (make_sampler, generator)
    sampler = make_sampler(
        len(source), batch_size, batch_codes=batch_codes, n_batches=n_batches, generator=sampling, device=device
    )
    kwargs = {"weights": weights, "reference": reference, "n_batches": n_batches, "variants": variants}
    kwargs["generator"] = generator
    step = make_step(
        net, source, batch_codes, compute_losses, kwargs, learning_rate=learning_rate, autocast_dtype=autocast_dtype,
        compile=compile, distributed=reduce_history is not None, graphs=graphs,
    )  # fmt: skip
    reduce = reduce_history or (lambda means: means)
    check = _StopCheck(stop, reduce) if stop is not None else None
    history: dict[str, list[float]] = {}
    steps, epochs, reason = 0, 0, "max_epochs"
    net.train()
    total_epochs = max_epochs if max_epochs is not None else math.ceil(stop.max_steps / sampler.steps_per_epoch)
    bar = tqdm(total=total_epochs, desc="scae", unit="epoch", disable=not progress, leave=False)
    try:
        while max_epochs is None or epochs < max_epochs:
            n_epoch_steps = 0
            for idx in sampler.epoch():
                if steps == 0:  # the batch alignment and the axes of the within-cluster distances
                    kwargs.update(fit_constants(net, source, idx, batch_codes, kwargs, reduce_history is not None))
                step(idx)
                steps += 1
                n_epoch_steps += 1
                if check is not None and (reason := check.after_step(step, steps)) != "max_epochs":
                    break
            epochs += 1
            means = _record_epoch(history, step.read_epoch(), n_epoch_steps, reduce)
            bar.update(1)
            bar.set_postfix(loss=f"{means['total']:.4f}", steps=steps, refresh=False)
            if reason != "max_epochs":
                break
    finally:
        bar.close()
        step.release()
    net.eval()
    return TrainResult(history=history, steps=steps, epochs=epochs, stop_reason=reason, graphs=step.replayed)


class _StopCheck:
    """The convergence rule inside the step loop: the window means of the total loss (averaged over processes)."""

    def __init__(self, stop: StopRule, reduce) -> None:
        self.stop, self.reduce = stop, reduce
        self.monitor = Convergence(stop)

    def after_step(self, step, steps: int) -> str:
        """``"converged"``/``"max_steps"`` when training must stop after step ``steps``, else ``"max_epochs"``.

        ``step`` (:class:`scae._step.Step`) holds the window's sum of the total loss on the device.
        """
        if steps % self.stop.window == 0:
            mean = self.reduce({"total": step.read_window() / self.stop.window})["total"]
            if self.monitor.update(mean, steps):
                return "converged"
        return "max_steps" if steps >= self.stop.max_steps else "max_epochs"


def _record_epoch(history: dict, sums: dict, n_steps: int, reduce) -> dict[str, float]:
    """Append the epoch's mean of every loss term to ``history``; a non-finite mean stops training."""
    means = reduce({k: v / n_steps for k, v in sums.items()})
    for k, v in means.items():
        history.setdefault(k, []).append(v)
    if not all(math.isfinite(v) for v in means.values()):
        msg = f"training diverged (non-finite loss {means}); lower `learning_rate` or check the input transform"
        raise FloatingPointError(msg)
    return means


@computes
@torch.no_grad()
def chunk_outputs(
    net: SAUCIENet,
    x: torch.Tensor,
    *,
    counts: str = "counts",
    rows: bool = False,
    gene_sets: bool = False,
    numpy: bool = True,
) -> dict:
    """The network on one chunk of rows ``x``: float32 ``embedding``, ``codes`` and ``reconstruction``.

    ``reconstruction`` is in input units (count blocks as ``counts``: see :meth:`SAUCIENet.predict`); with
    ``rows`` also the input rows, with ``gene_sets`` the oriented gene-set activities. ``numpy=False`` keeps
    them as float32 tensors on the network's device (:func:`fill_arrays` copies them into place).
    """
    out = net(x)
    item = {
        "embedding": out.embedding.float(),
        "codes": out.codes.float(),
        "reconstruction": net.predict(x, out, counts=counts).float(),
    }
    if rows:
        item["rows"] = x.float()
    if gene_sets:
        item["gene_sets"] = net.gene_set_activities(x).float()
    return {k: v.cpu().numpy() for k, v in item.items()} if numpy else item


def fill_arrays(chunks, n_rows: int) -> dict[str, np.ndarray]:
    """Arrays of ``n_rows`` rows from ``(start, {name: rows})`` chunks, each allocated once and filled in place.

    No list of chunks to concatenate, which would hold every output twice at the end. Rows given as tensors
    (on any device) are copied straight into the arrays, without an intermediate host copy (10^7 cells ×
    256 code units: 10 GB that would otherwise be allocated and copied twice).
    """
    arrays: dict[str, np.ndarray] = {}
    for start, item in chunks:
        for k, v in item.items():
            if k not in arrays:
                arrays[k] = np.empty((n_rows, v.shape[1]), dtype=np.float32)
            if isinstance(v, torch.Tensor):
                torch.from_numpy(arrays[k][start : start + v.shape[0]]).copy_(v)
            else:
                arrays[k][start : start + v.shape[0]] = v
    return arrays


def infer(
    net: SAUCIENet, source, *, chunk_size: int = INFER_CHUNK_ROWS, counts: str = "counts"
) -> dict[str, np.ndarray]:
    """Embedding, codes and reconstruction of every row of ``source`` (:func:`chunk_outputs`, :func:`fill_arrays`).

    Clustering features are derived from ``reconstruction`` (:mod:`scae._features`), so nothing else is kept.
    """
    net.eval()

    def chunks():
        start = 0
        for x in source.chunks(chunk_size):
            yield start, chunk_outputs(net, x, counts=counts, numpy=False)
            start += x.shape[0]

    return fill_arrays(chunks(), len(source))


@computes
@torch.no_grad()
def infer_gene_sets(net: SAUCIENet, source, *, chunk_size: int = INFER_CHUNK_ROWS) -> torch.Tensor:
    """Oriented gene-set node activities ``(n_cells, n_sets)`` of every row, gathered on the CPU."""
    net.eval()
    return torch.cat([net.gene_set_activities(x).cpu() for x in source.chunks(chunk_size)])
