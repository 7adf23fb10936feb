"""The SAUCIE network: encoder → 2-D embedding → decoder with clustering layer → output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from .layers import mlp


class NetOutput(NamedTuple):
    """Everything one forward pass produces (all in standardized feature units)."""

    embedding: torch.Tensor  # (n, 2)
    codes: torch.Tensor  # (n, n_code) clustering-layer activations, >= 0
    reconstruction: torch.Tensor  # (n, n_features)


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

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        """Input units → standardized units."""
        return (x - self.feature_mean) / self.feature_std

    def to_input_units(self, z: torch.Tensor) -> torch.Tensor:
        """Standardized units → input units."""
        return z * self.feature_std + self.feature_mean

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding of raw inputs ``x`` (input units)."""
        return self.encoder(self.standardize(x))

    def decode(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clustering-layer codes and standardized reconstruction from an embedding."""
        codes = torch.relu(self.code_layer(self.decoder(embedding)))
        return codes, self.output(codes)

    def forward(self, x: torch.Tensor) -> NetOutput:  # noqa: D102
        emb = self.encode(x)
        codes, rec = self.decode(emb)
        return NetOutput(emb, codes, rec)
