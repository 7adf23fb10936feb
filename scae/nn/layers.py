"""Layers: MLP blocks and the gene-set masked linear layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(sizes: Sequence[int], *, negative_slope: float = 0.2, last_activation: bool = True) -> nn.Sequential:
    """Stack of ``Linear`` + ``LeakyReLU`` layers.

    Parameters
    ----------
    sizes
        Layer widths ``[n_in, h1, ..., n_out]``.
    negative_slope
        Slope of the leaky ReLU (0.2 as in SAUCIE).
    last_activation
        Whether the last linear layer is followed by an activation.

    Notes
    -----
    The activations work in place on the linear layer's output (which its backward does not need): one
    ``(n, width)`` buffer less per layer, on two CPU cores where a step waits on memory more than on arithmetic.
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope, inplace=True))
    return nn.Sequential(*layers)


class MaskedLinear(nn.Linear):
    """Linear layer whose weight is multiplied by a fixed 0/1 mask in every forward pass.

    Parameters
    ----------
    mask
        Tensor of shape ``(n_in, n_out)``: ``mask[i, j] = 1`` when input ``i`` may feed output ``j``
        (for gene sets: genes × sets).
    bias
        Whether to learn a bias.
    nonnegative_init
        Draw the initial weights inside the mask from ``[0, 1)`` instead of ``[-1, 1)`` (scaled the same way),
        so that every output starts as a positively weighted sum of its inputs. For gene-set nodes this makes
        each node start as a score of its set (genes up → node up); training then refines the weights.
    nonnegative_outputs
        The first this many outputs use the absolute values of their weights (:meth:`effective_weight`):
        they stay positively weighted sums of their inputs throughout training (see
        :class:`~scae.nn.SAUCIENet`'s ``nonnegative_sets``).

    Notes
    -----
    Weights outside the mask are zeroed at init and receive zero gradient through the product, so they
    stay exactly zero during training. The init is scaled by the number of inputs of each output node
    so that nodes of large and small sets start with comparable activations.
    """

    def __init__(
        self, mask: torch.Tensor, *, bias: bool = True, nonnegative_init: bool = False, nonnegative_outputs: int = 0
    ) -> None:
        n_in, n_out = mask.shape
        super().__init__(n_in, n_out, bias=bias)
        self.register_buffer("mask", mask.T.to(torch.float32).contiguous())
        self.nonnegative_outputs = int(nonnegative_outputs)  # a plain attribute: set to 0 for signed weights
        with torch.no_grad():
            fan_in = self.mask.sum(1, keepdim=True).clamp_min(1.0)
            self.weight.uniform_(0.0 if nonnegative_init else -1.0, 1.0)
            self.weight.mul_(self.mask / fan_in.sqrt())

    def effective_weight(self) -> torch.Tensor:
        """The ``(n_out, n_in)`` weight the forward pass uses: masked, absolute values on the non-negative outputs."""
        w = self.weight * self.mask
        k = self.nonnegative_outputs
        return torch.cat((w[:k].abs(), w[k:])) if k else w

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return nn.functional.linear(x, self.effective_weight(), self.bias)


def relu_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``relu(layer(x))``, the clustering layer; while training on the CPU with a gradient-free backward for
    the units that are zero for every row (:class:`_SparseReluLinear`).

    Once the ID regularization has acted, a few dozen of the 256 clustering units fire in a minibatch; the
    others have zero gradient, so the two backward matrix products run over the active units only (the same
    values; a fifth of the arithmetic). Elsewhere (CUDA, whose steps may be captured as graphs with fixed
    shapes; ``torch.compile``; inference; autocast) it is the plain composition.
    """
    weight = getattr(layer, "weight", None)
    if (
        type(layer) is not nn.Linear
        or not torch.is_grad_enabled()
        or x.device.type != "cpu"
        or not (x.requires_grad or weight.requires_grad)
        or torch.is_autocast_enabled("cpu")
        or torch.compiler.is_compiling()
    ):
        return torch.relu(layer(x))
    return _SparseReluLinear.apply(x, layer.weight, layer.bias)


class _SparseReluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = torch.relu(nn.functional.linear(x, weight, bias))
        ctx.save_for_backward(x, weight, out)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, out = ctx.saved_tensors
        live = out > 0
        grad = grad.masked_fill(~live, 0.0)  # through the ReLU
        cols = live.any(0).nonzero().squeeze(1)
        g = grad.index_select(1, cols)  # (n, active units)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g @ weight.index_select(0, cols)
        if ctx.needs_input_grad[1]:
            gw = weight.new_zeros(weight.shape).index_copy_(0, cols, g.T @ x)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = weight.new_zeros(weight.shape[0]).index_copy_(0, cols, g.sum(0))
        return gx, gw, gb
