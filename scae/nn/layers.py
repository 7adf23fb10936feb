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
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope))
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

    Notes
    -----
    Weights outside the mask are zeroed at init and receive zero gradient through the product, so they
    stay exactly zero during training. The init is scaled by the number of inputs of each output node
    so that nodes of large and small sets start with comparable activations.
    """

    def __init__(self, mask: torch.Tensor, *, bias: bool = True, nonnegative_init: bool = False) -> None:
        n_in, n_out = mask.shape
        super().__init__(n_in, n_out, bias=bias)
        self.register_buffer("mask", mask.T.to(torch.float32).contiguous())
        with torch.no_grad():
            fan_in = self.mask.sum(1, keepdim=True).clamp_min(1.0)
            self.weight.uniform_(0.0 if nonnegative_init else -1.0, 1.0)
            self.weight.mul_(self.mask / fan_in.sqrt())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return nn.functional.linear(x, self.weight * self.mask, self.bias)
