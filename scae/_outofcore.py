"""Data larger than memory for the scale tests and benchmarks: real cells resampled with noise into an .h5ad.

(Backed fits themselves run the streamed pipeline of :mod:`scae._pipeline` through :mod:`scae._fit`.)
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd


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
