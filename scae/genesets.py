"""Gene sets: read GMT files and build the gene × set 0/1 mask of the gene-set layer (no tensor math here).

Gene names are matched **case-insensitively** (both sides upper-cased), so the upper-case human symbols of
MSigDB GMT files also match title-case names (``Cd3e``) and the other way round. Matching is on
``adata.var_names`` only: map Ensembl IDs to symbols first (e.g. ``adata.var_names = adata.var["gene_symbols"]``).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["GeneSets", "describe", "gene_set_mask", "read_gmt"]

GeneSets = str | os.PathLike | Mapping[str, Iterable[str]] | pd.DataFrame


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a GMT file into ``{set name: [genes]}``.

    GMT: one set per line, tab-separated ``name``, ``description`` (often a URL), then the genes. Empty gene
    fields are skipped and duplicate genes within a set are kept once, in file order.

    Parameters
    ----------
    path
        Path of the ``.gmt`` file.

    Returns
    -------
    Dict from set name to its list of genes, in file order.

    Examples
    --------
    >>> import scae
    >>> sets = scae.genesets.read_gmt(scae.datasets.hallmark_gmt())
    >>> len(sets), sets["HALLMARK_HYPOXIA"][:3]
    (50, ['PGK1', 'PDK1', 'GBE1'])
    """
    path = Path(path)
    if not path.is_file():
        msg = f"gene-set file {str(path)!r} not found (expected a GMT file: name<TAB>description<TAB>genes...)"
        raise FileNotFoundError(msg)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        msg = f"{path} is not a GMT text file (not UTF-8 text: {e.reason} at byte {e.start})"
        raise ValueError(msg) from e
    sets: dict[str, list[str]] = {}
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            msg = (
                f"{path}:{lineno}: a GMT line needs a name, a description and at least one gene, "
                f"tab-separated; got {len(fields)} field(s)"
            )
            raise ValueError(msg)
        name = fields[0].strip()
        if name in sets:
            msg = f"{path}:{lineno}: gene set {name!r} appears twice"
            raise ValueError(msg)
        sets[name] = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
    if not sets:
        msg = f"{path} holds no gene sets"
        raise ValueError(msg)
    return sets


def _as_dict(gene_sets: GeneSets, var_names: pd.Index) -> dict[str, list[str]]:
    """Turn a GMT path, a dict or a genes × sets DataFrame mask into ``{set name: [genes]}``."""
    if isinstance(gene_sets, str | os.PathLike):
        return read_gmt(gene_sets)
    if isinstance(gene_sets, pd.DataFrame):
        values = gene_sets.to_numpy()
        if not (np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.bool_)):
            msg = f"a gene-set DataFrame must hold 0/1 or bool values (genes × sets), got dtype {values.dtype}"
            raise ValueError(msg)
        if not np.isin(values, (0, 1)).all():
            msg = "a gene-set DataFrame must hold only 0/1 (or False/True): genes in rows, sets in columns"
            raise ValueError(msg)
        genes = gene_sets.index.astype(str)
        return {str(c): list(genes[values[:, j] == 1]) for j, c in enumerate(gene_sets.columns)}
    if isinstance(gene_sets, Mapping):
        out: dict[str, list[str]] = {}
        for name, genes in gene_sets.items():
            if isinstance(genes, str):
                msg = f"gene set {name!r} is a single string; give a list of gene names"
                raise ValueError(msg)
            out[str(name)] = list(dict.fromkeys(map(str, genes)))
        if not out:
            msg = "`gene_sets` is an empty dict"
            raise ValueError(msg)
        return out
    msg = (
        "`gene_sets` must be a path to a GMT file, a dict {set name: [genes]} or a genes × sets 0/1 "
        f"pandas DataFrame, got {type(gene_sets).__name__}"
    )
    raise TypeError(msg)


def _user_stacklevel() -> int:
    """``stacklevel`` of a warning raised here that points at the first caller outside scae (the user's line)."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1  # the caller of this function: the function that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def gene_set_mask(gene_sets: GeneSets, var_names: Iterable[str], *, min_genes: int = 5) -> pd.DataFrame:
    """Gene × set 0/1 mask of ``gene_sets`` against ``var_names``.

    Names are matched case-insensitively (see the module docstring). Sets with fewer than ``min_genes`` genes
    among ``var_names`` are dropped with a ``UserWarning`` that lists them.

    Parameters
    ----------
    gene_sets
        Path of a GMT file, a dict ``{set name: [genes]}``, or a pandas DataFrame with genes in the index, set
        names in the columns and 0/1 (or bool) values.
    var_names
        Feature names of the data (``adata.var_names``).
    min_genes
        Smallest number of a set's genes that must be present for the set to be kept.

    Returns
    -------
    DataFrame of ``float32`` 0/1 with ``var_names`` as index (same order) and the kept sets as columns, in
    input order.

    Raises
    ------
    ValueError
        When no set shares a gene with ``var_names``, or when every set falls below ``min_genes``.

    Examples
    --------
    >>> import scae
    >>> sets = {"T": ["CD3E", "cd3d", "CD2", "NOPE"]}
    >>> mask = scae.genesets.gene_set_mask(sets, ["CD3E", "CD3D", "CD2", "MS4A1"], min_genes=3)
    >>> mask["T"].tolist()
    [1.0, 1.0, 1.0, 0.0]
    """
    if int(min_genes) != min_genes or min_genes < 1:
        msg = f"`min_genes` must be an integer >= 1, got {min_genes!r}"
        raise ValueError(msg)
    var_index = pd.Index([str(v) for v in var_names])
    if var_index.size == 0:
        msg = "no features (var_names is empty)"
        raise ValueError(msg)
    sets = _as_dict(gene_sets, var_index)
    upper = pd.Index(var_index.str.upper())
    columns: dict[str, np.ndarray] = {}
    overlap: dict[str, int] = {}
    for name, genes in sets.items():
        col = upper.isin({g.upper() for g in genes})
        overlap[name] = int(col.sum())
        columns[name] = col
    if max(overlap.values()) == 0:
        example = next(iter(sets.values()))[:3]
        msg = (
            f"none of the {len(sets)} gene sets shares a gene with the {var_index.size} var_names "
            f"(e.g. set genes {example} vs var_names {list(var_index[:3])}); use gene symbols as var_names "
            "and a GMT of the same species"
        )
        raise ValueError(msg)
    small = {k: n for k, n in overlap.items() if n < min_genes}
    if len(small) == len(sets):
        msg = (
            f"every gene set has fewer than min_genes={min_genes} genes among var_names (largest overlap "
            f"{max(overlap.values())}); lower `min_genes` or use more genes"
        )
        raise ValueError(msg)
    if small:
        listed = ", ".join(f"{k} ({n})" for k, n in small.items())
        warnings.warn(
            f"dropped {len(small)} of {len(sets)} gene sets with fewer than min_genes={min_genes} genes among "
            f"var_names (overlap in brackets): {listed}",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )
    kept = [k for k in sets if k not in small]
    return pd.DataFrame({k: columns[k].astype(np.float32) for k in kept}, index=var_index)


def describe(gene_sets: GeneSets | None) -> str | None:
    """Short, h5ad-writable description of a ``gene_sets`` argument (for ``uns["scae"]["params"]``).

    Examples
    --------
    >>> from scae.genesets import describe
    >>> describe({"T cell": ["CD3E", "CD3D"], "B cell": ["MS4A1", "CD79A"]})
    'dict of 2 sets'
    """
    if gene_sets is None:
        return None
    if isinstance(gene_sets, str | os.PathLike):
        return str(gene_sets)
    if isinstance(gene_sets, pd.DataFrame):
        return f"DataFrame mask of {gene_sets.shape[1]} sets"
    return f"{type(gene_sets).__name__} of {len(gene_sets)} sets"
