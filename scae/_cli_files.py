"""Files of the ``scae`` command: IN read as ``.h5ad`` or ``.zarr``, OUT checked up front and written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._atomic import check_signals, deferred_signals, is_zarr_store, make_dirs, write_h5ad_atomic, write_zarr_atomic


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_writable(out: Path) -> None:
    """Fail before training, not after, when ``out`` cannot be written (missing folders are created)."""
    above = out.parent
    while not above.exists() and above.parent != above:
        above = above.parent
    if not above.is_dir():
        msg = f"cannot write {out}: {above} is a file, not a folder"
        raise NotADirectoryError(msg)
    try:
        make_dirs(out.parent)
        with deferred_signals():  # the probe file is gone before a signal stops the run
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".probe", dir=out.parent)
            os.close(fd)
            Path(tmp).unlink()
    except OSError as e:
        msg = f"cannot write to {out.parent}: {e.strerror or e}"
        raise OSError(msg) from e
    check_signals()


#: The format written for each suffix of OUT.
OUTPUT_FORMATS = {".h5ad": "h5ad", ".zarr": "zarr", "": "h5ad"}


def read_input(paths, *, all_channels: bool = False, compensate: bool = False):
    """The AnnData of IN: one ``.h5ad`` file or ``.zarr`` store, or one or more ``.fcs`` files (one panel).

    FCS files are read by :func:`scae.pp.read_fcs` (``obs["sample"]`` names each file), marker channels only
    unless ``all_channels``, with their spillover matrices applied when ``compensate``. A model folder given in
    IN's place is named as such.
    """
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    fcs = [p for p in paths if Path(p).suffix.lower() == ".fcs"]
    if fcs and len(fcs) < len(paths):
        others = [str(p) for p in paths if p not in fcs]
        msg = f"IN is one .h5ad file or .zarr store, or .fcs files only; got .fcs files and {others}"
        raise ValueError(msg)
    if not fcs and len(paths) > 1:
        msg = (
            f"{len(paths)} inputs given: several inputs must be .fcs files; combine .h5ad files first "
            "(anndata.concat) or run one `scae` per file"
        )
        raise ValueError(msg)
    if fcs:
        folders = [str(p) for p in paths if Path(p).is_dir()]
        if folders:
            msg = f"input {', '.join(folders)}: a folder, not an FCS file"
            raise IsADirectoryError(msg)
        missing = [str(p) for p in paths if not Path(p).is_file()]
        if missing:
            msg = f"input file not found: {', '.join(missing)}"
            raise FileNotFoundError(msg)
        from .io import read_fcs

        return read_fcs(paths, markers_only=not all_channels, compensate=compensate)
    if compensate:
        msg = "--compensate applies the spillover matrix stored in .fcs files; IN is not one"
        raise ValueError(msg)
    return _read_anndata(Path(paths[0]))


def _read_anndata(src: Path):
    import anndata as ad

    if src.is_dir() and not is_zarr_store(src):
        from ._save import JSON_NAME

        model = (src / JSON_NAME).is_file()  # (the arguments of `scae transform` swapped)
        msg = f"{src} is a folder, not an .h5ad file or a .zarr store" + (
            ": a scae model; `scae transform MODEL IN.h5ad OUT.h5ad` takes the model first" if model else ""
        )
        raise IsADirectoryError(msg)
    if not src.exists():
        msg = f"input file not found: {src}"
        raise FileNotFoundError(msg)
    kind = "zarr" if src.is_dir() else "h5ad"
    try:
        return ad.read_zarr(src) if kind == "zarr" else ad.read_h5ad(src)
    except Exception as e:
        msg = f"cannot read {src} as .{kind} ({type(e).__name__}: {first_line(e)})"
        raise ValueError(msg) from e


def arcsinh_input(adata, cofactor: float | None, layer: str | None) -> None:
    """``--arcsinh COFACTOR``: :func:`scae.pp.arcsinh` of the matrix that is fitted (``layer`` or X)."""
    if cofactor is not None:
        from .pp import arcsinh

        arcsinh(adata, cofactor=cofactor, layer=layer)


def input_record(paths) -> str | list[str]:
    """IN for ``uns[key]["cli"]["input"]``: the absolute path, a list of them for several files."""
    resolved = [str(Path(p).resolve()) for p in paths]
    return resolved[0] if len(resolved) == 1 else resolved


def output_format(out: Path, inputs=(), save_model=None, model=None) -> str:
    """``"h5ad"`` or ``"zarr"`` by the suffix of ``out``; ``ValueError`` before any work for what cannot be written.

    An existing folder is replaced only when it is a zarr store written as OUT before, never another folder. OUT
    must not be one of the ``inputs`` (IN is never overwritten), the ``save_model`` folder nor the ``model`` read.
    """
    others = {"the input": inputs, "the --save-model folder": [save_model], "the model folder": [model]}
    for what, paths in others.items():
        if out.resolve() in {Path(p).resolve() for p in paths if p is not None}:
            msg = f"OUT {out} is {what}; scae never overwrites it: name another output file"
            raise ValueError(msg)
    fmt = OUTPUT_FORMATS.get(out.suffix.lower())
    if fmt is None:
        msg = f"cannot write {out}: scae writes AnnData as .h5ad or .zarr, not {out.suffix!r}"
        raise ValueError(msg)
    if out.is_dir() and (fmt == "h5ad" or not is_zarr_store(out)):
        what = "a zarr store" if is_zarr_store(out) else "a folder that is not a zarr store"
        msg = f"output {out} exists and is {what}; name a new path" + (" ending in .zarr" if fmt == "zarr" else "")
        raise IsADirectoryError(msg)
    check_writable(out)
    return fmt


def write_output(adata, out: Path, fmt: str) -> None:
    """Write ``adata`` to ``out`` atomically in the format :func:`output_format` chose."""
    (write_zarr_atomic if fmt == "zarr" else write_h5ad_atomic)(adata, out)


def fcs_outputs(adata, folder: str | os.PathLike, inputs, out: Path) -> dict[Path, object]:
    """``--fcs-dir``: the FCS files to write and the cells of each, checked before the run (names only).

    One per input FCS file when IN was FCS files (``<file>_scae.fcs``, by ``obs["sample"]``), else one named
    after OUT (``<OUT>_scae.fcs``). A name that is one of the inputs is refused (never overwrite IN).
    """
    folder = Path(folder)
    check_writable(folder / "probe.fcs")
    fcs_in = [Path(p) for p in inputs if Path(p).suffix.lower() == ".fcs"]
    if fcs_in and "sample" in adata.obs:
        samples = adata.obs["sample"].astype("category")
        stems = [str(c) if Path(str(c)).suffix.lower() != ".fcs" else Path(str(c)).stem for c in samples.cat.categories]
        if len(set(stems)) < len(stems):  # files of one name from several folders
            stems = [f"{i + 1}_{stem}" for i, stem in enumerate(stems)]
        cells = [(samples == c).to_numpy() for c in samples.cat.categories]
        plan = {folder / f"{stem}_scae.fcs": rows for stem, rows in zip(stems, cells, strict=True)}
    else:
        plan = {folder / f"{out.stem if out.suffix.lower() in OUTPUT_FORMATS else out.name}_scae.fcs": None}
    clash = {str(p) for p in plan if p.resolve() in {Path(i).resolve() for i in inputs}}
    if clash:
        msg = f"--fcs-dir would overwrite the input {sorted(clash)}; choose another folder"
        raise ValueError(msg)
    return plan


def write_fcs_outputs(adata, plan: dict[Path, object], *, key: str, layer: str | None) -> None:
    """Write the files of :func:`fcs_outputs` (each atomically) with :func:`scae.io.write_fcs`."""
    from .io import write_fcs

    for path, cells in plan.items():
        write_fcs(adata if cells is None else adata[cells], path, key=key, layer=layer)
