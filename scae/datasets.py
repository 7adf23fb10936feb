"""Real datasets: bundled ones (shipped in the package) and loaders for the shared data directory."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anndata as ad
from anndata import AnnData

__all__ = [
    "bundled_dir",
    "bundled_path",
    "cell_cycle_gmt",
    "cellbench",
    "cytonorm",
    "flowsom_bal",
    "hallmark_gmt",
    "levine3k",
    "shared_data_dir",
    "tcga_coread",
]

_HERE = Path(__file__).resolve().parent
#: sha256 of the bundled files (checked on load).
CHECKSUMS = {
    "cytonorm_gates_cytof/cytonorm_gates_cytof.h5ad": (
        "e5d04f36e2725867adb0ac356351528a10f71d1ceec382d3fa0fc21da8f3f79c"
    ),
    "genesets/h.all.v7.5.1.symbols.gmt": "de0fdee38af2611a284973f565df1a98bfa2385aecd7ba2ee3fe51208e753b40",
    "genesets/cell_cycle_human.gmt": "17fdf538e5cd691985dafb116f5d04a67d24f12670e19884e17d686d2fddd489",
}


def bundled_dir() -> Path:
    """Folder of the bundled data: ``scae/_data`` in a wheel, the repo's ``data/`` in an editable install.

    Examples
    --------
    >>> import scae
    >>> sorted(p.name for p in scae.datasets.bundled_dir().iterdir() if p.is_dir())
    ['cytonorm_gates_cytof', 'genesets']
    """
    for cand in (_HERE / "_data", _HERE.parent / "data"):
        if (cand / "cytonorm_gates_cytof").is_dir():
            return cand
    msg = "bundled data not found: reinstall scae (the wheel ships it under scae/_data)"
    raise FileNotFoundError(msg)


def bundled_path(name: str) -> Path:
    """Path of a bundled file, verified against its checksum.

    Examples
    --------
    >>> import scae
    >>> scae.datasets.bundled_path("genesets/cell_cycle_human.gmt").name
    'cell_cycle_human.gmt'
    """
    path = bundled_dir() / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CHECKSUMS[name]:
        msg = f"bundled file {path} is corrupted (sha256 {digest}, expected {CHECKSUMS[name]}); reinstall scae"
        raise OSError(msg)
    return path


def shared_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Directory holding the shared real datasets.

    Order: ``data_dir`` when given, else the ``SCAE_DATA_DIR`` environment variable, else ``../shared/data``
    relative to the working directory or to the scae source checkout.

    Examples
    --------
    >>> import scae
    >>> (scae.datasets.shared_data_dir() / "flowsom_bal_flow" / "SOURCE.md").is_file()
    True
    """
    if data_dir is not None:
        cands = [Path(data_dir)]
    elif os.environ.get("SCAE_DATA_DIR"):
        cands = [Path(os.environ["SCAE_DATA_DIR"])]
    else:
        cands = [Path.cwd().parent / "shared" / "data", _HERE.parent.parent / "shared" / "data"]
    for c in cands:
        if c.is_dir():
            return c
    msg = (
        f"shared data directory not found (looked in {[str(c) for c in cands]}); pass `data_dir=` or set "
        "SCAE_DATA_DIR to the folder that holds e.g. flowsom_bal_flow/"
    )
    raise FileNotFoundError(msg)


def _read_shared(name: str, data_dir) -> AnnData:
    path = shared_data_dir(data_dir) / name / f"{name}.h5ad"
    if not path.is_file():
        msg = f"{path} not found; is {shared_data_dir(data_dir)} the shared data directory?"
        raise FileNotFoundError(msg)
    return ad.read_h5ad(path)


def cytonorm(*, markers_only: bool = True) -> AnnData:
    """Bundled CytoNorm example CyTOF: 6,000 cells, 3 batches (one per patient), arcsinh(x/5).

    From the cytonormpy wheel on PyPI (MIT); Van Gassen et al. 2020, Cytometry A 97:268.

    Parameters
    ----------
    markers_only
        Keep the 37 biological markers (drops barcodes, DNA, beads, time, ...); ``False`` gives all 55 channels.

    Returns
    -------
    AnnData with ``obs["batch"]``, ``obs["replicate"]``, ``obs["patient"]`` and ``layers["compensated"]``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> adata.shape
    (6000, 37)
    """
    adata = ad.read_h5ad(bundled_path("cytonorm_gates_cytof/cytonorm_gates_cytof.h5ad"))
    if markers_only:
        adata = adata[:, adata.var["is_marker"].to_numpy(bool)].copy()
    return adata


def hallmark_gmt() -> Path:
    """Path of the bundled MSigDB hallmark GMT (v7.5.1, 50 sets; CC BY 4.0, via pegasuspy).

    Examples
    --------
    >>> import scae
    >>> scae.datasets.hallmark_gmt().name
    'h.all.v7.5.1.symbols.gmt'
    """
    return bundled_path("genesets/h.all.v7.5.1.symbols.gmt")


def cell_cycle_gmt() -> Path:
    """Path of the bundled Tirosh 2016 cell-cycle GMT (G1/S, G2/M; via pegasuspy).

    Examples
    --------
    >>> import scae
    >>> sorted(scae.genesets.read_gmt(scae.datasets.cell_cycle_gmt()))
    ['G1/S', 'G2/M']
    """
    return bundled_path("genesets/cell_cycle_human.gmt")


def flowsom_bal(data_dir: str | os.PathLike | None = None, *, markers_only: bool = True) -> AnnData:
    """Manually gated mouse BAL flow cytometry (FlowSOM example, 19,225 cells, ``obs["cell_type"]``, 7 gates).

    Read from the shared data directory (:func:`shared_data_dir`), never copied into scae.

    Parameters
    ----------
    data_dir
        Shared data directory.
    markers_only
        Keep the 8 marker channels (compensated, logicle-transformed).

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.flowsom_bal()
    >>> adata.shape, adata.obs["cell_type"].nunique()
    ((19225, 8), 7)
    """
    adata = _read_shared("flowsom_bal_flow", data_dir)
    if markers_only:
        adata = adata[:, adata.var["is_marker"].to_numpy(bool)].copy()
    return adata


def levine3k(data_dir: str | os.PathLike | None = None) -> AnnData:
    """Levine 2015 CyTOF bone marrow, 3,000 cells × 23 markers, arcsinh(x/5), ``obs["phenograph_cluster"]``.

    Examples
    --------
    >>> import scae
    >>> scae.datasets.levine3k().shape
    (3000, 23)
    """
    return _read_shared("levine2015_phenograph3k", data_dir)


def cellbench(data_dir: str | os.PathLike | None = None) -> AnnData:
    """CellBench 3 cell lines on CEL-seq2 and Drop-seq: 499 cells, raw counts.

    Batches in ``obs["batch"]``, cell lines in ``obs["cell_line_demuxlet"]``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cellbench()
    >>> adata.shape, sorted(adata.obs["batch"].unique())
    ((499, 15073), ['CELseq2', 'Dropseq'])
    """
    return _read_shared("cellbench_3cl_2platforms", data_dir)


def tcga_coread(data_dir: str | os.PathLike | None = None, *, multiomics: bool = False) -> AnnData:
    """TCGA colorectal cancer, 121 tumours × 500 genes (log expression), ``obs["cms_label"]``.

    Mutations and CNV are in ``obsm``.

    Parameters
    ----------
    data_dir
        Shared data directory.
    multiomics
        Return one AnnData with the three omics as blocks of features: 500 expression genes (log scale,
        continuous), 200 mutated genes and 100 CNV cytobands (binary), in that order. ``var["block"]`` is
        ``"expression"``, ``"mutation"`` or ``"cnv"`` and ``var["feature"]`` the original name; var names
        are prefixed (``mut_TP53``, ``cnv_8p23.2``) so genes present in two blocks stay unique.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.tcga_coread(multiomics=True)  # doctest: +SKIP
    >>> scae.tl.fit(  # doctest: +SKIP
    ...     adata, block_key="block", likelihood={"expression": "mse", "mutation": "bernoulli", "cnv": "bernoulli"}
    ... )
    """
    adata = _read_shared("tcga_coread_cms", data_dir)
    if not multiomics:
        return adata
    import numpy as np
    import pandas as pd

    parts = [("expression", "", np.asarray(adata.X, dtype=np.float32), list(map(str, adata.var_names)))]
    for key, block, prefix in (("mutations", "mutation", "mut_"), ("cnv", "cnv", "cnv_")):
        df = adata.obsm[key]
        parts.append((block, prefix, df.to_numpy(dtype=np.float32), list(map(str, df.columns))))
    X = np.hstack([p[2] for p in parts])
    var = pd.DataFrame(
        {
            "block": pd.Categorical(
                [b for b, _, m, _ in parts for _ in range(m.shape[1])], categories=[p[0] for p in parts]
            ),
            "feature": [n for _, _, _, names in parts for n in names],
        },
        index=[prefix + n for _, prefix, _, names in parts for n in names],
    )
    return AnnData(X, obs=adata.obs.copy(), var=var)
