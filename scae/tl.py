"""Scanpy-style tools: ``scae.tl.fit`` writes every output of one training run into the AnnData."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

from anndata import AnnData

from . import _fit, _settings, genesets
from ._query import query
from ._tl_cluster import cluster, cluster_stats
from ._tl_genesets import activity_adata, rank_gene_sets, rank_gene_sets_df
from ._transform import transform
from .cluster import DEFAULT_MERGE_THRESHOLD

__all__ = [
    "activity_adata",
    "cluster",
    "cluster_stats",
    "fit",
    "query",
    "rank_gene_sets",
    "rank_gene_sets_df",
    "transform",
]


def fit(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    reference_batch: str | None = None,
    batch_reconstruction: str = "zscore",
    max_epochs: int | None = None,
    early_stopping: bool | None = None,
    hidden: Sequence[int] = (512, 256, 128),
    n_latent: int = 2,
    lambda_b: float = 0.1,
    lambda_c: float = 0.1,
    lambda_d: float = 0.2,
    learning_rate: float = 1e-3,
    batch_size: int | None = None,
    pairwise_cells: int | None = 256,
    merge_threshold: float | None = DEFAULT_MERGE_THRESHOLD,
    n_clusters: int | None = None,
    min_cluster_size: int | None = None,
    impute: bool = True,
    likelihood: str | Mapping[str, str] = "mse",
    block_key: str | None = None,
    block_weights: Mapping[str, float] | None = None,
    imputed_units: Literal["counts", "normalized", "log1p"] = "counts",
    input_dropout: float = 0.0,
    input_noise: float = 0.0,
    l1_activity: float = 0.0,
    contractive: float = 0.0,
    variational: bool = False,
    lambda_kl: float = 0.01,
    random_state: int = 0,
    device: str = "auto",
    gene_sets: genesets.GeneSets | None = None,
    min_genes: int = 5,
    n_free_nodes: int = 0,
    gene_set_layer: str = "encoder",
    progress: bool = True,
    save_model: str | os.PathLike | None = None,
    key_added: str = "scae",
    copy: bool = False,
    precision: str = "32",
    compile: bool = False,
    block_rows: int | None = None,
    out_path: str | None = None,
) -> AnnData | None:
    """Train one SAUCIE-style autoencoder and write embedding, codes, clusters and imputed values.

    Parameters
    ----------
    adata
        Cells × features, transformed (arcsinh for cytometry, log-normalized for RNA). Dense or sparse.
    layer
        Layer to use instead of ``adata.X``.
    batch_key
        Column of ``adata.obs`` whose batches are corrected by MMD in the embedding.
    reference_batch
        Batch the others are moved onto; default the largest.
    batch_reconstruction
        How non-reference batches are reconstructed when correcting batches: ``"zscore"`` (per-batch
        standardized values) or ``"distance"`` (within-batch pairwise distances); see :class:`scae.SAUCIE`.
    max_epochs
        Passes over the data. Default: train until the loss has converged (the mean total loss of the last
        200 steps less than 0.5% below that of the 200 before, checked every 50 steps after 1,000;
        :mod:`scae._stopping`), within a step budget that grows with the number of cells (3,000 to 6,000).
        ``uns[key_added]["runtime"]`` records ``steps``, ``epochs`` and ``stop_reason`` (``"converged"``,
        ``"max_steps"`` or ``"max_epochs"``).
    early_stopping
        Stop when the loss has converged; default on when ``max_epochs`` is not given. With ``max_epochs``,
        ``True`` makes it an upper bound; ``False`` without ``max_epochs`` trains about 3000 steps.
    hidden
        Encoder widths (decoder mirrors them; its last hidden layer is the clustering layer).
    n_latent
        Width of the embedding layer (2: the visualization head).
    lambda_b, lambda_c, lambda_d
        Weights of MMD batch correction, ID regularization and within-cluster distance (see :class:`scae.SAUCIE`).
    learning_rate
        Adam learning rate.
    batch_size
        Minibatch size (default 256 on CPU, 4096 on CUDA).
    pairwise_cells
        Cells of each minibatch used by the O(minibatch²) pairwise loss terms (see :class:`scae.SAUCIE`).
    merge_threshold, n_clusters, min_cluster_size
        Granularity of the clusters (see :func:`scae.tl.cluster`, which re-cuts them without retraining).
    impute
        Write ``layers[f"{key_added}_imputed"]`` (a dense cells × features float32 matrix, filled chunk by
        chunk; sparse input is never densified whole).
    likelihood
        ``"mse"`` (continuous input), ``"nb"``/``"zinb"`` (raw integer counts, e.g. ``layer="counts"``),
        ``"bernoulli"`` (0/1), or ``{block: likelihood}`` with ``block_key`` (see :class:`scae.SAUCIE`).
    block_key
        Column of ``adata.var`` naming feature blocks (mixed multi-omics), e.g. from
        :func:`scae.datasets.tcga_coread` with ``multiomics=True``.
    block_weights
        Weight per block of its reconstruction loss.
    imputed_units
        Units of count blocks in the imputed layer: ``"counts"`` (expected counts at each cell's observed
        library size), ``"normalized"`` (per 10,000) or ``"log1p"`` (log1p of normalized). Bernoulli blocks
        are probabilities; ``mse`` blocks are in input units.
    input_dropout, input_noise, l1_activity, contractive, variational, lambda_kl
        Seed autoencoder variants: denoising, sparse, contractive, variational (see :class:`scae.SAUCIE`).
    random_state
        Seed; the same seed and device type give the same results.
    device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    gene_sets
        GMT path (e.g. :func:`scae.datasets.hallmark_gmt`), dict ``{set: [genes]}`` or genes × sets 0/1
        DataFrame: adds one node per set connected only to its genes (GSAE); names are matched
        case-insensitively to ``var_names``.
    min_genes
        Sets with fewer genes among ``var_names`` are dropped with a warning.
    n_free_nodes
        Unconstrained nodes beside the set nodes.
    gene_set_layer
        ``"encoder"`` (GSAE, default) or ``"decoder"`` (expiMap style); see :class:`scae.SAUCIE`.
    progress
        Show a progress bar.
    save_model
        Folder to save the trained model in (:meth:`scae.SAUCIE.save`), with these clusters, so that
        :func:`scae.tl.transform` can place new cells into them later.
    key_added
        Prefix of every key written.
    copy
        Return a new AnnData instead of writing into ``adata``.
    precision, compile, block_rows
        GPU fast path and out-of-core options, see :class:`scae.SAUCIE`.
    out_path
        Backed ``adata`` only (``anndata.read_h5ad(path, backed="r")``, dense or CSR): an .h5ad that receives
        the codes (``obsm``) and, with ``impute``, the reconstruction (``layers``), written chunk by chunk.
        With backed input only the embedding, clusters and ``uns`` are written into ``adata`` itself.

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``. Writes:

    ``obsm[f"X_{key_added}"]``
        2-D embedding (batch-corrected with ``batch_key``).
    ``obsm[f"X_{key_added}_codes"]``
        Clustering-layer activations, float32.
    ``obs[f"{key_added}_cluster"]``
        Categorical cluster labels.
    ``layers[f"{key_added}_imputed"]``
        Reconstruction (with ``impute=True``): input units for ``mse`` blocks, probabilities for
        ``bernoulli`` blocks, ``imputed_units`` for ``nb``/``zinb`` blocks.
    ``layers[f"{key_added}_corrected"]``
        Batch-corrected reconstruction in the reference batch's units (with ``batch_key``).
    ``obsm[f"X_{key_added}_genesets"]``
        Gene-set activities (cells × sets, float32, positive = set up; with ``gene_sets``).
    ``varm[f"{key_added}_gene_set_weights"]``
        Oriented weights of each set node on its genes (genes × sets, 0 outside the set; with ``gene_sets``).
    ``uns[key_added]``
        ``params``, ``history`` (per-term loss per epoch; ``reconstruction_<block>`` per block with
        ``block_key``, ``l1_activity``/``contractive``/``kl`` for those variants), ``versions``, ``seed``,
        ``device``, ``runtime``; ``blocks`` (block → likelihood) with ``block_key``; with ``gene_sets`` also
        ``gene_sets`` (names of the kept sets, the columns of the two arrays above); per-cluster
        ``cluster_means``/``cluster_medians`` (DataFrames, clusters × features, of the input values) and
        ``cluster_sizes`` (see :func:`scae.tl.cluster_stats`).

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> scae.tl.fit(adata, batch_key="batch", max_epochs=5, progress=False)
    >>> adata.obs["scae_cluster"].cat.categories.size > 1
    True
    """
    _settings.check_fit(locals())
    options = dict(locals())
    adata = options.pop("adata")
    return _fit.run(adata, options, _params(options))


def _params(options: dict) -> dict:
    """Every argument of ``tl.fit`` as recorded in ``uns[key_added]["params"]`` (plain, writable values)."""
    params = dict(options)
    params["hidden"] = list(options["hidden"])
    if options["save_model"] is not None:
        params["save_model"] = os.fspath(options["save_model"])
    params["gene_sets"] = genesets.describe(options["gene_sets"])
    if not isinstance(options["likelihood"], str):
        params["likelihood"] = dict(options["likelihood"])
    if options["block_weights"] is not None:
        params["block_weights"] = dict(options["block_weights"])
    if options["out_path"] is not None:
        params["out_path"] = os.fspath(options["out_path"])
    return params
