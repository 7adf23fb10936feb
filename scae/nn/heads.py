"""Output heads: one likelihood per block of features (MSE, NB, ZINB, Bernoulli), pure torch.

The decoder's output layer gives one raw value per feature. Each block of features reads its slice:

=============  ==========================================================  ==============================
likelihood     raw output of the block means                               encoder sees (before scaling)
=============  ==========================================================  ==============================
``mse``        standardized value (``(x - mean) / std``)                   ``x``
``nb``         log-rates; ``μ = library × softmax(rates over the block)``  ``log1p(x / library × 1e4)``
``zinb``       as ``nb``, plus a dropout logit per feature (own layer)     ``log1p(x / library × 1e4)``
``bernoulli``  logit of ``P(x = 1)``                                       ``x`` (0/1)
=============  ==========================================================  ==============================

``library`` is the observed total count of the block in that cell (scVI's observed library size), used as an
offset so the network models composition, not depth. NB/ZINB have one learned inverse dispersion ``θ`` per
feature. All features, whatever their block, are then centred and scaled by the network's
``feature_mean``/``feature_std`` buffers (computed on the transformed inputs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .. import losses

Likelihood = Literal["mse", "nb", "zinb", "bernoulli"]
LIKELIHOODS: tuple[str, ...] = ("mse", "nb", "zinb", "bernoulli")
COUNT_LIKELIHOODS: tuple[str, ...] = ("nb", "zinb")
#: Counts of a count block are scaled to this library size before ``log1p`` for the encoder input.
TARGET_SUM = 1e4


@dataclass(frozen=True)
class Block:
    """A group of features sharing one likelihood.

    Parameters
    ----------
    name
        Block name (e.g. ``"expression"``).
    likelihood
        ``"mse"``, ``"nb"``, ``"zinb"`` or ``"bernoulli"``.
    index
        Feature positions of the block; ``None`` means every feature.
    weight
        Weight of the block's mean negative log-likelihood in the reconstruction loss.
    """

    name: str
    likelihood: Likelihood
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
        for k, b in enumerate(blocks):
            if b.likelihood not in LIKELIHOODS:
                msg = f"unknown likelihood {b.likelihood!r} for block {b.name!r}; choose one of {LIKELIHOODS}"
                raise ValueError(msg)
            idx = torch.arange(n_features) if b.index is None else torch.as_tensor(b.index, dtype=torch.long)
            seen[idx] += 1
            self.register_buffer(f"index_{k}", idx)
        if not bool((seen == 1).all()):
            msg = "blocks must cover every feature exactly once"
            raise ValueError(msg)
        self.blocks = blocks
        self.full = len(blocks) == 1
        self.has_counts = any(b.likelihood in COUNT_LIKELIHOODS for b in blocks)
        if self.has_counts:
            self.log_theta = nn.Parameter(torch.zeros(n_features))
        if any(b.likelihood == "zinb" for b in blocks):
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
        if not self.has_counts:
            return x
        out = x.clone()
        for k, b in enumerate(self.blocks):
            if b.likelihood in COUNT_LIKELIHOODS:
                xb = self.take(k, x)
                out[:, self.index(k)] = torch.log1p(xb / self.library(k, x) * TARGET_SUM)
        return out

    def params(self, k: int, raw: torch.Tensor, codes: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Distribution parameters of block ``k``: ``mean``/``logits``/``mu``, ``rate``, ``theta``, dropout logits."""
        b = self.blocks[k]
        rb = self.take(k, raw)
        if b.likelihood == "mse":
            return {"mean": rb}
        if b.likelihood == "bernoulli":
            return {"logits": rb}
        rate = torch.softmax(rb, dim=1)
        out = {"rate": rate, "mu": rate * self.library(k, x), "theta": self.take(k, self.log_theta.exp().unsqueeze(0))}
        if b.likelihood == "zinb":
            out["dropout_logits"] = self.take(k, self.dropout(codes))
        return out

    def block_nll(
        self, k: int, x: torch.Tensor, z: torch.Tensor, raw: torch.Tensor, codes: torch.Tensor
    ) -> torch.Tensor:
        """Per-entry loss of block ``k``: squared error (standardized units) or negative log-likelihood."""
        b = self.blocks[k]
        p = self.params(k, raw, codes, x)
        if b.likelihood == "mse":
            return (self.take(k, z) - p["mean"]).pow(2)
        xb = self.take(k, x)
        if b.likelihood == "bernoulli":
            return -losses.bernoulli_log_likelihood(xb, p["logits"])
        if b.likelihood == "nb":
            return -losses.nb_log_likelihood(xb, p["mu"], p["theta"])
        return -losses.zinb_log_likelihood(xb, p["mu"], p["theta"], p["dropout_logits"])

    def expected(
        self, raw: torch.Tensor, codes: torch.Tensor, x: torch.Tensor, *, counts: str = "counts"
    ) -> torch.Tensor:
        """Expected value per feature before the network's de-standardization of ``mse`` blocks.

        ``mse`` blocks are left in standardized units (the caller maps them back); ``bernoulli`` blocks give
        probabilities; count blocks give the NB mean ``μ`` (``counts="counts"``, at the cell's observed
        library size), ``rate × 1e4`` (``"normalized"``) or ``log1p(rate × 1e4)`` (``"log1p"``, the units the
        encoder sees). For ZINB this is the mean of the NB component, i.e. the value with dropouts removed.
        """
        if counts not in ("counts", "normalized", "log1p"):
            msg = f"`counts` must be 'counts', 'normalized' or 'log1p', got {counts!r}"
            raise ValueError(msg)
        out = raw if self.full else raw.clone()
        for k, b in enumerate(self.blocks):
            if b.likelihood == "mse":
                continue
            p = self.params(k, raw, codes, x)
            if b.likelihood == "bernoulli":
                val = torch.sigmoid(p["logits"])
            elif counts == "counts":
                val = p["mu"]
            elif counts == "normalized":
                val = p["rate"] * TARGET_SUM
            else:
                val = torch.log1p(p["rate"] * TARGET_SUM)
            if self.full:
                out = val
            else:
                out[:, self.index(k)] = val
        return out
