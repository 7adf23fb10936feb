"""The user-facing model: registers what it uses from AnnData, trains the network, returns outputs."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from . import _blocks, _fast, _features, _settings, data, genesets
from ._save import load_model, save_model
from ._stopping import StopRule, step_budget
from .cluster import DEFAULT_MERGE_THRESHOLD
from .nn.network import SAUCIENet
from .objectives import Variants
from .train import LossWeights, infer, infer_gene_sets, train_net

logger = logging.getLogger("scae")

#: Optimizer steps of a fit with ``early_stopping=False`` and no ``max_epochs`` (the fixed budget before the
#: convergence rule of :mod:`scae._stopping`).
DEFAULT_STEPS = 3000
MAX_AUTO_EPOCHS = 1000


def default_max_epochs(n_cells: int, batch_size: int, n_steps: int = DEFAULT_STEPS) -> int:
    """Epochs giving about ``n_steps`` optimizer steps (at least 1, at most ``MAX_AUTO_EPOCHS``)."""
    steps_per_epoch = max(1, math.ceil(n_cells / max(1, min(batch_size, n_cells))))
    return int(min(MAX_AUTO_EPOCHS, max(1, round(n_steps / steps_per_epoch))))


class SAUCIE:
    """SAUCIE-style multi-head autoencoder on an AnnData.

    One network gives a 2-D embedding (visualization head), an MMD batch correction of that embedding
    (with ``batch_key``), clusters from ID-regularized binary codes of the last decoder layer, and a
    reconstruction that serves as imputed/denoised values.

    Parameters
    ----------
    adata
        Cells × features. Use transformed data: arcsinh for cytometry (:func:`scae.pp.arcsinh`),
        log-normalized counts for RNA. Features are standardized inside the network and outputs are
        returned in input units.
    layer
        Layer to use instead of ``adata.X``.
    batch_key
        Column of ``adata.obs`` with batches to correct; ``None`` for no batch correction.
    reference_batch
        Batch the others are moved onto; default the largest.
    hidden
        Encoder layer widths; the decoder mirrors them and its last hidden layer is the clustering layer.
    n_latent
        Width of the embedding layer.
    lambda_b
        Weight of the MMD between batches in the embedding (only with ``batch_key``).
    lambda_c
        Weight of the ID regularization (entropy) of the clustering layer; larger → fewer clusters.
    lambda_d
        Weight of the within-cluster distance; larger → clusters tighter in input space (more clusters).
    learning_rate
        Adam learning rate.
    batch_size
        Minibatch size; with ``batch_key`` each minibatch holds equal numbers of cells of every batch.
        Default 256 on CPU and 4096 on CUDA (see :mod:`scae._fast`).
    pairwise_cells
        The pairwise loss terms (MMD, within-cluster distance, ``batch_reconstruction="distance"``) cost
        O(minibatch²); they are computed on an evenly spaced subset of at most this many cells of each
        minibatch (every batch equally represented), so large minibatches stay cheap. ``None``: all cells.
    random_state
        Seed of weight init and minibatch sampling: same seed and device type → same results.
    device
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    batch_reconstruction
        With ``batch_key``: the reference batch is reconstructed value for value; a non-reference batch
        must keep its own structure only: ``"zscore"`` compares per-batch z-scored outputs with z-scored
        inputs, ``"distance"`` compares within-batch pairwise distances.
    gene_sets
        Adds a gene-set layer (GSAE/expiMap): a GMT path (e.g. :func:`scae.datasets.hallmark_gmt`), a dict
        ``{set name: [genes]}`` or a genes × sets 0/1 DataFrame, matched case-insensitively to ``var_names``
        (:func:`scae.genesets.gene_set_mask`). One node per set, connected only to its genes.
    min_genes
        Sets with fewer genes among ``var_names`` are dropped with a warning.
    n_free_nodes
        Unconstrained nodes beside the set nodes (they see every gene; with ``gene_set_layer="encoder"``
        and none of them, genes outside every set do not reach the embedding).
    gene_set_layer
        ``"encoder"`` (GSAE, default: the set layer is the first encoder layer, so an activity is a weighted
        sum of the set's own genes) or ``"decoder"`` (expiMap style: set nodes before a masked output layer).
    likelihood
        Reconstruction model: ``"mse"`` (continuous, e.g. arcsinh CyTOF or log-normalized RNA), ``"nb"`` or
        ``"zinb"`` (raw integer counts; the encoder sees ``log1p`` counts normalized to 10,000 per cell, the
        output is ``library size × softmax`` rates with one dispersion per feature, plus dropout logits for
        ZINB) or ``"bernoulli"`` (0/1 features). With ``block_key``, a mapping ``{block: likelihood}``.
    block_key
        Column of ``adata.var`` naming each feature's block (e.g. expression / mutation / cnv for bulk
        multi-omics); each block gets its own likelihood, library size and weight.
    block_weights
        Weight of each block's mean per-entry loss, ``{block: weight}`` (default 1 each).
    input_dropout
        Denoising AE: fraction of input entries zeroed at random in training (targets stay clean).
    input_noise
        Denoising AE: standard deviation of Gaussian noise added to the standardized input in training.
    l1_activity
        Sparse AE: weight of the mean absolute activation of the last encoder layer (history ``"l1_activity"``).
    contractive
        Contractive AE: weight of the squared Jacobian norm of the embedding w.r.t. the standardized input
        (history ``"contractive"``).
    variational
        VAE: the embedding is a Gaussian sampled with the reparameterization trick in training (the mean is
        returned), with ``lambda_kl`` times its KL divergence to ``N(0, I)`` (history ``"kl"``).
    lambda_kl
        Weight of the KL term of ``variational=True``.
    precision
        ``"32"`` (float32) or ``"bf16"`` (bfloat16 autocast in the training step; falls back to float32
        with a warning where unsupported).
    compile
        Compile the training step with ``torch.compile``; falls back to eager with a warning where that fails.
    block_rows
        Rows per block read from disk when ``adata`` is backed (``read_h5ad(..., backed="r")``); default
        about 64 MB of dense float32 rows. Peak memory of training is one block, whatever the file size.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> model = scae.SAUCIE(adata, batch_key="batch")
    >>> model.train(max_epochs=20)  # doctest: +SKIP
    >>> adata.obsm["X_scae"] = model.get_embedding()  # doctest: +SKIP
    """

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = None,
        batch_key: str | None = None,
        reference_batch: str | None = None,
        hidden: Sequence[int] = (512, 256, 128),
        n_latent: int = 2,
        lambda_b: float = 0.1,
        lambda_c: float = 0.1,
        lambda_d: float = 0.2,
        learning_rate: float = 1e-3,
        batch_size: int | None = None,
        pairwise_cells: int | None = 256,
        random_state: int = 0,
        device: str | torch.device = "auto",
        batch_reconstruction: str = "zscore",
        gene_sets: genesets.GeneSets | None = None,
        min_genes: int = 5,
        n_free_nodes: int = 0,
        gene_set_layer: str = "encoder",
        likelihood: str | Mapping[str, str] = "mse",
        block_key: str | None = None,
        block_weights: Mapping[str, float] | None = None,
        input_dropout: float = 0.0,
        input_noise: float = 0.0,
        l1_activity: float = 0.0,
        contractive: float = 0.0,
        variational: bool = False,
        lambda_kl: float = 0.01,
        precision: str = "32",
        compile: bool = False,
        block_rows: int | None = None,
    ) -> None:
        _settings.check_model(locals())
        self.device = data.resolve_device(device)
        default_batch = batch_size is None
        if default_batch:
            batch_size = _fast.default_batch_size(self.device)
        self.autocast_dtype = _fast.autocast_dtype(precision, self.device)
        self.compile = bool(compile)
        self.block_rows = block_rows
        X = data.get_matrix(adata, layer)
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        data.validate_matrix(X, where=where)
        blocks = _blocks.resolve_blocks(adata, likelihood=likelihood, block_key=block_key, block_weights=block_weights)
        if default_batch and batch_key is not None:
            # the default minibatch of a GPU (4096) must not refuse batches that the CPU default (256) accepts:
            # check with the CPU default, then shrink the GPU minibatch to what the smallest batch can fill
            cpu_default = _fast.default_batch_size(torch.device("cpu"))
            batches = data.get_batches(adata, batch_key, reference_batch, batch_size=min(batch_size, cpu_default))
            batch_size = _fast.batch_size_for_batches(batch_size, cpu_default, np.bincount(batches.codes))
        else:
            batches = data.get_batches(adata, batch_key, reference_batch, batch_size=batch_size)
        mean, std = _blocks.validate_and_moments(X, blocks, where=where)
        set_mask = _gene_set_mask(adata, gene_sets, min_genes, n_free_nodes, gene_set_layer)

        self.adata = adata
        self.layer = layer
        self.batch_key = batch_key
        self.batches = batches
        self.var_names = list(map(str, adata.var_names))
        self.random_state = int(random_state)
        self.batch_size = int(batch_size)
        self.learning_rate = float(learning_rate)
        self.weights = LossWeights(
            lambda_b=lambda_b if batches is not None else 0.0,
            lambda_c=lambda_c,
            lambda_d=lambda_d,
            nonref_loss=batch_reconstruction,
            pairwise_cells=None if pairwise_cells is None else int(pairwise_cells),
        )
        self.hparams = {
            "hidden": list(hidden),
            "n_latent": int(n_latent),
            "lambda_b": float(lambda_b),
            "lambda_c": float(lambda_c),
            "lambda_d": float(lambda_d),
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "pairwise_cells": self.weights.pairwise_cells,
            "random_state": self.random_state,
            "batch_reconstruction": batch_reconstruction,
            "likelihood": likelihood if isinstance(likelihood, str) else dict(likelihood),
            "block_key": block_key,
            "blocks": {b.name: b.likelihood for b in blocks},
            "block_weights": {b.name: b.weight for b in blocks} if block_key is not None else None,
            "input_dropout": float(input_dropout),
            "input_noise": float(input_noise),
            "l1_activity": float(l1_activity),
            "contractive": float(contractive),
            "variational": bool(variational),
            "lambda_kl": float(lambda_kl),
        }
        self.blocks = blocks
        self.variants = Variants(
            input_dropout=float(input_dropout),
            input_noise=float(input_noise),
            l1_activity=float(l1_activity),
            contractive=float(contractive),
            lambda_kl=float(lambda_kl),
        )
        self.gene_set_mask = set_mask  # genes × sets DataFrame (the net holds it as a buffer) or None
        if set_mask is not None:
            self.hparams.update(
                gene_set_names=list(set_mask.columns),
                gene_set_layer=gene_set_layer,
                n_free_nodes=int(n_free_nodes),
                min_genes=int(min_genes),
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            self.net = SAUCIENet(
                X.shape[1],
                hidden=hidden,
                n_latent=n_latent,
                feature_mean=torch.from_numpy(mean),
                feature_std=torch.from_numpy(std),
                gene_set_mask=None if set_mask is None else torch.from_numpy(set_mask.to_numpy()),
                n_free_nodes=n_free_nodes,
                gene_set_layer=gene_set_layer,
                blocks=blocks,
                variational=variational,
            ).to(self.device)
        self._X = X
        self._source: data.RowSource | None = None
        self._outputs: dict[str, dict[str, np.ndarray]] = {}
        self.history: dict[str, list[float]] = {}
        self.is_trained = False
        self.runtime: dict[str, float] = {}
        self.mapping_state = None  # cluster table etc. for new cells (scae._mapping), set at save/load/transform

    # ------------------------------------------------------------------ training
    def _row_source(self) -> data.RowSource:
        if self._X is None:
            msg = (
                "this model was loaded without data: use `scae.tl.transform(model, adata)` or "
                "`SAUCIE.load(path, adata)`"
            )
            raise RuntimeError(msg)
        if self._source is None:
            self._source = data.make_row_source(self._X, self.device, block_rows=self.block_rows)
        return self._source

    def train(
        self, max_epochs: int | None = None, *, progress: bool = True, early_stopping: bool | None = None
    ) -> SAUCIE:
        """Train the network.

        Parameters
        ----------
        max_epochs
            Passes over the data. Default: train until the loss has converged (:mod:`scae._stopping`), at most
            :func:`scae._stopping.step_budget` optimizer steps. Given, exactly this many passes (unless
            ``early_stopping=True``, which makes it an upper bound).
        progress
            Show a tqdm progress bar.
        early_stopping
            Stop when the loss has converged. Default: on when ``max_epochs`` is not given. ``False`` without
            ``max_epochs`` trains about 3000 steps (the fixed budget of earlier versions).

        Returns
        -------
        The model itself (``history`` holds the per-epoch mean of every loss term; ``runtime`` the steps,
        epochs and ``stop_reason``: ``"converged"``, ``"max_steps"`` or ``"max_epochs"``).
        """
        _settings.check_train(max_epochs, early_stopping)
        n_cells = self._X.shape[0]
        if early_stopping is None:
            early_stopping = max_epochs is None
        stop = None
        if early_stopping:
            stop = StopRule(max_steps=step_budget(n_cells, self.batch_size))
        elif max_epochs is None:
            max_epochs = default_max_epochs(n_cells, self.batch_size)
        t0 = time.perf_counter()
        source = self._row_source()
        t_load = time.perf_counter() - t0
        gen = torch.Generator(device=self.device).manual_seed(self.random_state)
        if self.batches is not None:
            batch_codes = torch.from_numpy(self.batches.codes).to(self.device)
            n_batches, reference = len(self.batches.categories), self.batches.reference
        else:
            batch_codes, n_batches, reference = None, 1, 0
        t1 = time.perf_counter()
        result = train_net(
            self.net,
            source,
            batch_codes=batch_codes,
            n_batches=n_batches,
            reference=reference,
            weights=self.weights,
            max_epochs=max_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            generator=gen,
            progress=progress,
            variants=self.variants,
            autocast_dtype=self.autocast_dtype,
            compile=self.compile,
            stop=stop,
        )
        t_train = time.perf_counter() - t1
        for k, v in result.history.items():
            self.history.setdefault(k, []).extend(v)
        batch = int(min(self.batch_size, n_cells))
        self.runtime = {
            "load_s": t_load,
            "train_s": t_train,
            "epochs": int(result.epochs),
            "steps": int(result.steps),
            "stop_reason": result.stop_reason,
            "max_steps": int(stop.max_steps) if stop is not None else int(result.steps),
            "batch_size": batch,
            "train_cells_per_s": result.steps * batch / max(t_train, 1e-9),
        }
        self.is_trained = True
        self._outputs = {}
        logger.info(
            "trained %d steps (%d epochs, %s) in %.1fs (%.0f cells/s)",
            result.steps, result.epochs, result.stop_reason, t_train, self.runtime["train_cells_per_s"],
        )
        return self

    # ------------------------------------------------------------------ outputs
    def _check_trained(self) -> None:
        if not self.is_trained:
            msg = "the model is not trained yet: call `model.train()` first"
            raise RuntimeError(msg)

    def _infer(self, counts: str = "counts") -> dict[str, np.ndarray]:
        self._check_trained()
        if counts not in self._outputs:
            t0 = time.perf_counter()
            out = infer(self.net, self._row_source(), counts=counts)
            if counts != "counts":  # other count units: only the reconstruction differs, keep just that
                out = {"reconstruction": out["reconstruction"]}
            self._outputs[counts] = out
            self.runtime["infer_s"] = time.perf_counter() - t0
        return self._outputs[counts]

    def get_embedding(self) -> np.ndarray:
        """2-D embedding (``n_cells × n_latent``, float32); batch-corrected when ``batch_key`` was given."""
        return self._infer()["embedding"].copy()

    def get_codes(self) -> np.ndarray:
        """Clustering-layer activations before binarization (``n_cells × n_units``, float32)."""
        return self._infer()["codes"].copy()

    def get_clusters(
        self,
        *,
        threshold: float = 0.1,
        min_cluster_size: int | None = None,
        merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
        n_clusters: int | None = None,
    ) -> np.ndarray:
        """Cluster label per cell (0 = largest cluster) from binarized codes after merging.

        Parameters
        ----------
        threshold
            A unit fires when its activation exceeds this fraction of its maximum.
        min_cluster_size
            Codes with fewer cells join the nearest cluster; default
            :func:`scae.cluster.default_min_cluster_size` (20 cells between 2,000 and 20,000 cells).
        merge_threshold
            Code clusters whose centres (mean input values) lie closer than about this (Euclidean, in units of
            the root mean square of the features' standard deviations; average linkage) are merged; larger →
            fewer clusters; ``None``/0 disables merging.
        n_clusters
            Cut the same tree of the code-cluster centres into exactly this many clusters instead of using
            ``merge_threshold`` (groups with < 1% of the cells do not count; see :func:`scae.cluster.merge_clusters`).
        """
        _settings.check_table(_settings.CLUSTER_OPTIONS, locals())
        out = self._infer()
        return _features.cut(
            out["codes"],
            out["reconstruction"],
            self._X,
            blocks=self.blocks,
            mean=self.net.feature_mean.cpu().numpy(),
            std=self.net.feature_std.cpu().numpy(),
            threshold=threshold,
            min_cluster_size=min_cluster_size,
            merge_threshold=merge_threshold,
            n_clusters=n_clusters,
        )

    def get_reconstruction(self, *, corrected: bool = False, counts: str = "counts") -> np.ndarray:
        """Reconstruction = imputed/denoised values, in input units.

        ``mse`` blocks are in the input's units; ``bernoulli`` blocks are probabilities of 1; ``nb``/``zinb``
        blocks are given by ``counts``.

        Parameters
        ----------
        corrected
            With batch correction, ``True`` returns every batch in the reference batch's units
            (``layers["scae_corrected"]``); ``False`` puts each batch back to its own per-feature mean and
            spread, keeping the denoised within-batch structure (``layers["scae_imputed"]``; all-``mse``
            models only: count models keep their per-cell library offset instead).
        counts
            Units of count blocks: ``"counts"`` (expected counts, the NB mean at the cell's observed library
            size; for ZINB the mean without dropouts), ``"normalized"`` (expected counts per 10,000) or
            ``"log1p"`` (``log1p`` of the normalized value).
        """
        rec = self._reconstruction(corrected=corrected, counts=counts)
        return rec.copy() if rec is self._infer(counts)["reconstruction"] else rec

    def _reconstruction(self, *, corrected: bool, counts: str) -> np.ndarray:
        """:meth:`get_reconstruction`, possibly the cached array itself (no copy: for :func:`scae.tl.fit`)."""
        rec = self._infer(counts)["reconstruction"]
        if corrected and self.batches is None:
            msg = "`corrected=True` needs a model trained with `batch_key`"
            raise ValueError(msg)
        plain = all(b.likelihood == "mse" for b in self.blocks)
        if corrected or self.batches is None or self.weights.lambda_b == 0 or not plain:
            return rec
        return data.restore_batch_moments(rec, self._X, self.batches.codes)

    # ------------------------------------------------------------------ save / load
    def save(self, path, *, overwrite: bool = True):
        """Save to the folder ``path``: ``model.json`` + safetensors (see :mod:`scae._save`); returns the path.

        Examples
        --------
        >>> model.save("run1/")  # doctest: +SKIP
        """
        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path, adata: AnnData | None = None, *, device: str | torch.device = "auto") -> SAUCIE:
        """Load a model saved with :meth:`save`, optionally registered on new data ``adata``.

        The weights are read from safetensors (or a state dict with ``torch.load(weights_only=True)``); no
        pickled object is ever run. ``adata``'s features are matched to the saved var names: reordered when
        they are a permutation, a ``ValueError`` names the missing ones.

        Examples
        --------
        >>> new = scae.SAUCIE.load("run1/", adata=other)  # doctest: +SKIP
        >>> other.obsm["X_scae"] = new.get_embedding()  # doctest: +SKIP
        """
        return load_model(cls, path, adata, device=device)

    @property
    def gene_set_names(self) -> list[str]:
        """Names of the gene sets kept in the gene-set layer (empty without ``gene_sets``)."""
        return [] if self.gene_set_mask is None else list(self.gene_set_mask.columns)

    def _check_gene_sets(self) -> None:
        if self.gene_set_mask is None:
            msg = "the model has no gene-set layer: create it with `gene_sets=` (e.g. scae.datasets.hallmark_gmt())"
            raise ValueError(msg)

    def get_gene_set_activities(self) -> np.ndarray:
        """Gene-set node activities (``n_cells × n_sets``, float32), oriented so positive means the set is up.

        The orientation of each set is the sign of the mean weight between its node and its genes.
        """
        self._check_trained()
        self._check_gene_sets()
        return infer_gene_sets(self.net, self._row_source()).numpy().astype(np.float32)

    def get_gene_set_weights(self) -> pd.DataFrame:
        """Oriented weights between set nodes and genes (genes × sets; exactly 0 outside each set).

        ``model.get_gene_set_weights()[name].sort_values()`` lists a set's genes by weight.
        """
        self._check_gene_sets()
        with torch.no_grad():
            w = self.net.gene_set_weights().cpu().numpy()
        return pd.DataFrame(w, index=self.var_names, columns=self.gene_set_names)

    @property
    def n_cells(self) -> int:
        """Number of cells the model was set up with."""
        return self._X.shape[0]


def _gene_set_mask(adata: AnnData, gene_sets, min_genes: int, n_free_nodes: int, gene_set_layer: str):
    """The genes × sets mask (``None`` without ``gene_sets``); the options were checked by :mod:`scae._settings`."""
    if gene_sets is None:
        return None
    return genesets.gene_set_mask(gene_sets, adata.var_names, min_genes=min_genes)
