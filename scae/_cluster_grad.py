"""Forward values and written-out gradients of SAUCIE's two clustering-layer losses (the training step).

Used by :mod:`scae.losses` (``id_regularization``, ``within_cluster_distance``, on every device) and by the fused
clustering head (:mod:`scae.nn.clustering_head`). Each ``*_forward`` returns the loss and the tensors its
``*_grad`` needs; the gradients equal autograd's on the plain formulas (``tests/test_fused.py``).
"""

from __future__ import annotations

import torch

_EPS = 1e-8


def _float(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it has fewer bits (bf16 autocast on the CPU), else as it is."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def active_units(codes: torch.Tensor) -> torch.Tensor | None:
    """Indices of the columns of non-negative ``codes`` with a non-zero entry; ``None`` where shapes must stay
    fixed (a device other than the CPU; ``torch.compile``) or when no column is zero.
    """
    if codes.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    idx = (codes.amax(0) > 0).nonzero().squeeze(1)
    if idx.numel() == codes.shape[1]:
        return None
    return idx if idx.numel() > 0 else idx.new_zeros(1)  # all zero: one (zero) column keeps the shapes valid


def _argmax(c: torch.Tensor, by_rows: bool | None = None) -> torch.Tensor:
    """Flat index of the (first) maximum of a contiguous matrix, as a 0-d tensor (no host sync).

    On the CPU by row maxima first (a flat ``argmax`` is ten times slower there than a row reduction); elsewhere
    one flat ``argmax`` (one kernel, and no indexing by a device scalar inside a captured CUDA graph).
    ``by_rows`` forces either form.
    """
    if by_rows is None:
        by_rows = c.device.type == "cpu"
    if not by_rows:
        return c.view(-1).argmax()
    row = c.amax(1).argmax()
    return row * c.shape[1] + c[row].argmax()


def within_cluster_forward(dist: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """:func:`scae.losses.within_cluster_distance` of contiguous float activations ``c`` given the squared input
    distances ``dist`` of their rows, and what :func:`within_cluster_grad` needs.

    Every ``(rows, rows)`` matrix is built once and then worked on in place: ``-|a_i - a_j|^2`` comes from
    one ``addmm``, its exponential (at most 1: a negative squared distance is rounding, clamped like
    ``exp(-max(d2, 0))``) in place, and the weighted sum is a dot product. On two CPU cores the term waits on
    passes over these matrices, not on arithmetic.
    """
    where = _argmax(c)
    top = c.view(-1).index_select(0, where.view(1)).squeeze(0) + _EPS
    a = c / top
    sq = a.pow(2).sum(1)
    same = torch.addmm(sq.unsqueeze(1) + sq.unsqueeze(0), a, a.T, alpha=2.0, beta=-1.0)  # -|a_i - a_j|^2
    same = same.exp_().clamp_max_(1.0)
    weighted = torch.dot(same.view(-1), dist.reshape(-1))
    norm = same.sum() + _EPS
    scale = dist.mean() + _EPS
    return weighted / norm / scale, (a, same, dist, weighted, norm, scale, top, where)


def within_cluster_grad(state: tuple, grad: torch.Tensor) -> torch.Tensor:
    """Gradient of the loss with respect to the activations ``c`` of :func:`within_cluster_forward`.

    With ``G = d loss / d d2`` (symmetric, like ``d2``), ``d loss / d a_i = 4 (a_i sum_j G_ij - sum_j G_ij a_j)``.
    Where the clamp acts (``d2 <= 0``: a row with itself, or two equal rows) the pair's term
    ``G_ij (a_i - a_j)`` is zero, so no mask is needed.
    """
    a, same, dist, weighted, norm, scale, top, where = state
    g = torch.sub(dist, weighted / norm).mul_(same)  # d loss / d d2, up to the factor below
    factor = grad * (-4.0) / (norm * scale)
    grad_a = torch.addmm(a * g.sum(1, keepdim=True), g, a, alpha=-1.0).mul_(factor)
    d_top = -(grad_a * a).sum() / top  # through a = c / top
    grad_c = grad_a.div_(top)
    grad_c.view(-1).index_add_(0, where.view(1), d_top.view(1))
    return grad_c


def id_regularization_forward(c: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """:func:`scae.losses.id_regularization` of contiguous float activations ``c`` and what
    :func:`id_regularization_grad` needs. Activations of fewer bits (bf16 autocast) are summed in float32 and
    everything after the sums is float32.
    """
    where = _argmax(c)
    top = c.view(-1).index_select(0, where.view(1)).squeeze(0) + _EPS
    mass = c.sum(0, dtype=torch.promote_types(c.dtype, torch.float32)) / top
    total = mass.sum() + _EPS
    p = mass / total
    log_p = torch.log(p + _EPS)
    return -(p * log_p).sum(), (top, total, mass, p, log_p, where)


def id_regularization_grad(state: tuple, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the loss: ``(row, at_max, where)``, where every activation of unit ``u`` gets ``row[u]`` and
    the maximum (flat index ``where``) also ``at_max``, the term through the division by the maximum.

    The term through the maximum cancels in the normalization up to ``1e-8`` in exact arithmetic; it is kept
    in the form autograd computes it (the two terms of the quotient rule, then their sum), whose float32
    value is not zero, so the step follows the autograd formula it replaces. (Without it cellbench's scib
    bio conservation averaged 0.817-0.827 over seeds 3-8, with it 0.834, the autograd step 0.846: differences
    within the seed-to-seed spread of 0.79-0.88.)
    """
    top, total, mass, p, log_p, where = state
    d_p = -(log_p + p / (p + _EPS)) * grad  # d entropy / d p
    d_mass = d_p / total - (d_p * mass).sum() / (total * total)  # p = mass / total, total = sum(mass) + eps
    at_max = -(d_mass * mass).sum() / top  # mass = sum(c) / top
    return d_mass / top, at_max, where
