"""Model folders: ``model.json`` (readable settings) + safetensors files (tensors only, nothing executable).

Layout of a folder written by :meth:`scae.SAUCIE.save`::

    model.json            format, versions, hparams (every SAUCIE option, stored generically), layer,
                          batch_key, batch categories and reference, var names, loss weights, history,
                          cluster-table settings
    weights.safetensors   the network's state dict: weights and buffers (feature mean/std, any mask)
    state.safetensors     arrays needed to place new cells: cluster code table and centroids, a sample of
                          reference-batch cells for fine-tuning

Neither file format can run code when read. A ``weights.pt`` state dict (``torch.save``) is also accepted
and read with ``torch.load(weights_only=True)``, which refuses pickled objects.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from . import _values, data
from ._atomic import check_signals, deferred_signals, make_dirs, record_created
from ._checks import MODEL_JSON, model_folder_problem
from ._contract import versions as _versions
from ._mapping import ClusterReference, MappingState, get_mapping_state
from .train import LossWeights

logger = logging.getLogger("scae")

FORMAT = "scae-model"
FORMAT_VERSION = 1
JSON_NAME = MODEL_JSON
WEIGHTS_NAME = "weights.safetensors"
TORCH_WEIGHTS_NAME = "weights.pt"
STATE_NAME = "state.safetensors"
#: Every file a model folder may hold from :func:`save_model` (older saves: ``weights.pt``); others are the user's,
#: moved into the folder that replaces it.
MODEL_FILES = frozenset({JSON_NAME, WEIGHTS_NAME, TORCH_WEIGHTS_NAME, STATE_NAME})
#: SAUCIE arguments that describe the data rather than the model; stored apart from ``hparams``.
_DATA_ARGS = ("adata", "layer", "batch_key", "reference_batch", "device")
#: Keys of ``model.json`` that loading reads, with the JSON types they must have.
_REQUIRED = {
    "format_version": (int,),
    "hparams": (dict,),
    "layer": (str, type(None)),
    "batch_key": (str, type(None)),
    "batch_categories": (list, type(None)),
    "reference_batch": (str, type(None)),
    "var_names": (list,),
    "loss_weights": (dict,),
    "clusters": (dict,),
}


def _jsonable(value, where: str):
    """Plain JSON value of ``value`` (tuples → lists, numpy scalars → Python); error naming ``where`` otherwise."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else str(v)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray | pd.Index):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(list(value))]
    msg = (
        f"cannot store {where} ({type(value).__name__}) in model.json; "
        "non-JSON model state belongs in the network's state dict (a registered buffer)"
    )
    raise TypeError(msg)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_dir(path: Path, overwrite: bool):
    """Context: yields a temporary folder beside ``path`` that replaces ``path`` on success (one rename); the files
    of an existing model folder that are not model files (e.g. ``fitted.h5ad`` saved beside the model) are then
    moved into the new one (:func:`_move_other_files`).

    Missing parent folders are made by :func:`scae._atomic.make_dirs`; nothing is renamed after a signal was
    received under :func:`scae._atomic.stop_on_signals`, and a new ``path`` is recorded with the files in it
    (:func:`scae._atomic.record_created`), so that a failed command removes it again.
    """

    class _Ctx:
        def __enter__(self):
            if path.exists() and not overwrite:
                msg = f"{path} exists; pass overwrite=True to replace it"
                raise FileExistsError(msg)
            if path.exists() and (problem := model_folder_problem(path)) is not None:
                raise problem
            make_dirs(path.parent)
            with deferred_signals():  # a signal now is acted on in __exit__, which removes the folder
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            return self.tmp

        def __exit__(self, exc_type, exc, tb):
            if exc_type is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return False
            mask = _umask()
            os.chmod(self.tmp, 0o777 & ~mask)
            names = sorted(f.name for f in self.tmp.iterdir())
            for name in names:
                os.chmod(self.tmp / name, 0o666 & ~mask)
            with deferred_signals():  # the check and both renames as one step
                try:
                    check_signals()
                except BaseException:
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    raise
                old = path.parent / f".{path.name}.{os.getpid()}.old" if path.exists() else None
                if old is not None:
                    os.replace(path, old)
                try:
                    os.replace(self.tmp, path)  # the whole model in one rename: never half old, half new
                except BaseException:
                    if old is not None:
                        os.replace(old, path)
                    shutil.rmtree(self.tmp, ignore_errors=True)
                    raise
                if old is None:
                    record_created(path, *(path / name for name in names))
                else:
                    _move_other_files(old, path)
            return False

    return _Ctx()


def _move_other_files(old: Path, path: Path) -> None:
    """Move what ``old`` (the replaced model folder) holds besides :data:`MODEL_FILES` into ``path``; then delete
    ``old``, unless a move failed: those entries stay there, named in a warning.
    """
    left = []
    for entry in sorted(old.iterdir()):
        if entry.name in MODEL_FILES:
            continue
        try:
            shutil.move(entry, path / entry.name)
        except OSError as e:
            left.append(f"{entry.name} ({e.strerror or e})")
    if left:
        logger.warning("could not move %s from the replaced model folder; they are in %s", ", ".join(left), old)
    else:
        shutil.rmtree(old, ignore_errors=True)


def save_model(model, path, *, overwrite: bool = True) -> Path:
    """Write ``model`` to the folder ``path`` (see the module docstring); returns the path."""
    from safetensors.numpy import save_file as save_arrays
    from safetensors.torch import save_file as save_tensors

    if not model.is_trained:
        msg = "the model is not trained: call `model.train()` before `model.save()`"
        raise RuntimeError(msg)
    path = Path(path)
    state = get_mapping_state(model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "scae_version": _versions()["scae"],
        "versions": _versions(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "class": type(model).__name__,
        "hparams": _jsonable(dict(model.hparams), "hparams"),
        "layer": model.layer,
        "batch_key": model.batch_key,
        "batch_categories": state.batch_categories,
        "reference_batch": state.reference_batch,
        "var_names": list(map(str, model.var_names)),
        "n_features": len(model.var_names),
        "loss_weights": _jsonable(asdict(model.weights), "loss_weights"),
        "trained_on_device": model.device.type,
        "history": _jsonable(model.history, "history"),
        "clusters": state.clusters.to_json(),
        "has_reference_sample": state.reference_rows is not None,
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    arrays = state.clusters.to_arrays()
    if state.reference_rows is not None:
        arrays["reference.rows"] = state.reference_rows
    with _atomic_dir(path, overwrite) as tmp:
        (tmp / JSON_NAME).write_text(json.dumps(meta, indent=1) + "\n")
        save_tensors(tensors, tmp / WEIGHTS_NAME, metadata={"format": FORMAT})
        save_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp / STATE_NAME)
    logger.info("saved model to %s", path)
    return path


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    st, pt = path / WEIGHTS_NAME, path / TORCH_WEIGHTS_NAME
    if st.is_file():
        try:
            return load_file(st)
        except Exception as e:  # safetensors raises its own error type for a malformed header
            msg = f"{st} is not a valid safetensors file ({e}); refusing to load it"
            raise ValueError(msg) from e
    if pt.is_file():
        try:
            obj = torch.load(pt, map_location="cpu", weights_only=True)
        except Exception as e:  # UnpicklingError for anything beyond tensors and plain containers
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            msg = f"{pt} holds more than tensors and was not loaded (torch.load weights_only=True refused: {first})"
            raise ValueError(msg) from e
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            msg = f"{pt} does not hold a state dict of tensors"
            raise ValueError(msg)
        return obj
    msg = f"no weights in {path} (expected {WEIGHTS_NAME} or {TORCH_WEIGHTS_NAME})"
    raise FileNotFoundError(msg)


def read_meta(path) -> dict:
    """``model.json`` of a model folder, checked to be a scae model."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        msg = f"{path} is a file, not a scae model folder (a model is saved as a folder by `model.save(folder)`)"
        raise NotADirectoryError(msg)
    if not path.is_dir():
        msg = f"model folder not found: {path}"
        raise FileNotFoundError(msg)
    js = path / JSON_NAME
    if not js.is_file():
        msg = f"{path} is not a scae model folder (no {JSON_NAME})"
        raise FileNotFoundError(msg)
    try:
        meta = json.loads(js.read_text())
    except json.JSONDecodeError as e:
        msg = f"{js} is not valid JSON: {e}"
        raise ValueError(msg) from e
    if not isinstance(meta, dict):
        msg = f"{js} must hold a JSON object (key: value pairs), got {type(meta).__name__}"
        raise ValueError(msg)
    if meta.get("format") != FORMAT:
        msg = f"{js} is not a scae model (key 'format' is {meta.get('format')!r}, expected {FORMAT!r})"
        raise ValueError(msg)
    for key, kinds in _REQUIRED.items():
        if key not in meta:
            msg = f"{js} is missing the key {key!r}; the model folder is incomplete or was not written by scae"
            raise ValueError(msg)
        if not isinstance(meta[key], kinds) or isinstance(meta[key], bool) and bool not in kinds:
            allowed = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            msg = f"{js}: key {key!r} must be {allowed}, got {type(meta[key]).__name__} {meta[key]!r:.80}"
            raise ValueError(msg)
    if meta["format_version"] > FORMAT_VERSION:
        msg = f"{js} has format version {meta['format_version']}; this scae reads up to {FORMAT_VERSION}: upgrade scae"
        raise ValueError(msg)
    _check_var_names(meta, js)
    return meta


def _check_var_names(meta: dict, js: Path) -> None:
    """The model's feature names: distinct strings, as many as ``n_features`` says (an edited or damaged file)."""
    names = meta["var_names"]
    if not names or not all(isinstance(n, str) for n in names):
        msg = f"{js}: 'var_names' must be a non-empty list of feature names (strings)"
        raise ValueError(msg)
    repeated = _values.repeated_names(names)
    if repeated:
        msg = f"{js}: 'var_names' repeats {repeated[:5]}; a model's features are matched by name"
        raise ValueError(msg)
    if "n_features" in meta and meta["n_features"] != len(names):
        msg = f"{js} is inconsistent: 'n_features' is {meta['n_features']!r} but 'var_names' lists {len(names)}"
        raise ValueError(msg)


def load_model(cls, path, adata: AnnData | None = None, *, device="auto", deterministic: bool = False):
    """Rebuild a model saved by :func:`save_model`; see :meth:`scae.SAUCIE.load`."""
    from safetensors.numpy import load_file as load_arrays

    path = Path(path)
    meta = read_meta(path)
    weights = _read_weights(path)
    try:
        arrays = load_arrays(path / STATE_NAME)
    except Exception as e:
        msg = f"{path / STATE_NAME} is missing or not a valid safetensors file ({e})"
        raise ValueError(msg) from e
    var_names = list(meta["var_names"])
    layer, batch_key, reference_batch = meta["layer"], meta["batch_key"], meta["reference_batch"]
    if adata is None:
        template = AnnData(np.zeros((2, len(var_names)), dtype=np.float32), var=pd.DataFrame(index=var_names))
        use_layer = None
    else:
        template = data.align_var_names(adata, var_names)
        use_layer = layer
    use_batches = (
        adata is not None
        and batch_key is not None
        and batch_key in adata.obs.columns
        and str(reference_batch) in set(data.column(adata.obs, batch_key).astype(str))
    )
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in meta["hparams"].items() if k in accepted and k not in _DATA_ARGS}
    set_names = meta["hparams"].get("gene_set_names")
    if set_names and "gene_sets" in accepted:
        # the gene × set mask is a buffer of the masked layer: rebuild the `gene_sets` argument from it
        mask_key = next(k for k in weights if k.endswith(".mask"))
        mask = np.asarray(weights[mask_key], dtype=np.float32)
        mask = mask if mask.shape[0] == len(var_names) else mask.T  # stored as (nodes, genes)
        kwargs["gene_sets"] = pd.DataFrame(mask[:, : len(set_names)], index=var_names, columns=list(set_names))
    model = cls(
        template,
        layer=use_layer,
        batch_key=batch_key if use_batches else None,
        reference_batch=reference_batch if use_batches else None,
        device=device,
        deterministic=deterministic,
        **kwargs,
    )
    if set_names and not meta["hparams"].get("gene_set_nonnegative", False):  # saved before |weights| (signed)
        model.net.masked_layer().nonnegative_outputs = 0
    try:
        model.net.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        msg = f"the weights in {path} do not fit the network rebuilt from model.json ({first})"
        raise ValueError(msg) from e
    model.net.to(model.device).eval()
    model.hparams = dict(meta["hparams"])
    model.layer, model.batch_key = layer, batch_key
    model.weights = LossWeights(**meta["loss_weights"])
    model.history = {k: list(v) for k, v in meta.get("history", {}).items()}
    model.is_trained = True
    model.mapping_state = MappingState(
        clusters=ClusterReference.from_saved(meta["clusters"], arrays),
        reference_rows=arrays.get("reference.rows"),
        batch_categories=meta["batch_categories"],
        reference_batch=reference_batch,
    )
    if adata is None:
        model.adata, model.X = None, None
    logger.info("loaded model from %s (%d features)", path, len(var_names))
    return model
