"""Cytometry files: FCS → AnnData with marker names (``readfcs``), and AnnData with scae's outputs → FCS."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData

from ._uns import writable

#: Channels that are never biological markers: scatter, time, event counters, CyTOF housekeeping.
_NON_MARKER = re.compile(r"^(fsc|ssc|time|event|cell_?length|residual|center|offset|width|amplitude|bead)", re.I)


def _read_without_markers(path: Path) -> AnnData:
    """Readfcs refuses files without any ``$PnS``: read those with flowio (its parser), channels only."""
    import flowio

    fd = flowio.FlowData(str(path))
    X = np.reshape(np.asarray(fd.events, dtype=np.float32), (-1, fd.channel_count))
    channels = [str(fd.channels[i + 1]["pnn"]) for i in range(fd.channel_count)]
    var = pd.DataFrame({"channel": channels, "marker": ""}, index=pd.Index(channels))
    return AnnData(X, var=var, uns={"meta": dict(fd.text)})


def _compensate(fcs, path: Path) -> None:
    """Apply the file's spillover matrix (``$SPILLOVER``/``SPILL``) to its fluorescence channels (readfcs)."""
    if fcs.meta.get("spill") is None:
        msg = (
            f"{str(path)!r} holds no spillover matrix ($SPILLOVER or SPILL) to compensate with: it may be "
            "compensated already, or be mass cytometry, which needs none; read it with compensate=False"
        )
        raise ValueError(msg)
    if "PnS" not in fcs.channels.columns:
        msg = f"{str(path)!r} names no markers ($PnS): compensate it where it was acquired, then read it here"
        raise ValueError(msg)
    try:
        fcs.compensate()
    except Exception as e:  # a matrix that does not fit the channels
        msg = f"could not compensate {str(path)!r} with its spillover matrix: {e}"
        raise ValueError(msg) from e


def _read_one(path: Path, *, compensate: bool = False) -> AnnData:
    try:
        import readfcs
    except ImportError as e:  # pragma: no cover - optional dependency
        msg = "scae.pp.read_fcs needs the readfcs package: pip install 'scae[fcs]'"
        raise ImportError(msg) from e

    if path.is_dir():
        msg = f"{str(path)!r} is a folder, not an FCS file"
        raise IsADirectoryError(msg)
    if not path.is_file():
        msg = f"FCS file {str(path)!r} not found"
        raise FileNotFoundError(msg)
    try:
        fcs = readfcs.ReadFCS(path)
    except Exception as e:  # readfcs/flowio raise many kinds on malformed files
        msg = f"could not parse {str(path)!r} as an FCS file: {e}"
        raise ValueError(msg) from e
    if compensate:
        _compensate(fcs, path)
    try:
        with warnings.catch_warnings():  # readfcs re-indexes its var ("Transforming to str index"); we name below
            warnings.simplefilter("ignore", ad.ImplicitModificationWarning)
            adata = fcs.to_anndata()
    except Exception as e:
        if "PnS" not in str(e):
            msg = f"could not parse {str(path)!r} as an FCS file: {e}"
            raise ValueError(msg) from e
        adata = _read_without_markers(path)
    var = adata.var
    channel = var["channel"].astype(str) if "channel" in var else pd.Series(adata.var_names, index=var.index)
    marker = pd.Series("", index=var.index)
    if "marker" in var:  # readfcs may give a categorical column
        marker = var["marker"].astype(object).fillna("").astype(str).str.strip()
    out = AnnData(
        np.asarray(adata.X, dtype=np.float32),
        var=pd.DataFrame(
            {
                "channel": channel.to_numpy(),
                "marker": marker.to_numpy(),
                "is_marker": [
                    bool(m) and m != c and not _NON_MARKER.match(c) and not _NON_MARKER.match(m)
                    for c, m in zip(channel, marker, strict=True)
                ],
            },
            index=pd.Index(adata.var_names.astype(str)),
        ),
    )
    out.var_names_make_unique()
    meta = {str(k): str(v) for k, v in adata.uns.get("meta", {}).items()}
    out.uns["fcs"] = {"path": str(path), "meta": writable(meta), "compensated": compensate}
    return out


def read_fcs(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    markers_only: bool = False,
    sample_key: str = "sample",
    compensate: bool = False,
) -> AnnData:
    """Read one or several FCS files into an AnnData (cells × channels), named by marker.

    Parsing is done by the ``readfcs`` package. Variables are named by the marker (``$PnS``) where the file
    has one, else by the channel (``$PnN``). Values are the raw (compensated, if the instrument stored them
    so) intensities: apply :func:`scae.pp.arcsinh` before :func:`scae.tl.fit`.

    Parameters
    ----------
    path
        An ``.fcs`` file, or a list of them (same panel) to concatenate; each file's name goes to
        ``obs[sample_key]`` (usable as ``batch_key`` in :func:`scae.tl.fit`).
    markers_only
        Keep only the channels flagged in ``var["is_marker"]``.
    sample_key
        ``obs`` column naming the source file of each cell (always written).
    compensate
        Apply each file's spillover matrix (``$SPILLOVER``/``SPILL``, as the instrument stored it) to its
        fluorescence channels, as flow cytometry needs before any analysis (``readfcs``'s compensation). A file
        without one is an error. Mass cytometry files need none.

    Returns
    -------
    AnnData with float32 ``X``; ``var["channel"]`` (detector, ``$PnN``), ``var["marker"]`` (``$PnS``, may be
    empty), ``var["is_marker"]`` (has a marker name and is not scatter/time/event); ``obs[sample_key]``;
    ``uns["fcs"]`` (path and TEXT keywords of the first file).

    Examples
    --------
    >>> import tempfile, numpy as np, fcswrite, scae
    >>> path = f"{tempfile.mkdtemp()}/example.fcs"
    >>> x = np.abs(np.random.default_rng(0).normal(100, 30, (50, 2)))
    >>> fcswrite.write_fcs(path, ["Nd142Di", "Time"], x, text_kw_pr={"$P1S": "CD19"})
    >>> adata = scae.pp.read_fcs(path)
    >>> list(adata.var_names), list(adata.var["is_marker"])
    (['CD19', 'Time'], [True, False])
    """
    paths = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(p) for p in path]
    if not paths:
        msg = "`path` is an empty list: give at least one FCS file"
        raise ValueError(msg)
    if not isinstance(compensate, bool):
        msg = f"`compensate` must be True or False, got {compensate!r}"
        raise TypeError(msg)
    seen = [p.resolve() for p in paths]
    repeated = sorted({str(p) for p, r in zip(paths, seen, strict=True) if seen.count(r) > 1})
    if repeated:
        msg = f"the same FCS file is given more than once: {repeated}"
        raise ValueError(msg)
    parts = [_read_one(p, compensate=compensate) for p in paths]
    first = parts[0]
    for p, part in zip(paths[1:], parts[1:], strict=True):
        if list(part.var_names) != list(first.var_names):
            msg = f"{str(p)!r} has channels {list(part.var_names)}, unlike {str(paths[0])!r} {list(first.var_names)}"
            raise ValueError(msg)
    names = [p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    for name, part in zip(names, parts, strict=True):
        part.obs[sample_key] = name
        part.obs_names = [f"{name}-{i}" for i in range(part.n_obs)] if len(parts) > 1 else part.obs_names
    if len(parts) == 1:
        adata = first
    else:
        adata = ad.concat(parts, join="inner", merge="first")
        adata.uns["fcs"] = first.uns["fcs"]
    adata.obs[sample_key] = pd.Categorical(adata.obs[sample_key], categories=names)
    if markers_only:
        if not adata.var["is_marker"].any():
            msg = f"no marker channels found in {[str(p) for p in paths]} (no $PnS names); use markers_only=False"
            raise ValueError(msg)
        adata = adata[:, adata.var["is_marker"].to_numpy(bool)].copy()
    return adata


from ._fcs_write import write_fcs  # noqa: E402

__all__ = ["read_fcs", "writable", "write_fcs"]
