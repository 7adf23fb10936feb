"""Parameter documentation shared by docstrings (scanpy's ``_doc_params`` pattern): filled in at import time.

Keeps :class:`scae.SAUCIE` and :func:`scae.tl.fit` readable in the source while ``help()`` and the API pages show
every parameter.
"""

from __future__ import annotations

from textwrap import indent


def doc_params(**params: str):
    """Decorator: format ``{name}`` fields of the docstring with ``params`` (indented to the docstring's level)."""

    def decorate(obj):
        if obj.__doc__:  # None under python -OO
            obj.__doc__ = obj.__doc__.format(**{k: indent(v, "    ").lstrip() for k, v in params.items()})
        return obj

    return decorate


MODEL_PARAMS = """\
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
    Weight of the within-cluster distance; larger → clusters tighter in input space (more clusters). Inputs
    with more than 50 features (RNA) measure these distances on the top 50 principal components of the
    standardized input (:mod:`scae._pair_space`); with ``batch_key``, on the input with every batch moved onto
    the reference batch's per-feature moments (:mod:`scae._align`).
learning_rate
    Adam learning rate; default 3e-3 up to a minibatch of 512, growing with the fifth root of larger
    minibatches (4.5e-3 at 4,096; a minibatch larger than the data counts as the data), at most 1e-2
    (:func:`scae._fast.default_learning_rate`); the value used is ``uns[key_added]["runtime"]["learning_rate"]``.
batch_size
    Minibatch size; with ``batch_key`` each minibatch holds equal numbers of cells of every batch.
    Default 512 on CPU; on CUDA 4096, or less for small data so that a pass has at least 32 steps
    (:func:`scae._fast.default_batch_size`); shrunk with ``batch_key`` to what the smallest batch can fill
    (batches of fewer than 16 cells raise; with more than 16 batches, of fewer than ``256 // n_batches``). A
    given ``batch_size`` is kept: every batch must hold ``batch_size // n_batches`` cells. The value used is
    ``uns[key_added]["runtime"]["batch_size"]``.
pairwise_cells
    The pairwise loss terms (MMD, within-cluster distance, ``batch_reconstruction="distance"``) cost
    O(minibatch²); they are computed on an evenly spaced subset of at most this many cells of each
    minibatch (every batch equally represented), so large minibatches stay cheap. ``None``: all cells.
random_state
    Seed of weight init and minibatch sampling: same seed and device type → same results. ``None`` draws a
    seed, logged and recorded (``model.random_state``, ``uns[key_added]["params"]["random_state"]``).
device
    ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
batch_reconstruction
    With ``batch_key``: the reference batch is reconstructed value for value; a non-reference batch
    must keep its own structure only. ``"moments"`` (default): its output must reproduce its input moved,
    feature by feature, from its own mean and standard deviation (over all its cells) to the reference
    batch's (:mod:`scae._align`), so every batch is decoded in the reference's units; ``"zscore"`` compares
    per-batch z-scored outputs with z-scored inputs (the output's scale is left free: on RNA this let the
    clustering codes collapse); ``"distance"`` compares within-batch pairwise distances.
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
    sum of the set's own genes, with non-negative weights) or ``"decoder"`` (expiMap style: set nodes before
    a masked output layer).
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
deterministic
    Train and cut clusters on the device under ``torch.use_deterministic_algorithms(True)`` (ordered variants
    of the CUDA kernels that add floats atomically; ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` set where unset), so
    that CUDA fits with one seed repeat bit for bit; slower. CPU fits repeat bit for bit without it. Also
    covers the fine-tuning of :func:`scae.tl.transform` with this model (a loaded model:
    ``SAUCIE.load(..., deterministic=True)``, ``scae transform --deterministic``). See README "Determinism".
block_rows
    Rows per block read from disk when ``adata`` is backed (``read_h5ad(..., backed="r")``); default
    about 64 MB of dense float32 rows. Peak memory of training is one block, whatever the file size.
"""

FIT_PARAMS = """\
adata
    Cells × features, transformed (arcsinh for cytometry, log-normalized for RNA). Dense or sparse.
layer
    Layer to use instead of ``adata.X``.
batch_key
    Column of ``adata.obs`` whose batches are corrected by MMD in the embedding.
reference_batch
    Batch the others are moved onto; default the largest.
batch_reconstruction
    How non-reference batches are reconstructed when correcting batches: ``"moments"`` (default; their
    values moved to the reference batch's per-feature mean and standard deviation), ``"zscore"`` (per-batch
    standardized values) or ``"distance"`` (within-batch pairwise distances); see :class:`scae.SAUCIE`.
max_epochs
    Passes over the data. Default: a budget of 8 passes (at least 150 and at most 6,000 optimizer steps),
    ended earlier when the loss has converged (the mean total loss of the last 100 steps less than 2% below
    that of the 100 before, checked every 25 steps after 150; :mod:`scae._stopping`).
    ``uns[key_added]["runtime"]`` records ``steps``, ``epochs`` and ``stop_reason`` (``"converged"``,
    ``"max_steps"`` or ``"max_epochs"``).
early_stopping
    Stop when the loss has converged; default on when ``max_epochs`` is not given. With ``max_epochs``,
    ``True`` makes it an upper bound; ``False`` without ``max_epochs`` trains the whole budget.
hidden
    Encoder widths (decoder mirrors them; its last hidden layer is the clustering layer).
n_latent
    Width of the embedding layer (2: the visualization head).
lambda_b, lambda_c, lambda_d
    Weights of MMD batch correction, ID regularization and within-cluster distance (see :class:`scae.SAUCIE`).
learning_rate
    Adam learning rate; default 3e-3 up to a minibatch of 512, growing with the fifth root of larger
    minibatches (4.5e-3 at 4,096; a minibatch larger than the data counts as the data), at most 1e-2
    (:func:`scae._fast.default_learning_rate`); the value used is ``uns[key_added]["runtime"]["learning_rate"]``.
batch_size
    Minibatch size (default 512 on CPU; on CUDA 4096, less for small data: see :class:`scae.SAUCIE`).
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
    Seed; the same seed and device type give the same results. ``None`` draws one and records it in
    ``uns[key_added]["params"]["random_state"]``.
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
    :func:`scae.tl.transform` can place new cells into them later. Checked before training: a new folder or
    a model folder (replaced; other files in it are kept).
key_added
    Prefix of every key written.
copy
    Return a new AnnData instead of writing into ``adata``.
precision, compile, deterministic, block_rows
    GPU fast path, reproducibility and out-of-core options, see :class:`scae.SAUCIE`.
out_path
    Backed ``adata`` only (``anndata.read_h5ad(path, backed="r")``, dense or CSR): an .h5ad written
    atomically that holds every output of the fit (the input's ``obs``/``var``, embedding, clusters, codes,
    the imputed and corrected layers filled chunk by chunk, gene-set activities, ``uns``), everything but
    the input matrix. Into the backed ``adata`` itself go the embedding, clusters, gene-set activities and
    ``uns``. Under torchrun (``torchrun ... -m scae fit IN OUT``) every rank trains on its shard of the
    rows and rank 0 writes ``out_path`` (see :mod:`scae.distributed`).
"""

FIT_RETURNS = """\
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

Outputs of an earlier run under the same ``key_added`` that this fit does not write (e.g. the corrected layer
of a fit with ``batch_key``, or ``uns[f"{key_added}_rank_gene_sets"]``) are removed; the fitted ``layer`` stays.
"""
