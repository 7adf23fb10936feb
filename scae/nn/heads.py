"""Output heads: every block of features reads its slice of the decoder's raw output through its likelihood.

The likelihoods themselves (``mse``, ``nb``, ``zinb``, ``bernoulli``: input transform, parameters, loss, expected
values) are the entries of :mod:`scae.nn.likelihoods`, where their table is; :class:`BlockHeads` holds what
they share across blocks: the feature positions of each block, the per-feature inverse dispersions
(``log_theta``, when a block's likelihood has one) and the dropout layer (``dropout``, when one needs it).
All features, whatever their block, are then centred and scaled by the network's ``feature_mean``/``feature_std``
buffers (computed on the transformed inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .likelihoods import COUNT_LIKELIHOODS, LIKELIHOODS, TARGET_SUM, UNITS, Likelihood, get_likelihood

__all__ = ["COUNT_LIKELIHOODS", "LIKELIHOODS", "TARGET_SUM", "Block", "BlockHeads"]


@dataclass(frozen=True)
class Block:
    """A group of features sharing one likelihood.

    Parameters
    ----------
    name
        Block name (e.g. ``"expression"``).
    likelihood
        Name of a registered likelihood (:data:`scae.nn.likelihoods.LIKELIHOODS`): ``"mse"``, ``"nb"``,
        ``"zinb"`` or ``"bernoulli"``.
    index
        Feature positions of the block; ``None`` means every feature.
    weight
        Weight of the block's mean negative log-likelihood in the reconstruction loss.
    """

    name: str
    likelihood: str
    index: tuple[int, ...] | None = None
    weight: float = 1.0


class BlockHeads(nn.Module):
    """Input transform, distribution parameters and imputed means of every block.

    Parameters
    ----------
    n_code
        Width of the clustering layer feeding the output layer (input of the ZINB dropout layer).
    n_features
        Number of features.
    blocks
        Feature blocks; must cover every feature exactly once.
    """

    def __init__(self, n_code: int, n_features: int, blocks: Sequence[Block]) -> None:
        super().__init__()
        blocks = list(blocks)
        seen = torch.zeros(n_features, dtype=torch.long)
        likelihoods: list[Likelihood] = []
        for k, b in enumerate(blocks):
            if b.likelihood not in LIKELIHOODS:
                msg = f"unknown likelihood {b.likelihood!r} for block {b.name!r}; choose one of {LIKELIHOODS}"
                raise ValueError(msg)
            likelihoods.append(get_likelihood(b.likelihood))
            idx = torch.arange(n_features) if b.index is None else torch.as_tensor(b.index, dtype=torch.long)
            seen[idx] += 1
            self.register_buffer(f"index_{k}", idx)
        if not bool((seen == 1).all()):
            msg = "blocks must cover every feature exactly once"
            raise ValueError(msg)
        self.blocks = blocks
        #: the registry entry of each block
        self.likelihoods = likelihoods
        self.full = len(blocks) == 1
        if any(lik.has_dispersion for lik in likelihoods):
            self.log_theta = nn.Parameter(torch.zeros(n_features, dtype=torch.float32))
        if any(lik.has_dropout for lik in likelihoods):
            self.dropout = nn.Linear(n_code, n_features)

    def index(self, k: int) -> torch.Tensor:
        """Feature positions of block ``k``."""
        return getattr(self, f"index_{k}")

    def take(self, k: int, t: torch.Tensor) -> torch.Tensor:
        """Columns of block ``k`` of ``t``."""
        return t if self.full else t.index_select(1, self.index(k))

    def library(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Observed library size of block ``k`` per cell, shape ``(n, 1)`` (at least 1)."""
        return self.take(k, x).sum(1, keepdim=True).clamp_min(1.0)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs → encoder inputs before standardization (``log1p`` of normalized counts for count blocks)."""
        out = x
        for k, lik in enumerate(self.likelihoods):
            xb = self.take(k, x)
            val = lik.encoder_input(xb, self.library(k, x) if lik.is_count else None)
            if val is xb:  # the identity: nothing to write
                continue
            if out is x:
                out = x.clone()
            out[:, self.index(k)] = val
        return out

    def params(self, k: int, raw: torch.Tensor, codes: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Distribution parameters of block ``k``: ``mean``/``logits``/``mu``, ``rate``, ``theta``, dropout logits."""
        lik = self.likelihoods[k]
        return lik.params(
            self.take(k, raw),
            library=self.library(k, x) if lik.is_count else None,
            theta=self.take(k, self.log_theta.exp().unsqueeze(0)) if lik.has_dispersion else None,
            dropout_logits=self.take(k, self.dropout(codes)) if lik.has_dropout else None,
        )

    def block_nll(
        self, k: int, x: torch.Tensor, z: torch.Tensor, raw: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """Per-entry loss of block ``k``: squared error (standardized units) or negative log-likelihood."""
        return self.likelihoods[k].nll(self.take(k, x), self.take(k, z), self.params(k, raw, codes, x))

    def expected(
        self, raw: torch.Tensor, codes: torch.Tensor, x: torch.Tensor, *, counts: str = "counts"
    ) -> torch.Tensor:
        """Expected value per feature before the network's de-standardization of ``mse`` blocks.

        ``mse`` blocks (every ``standardized`` likelihood) are left in standardized units (the caller maps them
        back); ``bernoulli`` blocks give probabilities; count blocks give the NB mean ``μ`` (``counts="counts"``,
        at the cell's observed library size), ``rate × 1e4`` (``"normalized"``) or ``log1p(rate × 1e4)``
        (``"log1p"``, the units the encoder sees). For ZINB this is the mean of the NB component, i.e. the value
        with dropouts removed (:meth:`scae.nn.likelihoods.Likelihood.mean`).
        """
        if counts not in UNITS:
            msg = f"`counts` must be 'counts', 'normalized' or 'log1p', got {counts!r}"
            raise ValueError(msg)
        out = raw if self.full else raw.clone()
        for k, lik in enumerate(self.likelihoods):
            if lik.standardized:
                continue
            val = lik.mean(self.params(k, raw, codes, x), counts)
            if self.full:
                out = val
            else:
                out[:, self.index(k)] = val
        return out
