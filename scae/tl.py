"""Scanpy-style tools: ``scae.tl.fit`` writes every output of one training run into the AnnData."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from . import _features, _settings, genesets
from ._contract import stats_entries, uns_record
from ._mapping import build_mapping_state
from ._model import SAUCIE
from ._query import query
from ._tl_cluster import cluster, cluster_stats, recut_values
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

logger = logging.getLogger("scae")


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
    params = dict(locals())
    params.pop("adata")
    params["hidden"] = list(hidden)
    if save_model is not None:
        params["save_model"] = os.fspath(save_model)
    params["gene_sets"] = genesets.describe(gene_sets)
    if not isinstance(likelihood, str):
        params["likelihood"] = dict(likelihood)
    if block_weights is not None:
        params["block_weights"] = dict(block_weights)
    backed = bool(getattr(adata, "isbacked", False))
    t0 = time.perf_counter()
    model = SAUCIE(
        adata,
        layer=layer,
        batch_key=batch_key,
        reference_batch=reference_batch,
        batch_reconstruction=batch_reconstruction,
        hidden=hidden,
        lambda_b=lambda_b,
        lambda_c=lambda_c,
        lambda_d=lambda_d,
        learning_rate=learning_rate,
        batch_size=batch_size,
        pairwise_cells=pairwise_cells,
        random_state=random_state,
        device=device,
        gene_sets=gene_sets,
        min_genes=min_genes,
        n_free_nodes=n_free_nodes,
        gene_set_layer=gene_set_layer,
        likelihood=likelihood,
        block_key=block_key,
        block_weights=block_weights,
        input_dropout=input_dropout,
        input_noise=input_noise,
        l1_activity=l1_activity,
        contractive=contractive,
        variational=variational,
        lambda_kl=lambda_kl,
        precision=precision,
        compile=compile,
        block_rows=block_rows,
    )
    if not backed:
        _check_output_memory(model, impute=impute)
    model.train(max_epochs, progress=progress, early_stopping=early_stopping)
    if backed:
        return _finish_backed(
            adata, model, params, t0, key_added, impute, out_path, merge_threshold, n_clusters, min_cluster_size
        )
    # the model's own output arrays go into adata without copies (the model is dropped at the end), so
    # peak memory is one set of outputs: codes alone are n_cells × hidden[0] float32
    outputs = model._infer()
    embedding, codes = outputs["embedding"], outputs["codes"]
    imputed = model._reconstruction(corrected=False, counts=imputed_units) if impute else None
    corrected = model._reconstruction(corrected=True, counts="counts") if batch_key is not None else None
    if corrected is not None and corrected is imputed:  # two layers must not share one array
        corrected = corrected.copy()
    t_cluster = time.perf_counter()
    # cut on the layer that scae.tl.cluster re-cuts later, so that it reproduces these labels exactly
    values, units = recut_values(corrected, imputed, imputed_units, fallback=outputs["reconstruction"])
    labels = _features.cut(
        codes, values, model._X, blocks=model.blocks, mean=model.net.feature_mean.cpu().numpy(),
        std=model.net.feature_std.cpu().numpy(), units=units, merge_threshold=merge_threshold, n_clusters=n_clusters,
        min_cluster_size=min_cluster_size,
    )  # fmt: skip
    t_cluster = time.perf_counter() - t_cluster
    if save_model is not None:
        model.mapping_state = build_mapping_state(
            model, labels, merge_threshold=merge_threshold, n_clusters=n_clusters, min_cluster_size=min_cluster_size
        )
        model.save(save_model)
    activities = model.get_gene_set_activities() if gene_sets is not None else None
    n_clusters_found = int(labels.max()) + 1
    cluster_labels = pd.Categorical(labels.astype(str), categories=[str(i) for i in range(n_clusters_found)])
    runtime = dict(model.runtime, cluster_s=t_cluster)
    record = _uns_record(model, "memory", params, runtime, n_clusters_found, block_key=block_key)
    record.update(stats_entries(model._X, cluster_labels, adata.var_names, groupby=f"{key_added}_cluster", layer=layer))
    runtime["total_s"] = record["runtime"]["total_s"] = time.perf_counter() - t0

    adata = adata.copy() if copy else adata
    adata.obsm[f"X_{key_added}"] = embedding
    adata.obsm[f"X_{key_added}_codes"] = codes
    adata.obs[f"{key_added}_cluster"] = cluster_labels
    if imputed is not None:
        adata.layers[f"{key_added}_imputed"] = imputed
    if corrected is not None:
        adata.layers[f"{key_added}_corrected"] = corrected
    if activities is not None:
        adata.obsm[f"X_{key_added}_genesets"] = activities
        adata.varm[f"{key_added}_gene_set_weights"] = model.get_gene_set_weights().to_numpy(np.float32)
    adata.uns[key_added] = record
    logger.info(
        "scae: %d clusters; added obsm %r, %r, obs %r, layers%s, uns %r (%.1fs)",
        n_clusters_found,
        f"X_{key_added}",
        f"X_{key_added}_codes",
        f"{key_added}_cluster",
        "" if imputed is None else f" {key_added}_imputed",
        key_added,
        runtime["total_s"],
    )
    return adata if copy else None


def _available_memory() -> int | None:
    """Bytes the kernel can still give this process (``MemAvailable`` + free swap), ``None`` off Linux."""
    try:
        with open("/proc/meminfo") as f:
            fields = (ln.split() for ln in f)
            info = {k.rstrip(":"): int(v) * 1024 for k, v, *_ in fields if k in ("MemAvailable:", "SwapFree:")}
    except OSError:
        return None
    return info["MemAvailable"] + info.get("SwapFree", 0) if "MemAvailable" in info else None


def _check_output_memory(model: SAUCIE, *, impute: bool) -> None:
    """Raise ``MemoryError`` before training when the in-memory outputs cannot fit in the memory left.

    Outputs are float32: codes ``n × code units`` (``hidden[0]``), the reconstruction ``n × n_features``
    (once more while clustering, for a count model's standardized copy and for a batch-restored imputed
    layer), the embedding and gene-set activities. A fit killed by the kernel after hours of training
    loses everything; this fails at once and says what to do instead.
    """
    available = _available_memory()
    if available is None:
        return
    n, d = model.n_cells, model.net.n_features
    n_code = model.net.code_layer.out_features
    plain = all(b.likelihood == "mse" for b in model.blocks)
    copies = 2 + int(not plain) + int(impute and plain and model.batches is not None)
    need = 4 * n * (n_code + model.net.n_latent + d * copies + len(model.gene_set_names))
    if need > available:
        msg = (
            f"the outputs of scae.tl.fit for {n:,} cells need about {need / 2**30:.1f} GiB of memory (the codes "
            f"alone are {n:,} × {n_code} float32 = {4 * n * n_code / 2**30:.1f} GiB) but {available / 2**30:.1f} GiB "
            "is available. Open the data backed (`anndata.read_h5ad(path, backed='r')`) and pass `out_path=` to "
            "stream codes and imputed values to a file, or use a narrower first layer (`hidden=(128, 64, 32)`)."
        )
        raise MemoryError(msg)


def _uns_record(model, mode: str, params: dict, runtime: dict, n_clusters: int, *, block_key, out_path=None) -> dict:
    """``uns[key_added]`` of a fit (see :mod:`scae._contract`), without the cluster statistics."""
    batches = model.batches
    return uns_record(
        mode=mode,
        params=params,
        history=model.history,
        seed=params["random_state"],
        device=model.device,
        runtime=runtime,
        n_clusters=n_clusters,
        input_sparse=sp.issparse(model._X) or getattr(model._X, "format", None) == "csr",
        out_path=out_path,
        batch_categories=None if batches is None else batches.categories,
        reference_batch=None if batches is None else batches.categories[batches.reference],
        blocks=model.hparams["blocks"] if block_key is not None else None,
        gene_sets=model.gene_set_names or None,
    )


def _finish_backed(
    adata, model, params, t0, key_added, impute, out_path, merge_threshold, n_clusters, min_cluster_size
):
    """Outputs of a backed fit, streamed chunk by chunk (see :mod:`scae._outofcore`).

    ``out_path`` is written to a temporary file beside it and renamed once everything else succeeded; ``adata``
    receives its outputs only then, so a failure leaves neither a partial ``out_path`` nor a changed ``adata``.
    """
    from ._outofcore import finish

    with finish(
        adata,
        model,
        key_added=key_added,
        impute=impute,
        out_path=out_path,
        merge_threshold=merge_threshold,
        n_clusters=n_clusters,
        min_cluster_size=min_cluster_size,
        imputed_units=params["imputed_units"],
    ) as info:
        runtime = dict(model.runtime, infer_cluster_s=info["infer_cluster_s"])
        record = _uns_record(model, "backed", params, runtime, info["n_clusters"], block_key=params["block_key"],
                             out_path=out_path)  # fmt: skip
        stats = stats_entries(model._X, info["labels"], adata.var_names, groupby=f"{key_added}_cluster",
                              layer=params["layer"])  # fmt: skip
        record.update(stats)
        record["runtime"]["total_s"] = time.perf_counter() - t0
    adata.obsm[f"X_{key_added}"] = info["embedding"]
    adata.obs[f"{key_added}_cluster"] = info["labels"]
    adata.uns[key_added] = record
    logger.info("scae (backed): %d clusters in %.1fs", info["n_clusters"], record["runtime"]["total_s"])
    return None
