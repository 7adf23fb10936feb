"""Reconstruction by likelihood and the terms of the seed autoencoder variants (pure torch, no AnnData).

Kept apart from :func:`scae.train.compute_losses` so that it only dispatches: :func:`forward_train` runs the
network with the variant's input corruption, :func:`reconstruction_loss` routes every feature block to its
likelihood, and :func:`variant_terms` adds the extra penalties.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import losses
from .nn.network import NetOutput, SAUCIENet


@dataclass(frozen=True)
class Variants:
    """Seed autoencoder variants (all off by default).

    Parameters
    ----------
    input_dropout
        Fraction of input entries set to 0 before encoding (denoising AE; the loss still targets the clean input).
    input_noise
        Standard deviation of Gaussian noise added to the standardized encoder input (denoising AE).
    l1_activity
        Weight of the mean absolute activation of the last encoder hidden layer (sparse AE), history key
        ``"l1_activity"``.
    contractive
        Weight of the squared Frobenius norm of the Jacobian of the embedding with respect to the
        standardized input (contractive AE), history key ``"contractive"``.
    lambda_kl
        Weight of the KL divergence of the variational embedding to ``N(0, I)``, history key ``"kl"``
        (only used by a network built with ``variational=True``).
    """

    input_dropout: float = 0.0
    input_noise: float = 0.0
    l1_activity: float = 0.0
    contractive: float = 0.0
    lambda_kl: float = 0.0


#: History key of each variant's extra term → the :class:`Variants` field holding its weight.
VARIANT_TERMS = {"l1_activity": "l1_activity", "contractive": "contractive", "kl": "lambda_kl"}


def forward_train(
    net: SAUCIENet,
    x: torch.Tensor,
    z: torch.Tensor,
    variants: Variants,
    generator: torch.Generator | None,
    cluster_losses=None,
) -> tuple[NetOutput, torch.Tensor]:
    """Forward pass for training: returns the output and the (possibly corrupted) encoder input.

    Without variants this is exactly ``net(x)`` (no random numbers are drawn). ``cluster_losses``
    (:class:`scae.nn.clustering_head.ClusterLosses`) is passed on to the network.
    """
    z_in = z
    if variants.input_dropout > 0:
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32) >= variants.input_dropout
        z_in = net.encoder_input(x * keep.to(x.dtype))
    if variants.input_noise > 0:
        noise = torch.randn(z_in.shape, generator=generator, device=z_in.device, dtype=z_in.dtype)
        z_in = z_in + variants.input_noise * noise
    if variants.contractive > 0:
        z_in = z_in.detach().clone().requires_grad_(True)
    return net(x, z=z_in, generator=generator, cluster_losses=cluster_losses), z_in


def reconstruction_loss(
    net: SAUCIENet, x: torch.Tensor, z: torch.Tensor, out: NetOutput, *, per_cell: bool = False
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum over blocks of each block's mean per-entry loss, and the per-block values.

    Parameters
    ----------
    net
        The network (its heads know the blocks and likelihoods).
    x
        Raw inputs (counts for count blocks), shape ``(n, n_features)``.
    z
        Clean standardized encoder inputs (targets of ``mse`` blocks).
    out
        Network output.
    per_cell
        Return one value per cell (mean over the block's features) instead of the minibatch mean.

    Returns
    -------
    The total and, when there is more than one block, ``{block name: value}``.
    """
    heads = net.heads
    total = None
    parts: dict[str, torch.Tensor] = {}
    for k, b in enumerate(heads.blocks):
        entry = heads.block_nll(k, x, z, out.reconstruction, out.codes)
        val = entry.mean(1) if per_cell else entry.mean()
        parts[b.name] = val
        val = val if b.weight == 1.0 else b.weight * val
        total = val if total is None else total + val
    return total, (parts if len(heads.blocks) > 1 else {})


def variant_terms(net: SAUCIENet, out: NetOutput, z_in: torch.Tensor, variants: Variants) -> dict[str, torch.Tensor]:
    """Extra loss terms of the active variants (unweighted), keyed as in :data:`VARIANT_TERMS`."""
    terms: dict[str, torch.Tensor] = {}
    if variants.l1_activity > 0:
        terms["l1_activity"] = losses.l1_activity(out.hidden)
    if variants.contractive > 0:
        terms["contractive"] = losses.contractive(out.embedding_mean, z_in)
    if net.variational:
        terms["kl"] = losses.gaussian_kl(out.embedding_mean, out.embedding_logvar)
    return terms


def weighted_variant_total(terms: dict[str, torch.Tensor], variants: Variants) -> torch.Tensor | float:
    """Sum of the variant terms present in ``terms``, each times its weight."""
    total: torch.Tensor | float = 0.0
    for name, field in VARIANT_TERMS.items():
        if name in terms:
            total = total + getattr(variants, field) * terms[name]
    return total
