"""Every option of a fit, declared once: grouped in small frozen dataclasses with their default and their check.

The groups are what the pipeline passes around (:class:`FitSettings`); :mod:`scae._settings` builds the
check tables of every entry point from them, ``scae.tl.fit`` and :class:`scae.SAUCIE` keep their flat keyword
signatures for scanpy users (``tests/test_settings.py`` asserts those defaults are the ones declared here),
and the ``scae fit`` config files, the torchrun mode and ``scae.distributed`` reach the same fields through
``tl.fit``'s keywords.

=============  ===========================================================================================
group          options
=============  ===========================================================================================
``data``       which matrix and which batches: ``layer``, ``batch_key``, ``reference_batch``
``network``    ``hidden``, ``n_latent``, likelihoods and blocks, gene-set layer, ``variational``
``losses``     the λ weights, non-reference reconstruction, pairwise subset, seed-variant weights
``training``   optimizer and execution: ``learning_rate``, ``batch_size``, seed, device, precision, ...
``schedule``   how long: ``max_epochs``, ``early_stopping``, ``progress``
``clustering`` ``merge_threshold``, ``n_clusters``, ``min_cluster_size``
``output``     what is written where: ``impute``, ``imputed_units``, ``save_model``, ``key_added``, ...
=============  ===========================================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from . import _checks as c
from ._merge import DEFAULT_MERGE_THRESHOLD

_WEIGHT = c.real(0)
_SEED = c.integer(0, hi=2**63 - 1, optional=True)  # None: a seed drawn at the start, then recorded


def option(default, check: c.Check):
    """A dataclass field with its default and the check of :mod:`scae._checks` that a value must pass."""
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class Data:
    """Which matrix is modelled and how batches are read."""

    layer: str | None = option(None, c.name_or_none)
    batch_key: str | None = option(None, c.name_or_none)
    reference_batch: str | int | None = option(None, c.batch_name)


@dataclass(frozen=True)
class Network:
    """Shape of the network and its reconstruction model."""

    hidden: tuple = option((256, 128, 64), c.hidden_widths)
    n_latent: int = option(2, c.integer(1))
    likelihood: object = option("mse", c.likelihood)
    block_key: str | None = option(None, c.name_or_none)
    block_weights: object = option(None, c.block_weights)
    gene_sets: object = option(None, c.gene_sets)
    min_genes: int = option(5, c.integer(1))
    n_free_nodes: int = option(0, c.integer(0))
    gene_set_layer: str = option(
        "encoder", c.choice(("encoder", "decoder"), note=" ('encoder' (GSAE) or 'decoder' (expiMap style))")
    )
    variational: bool = option(False, c.flag)


@dataclass(frozen=True)
class Losses:
    """Weights of the loss terms and how they are computed."""

    lambda_b: float = option(0.1, _WEIGHT)
    lambda_c: float = option(0.1, _WEIGHT)
    lambda_d: float = option(0.2, _WEIGHT)
    batch_reconstruction: str = option("moments", c.choice(("moments", "zscore", "distance")))
    pairwise_cells: int | None = option(256, c.integer(2, optional=True))
    input_dropout: float = option(0.0, c.real(0, 1, hi_open=True))
    input_noise: float = option(0.0, _WEIGHT)
    l1_activity: float = option(0.0, _WEIGHT)
    contractive: float = option(0.0, _WEIGHT)
    lambda_kl: float = option(0.01, _WEIGHT)


@dataclass(frozen=True)
class Training:
    """Optimizer, seed and where and how the steps run."""

    learning_rate: float | None = option(None, c.real(0, lo_open=True, optional=True))
    batch_size: int | None = option(None, c.integer(2, optional=True))
    random_state: int | None = option(0, _SEED)
    device: str = option("auto", c.device)
    precision: str = option("32", c.choice(("32", "bf16")))
    compile: bool = option(False, c.flag)
    deterministic: bool = option(False, c.flag)
    block_rows: int | None = option(None, c.integer(1, optional=True))


@dataclass(frozen=True)
class Schedule:
    """How long training runs (see :mod:`scae._stopping`)."""

    max_epochs: int | None = option(None, c.integer(1, optional=True))
    early_stopping: bool | None = option(None, c.flag_or_none)
    progress: bool = option(True, lambda name, value: None)  # anything truthy


@dataclass(frozen=True)
class Clustering:
    """Granularity of the clusters (re-cut later with ``scae.tl.cluster``)."""

    merge_threshold: float | None = option(DEFAULT_MERGE_THRESHOLD, c.real(0, optional=True))
    n_clusters: int | None = option(None, c.integer(1, optional=True))
    min_cluster_size: int | None = option(None, c.integer(1, optional=True))


@dataclass(frozen=True)
class Output:
    """What ``tl.fit`` writes, and where."""

    impute: bool = option(True, c.flag)
    imputed_units: str = option("counts", c.choice(("counts", "normalized", "log1p")))
    save_model: object = option(None, c.path_or_none)
    key_added: str = option("scae", c.key_name)
    copy: bool = option(False, c.flag)
    out_path: object = option(None, c.path_or_none)


#: The groups of :class:`scae.SAUCIE`'s constructor, and of ``scae.tl.fit``.
MODEL_GROUPS = (Data, Network, Losses, Training)
FIT_GROUPS = (*MODEL_GROUPS, Schedule, Clustering, Output)


def fields(*groups) -> dict[str, dataclasses.Field]:
    """The fields of ``groups`` by name (in declaration order)."""
    return {f.name: f for g in groups for f in dataclasses.fields(g)}


def table(*groups) -> dict[str, c.Check]:
    """``{option: check}`` of ``groups``: the check tables of :mod:`scae._settings`."""
    return {name: f.metadata["check"] for name, f in fields(*groups).items()}


def defaults(*groups) -> dict[str, object]:
    """``{option: default}`` of ``groups``."""
    return {name: f.default for name, f in fields(*groups).items()}


@dataclass(frozen=True)
class FitSettings:
    """Every option of one ``scae.tl.fit``, grouped (checked by :func:`scae._settings.check_fit` before)."""

    data: Data
    network: Network
    losses: Losses
    training: Training
    schedule: Schedule
    clustering: Clustering
    output: Output

    @classmethod
    def from_flat(cls, values: Mapping[str, object]) -> FitSettings:
        """Group the flat keyword arguments of ``tl.fit`` (missing ones take their defaults)."""
        groups = {}
        for f, group in zip(dataclasses.fields(cls), FIT_GROUPS, strict=True):
            groups[f.name] = group(**{k: values[k] for k in fields(group) if k in values})
        return cls(**groups)

    def model_kwargs(self) -> dict[str, object]:
        """Keyword arguments of :class:`scae.SAUCIE`."""
        return {k: v for g in (self.data, self.network, self.losses, self.training) for k, v in _items(g)}

    def cluster_kwargs(self) -> dict[str, object]:
        """``merge_threshold``, ``n_clusters``, ``min_cluster_size``."""
        return dict(_items(self.clustering))

    def flat(self) -> dict[str, object]:
        """Every option by name, as ``tl.fit`` received it."""
        return {k: v for f in dataclasses.fields(self) for k, v in _items(getattr(self, f.name))}


def _items(group) -> list[tuple[str, object]]:
    return [(f.name, getattr(group, f.name)) for f in dataclasses.fields(group)]
