"""The one writer of ``uns[key_added]``: the same top-level keys on every path.

In-memory fits, backed fits, torchrun fits (:mod:`scae.distributed`) and ``scae.tl.transform`` all build
their ``uns`` entry with :func:`uns_record` and add the cluster statistics of :func:`stats_entries`, so a
reader finds the same keys whatever produced the AnnData (see ``UNS_KEYS``). Keys that only apply to some
runs are still written with a neutral value (``out_path`` ``""``, ``n_by_code`` ``-1`` for fits,
``world_size`` 1 outside torchrun); keys that follow from the options (``batch_categories`` and
``reference_batch`` with batches, ``blocks`` with ``block_key``, ``gene_sets`` with gene sets) are written
exactly when the option was used, on every path.
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from ._stats import group_stats
from ._uns import writable

#: Top-level keys of ``uns[key_added]`` that every path writes.
UNS_KEYS = (
    "params", "history", "versions", "seed", "device", "runtime", "mode", "n_clusters", "input_sparse", "backed",
    "out_path", "world_size", "mapped", "n_by_code", "cluster_means", "cluster_medians", "cluster_sizes",
    "cluster_stats_params",
)  # fmt: skip
#: What produced the AnnData: ``uns[key]["mode"]``.
MODES = ("memory", "backed", "distributed", "transform")


def versions() -> dict[str, str]:
    """Versions of Python and the packages that shape the results."""
    out = {"python": platform.python_version()}
    for pkg in ("scae", "torch", "anndata", "scanpy", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def uns_record(
    *,
    mode: str,
    params: dict,
    history: dict,
    seed: int,
    device,
    runtime: dict,
    n_clusters: int,
    input_sparse: bool,
    out_path=None,
    world_size: int = 1,
    n_by_code: int = -1,
    batch_categories=None,
    reference_batch=None,
    blocks: dict | None = None,
    gene_sets: list[str] | None = None,
) -> dict:
    """``uns[key_added]`` without the cluster statistics (add :func:`stats_entries`); see the module docstring."""
    if mode not in MODES:
        msg = f"`mode` must be one of {MODES}, got {mode!r}"
        raise ValueError(msg)
    record = {
        "params": writable({k: v for k, v in params.items() if v is not None}),
        "history": writable({k: np.asarray(v, dtype=np.float64) for k, v in history.items()}),
        "versions": versions(),
        "seed": int(seed),
        "device": str(device),
        "runtime": dict(runtime),
        "mode": mode,
        "n_clusters": int(n_clusters),
        "input_sparse": bool(input_sparse),
        "backed": mode in ("backed", "distributed"),
        "out_path": "" if out_path is None else str(out_path),
        "world_size": int(world_size),
        "mapped": mode == "transform",
        "n_by_code": int(n_by_code),
    }
    if batch_categories is not None:
        record["batch_categories"] = [str(c) for c in batch_categories]
        record["reference_batch"] = str(reference_batch)
    if blocks is not None:
        record["blocks"] = writable(blocks)
    if gene_sets is not None:
        record["gene_sets"] = list(gene_sets)
    return record


def stats_entries(X, labels, var_names, *, groupby: str, layer: str | None) -> dict:
    """``cluster_means``, ``cluster_medians``, ``cluster_sizes`` and ``cluster_stats_params`` of the groups ``labels``.

    ``X`` may be backed (read in row chunks; medians then of a bounded sample of each cluster's cells, see
    :func:`scae._stats.group_stats`).
    """
    stats = group_stats(X, labels, var_names)
    return {
        "cluster_means": writable(stats["means"]),
        "cluster_medians": writable(stats["medians"]),
        "cluster_sizes": np.asarray(stats["sizes"].to_numpy(), dtype=np.int64),
        "cluster_stats_params": {
            "groupby": groupby,
            "layer": "X" if layer is None else layer,
            "median_sample": int(stats.get("median_sample", 0)),
        },
    }


def write_contract(
    adata,
    key: str,
    *,
    embedding,
    clusters,
    record: dict,
    codes=None,
    layers: dict | None = None,
    gene_sets: tuple | None = None,
) -> None:
    """Write a fit's outputs into ``adata`` under the keys of the contract (prefix ``key``).

    ``obsm[f"X_{key}"]`` (embedding), ``obs[f"{key}_cluster"]`` (categorical clusters), ``uns[key]``
    (``record``), and when given ``obsm[f"X_{key}_codes"]``, the ``layers`` (full names), and ``gene_sets`` =
    ``(activities, weights)`` as ``obsm[f"X_{key}_genesets"]`` / ``varm[f"{key}_gene_set_weights"]``. Called
    last, once everything is computed, so a failure earlier leaves ``adata`` unchanged. Outputs of an earlier
    run under the same prefix that this run does not write (:func:`stale_outputs`) are removed: a refit
    without ``batch_key`` must not leave the old corrected layer for :func:`scae.tl.cluster` to re-cut.
    """
    written = {"codes": codes is not None, "layers": layers, "gene_sets": gene_sets is not None}
    for slot, name in stale_outputs(adata, key, **written, fitted_layer=record.get("params", {}).get("layer")):
        del getattr(adata, slot)[name]
    adata.obsm[f"X_{key}"] = embedding
    if codes is not None:
        adata.obsm[f"X_{key}_codes"] = codes
    adata.obs[f"{key}_cluster"] = clusters
    for name, values in (layers or {}).items():
        adata.layers[name] = values
    if gene_sets is not None:
        adata.obsm[f"X_{key}_genesets"] = gene_sets[0]
        adata.varm[f"{key}_gene_set_weights"] = gene_sets[1]
    adata.uns[key] = record


def stale_outputs(
    adata, key: str, *, codes: bool, layers: dict | None, gene_sets: bool, fitted_layer: str | None = None
) -> list[tuple[str, str]]:
    """``(slot, name)`` of the outputs under prefix ``key`` in ``adata`` that a run writing these will not replace;
    never ``fitted_layer``, the layer the run read (a fit on an earlier run's imputed values keeps it).

    Only the optional outputs of the contract: codes, the ``{key}_imputed`` / ``{key}_corrected`` layers and the
    gene-set activities and weights (the embedding, clusters and ``uns`` entry are always written), and the
    ranking of the earlier run's gene-set activities (``uns[f"{key}_rank_gene_sets"]``, :func:`scae.tl.rank_gene_sets`).
    """
    wanted = {("obsm", f"X_{key}_codes"): codes, ("obsm", f"X_{key}_genesets"): gene_sets}
    wanted[("varm", f"{key}_gene_set_weights")] = gene_sets
    wanted[("uns", f"{key}_rank_gene_sets")] = False
    for suffix in ("imputed", "corrected"):
        name = f"{key}_{suffix}"
        wanted[("layers", name)] = name in (layers or {}) or name == fitted_layer
    return [(slot, name) for (slot, name), kept in wanted.items() if not kept and name in getattr(adata, slot)]
