"""``scae.tl.fit`` on a backed AnnData: outputs streamed chunk by chunk, big per-cell arrays to a file.

In memory: the 2-D embedding, one cluster label per cell and ``uns``. The clustering-layer codes and the
reconstruction (imputed values; with ``batch_key`` the batch-corrected one, in the reference batch's
units) are written chunk by chunk to ``out_path`` (an .h5ad with the same ``obs_names``/``var_names``)
when it is given, else not kept.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from ._stream import stream_outputs

logger = logging.getLogger("scae")


class _H5Sink:
    """Writes row blocks into dense datasets of an .h5ad that anndata reads back as obsm/layers."""

    def __init__(self, path: Path, adata, *, datasets: dict[str, tuple[str, int]]) -> None:
        ad.AnnData(obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names)).write_h5ad(path)
        self.file = h5py.File(path, "a")
        self.targets = {}
        for name, (where, width) in datasets.items():
            group, key = where.split("/")
            g = self.file.require_group(group)
            rows = max(1, min(adata.n_obs, 2**20 // max(1, width)))
            dset = g.create_dataset(key, shape=(adata.n_obs, width), dtype="float32", chunks=(rows, width))
            dset.attrs["encoding-type"] = "array"
            dset.attrs["encoding-version"] = "0.2.0"
            self.targets[name] = dset

    def __call__(self, name: str, start: int, block: np.ndarray) -> None:
        if name in self.targets:
            self.targets[name][start : start + block.shape[0]] = block

    def close(self) -> None:
        self.file.close()


def finish(
    adata,
    model,
    *,
    key_added: str,
    impute: bool,
    out_path,
    merge_threshold,
    n_clusters,
    min_cluster_size,
) -> dict:
    """Stream embedding, clusters (into ``adata``) and codes/reconstruction (into ``out_path``); return runtime."""
    t0 = time.perf_counter()
    corrected = model.batches is not None and model.weights.lambda_b > 0
    rec_key = f"{key_added}_corrected" if corrected else f"{key_added}_imputed"
    sink = None
    if out_path is not None:
        n_units = int(model.hparams["hidden"][0])  # the clustering layer mirrors the first encoder layer
        datasets = {"codes": (f"obsm/X_{key_added}_codes", n_units)}
        if impute:
            datasets["reconstruction"] = (f"layers/{rec_key}", model.net.feature_mean.numel())
        sink = _H5Sink(Path(out_path), adata, datasets=datasets)
    chunk = model._row_source().block_rows
    try:
        embedding, labels = stream_outputs(
            model.net,
            model._row_source(),
            chunk_size=chunk,
            min_cluster_size=min_cluster_size,
            merge_threshold=merge_threshold,
            n_clusters=n_clusters,
            sink=sink,
            write_reconstruction=impute and sink is not None,
        )
    finally:
        if sink is not None:
            sink.close()
    if out_path is None:
        logger.info("backed input: codes and imputed values are not kept; pass `out_path=` to write them to a file")
    adata.obsm[f"X_{key_added}"] = embedding
    k = int(labels.max()) + 1
    adata.obs[f"{key_added}_cluster"] = pd.Categorical.from_codes(labels, categories=[str(i) for i in range(k)])
    return {"infer_cluster_s": time.perf_counter() - t0, "n_clusters": k, "out_path": None if out_path is None else str(out_path)}
