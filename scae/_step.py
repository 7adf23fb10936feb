"""One optimizer step, run eagerly or replayed from a CUDA graph, with the loss sums kept on the device.

:class:`Step` runs forward, every loss term, backward and the Adam update for the minibatch of a given index
tensor, and adds the loss values to two device tensors: the sums of every term over the epoch and the sum of
the total over the current window of the convergence rule. The host reads them once per window and once per
epoch (:meth:`Step.read_window`, :meth:`Step.read_epoch`), so a step never waits for the host.

On CUDA, with an in-memory dense source and no random variants, :class:`GraphStep` captures the whole step
(sampling excepted) as a CUDA graph after two eager warm-up steps per minibatch shape, and replays it: one
launch instead of a few hundred small kernels per step, which is most of a step of the default network at
the CUDA minibatch. The eager step and the replayed one run the same kernels on the same values; only the
launches differ (``tests/test_cuda.py`` compares their losses). Set the environment variable
``SCAE_CUDA_GRAPHS=0`` to train eagerly. If a capture fails, a warning says so and training goes on eagerly.
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("scae")

#: Eager steps of each minibatch shape before that shape's step is captured (lazy initialisations: Adam's
#: state, cuBLAS workspaces, the autograd engine's device threads must not happen inside a capture).
WARMUP_STEPS = 2


def cuda_graphs_enabled() -> bool:
    """Whether CUDA fits may replay captured steps (``SCAE_CUDA_GRAPHS`` unset or not ``"0"``)."""
    return os.environ.get("SCAE_CUDA_GRAPHS", "1").strip() not in ("0", "false", "False", "no")


class Step:
    """Eager training step: ``step(idx)`` trains on rows ``idx`` of ``source`` and adds the losses to device sums.

    ``terms`` are the names of the loss terms (in the order of the first step); ``read_epoch`` returns their
    sums since the last call, ``read_window`` the sum of ``"total"`` since its last call (one host read each).
    """

    #: whether a CUDA graph capture failed (:class:`GraphStep`); an eager step never captures
    failed = False

    def __init__(self, net, optimizer, loss_fn, source, batch_codes, kwargs: dict, zero_grad=None) -> None:
        self.net, self.optimizer, self.loss_fn = net, optimizer, loss_fn
        self.zero_grad = zero_grad or (lambda: optimizer.zero_grad(set_to_none=True))
        self.source, self.batch_codes, self.kwargs = source, batch_codes, kwargs
        self.terms: list[str] | None = None
        self.epoch_sums: torch.Tensor | None = None
        self.window_sum: torch.Tensor | None = None

    def body(self, idx: torch.Tensor) -> None:
        """Forward, losses, backward, Adam update and the loss sums for rows ``idx`` (what a graph captures)."""
        x = self.source.rows(idx)
        b = None if self.batch_codes is None else self.batch_codes.index_select(0, idx)
        terms = self.loss_fn(self.net, x, b, **self.kwargs)
        self.zero_grad()
        terms["total"].backward()
        self.optimizer.step()
        if self.terms is None:
            self.terms = list(terms)
            self._total = self.terms.index("total")
            self.epoch_sums = torch.zeros(len(self.terms), device=terms["total"].device, dtype=torch.float32)
            self.window_sum = torch.zeros((), device=terms["total"].device, dtype=torch.float32)
        values = torch.stack([terms[k].detach().float() for k in self.terms])
        self.epoch_sums.add_(values)
        self.window_sum.add_(values[self._total])

    def __call__(self, idx: torch.Tensor) -> None:
        self.body(idx)

    @property
    def replayed(self) -> bool:
        """Whether steps were replayed from CUDA graphs."""
        return False

    def release(self) -> None:
        """Free what the steps hold beyond the network and optimizer (nothing for eager steps)."""

    def read_window(self) -> float:
        """Sum of the total loss since the last call (then reset)."""
        value = float(self.window_sum)
        self.window_sum.zero_()
        return value

    def read_epoch(self) -> dict[str, float]:
        """Sum of every loss term since the last call (then reset)."""
        values = self.epoch_sums.tolist()
        self.epoch_sums.zero_()
        return dict(zip(self.terms, values, strict=True))


class GraphStep(Step):
    """:class:`Step` replayed from CUDA graphs, one per minibatch shape (the last minibatch of an epoch can be short).

    Each shape runs :data:`WARMUP_STEPS` eager steps on a side stream, then its step is captured into a graph
    whose index buffer receives the indices of every later step of that shape. Each graph has its own memory
    pool, and the gradients are released before each capture, so every graph writes its own gradients and
    its Adam update reads them.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.seen: dict[int, int] = {}
        self.failed = False
        self.replays = 0

    def __call__(self, idx: torch.Tensor) -> None:
        if self.failed:
            self.body(idx)
            return
        n = int(idx.shape[0])
        entry = self.graphs.get(n)
        if entry is not None:
            entry[1].copy_(idx)
            entry[0].replay()
            self.replays += 1
            return
        self.seen[n] = self.seen.get(n, 0) + 1
        if self.seen[n] <= WARMUP_STEPS:
            side = torch.cuda.Stream(device=idx.device)
            side.wait_stream(torch.cuda.current_stream(idx.device))
            with torch.cuda.stream(side):
                self.body(idx)
            torch.cuda.current_stream(idx.device).wait_stream(side)
            return
        static_idx = idx.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.body(static_idx)
        except Exception as e:  # noqa: BLE001 - any capture failure: train eagerly
            logger.warning("CUDA graph capture failed (%s: %s); training eagerly", type(e).__name__, str(e)[:200])
            self.failed = True
            self.graphs.clear()
            torch.cuda.synchronize(idx.device)
            self.body(idx)
            return
        self.graphs[n] = (graph, static_idx)
        graph.replay()  # a capture records the step without running it
        self.replays += 1

    @property
    def replayed(self) -> bool:
        return self.replays > 0 and not self.failed

    def release(self) -> None:
        """Free the graphs and their pools (the gradients captured in them go with them)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.graphs.clear()


def make_step(
    net, source, batch_codes, losses, kwargs: dict, *, learning_rate: float, autocast_dtype, compile: bool,
    distributed: bool, graphs: bool | None = None,
) -> Step:  # fmt: skip
    """The step of :func:`scae.train.train_net`: fused Adam, the loss function ``losses(net, x, batch, **kwargs)``
    (with autocast, ``torch.compile``) and :class:`GraphStep` where :func:`graph_capable` allows it (``graphs``
    forces either). Eager CPU steps outside ``compile`` and torchrun update one flat parameter vector
    (:func:`scae._fast.flat_adam`); CUDA steps under bf16 autocast cast the linear layers' weights as one vector
    (:class:`CastWeights`).
    """
    from ._fast import adam, can_flatten, flat_adam, step_function

    device = next(net.parameters()).device
    variants = kwargs["variants"]
    if graphs is None:
        graphs = graph_capable(net, source, device=device, variants=variants, distributed=distributed)
    params = net.parameters()
    if autocast_dtype is not None and device.type == "cuda" and not (compile or distributed) and _linear(net):
        cast = CastWeights(net, autocast_dtype)
        losses, params = cast.wrap(losses), cast.parameters()
    loss_fn = step_function(losses, device=device, autocast_dtype=autocast_dtype, compile=compile)
    if not (graphs or compile or distributed) and can_flatten(net, device):
        optimizer, zero_grad = flat_adam(net, learning_rate)
        return Step(net, optimizer, loss_fn, source, batch_codes, kwargs, zero_grad=zero_grad)
    optimizer = adam(params, learning_rate, device, capturable=graphs)
    return (GraphStep if graphs else Step)(net, optimizer, loss_fn, source, batch_codes, kwargs)


def _linear(net: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` of the trainable float32 weights and biases of the plain linear layers of ``net``."""
    return [
        (f"{m_name}.{p_name}" if m_name else p_name, p)
        for m_name, m in net.named_modules()
        if type(m) is torch.nn.Linear
        for p_name, p in m.named_parameters(recurse=False)
        if p.requires_grad and p.dtype == torch.float32
    ]


class CastWeights:
    """The float32 weights and biases of the network's linear layers as one vector, cast once per step (autocast).

    Autocast casts every weight and bias of a linear layer to bfloat16 where the layer runs, and casts each
    gradient back: two kernels per tensor each way, about 40 of a step of the default network, which on CUDA
    cost more than bfloat16 saves in the matrix products at the CUDA minibatch. Here the parameters become
    views into one float32 vector (the optimizer updates the vector), the step casts the vector once, and the
    layers run on views of the cast (:func:`torch.func.functional_call`); the gradients come back as one
    concatenation and one cast. The products and the loss terms are those of autocast with separate casts.
    """

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype) -> None:
        self.net, self.dtype = net, dtype
        entries = _linear(net)
        self.names = [f"net.{name}" for name, _ in entries]
        self.shapes = [p.shape for _, p in entries]
        self.sizes = [p.numel() for _, p in entries]
        flat = torch.empty(sum(self.sizes), dtype=torch.float32, device=entries[0][1].device)
        start = 0
        for (_, p), size in zip(entries, self.sizes, strict=True):
            flat[start : start + size].copy_(p.detach().reshape(-1))
            p.data = flat[start : start + size].view_as(p)  # the network keeps (and saves) the trained values
            start += size
        self.vector = torch.nn.Parameter(flat)
        cast = {id(p) for _, p in entries}
        self.others = [p for p in net.parameters() if p.requires_grad and id(p) not in cast]

    def parameters(self) -> list[torch.Tensor]:
        """What the optimizer updates: the vector and the parameters outside linear layers."""
        return [self.vector, *self.others]

    def wrap(self, losses):
        """``losses(net, x, batch, **kwargs)`` with the linear layers on one cast of the vector."""
        call = _Losses(losses, self.net)

        def run(net, x, batch, **kwargs):  # noqa: ARG001 - ``net`` is the network of __init__, held by ``call``
            pieces = self.vector.to(self.dtype).split(self.sizes)
            weights = {n: t.view(s) for n, t, s in zip(self.names, pieces, self.shapes, strict=True)}
            return torch.func.functional_call(call, weights, (x, batch), kwargs)

        return run


class _Losses(torch.nn.Module):
    """``losses(self.net, ...)`` as a module's forward, so :func:`torch.func.functional_call` can swap its weights."""

    def __init__(self, losses, net: torch.nn.Module) -> None:
        super().__init__()
        self.losses, self.net = losses, net

    def forward(self, x, batch, **kwargs):
        return self.losses(self.net, x, batch, **kwargs)


def graph_capable(net, source, *, device: torch.device, variants, distributed: bool) -> bool:
    """Whether the step of this fit can be captured: CUDA, dense rows on the device, no randomness in the step.

    Random variants (input dropout or noise, a variational embedding), distributed training, sparse or backed
    sources and the contractive term (a double backward) train eagerly. A ``compile=True`` step is captured
    too: the eager warm-up steps of each minibatch shape compile it, the graph replays the compiled kernels
    (default network, minibatch 4,096, float32: 6.2 M cells/s on one H200 after ~20 s of compiling; uncompiled
    4.6 M on an H100).
    """
    if device.type != "cuda" or distributed or not cuda_graphs_enabled():
        return False
    if getattr(source, "_dense", None) is None or hasattr(source, "make_sampler"):
        return False
    if getattr(net, "variational", False):
        return False
    return variants.input_dropout == 0 and variants.input_noise == 0 and variants.contractive == 0
