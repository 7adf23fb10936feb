"""Loss terms of scae as pure functions of tensors (one function per term)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ._cluster_grad import (
    _float,
    active_units,
    id_regularization_forward,
    id_regularization_grad,
    within_cluster_forward,
    within_cluster_grad,
)

_EPS = 1e-8
# Bandwidths of the multi-scale Gaussian kernel, applied to squared distances rescaled to [0, 1].
MMD_SCALES: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 5.0, 10.0)


def squared_distances(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise squared Euclidean distances via one matrix product (no square root, finite gradients)."""
    if torch.is_autocast_enabled(a.device.type):  # in float32: bf16 products would cancel into noise
        with torch.autocast(a.device.type, enabled=False):
            return squared_distances(a.float(), None if b is None else b.float())
    if b is None:
        return _self_distances_addmm(a)
    d2 = a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1).unsqueeze(0) - 2.0 * (a @ b.T)
    return d2.clamp_min(0.0)


def _self_distances_addmm(a: torch.Tensor) -> torch.Tensor:
    """:func:`squared_distances` of ``a`` to itself with the norms and the factor -2 in one ``addmm``.

    The same values as the two-argument form to rounding, with four passes over the ``(n, n)`` result fewer (on
    CUDA, four kernel launches fewer).
    """
    sq = a.pow(2).sum(1)
    return torch.addmm(sq.unsqueeze(1) + sq.unsqueeze(0), a, a.T, alpha=-2.0).clamp_min(0.0)


def _onehot(codes: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
    """``(len(codes), n)`` indicator matrix of integer codes (a comparison: no range check, so no host sync)."""
    return (codes.unsqueeze(1) == torch.arange(n, device=codes.device)).to(dtype)


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all entries."""
    return torch.mean((x - x_hat) ** 2)


def id_regularization(codes: torch.Tensor) -> torch.Tensor:
    """Information dimension (entropy) of the clustering layer, SAUCIE's ``lambda_c`` term.

    Activations are divided by their minibatch maximum, summed per unit over the minibatch, and the sums
    normalized to a distribution over units; its entropy is small when few units are in use.

    Forward and backward are written out (:class:`_IDRegularization`): the gradient of every activation of a
    unit is that unit's entry of one row, broadcast, plus one term at the (first) maximum (see
    :func:`id_regularization_grad`), instead of autograd's nodes over the whole ``(n_cells, n_units)`` matrix
    (on CUDA about 15 kernels of a step fewer, 10 of them the backward of the maximum).

    Parameters
    ----------
    codes
        Non-negative activations, shape ``(n_cells, n_units)``.
    """
    return _IDRegularization.apply(codes)


class _IDRegularization(torch.autograd.Function):
    @staticmethod
    def forward(ctx, codes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(codes.device.type, enabled=False):
            value, state = id_regularization_forward(codes.contiguous())  # sums in float32 (no cast of codes)
        ctx.save_for_backward(*state)
        ctx.shape, ctx.dtype = codes.shape, codes.dtype
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        row, at_max, where = id_regularization_grad(ctx.saved_tensors, grad)
        out = row.expand(ctx.shape).clone()
        out.view(-1).index_add_(0, where.view(1), at_max.view(1))
        return out.to(ctx.dtype)


def within_cluster_distance(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Input-space distance between cells that share a code, SAUCIE's ``lambda_d`` term.

    The code of each cell is its activation pattern divided by the minibatch maximum; two cells share a
    code to the degree ``exp(-||a_i - a_j||^2)``. The loss is the similarity-weighted mean squared input
    distance of pairs divided by the mean squared distance of all pairs: 1 when codes ignore the data,
    towards 0 when cells sharing a code are close in input space.

    Forward and backward are written out (:class:`_WithinCluster`): one matrix product each way (autograd
    takes three), and on the CPU only the units active in this minibatch enter them (a few dozen of 256 once
    the ID regularization has acted; units that are zero for every cell add nothing to a distance; other
    devices keep all units: static shapes for CUDA graphs); the gradient of the maximum goes to its first
    position. ``x`` gets no gradient (the pairwise input distances are a fixed weight, as in SAUCIE).

    Parameters
    ----------
    x
        Inputs (standardized), shape ``(n_cells, n_features)``.
    codes
        Clustering-layer activations, shape ``(n_cells, n_units)``.
    """
    return _WithinCluster.apply(x.detach(), codes)


class _WithinCluster(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(codes.device.type, enabled=False):
            cols = active_units(codes)
            c = _float(codes if cols is None else codes.index_select(1, cols)).contiguous()
            value, state = within_cluster_forward(squared_distances(_float(x)), c)
        ctx.save_for_backward(cols, *state)
        ctx.shape, ctx.dtype = codes.shape, codes.dtype
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        cols, *state = ctx.saved_tensors
        grad_c = within_cluster_grad(tuple(state), grad)
        if cols is not None:
            grad_c = grad_c.new_zeros(ctx.shape).index_copy_(1, cols, grad_c)
        return None, grad_c.to(ctx.dtype)


def gaussian_kernel_matrix(d2: torch.Tensor, scales: Sequence[float] = MMD_SCALES) -> torch.Tensor:
    """Sum of Gaussian kernels ``exp(-d2 / s)`` over bandwidths ``s``.

    On CUDA all bandwidths in one broadcast product (:func:`_kernel_sum_broadcast`: 3 kernels forward instead
    of 4 per bandwidth, where kernel launches are most of a training step); elsewhere one bandwidth at a time
    (the same values to rounding; kept on the CPU, where it is as fast, so CPU fits stay bit for bit as before).
    """
    if d2.is_cuda:
        return _kernel_sum_broadcast(d2, scales)
    k = torch.zeros_like(d2)
    for s in scales:
        k = k + torch.exp(-d2 / s)
    return k


def _kernel_sum_broadcast(d2: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """``sum_s exp(-d2 / s)`` as one ``(..., n_scales)`` product, exponential and sum."""
    return torch.exp(d2.unsqueeze(-1) * _negative_inverse(tuple(scales), d2.device, d2.dtype)).sum(-1)


@functools.lru_cache(maxsize=16)
def _negative_inverse(scales: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``-1 / scales`` on ``device``, made once (a copy to the device is not allowed while a CUDA graph records)."""
    return torch.tensor([-1.0 / s for s in scales], dtype=dtype, device=device)


def mmd(
    embedding: torch.Tensor,
    batch: torch.Tensor,
    *,
    reference: int,
    n_batches: int,
    scales: Sequence[float] = MMD_SCALES,
) -> torch.Tensor:
    """Sum over non-reference batches of the squared MMD to the reference batch, SAUCIE's ``lambda_b`` term.

    Squared distances are rescaled to [0, 1] by their minibatch maximum before the multi-scale Gaussian
    kernel, so the bandwidths are relative to the data's spread.

    Parameters
    ----------
    embedding
        Points, shape ``(n_cells, n_dims)``.
    batch
        Integer batch code per cell, shape ``(n_cells,)``.
    reference
        Code of the reference batch.
    n_batches
        Number of batch codes (``0 .. n_batches - 1``).
    """
    d2 = squared_distances(embedding)
    d2 = d2 / (d2.max().detach() + _EPS)
    k = gaussian_kernel_matrix(d2, scales)
    onehot = _onehot(batch, n_batches, k.dtype)  # (n, B)
    counts = onehot.sum(0)  # (B,)
    present = counts > 0
    w = onehot / counts.clamp_min(1.0)  # column b averages over batch b
    with torch.autocast(k.device.type, enabled=False):  # float32 under bf16 autocast: the terms below cancel
        block = w.T @ k @ w  # (B, B) mean kernel between batches
    diag = torch.diagonal(block)
    per_batch = diag + block[reference, reference] - 2 * block[:, reference]
    keep = present & present[reference]
    keep = keep & (torch.arange(n_batches, device=batch.device) != reference)
    return torch.where(keep, per_batch, torch.zeros_like(per_batch)).sum()


def batch_standardized_mse(
    x: torch.Tensor, x_hat: torch.Tensor, batch: torch.Tensor, *, n_batches: int
) -> torch.Tensor:
    """MSE between per-batch z-scored inputs and per-batch z-scored outputs.

    Used for non-reference batches when correcting batches: the network may shift and rescale a batch as a
    whole but must keep its internal structure.
    """
    onehot = _onehot(batch, n_batches, x.dtype)
    counts = onehot.sum(0).clamp_min(1.0).unsqueeze(1)  # (B, 1)

    def zscore(v: torch.Tensor) -> torch.Tensor:
        mean = (onehot.T @ v) / counts
        var = (onehot.T @ v.pow(2)) / counts - mean.pow(2)
        std = var.clamp_min(0).add(1e-4).sqrt()
        return (v - onehot @ mean) / (onehot @ std)

    return mse(zscore(x), zscore(x_hat))


def reference_moments_mse(
    aligned: torch.Tensor, x_hat: torch.Tensor, batch: torch.Tensor, *, reference: int
) -> torch.Tensor:
    """MSE of non-reference outputs against their inputs moved onto the reference batch's per-feature moments.

    ``aligned`` holds the standardized inputs with each batch shifted and scaled, feature by feature, from its
    own mean and standard deviation to the reference batch's (:mod:`scae._align`); the output must reproduce
    them. So a batch is moved and rescaled as a whole, keeps its internal structure, and every batch is
    decoded in the reference batch's units, the units of ``layers["…_corrected"]``. Only the inputs are
    standardized: :func:`batch_standardized_mse` z-scores the output too, which leaves its scale free; on RNA
    (thousands of features) that freedom let the decoder output, and with it the clustering codes, shrink
    towards constants. Rows of the reference batch get weight 0 (the caller reconstructs them value for
    value); a mask instead of indexing keeps the shapes static for CUDA graph capture.
    """
    weight = (batch != reference).to(x_hat.dtype).unsqueeze(1)
    n = weight.sum().clamp_min(1.0) * x_hat.shape[1]
    return (weight * (aligned.detach() - x_hat).pow(2)).sum() / n


def within_batch_distance_mse(
    x: torch.Tensor, x_hat: torch.Tensor, batch: torch.Tensor, *, reference: int
) -> torch.Tensor:
    """Mismatch of within-batch pairwise distances between inputs and outputs, for non-reference batches.

    An alternative to :func:`batch_standardized_mse`: the output of a non-reference batch may be moved
    (and rotated) freely as long as the squared distances between its cells are kept. Normalized by the
    mean squared input distance of those pairs, so the value is scale-free.
    """
    same = (batch.unsqueeze(0) == batch.unsqueeze(1)) & (batch != reference).unsqueeze(1)
    mask = same.to(x.dtype)
    d_in = squared_distances(x)
    d_out = squared_distances(x_hat)
    n_pairs = mask.sum().clamp_min(1.0)
    scale = ((d_in * mask).sum() / n_pairs).detach() + _EPS
    return (mask * (d_in - d_out).pow(2)).sum() / n_pairs / scale.pow(2)


# ---------------------------------------------------------------------------------------------------------------
# Likelihoods of the reconstruction (per-entry log-probabilities; the training loss is the negative mean).


def nb_log_likelihood(x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Negative binomial log-probability of counts ``x`` per entry, mean/inverse-dispersion parametrization.

    ``P(x) = Γ(x+θ) / (Γ(θ) x!) · (θ/(θ+μ))^θ · (μ/(θ+μ))^x`` (variance ``μ + μ²/θ``); equal to
    ``scipy.stats.nbinom.logpmf(x, n=θ, p=θ/(θ+μ))``.

    Parameters
    ----------
    x
        Non-negative counts, shape ``(n_cells, n_features)``.
    mu
        Means (> 0), same shape.
    theta
        Inverse dispersions (> 0), broadcastable to ``x`` (e.g. one per feature, shape ``(n_features,)``).
    """
    log_theta_mu = torch.log(theta + mu + _EPS)
    return (
        theta * (torch.log(theta + _EPS) - log_theta_mu)
        + x * (torch.log(mu + _EPS) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


def zinb_log_likelihood(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, dropout_logits: torch.Tensor
) -> torch.Tensor:
    """Zero-inflated negative binomial log-probability per entry.

    With dropout probability ``π = sigmoid(dropout_logits)``: ``P(0) = π + (1-π)·NB(0)`` and
    ``P(x) = (1-π)·NB(x)`` for ``x > 0``. Computed in log space with ``softplus`` for stability.

    Parameters
    ----------
    x, mu, theta
        As in :func:`nb_log_likelihood`.
    dropout_logits
        Logits of the dropout probability, same shape as ``x``.
    """
    softplus = torch.nn.functional.softplus
    nb = nb_log_likelihood(x, mu, theta)
    log_1m_pi = -softplus(dropout_logits)  # log(1 - π)
    # log(π + (1-π) NB(0)) = logaddexp(log π, log(1-π) + log NB(0)); log π = logits + log(1-π)
    log_nb0 = theta * (torch.log(theta + _EPS) - torch.log(theta + mu + _EPS))
    zero = torch.logaddexp(dropout_logits + log_1m_pi, log_1m_pi + log_nb0)
    return torch.where(x < 0.5, zero, log_1m_pi + nb)


def bernoulli_log_likelihood(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Bernoulli log-probability of binary ``x`` (0/1) per entry given logits (stable, via BCE with logits)."""
    return -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")


# ---------------------------------------------------------------------------------------------------------------
# Terms of the seed autoencoder variants.


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of ``N(mean, exp(logvar))`` to ``N(0, I)``, summed over dimensions, mean over cells."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(1).mean()


def l1_activity(activations: torch.Tensor) -> torch.Tensor:
    """Mean absolute activation (sparse autoencoder penalty)."""
    return activations.abs().mean()


def contractive(outputs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Squared Frobenius norm of the Jacobian ``∂outputs/∂inputs`` per cell, averaged over cells.

    ``inputs`` must require grad and ``outputs`` must be computed from it row by row (an encoder), so one
    vector-Jacobian product per output unit gives the exact Jacobian; the graph is kept for backprop.

    Parameters
    ----------
    outputs
        Encoder outputs, shape ``(n_cells, n_out)`` (small ``n_out``, e.g. the 2-D embedding).
    inputs
        Encoder inputs, shape ``(n_cells, n_features)``, with ``requires_grad=True``.
    """
    total = outputs.new_zeros(())
    for k in range(outputs.shape[1]):
        (grad,) = torch.autograd.grad(outputs[:, k].sum(), inputs, create_graph=True)
        total = total + grad.pow(2).sum()
    return total / outputs.shape[0]
