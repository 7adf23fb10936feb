"""Writing cytometry files: AnnData with scae's outputs → FCS, for FlowJo, Cytobank, FlowSOM and other gating tools.

The FCS file holds the channels of the fitted matrix, back in raw intensities when :func:`scae.pp.arcsinh` made it
(recorded in ``uns["scae_arcsinh"]``), then one channel per embedding dimension and one with the cluster of each
cell, so clusters can be gated, overlaid and compared in the tools cytometrists use. The writer is ``flowio``
(installed with ``readfcs``, the reader of :func:`scae.pp.read_fcs`).
"""

from __future__ import annotations

import os
from array import array

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ._atomic import atomic_path, make_dirs


def write_fcs(
    adata: AnnData,
    path: str | os.PathLike,
    *,
    key: str = "scae",
    layer: str | None = None,
    raw: bool | None = None,
) -> None:
    """Write cells × (channels + embedding + cluster) to an FCS 3.1 file (32-bit floats).

    Parameters
    ----------
    adata
        In-memory AnnData, typically after :func:`scae.tl.fit`.
    path
        The ``.fcs`` file to write (written to a temporary file beside it, then renamed; folders are created).
    key
        ``key_added`` of the fit: the channels ``{key}_1``, ``{key}_2``, ... come from ``obsm[f"X_{key}"]`` and
        ``{key}_cluster`` from ``obs[f"{key}_cluster"]`` (the cluster name where names are numbers, as scae's
        are, else the category's position); each is left out when the AnnData lacks it.
    layer
        Write this layer instead of ``adata.X``.
    raw
        Undo :func:`scae.pp.arcsinh` (``sinh(x) * cofactor``) so the file holds intensities, as cytometry files
        do. Default: when ``uns["scae_arcsinh"]`` records the matrix; ``True`` requires that record, ``False``
        writes the values as stored.

    Notes
    -----
    ``$PnN`` (channel) is ``var["channel"]`` where :func:`scae.pp.read_fcs` set it, else the feature name;
    ``$PnS`` (marker) is the feature name. Keywords ``SCAE_KEY`` and, after undoing the transform,
    ``SCAE_ARCSINH_COFACTOR`` say what was written. Values compensated on reading (``read_fcs(compensate=True)``)
    stay compensated and no spillover matrix is written, so other tools do not compensate them twice.

    Examples
    --------
    >>> import tempfile, scae
    >>> adata = scae.datasets.cytonorm()[:500].copy()
    >>> scae.tl.fit(adata, max_epochs=2, progress=False)
    >>> path = f"{tempfile.mkdtemp()}/clusters.fcs"
    >>> scae.io.write_fcs(adata, path)
    >>> back = scae.pp.read_fcs(path)
    >>> back.shape, list(back.var_names[-3:])
    ((500, 40), ['scae_1', 'scae_2', 'scae_cluster'])
    """
    from . import _settings

    _settings.check_anndata("adata", adata)
    if raw is not None and not isinstance(raw, bool):
        msg = f"`raw` must be None, True or False, got {raw!r}"
        raise TypeError(msg)
    if adata.isbacked:
        msg = "write_fcs needs the matrix in memory: pass `adata.to_memory()` (FCS files hold every value)"
        raise ValueError(msg)
    try:
        import flowio
    except ImportError as e:  # pragma: no cover - optional dependency
        msg = "scae.io.write_fcs needs the flowio package: pip install 'scae[fcs]'"
        raise ImportError(msg) from e
    columns, channels, markers, meta = _channels(adata, key=key, layer=layer, raw=raw)
    values = np.column_stack(columns).astype("<f4", copy=False)  # (float32 columns: one copy, no float64 matrix)
    if not np.isfinite(values).all():
        msg = (
            "the values to write hold NaN or infinite entries (beyond float32 after undoing arcsinh?); FCS needs finite"
        )
        raise ValueError(msg)
    events = array("f")
    events.frombytes(values.tobytes())  # (flowio copies a numpy array element by element)
    make_dirs(os.path.dirname(os.path.abspath(path)))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        flowio.create_fcs(handle, events, channels, opt_channel_names=markers, metadata_dict=meta)


def _channels(adata: AnnData, *, key: str, layer: str | None, raw: bool | None):
    """The columns, ``$PnN`` and ``$PnS`` names and extra keywords of :func:`write_fcs`."""
    from .data import get_matrix  # (torch: loaded when a file is written, not with scae.io)

    X = get_matrix(adata, layer)
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    target = "X" if layer is None else layer
    cofactor = adata.uns.get("scae_arcsinh", {}).get(target)
    if raw and cofactor is None:
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        msg = f"raw=True, but uns['scae_arcsinh'] records no arcsinh of {where}: its values are written as stored"
        raise ValueError(msg)
    meta = {"SCAE_KEY": key}
    if cofactor is not None and raw is not False:
        X = np.sinh(np.asarray(X, dtype=np.float64)) * float(cofactor)
        meta["SCAE_ARCSINH_COFACTOR"] = f"{float(cofactor):g}"
    names = [str(v) for v in adata.var_names]
    channel = adata.var.get("channel")
    channels = [str(c) for c in channel] if channel is not None else list(names)
    if len(set(channels)) < len(channels) or not all(channels):
        channels = list(names)  # $PnN must name each channel once
    with np.errstate(over="ignore"):  # beyond float32 after sinh: infinite, refused by write_fcs
        columns, markers = [np.asarray(X, dtype=np.float32)], list(names)
    embedding = adata.obsm.get(f"X_{key}")
    if embedding is not None:
        embedding = np.asarray(embedding, dtype=np.float32)
        extra = [f"{key}_{i + 1}" for i in range(embedding.shape[1])]
        columns.append(embedding)
        channels, markers = channels + extra, markers + extra
    labels = adata.obs.get(f"{key}_cluster")
    if labels is not None:
        cat = pd.Categorical(labels)
        numbers = pd.to_numeric(pd.Series(cat.categories.astype(str)), errors="coerce").to_numpy(np.float64)
        ids = numbers if np.isfinite(numbers).all() else np.arange(len(cat.categories), dtype=np.float64)
        codes = np.asarray(cat.codes)
        columns.append(np.where(codes >= 0, ids[np.maximum(codes, 0)], -1.0).astype(np.float32)[:, None])
        channels, markers = [*channels, f"{key}_cluster"], [*markers, f"{key}_cluster"]
    return columns, channels, markers, meta
