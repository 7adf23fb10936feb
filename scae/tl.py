"""Scanpy-style tools: ``scae.tl.fit`` writes every output of one training run into the AnnData."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

from anndata import AnnData

from . import _docs, _fit, _options, _settings, genesets
from ._query import query
from ._tl_cluster import cluster, cluster_stats, granularity
from ._tl_genesets import activity_adata, rank_gene_sets, rank_gene_sets_df
from ._transform import transform
from .cluster import DEFAULT_MERGE_THRESHOLD

__all__ = [
    "activity_adata",
    "cluster",
    "cluster_stats",
    "fit",
    "granularity",
    "query",
    "rank_gene_sets",
    "rank_gene_sets_df",
    "transform",
]


@_docs.doc_params(fit_params=_docs.FIT_PARAMS, fit_returns=_docs.FIT_RETURNS)
def fit(
    adata: AnnData,
    *,
    layer: str | None = None,
    batch_key: str | None = None,
    reference_batch: str | None = None,
    batch_reconstruction: str = "moments",
    max_epochs: int | None = None,
    early_stopping: bool | None = None,
    hidden: Sequence[int] = (256, 128, 64),
    n_latent: int = 2,
    lambda_b: float = 0.1,
    lambda_c: float = 0.1,
    lambda_d: float = 0.2,
    learning_rate: float | None = None,
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
    random_state: int | None = 0,
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
    deterministic: bool = False,
    block_rows: int | None = None,
    out_path: str | None = None,
) -> AnnData | None:
    """Train one SAUCIE-style autoencoder and write embedding, codes, clusters and imputed values.

    Parameters
    ----------
    {fit_params}

    Returns
    -------
    {fit_returns}

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
    return _fit.run(adata, _options.FitSettings.from_flat(options), _params(options))


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
