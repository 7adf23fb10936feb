"""The clustering layer, the output layer and SAUCIE's two clustering-layer losses as one autograd node (CPU).

Once the ID regularization has acted, a few dozen of the 256 clustering units fire in a minibatch. Every
gradient that reaches the clustering layer (from the reconstruction, the ID regularization and the
within-cluster distance) is zero for the silent units, so :class:`_ClusteringHead` computes the layer and its
losses once, keeps the active columns, and runs the whole backward pass on them: no ``(n_cells, 256)``
gradient is built, added or masked, and the matrix products shrink to the active units. On two CPU cores,
where a training step waits on memory more than on arithmetic, that is about a fifth of the step of the
default network. The values are those of the plain composition (the silent units add exact zeros).

Used by :meth:`scae.nn.SAUCIENet.forward` when training on the CPU with a plain linear output layer (see
:func:`applies`); everywhere else the network runs the same layers one by one and the losses are computed
from its codes (:mod:`scae.losses`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .. import _cluster_grad as cluster_grad
from ..losses import squared_distances


class ClusterLosses(NamedTuple):
    """Which clustering-layer losses a training forward pass computes with the layer, and on which rows."""

    pairs: torch.Tensor  # (n_pairs, n_features) standardized inputs of the rows of the pairwise term
    step: int  # the pairwise term uses rows 0, step, 2 * step, ... of the minibatch (scae.train.pairwise_subset)
    id_regularization: bool
    within_cluster: bool


def applies(code_layer: nn.Module, output: nn.Module, h: torch.Tensor) -> bool:
    """Whether :func:`clustering_head` runs: CPU training in float32 with plain linear layers, outside compile."""
    return (
        type(code_layer) is nn.Linear
        and type(output) is nn.Linear
        and h.device.type == "cpu"
        and torch.is_grad_enabled()
        and h.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def clustering_head(
    h: torch.Tensor, code_layer: nn.Linear, output: nn.Linear, request: ClusterLosses
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Codes ``relu(code_layer(h))``, raw output ``output(codes)`` and the requested losses of the codes.

    The losses are :func:`scae.losses.id_regularization` of all codes and
    :func:`scae.losses.within_cluster_distance` of ``request.pairs`` and the codes of every ``request.step``-th
    row, returned under those names.
    """
    codes, raw, id_value, within_value = _ClusteringHead.apply(
        h, code_layer.weight, code_layer.bias, output.weight, output.bias, request
    )
    terms = {}
    if request.id_regularization:
        terms["id_regularization"] = id_value
    if request.within_cluster:
        terms["within_cluster"] = within_value
    return codes, raw, terms


class _ClusteringHead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, code_weight, code_bias, out_weight, out_bias, request: ClusterLosses):
        codes = nn.functional.linear(h, code_weight, code_bias).relu_()
        cols = (codes.amax(0) > 0).nonzero().squeeze(1)
        if cols.numel() == 0:  # every unit silent: one zero column keeps the shapes valid
            cols = cols.new_zeros(1)
        c = codes.index_select(1, cols)
        out_cols = out_weight.index_select(1, cols)
        raw = nn.functional.linear(c, out_cols, out_bias)
        id_value, id_state = (
            cluster_grad.id_regularization_forward(c) if request.id_regularization else (h.new_zeros(()), ())
        )
        within_value, within_state = (
            cluster_grad.within_cluster_forward(
                squared_distances(request.pairs.detach()), c[:: request.step].contiguous()
            )
            if request.within_cluster
            else (h.new_zeros(()), ())
        )
        ctx.save_for_backward(h, code_weight, out_cols, c, cols, *id_state, *within_state)
        ctx.n_id, ctx.step = len(id_state), request.step
        ctx.shapes = (code_weight.shape, out_weight.shape)
        ctx.has_bias = (code_bias is not None, out_bias is not None)
        ctx.set_materialize_grads(False)
        return codes, raw, id_value, within_value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_codes, grad_raw, grad_id, grad_within):
        h, code_weight, out_cols, c, cols, *states = ctx.saved_tensors
        id_state, within_state = tuple(states[: ctx.n_id]), tuple(states[ctx.n_id :])
        g = c.new_zeros(c.shape)  # d loss / d active codes
        if grad_raw is not None:
            g.addmm_(grad_raw, out_cols)
        if grad_codes is not None:
            g.add_(grad_codes.index_select(1, cols))
        if grad_id is not None and id_state:
            row, at_max, where = cluster_grad.id_regularization_grad(id_state, grad_id)
            g.add_(row)
            g.view(-1).index_add_(0, where.view(1), at_max.view(1))
        if grad_within is not None and within_state:
            g[:: ctx.step].add_(cluster_grad.within_cluster_grad(within_state, grad_within))
        g.masked_fill_(c <= 0, 0.0)  # through the ReLU
        code_shape, out_shape = ctx.shapes
        grads = [None] * 6
        if ctx.needs_input_grad[0]:
            grads[0] = g @ code_weight.index_select(0, cols)
        if ctx.needs_input_grad[1]:
            grads[1] = g.new_zeros(code_shape).index_copy_(0, cols, g.T @ h)
        if ctx.has_bias[0] and ctx.needs_input_grad[2]:
            grads[2] = g.new_zeros(code_shape[0]).index_copy_(0, cols, g.sum(0))
        if grad_raw is not None and ctx.needs_input_grad[3]:
            grads[3] = g.new_zeros(out_shape).index_copy_(1, cols, grad_raw.T @ c)
        if grad_raw is not None and ctx.has_bias[1] and ctx.needs_input_grad[4]:
            grads[4] = grad_raw.sum(0)
        return tuple(grads)
