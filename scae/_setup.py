"""Setting a model up from an AnnData: matrix, device, blocks, batches, moments, gene-set mask, network.

What :class:`scae.SAUCIE` reads from the data before it trains, and the settings it saves (``hparams``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from . import _blocks, _dist, _fast, _reproducible, _values, data, genesets
from ._torch_state import construction_defaults
from .nn.network import SAUCIENet


@dataclass
class ModelInputs:
    """What the model takes from the AnnData (all checked)."""

    X: object  # cells × features: numpy, scipy sparse or a backed dataset
    group: _dist.ProcessGroup | None  # the torchrun job this process belongs to (backed input only)
    device: torch.device
    blocks: list
    batches: data.BatchInfo | None
    batch_size: int
    mean: np.ndarray
    std: np.ndarray
    set_mask: pd.DataFrame | None


def read_inputs(adata: AnnData, args: dict) -> ModelInputs:
    """Matrix, device, blocks, batches, minibatch size, feature moments and gene-set mask of the model's data."""
    layer, device = args["layer"], args["device"]
    X = data.get_matrix(adata, layer)
    # under torchrun a backed matrix is split over the ranks (scae._dist); in memory every process is alone
    group = _dist.current() if data.is_backed(X) else None
    device = group.device if group is not None and device == "auto" else data.resolve_device(device)
    if args["deterministic"]:  # a cuBLAS setting that defeats it: said before the data is checked
        _reproducible.check_cublas_config(device)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    _values.validate_matrix(X, where=where)
    _values.check_unique_var_names(adata)
    blocks = _blocks.resolve_blocks(
        adata, likelihood=args["likelihood"], block_key=args["block_key"], block_weights=args["block_weights"]
    )
    batches, batch_size = _batches_and_minibatch(
        adata, args["batch_key"], args["reference_batch"], args["batch_size"], device
    )
    mean, std = _blocks.validate_and_moments(X, blocks, where=where)
    set_mask = _gene_set_mask(adata, args["gene_sets"], args["min_genes"])
    return ModelInputs(X, group, device, blocks, batches, batch_size, mean, std, set_mask)


def _gene_set_mask(adata: AnnData, gene_sets, min_genes: int):
    """The genes × sets mask (``None`` without ``gene_sets``); the options were checked by :mod:`scae._settings`."""
    if gene_sets is None:
        return None
    return genesets.gene_set_mask(gene_sets, adata.var_names, min_genes=min_genes)


def _batches_and_minibatch(adata: AnnData, batch_key, reference_batch, batch_size, device: torch.device):
    """The batches (``None`` without ``batch_key``) and the minibatch size (default: the device's)."""
    if batch_size is not None:
        return data.get_batches(adata, batch_key, reference_batch, batch_size=batch_size), batch_size
    batch_size = _fast.default_batch_size(device, adata.n_obs)
    if batch_key is None:
        return None, batch_size
    # a default minibatch (512 on CPU, up to 4096 on GPU) shrinks to what the smallest batch can fill, down to
    # _fast.min_cells_per_batch cells from each batch
    batches = data.get_batches(adata, batch_key, reference_batch, batch_size=batch_size, shrinks=True)
    return batches, _fast.batch_size_for_batches(batch_size, np.bincount(batches.codes))


def hparams(args: dict, model) -> dict:
    """The model's settings as saved in ``model.json`` (``args``: the constructor's arguments)."""
    likelihood, block_key = args["likelihood"], args["block_key"]
    out = {
        "hidden": list(args["hidden"]),
        "n_latent": int(args["n_latent"]),
        "lambda_b": float(args["lambda_b"]),
        "lambda_c": float(args["lambda_c"]),
        "lambda_d": float(args["lambda_d"]),
        "learning_rate": model.learning_rate,
        "batch_size": model.batch_size,
        "pairwise_cells": model.weights.pairwise_cells,
        "random_state": model.random_state,
        "batch_reconstruction": args["batch_reconstruction"],
        "likelihood": likelihood if isinstance(likelihood, str) else dict(likelihood),
        "block_key": block_key,
        "blocks": {b.name: b.likelihood for b in model.blocks},
        "block_weights": {b.name: b.weight for b in model.blocks} if block_key is not None else None,
        "input_dropout": model.variants.input_dropout,
        "input_noise": model.variants.input_noise,
        "l1_activity": model.variants.l1_activity,
        "contractive": model.variants.contractive,
        "variational": bool(args["variational"]),
        "lambda_kl": model.variants.lambda_kl,
    }
    if model.gene_set_mask is not None:
        out.update(
            gene_set_names=list(model.gene_set_mask.columns),
            gene_set_layer=args["gene_set_layer"],
            # set nodes of the encoder layer use |weights| (scae.nn.SAUCIENet); files without this key predate it
            gene_set_nonnegative=args["gene_set_layer"] == "encoder",
            n_free_nodes=int(args["n_free_nodes"]),
            min_genes=int(args["min_genes"]),
        )
    return out


#: Constructor arguments of the seed variants (:class:`scae.objectives.Variants`).
VARIANT_ARGS = ("input_dropout", "input_noise", "l1_activity", "contractive", "lambda_kl")


def build_net(model, inputs: ModelInputs, args: dict) -> SAUCIENet:
    """The network, initialized from the model's seed (without touching the global random state)."""
    set_mask = inputs.set_mask
    with torch.random.fork_rng(devices=[]), construction_defaults():
        torch.manual_seed(model.random_state)
        return SAUCIENet(
            inputs.X.shape[1],
            hidden=args["hidden"],
            n_latent=args["n_latent"],
            feature_mean=torch.from_numpy(inputs.mean),
            feature_std=torch.from_numpy(inputs.std),
            gene_set_mask=None if set_mask is None else torch.tensor(set_mask.to_numpy()),  # a copy: pandas 3
            n_free_nodes=args["n_free_nodes"],
            gene_set_layer=args["gene_set_layer"],
            blocks=model.blocks,
            variational=args["variational"],
        ).to(model.device)


def describe(model) -> str:
    """``repr`` of a :class:`scae.SAUCIE`: data shape, network, batches, gene sets, device and training state."""
    h = model.hparams
    if model.X is None:  # (loaded without data)
        shape = f"{model.n_features:,} features, no data"
    else:
        shape = f"{model.n_cells:,} cells × {model.n_features:,} features"
    parts = [
        shape,
        f"hidden={tuple(h['hidden'])}, n_latent={h['n_latent']}, likelihood={h['likelihood']!r}",
    ]
    if model.batches is not None:
        n = len(model.batches.categories)
        parts.append(f"batch_key={model.batch_key!r} ({n} batch{'es' if n > 1 else ''})")
    if model.gene_set_mask is not None:
        parts.append(f"{model.gene_set_mask.shape[1]} gene sets")
    rt, state = model.runtime, "not trained"
    if model.is_trained:
        state = f"trained {rt['steps']} steps ({rt['epochs']} epochs, {rt['stop_reason']})" if rt else "trained"
    return f"SAUCIE({', '.join(parts)}, device={model.device}; {state})"
