"""The SAUCIE network: encoder → 2-D embedding → decoder with clustering layer → output."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import nn

from .clustering_head import ClusterLosses, applies, clustering_head
from .heads import Block, BlockHeads
from .layers import MaskedLinear, mlp, relu_linear
from .likelihoods import is_plain

GeneSetLayer = Literal["encoder", "decoder"]


class NetOutput(NamedTuple):
    """Everything one forward pass produces."""

    embedding: torch.Tensor  # (n, 2); a reparameterized sample when variational and training
    codes: torch.Tensor  # (n, n_code) clustering-layer activations, >= 0
    reconstruction: torch.Tensor  # (n, n_features) raw output: standardized values / logits (see likelihoods.py)
    hidden: torch.Tensor | None = None  # (n, hidden[-1]) last encoder hidden layer
    embedding_mean: torch.Tensor | None = None  # (n, 2) equal to ``embedding`` unless variational
    embedding_logvar: torch.Tensor | None = None  # (n, 2) only when variational
    cluster_losses: dict[str, torch.Tensor] | None = None  # computed with the clustering layer (clustering_head.py)


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
    gene_set_mask
        Optional ``(n_features, n_sets)`` 0/1 tensor: adds a gene-set layer with one node per set, connected
        only to that set's features (a :class:`~scae.nn.MaskedLinear` with non-negative initial weights, so a
        node starts as a score of its set; the mask is a buffer, so it is saved in the state dict).
    nonnegative_sets
        With ``gene_set_layer="encoder"``: every set node stays a positively weighted sum of its genes (the
        absolute values of its weights are used; free nodes keep signed weights), so a set's activity rises
        when its genes rise. With signed weights a node's weights could cancel along the direction in which
        its genes move together: a +1 SD shift planted on all 29 genes of one Hallmark set in a third of
        pbmc68k_reduced's cells raised that set's activity by Cohen's d 0.73-4.31 over seeds 0-10 (another
        set higher in 3 of 11); with non-negative weights 2.30-4.29, the planted set on top in all 11.
    n_free_nodes
        Unconstrained nodes (connected to every feature) beside the set nodes.
    gene_set_layer
        ``"encoder"`` (GSAE, Chen et al. 2018): the set layer is the first encoder layer, followed by the rest
        of the encoder; a set's activity is a weighted sum of its own standardized genes. ``"decoder"``
        (expiMap style): the output layer becomes ``codes → set nodes (linear) → masked linear → features``,
        so each set node can only reconstruct its own genes; its activity is then a function of the 2-D
        embedding and clustering codes, which is why ``"encoder"`` is the default.
    blocks
        Feature blocks with their likelihoods (:class:`scae.nn.heads.Block`); default one ``mse`` block.
    variational
        Make the embedding a Gaussian (mean and log-variance layers) sampled with the reparameterization
        trick in training mode; in eval mode the embedding is the mean.

    Notes
    -----
    Count blocks are ``log1p``-normalized before standardization, so ``feature_mean``/``feature_std`` must
    be the moments of the transformed inputs (see :mod:`scae.nn.likelihoods`).
    """

    def __init__(
        self,
        n_features: int,
        *,
        hidden: Sequence[int] = (256, 128, 64),
        n_latent: int = 2,
        feature_mean: torch.Tensor | None = None,
        feature_std: torch.Tensor | None = None,
        negative_slope: float = 0.2,
        gene_set_mask: torch.Tensor | None = None,
        n_free_nodes: int = 0,
        gene_set_layer: GeneSetLayer = "encoder",
        nonnegative_sets: bool = True,
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
        mean = torch.zeros(n_features, dtype=torch.float32) if feature_mean is None else feature_mean.to(torch.float32)
        std = torch.ones(n_features, dtype=torch.float32) if feature_std is None else feature_std.to(torch.float32)
        self.register_buffer("feature_mean", mean.reshape(1, -1).clone())
        self.register_buffer("feature_std", std.reshape(1, -1).clone())
        if gene_set_layer not in ("encoder", "decoder"):
            msg = f"`gene_set_layer` must be 'encoder' or 'decoder', got {gene_set_layer!r}"
            raise ValueError(msg)
        self.gene_set_layer = gene_set_layer if gene_set_mask is not None else None
        self.n_gene_sets = 0 if gene_set_mask is None else int(gene_set_mask.shape[1])
        self.n_free_nodes = int(n_free_nodes) if gene_set_mask is not None else 0
        set_mask = None if gene_set_mask is None else _with_free_nodes(gene_set_mask, n_features, int(n_free_nodes))
        if set_mask is not None and gene_set_layer == "encoder":
            n_nodes = set_mask.shape[1]
            self.encoder = nn.Sequential(
                MaskedLinear(
                    set_mask, nonnegative_init=True, nonnegative_outputs=self.n_gene_sets if nonnegative_sets else 0
                ),
                nn.LeakyReLU(negative_slope),
                mlp([n_nodes, *hidden], negative_slope=negative_slope),
                nn.Linear(hidden[-1], n_latent),
            )
        else:
            self.encoder = nn.Sequential(
                mlp([n_features, *hidden], negative_slope=negative_slope), nn.Linear(hidden[-1], n_latent)
            )
        dec = hidden[::-1]
        self.decoder = mlp([n_latent, *dec[:-1]], negative_slope=negative_slope) if len(dec) > 1 else nn.Identity()
        self.code_layer = nn.Linear(dec[-2] if len(dec) > 1 else n_latent, dec[-1])
        if set_mask is not None and gene_set_layer == "decoder":
            self.output = nn.Sequential(
                nn.Linear(dec[-1], set_mask.shape[1]), MaskedLinear(set_mask.T, nonnegative_init=True)
            )
        else:
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
        codes = relu_linear(self.decoder(embedding), self.code_layer)
        return codes, self.output(codes)

    def forward(
        self,
        x: torch.Tensor,
        *,
        z: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        cluster_losses: ClusterLosses | None = None,
    ) -> NetOutput:
        """One pass; ``z`` replaces the encoder input (e.g. corrupted), ``generator`` drives the VAE noise.

        ``cluster_losses`` asks for the clustering-layer losses with the pass: where
        :func:`scae.nn.clustering_head.applies`, they come computed with the layer in ``cluster_losses`` of the
        output (one autograd node for layer, output and losses); elsewhere that field is ``None`` and the
        caller computes them from the codes.
        """
        z = self.encoder_input(x) if z is None else z
        hidden = self.encoder[:-1](z)  # the trunk (with the gene-set layer first when there is one)
        mean = self.encoder[-1](hidden)
        logvar = None
        emb = mean
        if self.variational:
            logvar = self.embedding_logvar(hidden).clamp(-10.0, 10.0)
            if self.training:
                eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                emb = mean + torch.exp(0.5 * logvar) * eps
        if cluster_losses is not None:
            h = self.decoder(emb)
            if applies(self.code_layer, self.output, h):
                codes, rec, terms = clustering_head(h, self.code_layer, self.output, cluster_losses)
                return NetOutput(emb, codes, rec, hidden, mean, logvar, terms)
            codes = relu_linear(h, self.code_layer)
            return NetOutput(emb, codes, self.output(codes), hidden, mean, logvar)
        codes, rec = self.decode(emb)
        return NetOutput(emb, codes, rec, hidden, mean, logvar)

    def masked_layer(self) -> MaskedLinear:
        """The gene-set :class:`~scae.nn.MaskedLinear` (encoder's first layer or the decoder's last)."""
        if self.gene_set_layer == "encoder":
            return self.encoder[0]
        if self.gene_set_layer == "decoder":
            return self.output[1]
        msg = "this network has no gene-set layer (build it with `gene_set_mask=`)"
        raise ValueError(msg)

    def gene_set_weights(self) -> torch.Tensor:
        """Oriented ``(n_features, n_sets)`` weights of the set nodes (zero outside the mask, free nodes left out).

        Each set's column is multiplied by its orientation sign (:meth:`gene_set_signs`).
        """
        layer = self.masked_layer()
        w = layer.effective_weight()
        w = w.T if self.gene_set_layer == "encoder" else w  # → (n_features, n_nodes)
        w = w[:, : self.n_gene_sets]
        return w * self.gene_set_signs()

    def gene_set_signs(self) -> torch.Tensor:
        """Orientation ``(n_sets,)`` of ±1: the sign of the mean weight between a set node and its genes.

        Multiplying activities by it makes a positive activity mean the set's genes are (on average) up.
        """
        layer = self.masked_layer()
        w = layer.effective_weight()
        w, m = (w, layer.mask) if self.gene_set_layer == "encoder" else (w.T, layer.mask.T)
        mean = w[: self.n_gene_sets].sum(1) / m[: self.n_gene_sets].sum(1).clamp_min(1.0)
        return torch.where(mean < 0, -1.0, 1.0).to(w.dtype)

    def gene_set_activities(self, x: torch.Tensor) -> torch.Tensor:
        """Oriented set-node activities ``(n, n_sets)`` of raw inputs ``x`` (linear, before any activation)."""
        if self.gene_set_layer == "encoder":
            h = self.encoder[0](self.encoder_input(x))
        else:
            codes, _ = self.decode(self.encode(x))
            h = self.output[0](codes)
        return h[:, : self.n_gene_sets] * self.gene_set_signs()

    def predict(self, x: torch.Tensor, out: NetOutput, *, counts: str = "counts") -> torch.Tensor:
        """Expected values in input units: ``mse`` blocks de-standardized, probabilities, NB means (see heads)."""
        if is_plain(self.heads.blocks):
            return self.to_input_units(out.reconstruction)
        e = self.heads.expected(out.reconstruction, out.codes, x, counts=counts)
        res = self.to_input_units(e)
        for k, lik in enumerate(self.heads.likelihoods):
            if not lik.standardized:
                res[:, self.heads.index(k)] = self.heads.take(k, e)
        return res

    def standardized_prediction(self, x: torch.Tensor, out: NetOutput) -> torch.Tensor:
        """Expected values in the standardized units of the encoder input (for z-score comparisons, clusters)."""
        if is_plain(self.heads.blocks):
            return out.reconstruction
        s = self.standardize(self.heads.expected(out.reconstruction, out.codes, x, counts="log1p"))
        for k, lik in enumerate(self.heads.likelihoods):
            if lik.standardized:
                s[:, self.heads.index(k)] = self.heads.take(k, out.reconstruction)
        return s


def _with_free_nodes(mask: torch.Tensor, n_features: int, n_free_nodes: int) -> torch.Tensor:
    """Append ``n_free_nodes`` all-ones columns to a ``(n_features, n_sets)`` mask, after checking it."""
    if mask.ndim != 2 or mask.shape[0] != n_features:
        msg = f"`gene_set_mask` must have shape (n_features={n_features}, n_sets), got {tuple(mask.shape)}"
        raise ValueError(msg)
    if n_free_nodes < 0:
        msg = f"`n_free_nodes` must be >= 0, got {n_free_nodes}"
        raise ValueError(msg)
    mask = mask.to(torch.float32)
    return torch.cat([mask, torch.ones(n_features, n_free_nodes, dtype=mask.dtype)], 1)
