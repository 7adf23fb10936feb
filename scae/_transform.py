"""``scae.tl.transform``: outputs of a trained model for new cells, without retraining (or a short fine-tune)."""

from __future__ import annotations

import copy as _copy
import logging
import os
import time
import warnings
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from . import _blocks, _features, _settings, _values, data
from ._contract import stats_entries, uns_record, write_contract
from ._mapping import get_mapping_state
from ._model import SAUCIE
from ._reproducible import deterministic_algorithms, resolve_seed
from ._torch_state import trains
from .genesets import _user_stacklevel
from .train import infer, infer_gene_sets, train_net

logger = logging.getLogger("scae")


def _in_adata_order(values: np.ndarray, cols: np.ndarray | None, n_vars: int) -> np.ndarray:
    """Model-ordered feature columns back in the AnnData's order; features the model lacks are NaN."""
    if cols is None:
        return values
    out = np.full((values.shape[0], n_vars), np.nan, dtype=values.dtype)
    out[:, cols] = values
    return out


@trains
def _fine_tuned_net(model, X, batch_codes: np.ndarray, n_new: int, *, epochs: int, learning_rate, seed: int, progress):
    """Copy of the network whose encoder is trained to move the new batches onto the reference sample.

    Decoder, clustering layer and output stay frozen, so codes, clusters and reconstructions keep the
    meaning they had for the reference; the reference sample is reconstructed value for value, which
    anchors the encoder where it was.
    """
    state = get_mapping_state(model)
    if state.reference_rows is None or len(state.reference_rows) < 2:
        msg = "fine-tuning needs the reference-batch sample stored with the model; this model has none"
        raise ValueError(msg)
    net = _copy.deepcopy(model.net)
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("encoder."))
    ref = state.reference_rows
    Xc = (
        sp.vstack([sp.csr_matrix(ref), sp.csr_matrix(X)]).tocsr() if sp.issparse(X) else np.vstack([ref, np.asarray(X)])
    )
    codes = np.concatenate([np.zeros(len(ref), dtype=np.int64), batch_codes + 1])
    device = model.device
    lambda_b = float(model.hparams.get("lambda_b", 0.1)) or 0.1
    weights = replace(model.weights, lambda_b=lambda_b)
    gen = torch.Generator(device=device).manual_seed(int(seed))
    with deterministic_algorithms(model.deterministic, device):  # (as the model's own training)
        history = train_net(
            net,
            data.RowSource(Xc, device),
            batch_codes=torch.from_numpy(codes).to(device),
            n_batches=n_new + 1,
            reference=0,
            weights=weights,
            max_epochs=epochs,
            batch_size=model.batch_size,
            learning_rate=model.learning_rate if learning_rate is None else learning_rate,
            generator=gen,
            progress=progress,
        ).history
    for p in net.parameters():
        p.requires_grad_(True)
    return net, history


def transform(
    model,
    adata: AnnData,
    *,
    batch_key: str | None = None,
    fine_tune_epochs: int = 0,
    fine_tune_learning_rate: float | None = None,
    impute: bool = True,
    random_state: int | None = 0,
    progress: bool = False,
    key_added: str = "scae",
    copy: bool = False,
) -> AnnData | None:
    """Embedding, codes, clusters and imputed values of new cells from a trained model.

    New cells get the existing clusters (see :mod:`scae._mapping`: by binary code, else the nearest
    training code centroid). The network is not retrained unless ``fine_tune_epochs > 0``.

    Parameters
    ----------
    model
        A trained :class:`scae.SAUCIE`, or a saved model's folder (``SAUCIE.save``, ``tl.fit(save_model=)``), read
        with :meth:`scae.SAUCIE.load` onto the default device; its path goes into ``uns[key_added]["params"]["model"]``.
    adata
        New cells × features in the same units as the training data (same transform, same ``layer``).
        Features are matched by name: reordered when they are a permutation, extra ones ignored (NaN in
        the imputed layers, weight 0 in the gene-set weights); missing ones raise ``ValueError``.
    batch_key
        Column of ``adata.obs`` with the new cells' batches; default the model's ``batch_key`` when
        ``adata.obs`` has it. Used to put imputed values back in each batch's own units and, with
        ``fine_tune_epochs``, as the batches moved onto the reference. Without it, all new cells are one batch.
    fine_tune_epochs
        Train the encoder (on a copy; ``model`` is unchanged) this many epochs so the new batches match the
        reference-batch sample stored with the model (MMD in the embedding); 0 maps with the frozen network.
    fine_tune_learning_rate
        Adam learning rate of the fine-tuning; default the model's.
    impute
        Write ``layers[f"{key_added}_imputed"]``.
    random_state
        Seed of the fine-tuning minibatches; ``None`` draws one (recorded in ``uns[key_added]["params"]``).
    progress
        Progress bar while fine-tuning.
    key_added
        Prefix of every key written (as :func:`scae.tl.fit`).
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None``, or a new AnnData when ``copy=True``. Writes the keys of :func:`scae.tl.fit`
    (``obs[f"{key_added}_cluster"]`` with the training clusters as categories; ``uns[key_added]`` with ``n_by_code``,
    the cells whose code is a training code, the fine-tuning ``history``, and in ``params`` the model's ``layer``,
    ``likelihood``, ``block_key``, ``imputed_units``, which :func:`scae.tl.cluster` re-cuts by) and removes other
    outputs of an earlier run under ``key_added``.

    Examples
    --------
    >>> import scae
    >>> adata = scae.datasets.cytonorm()
    >>> ref, new = adata[adata.obs["batch"] != "3"].copy(), adata[adata.obs["batch"] == "3"].copy()
    >>> model = scae.SAUCIE(ref, batch_key="batch").train(max_epochs=5, progress=False)
    >>> scae.tl.transform(model, new)
    >>> "scae_cluster" in new.obs
    True
    """
    params = {k: v for k, v in locals().items() if k not in ("model", "adata")}
    model = _loaded(model, adata, params)
    _settings.check_transform(model, adata, params, model_type=SAUCIE)
    t0 = time.perf_counter()
    random_state = params["random_state"] = resolve_seed(random_state)  # (None: drawn, recorded in uns)
    cells, state = _read_new_cells(model, adata, batch_key), get_mapping_state(model)
    net, history = _mapping_net(model, cells, fine_tune_epochs, fine_tune_learning_rate, random_state, progress)
    t1 = time.perf_counter()
    mapped = _map_cells(model, state, net, cells, impute=impute, fine_tuned=fine_tune_epochs > 0)
    record = _uns_entry(model, state, cells, mapped, params, history, key_added=key_added, t0=t0, t1=t1)
    adata = adata.copy() if copy else adata
    _write_outputs(adata, mapped, cells.columns, record, key_added)
    _log_summary(adata.n_obs, mapped.by_code, t0)
    return adata if copy else None


def _model_params(model) -> dict:
    """The model's settings that the outputs follow, recorded with the transform's own ``params`` so that
    :func:`scae.tl.cluster` re-cuts them as it re-cuts a fit's (the input's layer, likelihoods, blocks, and the
    imputed layer's units: counts, as :meth:`scae.SAUCIE.get_reconstruction` gives them).
    """
    likelihood = model.hparams.get("likelihood", "mse")
    return {
        "layer": model.layer,
        "likelihood": likelihood if isinstance(likelihood, str) else dict(likelihood),
        "block_key": model.hparams.get("block_key"),
        "imputed_units": "counts",
    }


def _loaded(model, adata, params: dict):
    """``model``, or the model saved in the folder ``model`` (a str or path), whose absolute path then goes into
    ``params["model"]`` (recorded in ``uns``).
    """
    if not isinstance(model, str | os.PathLike):
        return model
    _settings.check_anndata("adata", adata, writes=True)  # (a wrong adata is named before the model is read)
    params["model"] = os.path.abspath(os.fspath(model))
    return SAUCIE.load(model)


@dataclass
class _NewCells:
    """The new cells as the model reads them."""

    X: object  # cells × the model's features, in the model's order
    columns: np.ndarray | None  # position of each model feature in adata.var_names; None when in the same order
    batch_codes: np.ndarray  # batch of each cell, 0 … n_batches - 1
    n_batches: int


@dataclass
class _MappedCells:
    """What the network and the training clusters give for the new cells (features in the model's order)."""

    embedding: np.ndarray
    codes: np.ndarray
    clusters: pd.Categorical  # the training clusters, every one a category
    by_code: np.ndarray  # True where the cell's code is a training code (else: nearest code centroid)
    reconstruction: np.ndarray  # float32
    imputed: np.ndarray | None  # None without `impute`
    corrected: bool  # the reconstruction is batch-corrected (a model trained with batches, or fine-tuned)
    gene_sets: tuple | None = None  # (activities, weights) of a model with a gene-set layer


def _read_new_cells(model, adata: AnnData, batch_key: str | None) -> _NewCells:
    """The new cells' matrix in the model's feature order (checked) and their batches."""
    view = data.align_var_names(adata, model.var_names)
    X = data.get_matrix(view, model.layer)
    where = "adata.X" if model.layer is None else f"adata.layers[{model.layer!r}]"
    _values.validate_matrix(X, where=where)
    _blocks.validate_values(X, model.blocks, where=where)  # the fit's value checks (counts, untransformed)
    batch_codes, n_batches = _batch_codes(model, adata, batch_key)
    columns = None if view is adata else adata.var_names.astype(str).get_indexer(pd.Index(model.var_names))
    return _NewCells(X=X, columns=columns, batch_codes=batch_codes, n_batches=n_batches)


def _batch_codes(model, adata: AnnData, batch_key: str | None) -> tuple[np.ndarray, int]:
    """Batch of each new cell and the number of batches, by ``batch_key`` (default the model's, when present)."""
    if batch_key is None and model.batch_key is not None and model.batch_key in adata.obs.columns:
        batch_key = model.batch_key
    if batch_key is None:
        return np.zeros(adata.n_obs, dtype=np.int64), 1
    batches = data.get_batches(adata, batch_key, mapping=True)  # (checks the column)
    return batches.codes, len(batches.categories)


def _mapping_net(model, cells: _NewCells, epochs: int, learning_rate: float | None, seed: int, progress: bool):
    """The network that maps the new cells and its fine-tuning history: the model's own without ``epochs``."""
    if epochs > 0:
        return _fine_tuned_net(
            model, cells.X, cells.batch_codes, cells.n_batches, epochs=epochs, learning_rate=learning_rate,
            seed=seed, progress=progress,
        )  # fmt: skip
    return model.net, {}


def _map_cells(model, state, net, cells: _NewCells, *, impute: bool, fine_tuned: bool) -> _MappedCells:
    """Run ``net`` on the new cells and give them the training clusters (``state``: the model's mapping state)."""
    out = infer(net, data.RowSource(cells.X, model.device))
    mean, std = model.net.feature_mean.cpu().numpy(), model.net.feature_std.cpu().numpy()
    features = _features.absorb_features(out["reconstruction"], cells.X, model.blocks, mean, std)
    labels, by_code = state.clusters.assign(out["codes"], features)
    rec = out["reconstruction"].astype(np.float32)
    corrected = (state.batch_categories is not None and model.weights.lambda_b > 0) or fine_tuned
    imputed = None
    if impute and corrected:
        _warn_small_batches(cells.batch_codes)
        imputed = data.restore_batch_moments(rec, cells.X, cells.batch_codes)
    elif impute:
        imputed = rec
    categories = [str(i) for i in range(state.clusters.n_clusters)]
    gene_sets = None
    if model.gene_set_mask is not None:
        activities = infer_gene_sets(net, data.RowSource(cells.X, model.device)).numpy().astype(np.float32)
        gene_sets = (activities, model.get_gene_set_weights().to_numpy(np.float32))
    return _MappedCells(
        embedding=out["embedding"],
        codes=out["codes"],
        clusters=pd.Categorical(labels.astype(str), categories=categories),
        by_code=by_code,
        reconstruction=rec,
        imputed=imputed,
        corrected=corrected,
        gene_sets=gene_sets,
    )


#: Fewer new cells of a batch than this make its imputed values unreliable (see :func:`_warn_small_batches`).
MIN_BATCH_CELLS = 30


def _warn_small_batches(batch_codes: np.ndarray) -> None:
    """Warn when a batch of the new cells is too small for its imputed values: those are put back in the batch's
    own units from the moments of its cells in this call (one cell: its own input values).
    """
    counts = np.bincount(batch_codes)
    small = counts[(counts > 0) & (counts < MIN_BATCH_CELLS)]
    if small.size:
        warnings.warn(
            f"{small.size} batch(es) of the new cells hold fewer than {MIN_BATCH_CELLS} cells (smallest: "
            f"{int(small.min())}): their imputed values are put back in the batch's own units from the moments of "
            "these few cells and are unreliable (a single cell gets its input back); transform each batch's cells "
            "together, or use the corrected layer (in the reference batch's units)",
            UserWarning,
            stacklevel=_user_stacklevel(),
        )


def _uns_entry(
    model,
    state,
    cells: _NewCells,
    mapped: _MappedCells,
    params: dict,
    history: dict,
    *,
    key_added: str,
    t0: float,
    t1: float,
) -> dict:
    """``uns[key_added]`` of the transform; runtimes from ``t0`` (start) and ``t1`` (after any fine-tuning)."""
    record = uns_record(
        mode="transform",
        params={**params, **_model_params(model)},
        history=history,
        seed=params["random_state"],
        device=model.device,
        runtime={"fine_tune_s": t1 - t0, "infer_s": time.perf_counter() - t1},
        n_clusters=state.clusters.n_clusters,
        input_sparse=sp.issparse(cells.X),
        n_by_code=int(mapped.by_code.sum()),
        batch_categories=state.batch_categories,
        reference_batch=state.reference_batch,
        blocks=model.hparams.get("blocks") if model.hparams.get("block_key") is not None else None,
        gene_sets=model.gene_set_names or None,
    )
    stats = stats_entries(cells.X, mapped.clusters, model.var_names, groupby=f"{key_added}_cluster", layer=model.layer)
    record.update(stats)
    record["runtime"]["total_s"] = time.perf_counter() - t0
    return record


def _write_outputs(adata: AnnData, mapped: _MappedCells, columns: np.ndarray | None, record: dict, key_added: str):
    """Write the keys of ``scae.tl.fit`` into ``adata`` (layers back in its feature order, see ``columns``)."""
    layers = {}
    if mapped.imputed is not None:
        layers[f"{key_added}_imputed"] = _in_adata_order(mapped.imputed, columns, adata.n_vars)
    if mapped.corrected:
        layers[f"{key_added}_corrected"] = _in_adata_order(mapped.reconstruction, columns, adata.n_vars)
    gene_sets = mapped.gene_sets
    if gene_sets is not None and columns is not None:  # weights per gene of adata; 0 for genes the model lacks
        gene_sets = (gene_sets[0], np.nan_to_num(_in_adata_order(gene_sets[1].T, columns, adata.n_vars).T, nan=0.0))
    write_contract(
        adata, key_added, embedding=mapped.embedding.astype(np.float32), codes=mapped.codes.astype(np.float32),
        clusters=mapped.clusters, layers=layers, gene_sets=gene_sets, record=record,
    )  # fmt: skip


def _log_summary(n_cells: int, by_code: np.ndarray, t0: float) -> None:
    """Log how many cells got their cluster by code and by nearest code centroid, and the time since ``t0``."""
    logger.info(
        "scae transform: %d cells, %d by code, %d by nearest code centroid (%.1fs)",
        n_cells, int(by_code.sum()), int((~by_code).sum()), time.perf_counter() - t0,
    )  # fmt: skip
