"""What ``scae.tl.fit`` runs: model set-up, training, outputs and the contract, for every mode.

Modes (``uns[key]["mode"]``): ``"memory"`` (an in-memory AnnData: every output array in memory), ``"backed"``
(an AnnData opened with ``backed="r"``: outputs streamed, big arrays to ``out_path``) and ``"distributed"``
(backed, under torchrun: every rank trains on its shard, rank 0 clusters and writes). The three share the
model, training loop, forward pass, cluster accumulator and contract writer of :mod:`scae._pipeline` and
:mod:`scae._contract`; only the sinks differ.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import scipy.sparse as sp

from . import _dist, _mapping, data
from ._accumulator import ClusterAccumulator
from ._atomic import atomic_path
from ._contract import stats_entries, uns_record, write_contract
from ._model import SAUCIE
from ._options import FitSettings
from ._outofcore import FileSink
from ._pipeline import categorical_labels, cut_labels, stream_outputs
from ._tl_cluster import recut_values
from .cluster import common_scale

logger = logging.getLogger("scae")


def run(adata, settings: FitSettings, params: dict):
    """Fit ``adata`` with the checked ``settings`` (every argument of ``tl.fit``, grouped); ``params`` go to ``uns``."""
    t0 = time.perf_counter()
    backed = bool(getattr(adata, "isbacked", False))
    group = _dist.current()
    if group is not None and not (backed and data.is_backed(data.get_matrix(adata, settings.data.layer))):
        msg = (
            f"under torchrun ({group.world} processes) every rank trains on its own rows of a backed AnnData: "
            "open the input with `anndata.read_h5ad(path, backed='r')` and use `X` or a layer stored as a dense or "
            "CSR matrix (or run `scae fit IN OUT` under torchrun)"
        )
        raise ValueError(msg)
    model = SAUCIE(adata, **settings.model_kwargs())
    params["random_state"] = model.random_state  # the seed drawn for random_state=None
    if not backed:
        _check_output_memory(model, impute=settings.output.impute)
    schedule = settings.schedule
    model.train(schedule.max_epochs, progress=schedule.progress, early_stopping=schedule.early_stopping)
    if backed:
        return _finish_streamed(adata, model, settings, params, t0)
    return _finish_in_memory(adata, model, settings, params, t0)


def _record(model, settings, params, runtime: dict, n_clusters: int, *, mode: str, labels, out_path=None) -> dict:
    """``uns[key_added]`` of a fit, cluster statistics included (see :mod:`scae._contract`)."""
    batches = model.batches
    record = uns_record(
        mode=mode,
        params=params,
        history=model.history,
        seed=params["random_state"],
        device=model.device,
        runtime=runtime,
        n_clusters=n_clusters,
        input_sparse=sp.issparse(model.X) or getattr(model.X, "format", None) == "csr",
        out_path=out_path,
        world_size=1 if model.group is None else model.group.world,
        batch_categories=None if batches is None else batches.categories,
        reference_batch=None if batches is None else batches.categories[batches.reference],
        blocks=model.hparams["blocks"] if settings.network.block_key is not None else None,
        gene_sets=model.gene_set_names or None,
    )
    key = settings.output.key_added
    record.update(stats_entries(model.X, labels, model.var_names, groupby=f"{key}_cluster", layer=settings.data.layer))
    return record


def _finish_in_memory(adata, model: SAUCIE, settings: FitSettings, params: dict, t0: float):
    """Outputs of an in-memory fit: every array held once, clusters cut on the layer ``tl.cluster`` re-cuts."""
    outputs = model.outputs()
    impute, units = settings.output.impute, settings.output.imputed_units
    imputed = model.reconstruction_array(corrected=False, counts=units) if impute else None
    corrected = model.reconstruction_array(corrected=True) if model.batches is not None else None
    if corrected is not None and corrected is imputed:  # two layers must not share one array
        corrected = corrected.copy()
    t_cluster = time.perf_counter()
    values, cut_units = recut_values(corrected, imputed, units, fallback=outputs["reconstruction"])
    labels = cut_labels(model, outputs["codes"], values, units=cut_units, **settings.cluster_kwargs())
    t_cluster = time.perf_counter() - t_cluster
    if settings.output.save_model is not None:
        model.mapping_state = _mapping.build_mapping_state(model, labels, **settings.cluster_kwargs())
        model.save(settings.output.save_model)
    runtime = dict(model.runtime, cluster_s=t_cluster)
    clusters = categorical_labels(labels)
    record = _record(model, settings, params, runtime, len(clusters.categories), mode="memory", labels=clusters)
    record["runtime"]["total_s"] = time.perf_counter() - t0
    key = settings.output.key_added
    layers = {f"{key}_imputed": imputed, f"{key}_corrected": corrected}
    target = adata.copy() if settings.output.copy else adata
    write_contract(
        target, key, embedding=outputs["embedding"], codes=outputs["codes"], clusters=clusters,
        layers={k: v for k, v in layers.items() if v is not None}, gene_sets=_gene_set_outputs(model), record=record,
    )  # fmt: skip
    logger.info("%d clusters in %.1fs", len(clusters.categories), record["runtime"]["total_s"])
    return target if settings.output.copy else None


def _gene_set_outputs(model: SAUCIE, activities=None):
    """``(activities, weights)`` of a model with a gene-set layer, else ``None``."""
    if model.gene_set_mask is None:
        return None
    if activities is None:
        activities = model.get_gene_set_activities()
    return activities, model.get_gene_set_weights().to_numpy(np.float32)


def _finish_streamed(adata, model: SAUCIE, settings: FitSettings, params: dict, t0: float):
    """Outputs of a backed (or torchrun) fit, streamed chunk by chunk; ``out_path`` written atomically.

    ``out_path`` is written to a temporary file beside it and renamed once everything succeeded; ``adata``
    receives its outputs only then, so a failure leaves neither a partial ``out_path`` nor a changed ``adata``.
    Under torchrun only rank 0 clusters and writes; the other ranks return after the last collective pass.
    """
    key, out_path, impute = settings.output.key_added, settings.output.out_path, settings.output.impute
    main = model.group is None or model.group.is_main
    corrected = model.batches is not None
    rec_units = "counts" if corrected else settings.output.imputed_units
    cut_units = "counts" if (corrected or not impute) else settings.output.imputed_units
    std = model.net.feature_std.cpu().numpy()
    acc = ClusterAccumulator(
        model.n_cells, merge_scale=common_scale(std) if model.plain else 1.0, **settings.cluster_kwargs()
    )
    t1 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        sink = None
        if out_path is not None and main:
            tmp = stack.enter_context(atomic_path(out_path))
            datasets = {"codes": (f"obsm/X_{key}_codes", model.net.code_layer.out_features)}
            if corrected:
                datasets["reconstruction"] = (f"layers/{key}_corrected", model.n_features)
            if impute:
                datasets["imputed" if corrected else "reconstruction"] = (f"layers/{key}_imputed", model.n_features)
            sink = FileSink(tmp, adata, datasets=datasets)
            stack.callback(sink.close)
        embedding, activities, labels = stream_outputs(
            model, acc, sink=sink, counts=rec_units, cut_units=cut_units,
            # the imputed layer of batch-corrected fits is another pass: only when a file receives it (the same
            # decision on every rank: out_path is the same everywhere)
            imputed_units=settings.output.imputed_units if (corrected and impute and out_path is not None) else None,
        )  # fmt: skip
        if not main:
            return None
        clusters = categorical_labels(labels)
        runtime = dict(model.runtime, infer_cluster_s=time.perf_counter() - t1)
        mode = "backed" if model.group is None else "distributed"
        record = _record(model, settings, params, runtime, len(clusters.categories), mode=mode, labels=clusters,
                         out_path=out_path)  # fmt: skip
        if settings.output.save_model is not None:
            model.mapping_state = _mapping.mapping_state(model, _mapping.ClusterReference.from_accumulator(acc))
            model.save(settings.output.save_model)
        record["runtime"]["total_s"] = time.perf_counter() - t0
        gene_sets = _gene_set_outputs(model, activities)
        if sink is not None:
            sink.finish(_file_outputs(key, embedding, clusters, gene_sets, record))
    write_contract(adata, key, embedding=embedding, clusters=clusters, gene_sets=gene_sets, record=record)
    if out_path is None:
        logger.info("backed input: codes and imputed values are not kept; pass `out_path=` to write them to a file")
    logger.info("%s: %d clusters in %.1fs", mode, len(clusters.categories), record["runtime"]["total_s"])
    return None


def _file_outputs(key: str, embedding, clusters, gene_sets, record) -> dict:
    out = {"obs": {f"{key}_cluster": clusters}, "obsm": {f"X_{key}": embedding}, "uns": {key: record}, "varm": {}}
    if gene_sets is not None:
        out["obsm"][f"X_{key}_genesets"] = gene_sets[0]
        out["varm"][f"{key}_gene_set_weights"] = gene_sets[1]
    return out


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
    n, d = model.n_cells, model.n_features
    n_code = model.net.code_layer.out_features
    copies = 2 + int(not model.plain) + int(impute and model.plain and model.batches is not None)
    need = 4 * n * (n_code + model.net.n_latent + d * copies + len(model.gene_set_names))
    if need > available:
        msg = (
            f"the outputs of scae.tl.fit for {n:,} cells need about {need / 2**30:.1f} GiB of memory (the codes "
            f"alone are {n:,} × {n_code} float32 = {4 * n * n_code / 2**30:.1f} GiB) but {available / 2**30:.1f} GiB "
            "is available. Open the data backed (`anndata.read_h5ad(path, backed='r')`) and pass `out_path=` to "
            "stream codes and imputed values to a file, or use a narrower first layer (`hidden=(128, 64, 32)`)."
        )
        raise MemoryError(msg)
