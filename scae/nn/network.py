"""The SAUCIE network: encoder → 2-D embedding → decoder with clustering layer → output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .heads import Block, BlockHeads
from .layers import mlp


class NetOutput(NamedTuple):
    """Everything one forward pass produces."""

    embedding: torch.Tensor  # (n, 2); a reparameterized sample when variational and training
    codes: torch.Tensor  # (n, n_code) clustering-layer activations, >= 0
    reconstruction: torch.Tensor  # (n, n_features) raw output: standardized values / logits (see heads.py)
    hidden: torch.Tensor | None = None  # (n, hidden[-1]) last encoder hidden layer
    embedding_mean: torch.Tensor | None = None  # (n, 2) equal to ``embedding`` unless variational
    embedding_logvar: torch.Tensor | None = None  # (n, 2) only when variational


class SAUCIENet(nn.Module):
    """Multi-head autoencoder of SAUCIE.

    Parameters
    ----------
    n_features
        Number of input features.
    hidden
        Encoder widths; the decoder mirrors them. The last decoder hidden layer is the clustering layer.
    n_latent
        Width of the linear embedding layer (2 for the visualization head).
    feature_mean, feature_std
        Per-feature centring and scaling applied to inputs; reconstructions are in these standardized
        units and :meth:`to_input_units` maps them back.
    negative_slope
        Leaky ReLU slope of the hidden layers.
    blocks
        Feature blocks with their likelihoods (:class:`scae.nn.heads.Block`); default one ``mse`` block.
    variational
        Make the embedding a Gaussian (mean and log-variance layers) sampled with the reparameterization
        trick in training mode; in eval mode the embedding is the mean.

    Notes
    -----
    Count blocks are ``log1p``-normalized before standardization, so ``feature_mean``/``feature_std`` must
    be the moments of the transformed inputs (see :mod:`scae.nn.heads`).
    """

    def __init__(
        self,
        n_features: int,
        *,
        hidden: Sequence[int] = (512, 256, 128),
        n_latent: int = 2,
        feature_mean: torch.Tensor | None = None,
        feature_std: torch.Tensor | None = None,
        negative_slope: float = 0.2,
        blocks: Sequence[Block] | None = None,
        variational: bool = False,
    ) -> None:
        super().__init__()
        hidden = list(hidden)
        if not hidden:
            msg = "`hidden` needs at least one layer width"
            raise ValueError(msg)
        self.n_features = n_features
        self.n_latent = n_latent
        mean = torch.zeros(n_features) if feature_mean is None else feature_mean.to(torch.float32)
        std = torch.ones(n_features) if feature_std is None else feature_std.to(torch.float32)
        self.register_buffer("feature_mean", mean.reshape(1, -1).clone())
        self.register_buffer("feature_std", std.reshape(1, -1).clone())
        self.encoder = nn.Sequential(mlp([n_features, *hidden], negative_slope=negative_slope), nn.Linear(hidden[-1], n_latent))
        dec = hidden[::-1]
        self.decoder = mlp([n_latent, *dec[:-1]], negative_slope=negative_slope) if len(dec) > 1 else nn.Identity()
        self.code_layer = nn.Linear(dec[-2] if len(dec) > 1 else n_latent, dec[-1])
        self.output = nn.Linear(dec[-1], n_features)
        self.n_code = dec[-1]
        self.heads = BlockHeads(dec[-1], n_features, blocks if blocks is not None else [Block("all", "mse")])
        self.variational = bool(variational)
        if self.variational:
            self.embedding_logvar = nn.Linear(hidden[-1], n_latent)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Input units → standardized units."""
        return (x - self.feature_mean) / self.feature_std

    def to_input_units(self, z: torch.Tensor) -> torch.Tensor:
        """Standardized units → input units."""
        return z * self.feature_std + self.feature_mean

    def encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        """Raw inputs → standardized encoder inputs (count blocks ``log1p``-normalized first)."""
        return self.standardize(self.heads.transform(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding (the mean when variational) of raw inputs ``x``."""
        return self.encoder(self.encoder_input(x))

    def decode(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clustering-layer codes and raw output from an embedding."""
        codes = torch.relu(self.code_layer(self.decoder(embedding)))
        return codes, self.output(codes)

    def forward(
        self, x: torch.Tensor, *, z: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> NetOutput:
        """One pass; ``z`` replaces the encoder input (e.g. corrupted), ``generator`` drives the VAE noise."""
        z = self.encoder_input(x) if z is None else z
        hidden = self.encoder[0](z)
        mean = self.encoder[1](hidden)
        logvar = None
        emb = mean
        if self.variational:
            logvar = self.embedding_logvar(hidden).clamp(-10.0, 10.0)
            if self.training:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                emb = mean + torch.exp(0.5 * logvar) * eps
        codes, rec = self.decode(emb)
        return NetOutput(emb, codes, rec, hidden, mean, logvar)

    def predict(self, x: torch.Tensor, out: NetOutput, *, counts: str = "counts") -> torch.Tensor:
        """Expected values in input units: ``mse`` blocks de-standardized, probabilities, NB means (see heads)."""
        if all(b.likelihood == "mse" for b in self.heads.blocks):
            return self.to_input_units(out.reconstruction)
        e = self.heads.expected(out.reconstruction, out.codes, x, counts=counts)
        res = self.to_input_units(e)
        for k, b in enumerate(self.heads.blocks):
            if b.likelihood != "mse":
                res[:, self.heads.index(k)] = self.heads.take(k, e)
        return res

    def standardized_prediction(self, x: torch.Tensor, out: NetOutput) -> torch.Tensor:
        """Expected values in the standardized units of the encoder input (for z-score comparisons, clusters)."""
        if all(b.likelihood == "mse" for b in self.heads.blocks):
            return out.reconstruction
        s = self.standardize(self.heads.expected(out.reconstruction, out.codes, x, counts="log1p"))
        for k, b in enumerate(self.heads.blocks):
            if b.likelihood == "mse":
                s[:, self.heads.index(k)] = self.heads.take(k, out.reconstruction)
        return s
