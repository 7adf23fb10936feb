"""``scae.tl.fit`` on a backed AnnData: outputs streamed chunk by chunk, big per-cell arrays to a file.

In memory: the 2-D embedding, one cluster label per cell and ``uns``. The clustering-layer codes and the
reconstruction (imputed values; with ``batch_key`` the batch-corrected one, in the reference batch's
units) are written chunk by chunk to ``out_path`` (an .h5ad with the same ``obs_names``/``var_names``)
when it is given, else not kept.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from ._atomic import atomic_path
from ._stream import stream_outputs
from .train import INFER_CHUNK_ROWS

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


@contextlib.contextmanager
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
    imputed_units: str = "counts",
):
    """Stream embedding, clusters and codes/reconstruction; yield ``embedding``, ``labels`` (categorical) and runtime.

    Codes and reconstruction go to a temporary file beside ``out_path``, renamed to ``out_path`` when the
    ``with`` block ends without error; on any error the temporary file is removed (an earlier ``out_path``
    stays as it was). ``adata`` itself is not written here.
    """
    t0 = time.perf_counter()
    corrected = model.batches is not None and model.weights.lambda_b > 0
    rec_key = f"{key_added}_corrected" if corrected else f"{key_added}_imputed"
    with contextlib.ExitStack() as stack:
        tmp = None if out_path is None else stack.enter_context(atomic_path(out_path))
        sink = None
        if tmp is not None:
            n_units = int(model.hparams["hidden"][0])  # the clustering layer mirrors the first encoder layer
            datasets = {"codes": (f"obsm/X_{key_added}_codes", n_units)}
            if impute:
                datasets["reconstruction"] = (f"layers/{rec_key}", model.net.feature_mean.numel())
            sink = _H5Sink(tmp, adata, datasets=datasets)
        chunk = min(model._row_source().block_rows, INFER_CHUNK_ROWS)  # a 64 MB block is ~450k cytometry rows
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
                counts=imputed_units,
            )
        finally:
            if sink is not None:
                sink.close()
        if out_path is None:
            logger.info("backed input: codes and imputed values are not kept; pass `out_path=` to write them to a file")
        k = int(labels.max()) + 1
        yield {
            "embedding": embedding,
            "labels": pd.Categorical.from_codes(labels, categories=[str(i) for i in range(k)]),
            "n_clusters": k,
            "infer_cluster_s": time.perf_counter() - t0,
        }


def write_resampled_h5ad(
    adata,
    path,
    n_cells: int,
    *,
    noise: float = 0.05,
    sparse: bool = False,
    chunk_rows: int = 8192,
    random_state: int = 0,
) -> Path:
    """Write an .h5ad of ``n_cells`` cells resampled from ``adata.X`` (dense) plus N(0, ``noise``) noise.

    Written chunk by chunk (never the full matrix in memory), dense or CSR (noise only on non-zeros for
    CSR). ``obs`` holds the source cell (``source_cell``) and its ``obs`` columns of categorical dtype.
    Used by the scale tests and ``benchmarks/speed.py`` to grow real data past memory.
    """
    path = Path(path)
    rng = np.random.default_rng(random_state)
    base = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, dtype=np.float32)
    pick = rng.integers(0, adata.n_obs, n_cells)
    obs = pd.DataFrame({"source_cell": pick}, index=pd.RangeIndex(n_cells).astype(str))
    for col in adata.obs.columns:
        if isinstance(adata.obs[col].dtype, pd.CategoricalDtype):
            obs[col] = pd.Categorical.from_codes(adata.obs[col].cat.codes.to_numpy()[pick], dtype=adata.obs[col].dtype)
    ad.AnnData(obs=obs, var=pd.DataFrame(index=adata.var_names)).write_h5ad(path)
    p = base.shape[1]
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        if sparse:
            g = f.create_group("X")
            g.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, p)})
            data = g.create_dataset("data", shape=(0,), maxshape=(None,), dtype="float32", chunks=(2**16,))
            indices = g.create_dataset("indices", shape=(0,), maxshape=(None,), dtype="int32", chunks=(2**16,))
            indptr = [np.zeros(1, dtype=np.int64)]
        else:
            X = f.create_dataset("X", shape=(n_cells, p), dtype="float32", chunks=(max(1, min(n_cells, 2**18 // p)), p))
            X.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
        for a in range(0, n_cells, chunk_rows):
            rows = pick[a : a + chunk_rows]
            block = base[rows]
            if sparse:
                nz = block != 0
                block[nz] += rng.normal(0, noise, int(nz.sum())).astype(np.float32)
                r, c = np.nonzero(block)
                n0 = data.shape[0]
                data.resize((n0 + r.size,))
                indices.resize((n0 + r.size,))
                data[n0:] = block[r, c]
                indices[n0:] = c
                indptr.append(n0 + np.cumsum(np.bincount(r, minlength=len(rows))))
            else:
                X[a : a + len(rows)] = block + rng.normal(0, noise, block.shape).astype(np.float32)
        if sparse:
            g.create_dataset("indptr", data=np.concatenate(indptr))
    return path
