"""Files of backed fits: the ``out_path`` sink, and real cells resampled with noise for the scale tests.

Backed fits run the streamed pipeline of :mod:`scae._pipeline` through :mod:`scae._fit`; what they write to
``out_path`` goes through :class:`FileSink`. :func:`write_resampled_h5ad` grows real data past memory for
the scale tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd


class FileSink:
    """The ``out_path`` of a backed fit: an .h5ad with the input's ``obs``/``var``, filled chunk by chunk.

    ``datasets`` maps an output name to ``("obsm/X_scae_codes", width)``; :meth:`finish` then adds what is
    held in memory (embedding, clusters, gene sets, ``uns``), so the file is a complete result without ``X``.
    """

    def __init__(self, path: Path, adata, *, datasets: dict[str, tuple[str, int]]) -> None:
        ad.AnnData(obs=adata.obs.copy(), var=adata.var.copy()).write_h5ad(path)
        self.path = path
        self.file = h5py.File(path, "a")
        self.targets = {}
        for name, (where, width) in datasets.items():
            group, key = where.split("/")
            rows = max(1, min(adata.n_obs, 2**20 // max(1, width)))
            dset = self.file.require_group(group).create_dataset(
                key, shape=(adata.n_obs, width), dtype="float32", chunks=(rows, width)
            )
            dset.attrs["encoding-type"] = "array"
            dset.attrs["encoding-version"] = "0.2.0"
            self.targets[name] = dset

    def write(self, name: str, start: int, block: np.ndarray) -> None:
        """Rows ``start:start + len(block)`` of the output ``name`` (ignored when it is not kept)."""
        if name in self.targets:
            self.targets[name][start : start + block.shape[0]] = block

    def finish(self, outputs: dict) -> None:
        """Write the outputs held in memory: ``{"obs": {...}, "obsm": {...}, "varm": {...}, "uns": {...}}``."""
        from anndata.io import write_elem

        obs = ad.io.read_elem(self.file["obs"])
        for k, v in outputs.get("obs", {}).items():
            obs[k] = v
        del self.file["obs"]
        write_elem(self.file, "obs", obs)
        for kind in ("obsm", "varm", "uns"):
            for k, v in outputs.get(kind, {}).items():
                write_elem(self.file.require_group(kind), k, v)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self.file.id.valid:
            self.file.close()


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
