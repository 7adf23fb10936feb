"""The likelihoods of a block of features, one registry entry each (pure torch and numpy, no AnnData).

An entry owns everything that depends on its likelihood: the encoder's input transform (torch, and numpy for
the feature moments and clustering features), the distribution parameters read from the decoder's raw output,
the per-entry loss, the expected value (the imputed values) in each of :data:`UNITS`, and the kind of input
values it accepts (``value_kind``; :mod:`scae._blocks` maps it to the AnnData checks). Adding a likelihood is
one subclass of :class:`Likelihood` (or :class:`CountLikelihood`) passed to :func:`register_likelihood`.

=============  ==========================================================  ============================  ==========
likelihood     raw output of the block means                               encoder sees (unscaled)       values
=============  ==========================================================  ============================  ==========
``mse``        standardized value (``(x - mean) / std``)                   ``x``                         continuous
``nb``         log-rates; ``μ = library × softmax(rates over the block)``  ``log1p(x / library × 1e4)``  counts
``zinb``       as ``nb``, plus a dropout logit per feature (own layer)     ``log1p(x / library × 1e4)``  counts
``bernoulli``  logit of ``P(x = 1)``                                       ``x`` (0/1)                   binary
=============  ==========================================================  ============================  ==========

``library`` is the observed total count of the block in that cell (scVI's observed library size, at least 1),
used as an offset so the network models composition, not depth. NB/ZINB have one learned inverse dispersion
``θ`` per feature (``has_dispersion``; :class:`~scae.nn.heads.BlockHeads` holds it as ``log_theta``); ZINB's
dropout logits come from a linear layer on the clustering codes (``has_dropout``, ``heads.dropout``). All
features, whatever their block, are then centred and scaled by the network's ``feature_mean``/``feature_std``
(the moments of the transformed inputs).

Expected values (:meth:`Likelihood.mean`): ``mse`` stays in standardized units (the network maps it back to
input units), ``bernoulli`` gives ``P(x = 1)``, count likelihoods give ``μ`` (``"counts"``), ``rate × 1e4``
(``"normalized"``) or ``log1p(rate × 1e4)`` (``"log1p"``, the encoder's units); for ZINB that is the mean of
the NB component, i.e. with dropouts removed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from .. import losses

#: Counts of a count block are scaled to this library size before ``log1p`` for the encoder input.
TARGET_SUM = 1e4
#: Units of the expected values of count blocks (``counts=`` of :meth:`SAUCIENet.predict`).
UNITS: tuple[str, ...] = ("counts", "normalized", "log1p")
#: Kinds of input values an entry accepts; :mod:`scae._blocks` holds one input check per kind.
VALUE_KINDS: tuple[str, ...] = ("continuous", "counts", "binary")

Params = dict[str, torch.Tensor]


class Likelihood:
    """One likelihood of a block of features: subclass it, set the class attributes, define the three methods.

    The methods see one block's columns (``xb``: raw inputs, ``raw``: the decoder's raw output, ``zb``:
    standardized encoder inputs). The input transforms default to the identity.
    """

    #: name used in ``likelihood=`` and saved with the model
    name: str = ""
    #: the input values it accepts: ``"continuous"``, ``"counts"`` or ``"binary"`` (see :data:`VALUE_KINDS`)
    value_kind: str = "continuous"
    #: the block's library size is an offset (inputs are counts)
    is_count: bool = False
    #: needs one learned inverse dispersion per feature (``heads.log_theta``)
    has_dispersion: bool = False
    #: needs dropout logits from the clustering codes (``heads.dropout``)
    has_dropout: bool = False
    #: the raw output is the standardized encoder input itself (SAUCIE's reconstruction): predictions are
    #: de-standardized by the network, and a model of only such blocks is plain SAUCIE (:func:`is_plain`)
    standardized: bool = False

    def encoder_input(self, xb: torch.Tensor, library: torch.Tensor | None) -> torch.Tensor:
        """Raw inputs → encoder inputs before standardization (returning ``xb`` itself means unchanged)."""
        return xb

    def encoder_input_np(self, xb):
        """:meth:`encoder_input` in numpy (dense or scipy sparse), for feature moments and clustering features."""
        return xb

    def expected_to_encoder_np(self, values: np.ndarray, units: str, library: Callable[[], np.ndarray]):
        """Expected values in ``units`` → the encoder's units before standardization (``library()``: row sums)."""
        return values

    def params(
        self,
        raw: torch.Tensor,
        *,
        library: torch.Tensor | None = None,
        theta: torch.Tensor | None = None,
        dropout_logits: torch.Tensor | None = None,
    ) -> Params:
        """Distribution parameters from the block's raw output.

        ``library`` (``is_count``), ``theta`` (``has_dispersion``) and ``dropout_logits`` (``has_dropout``)
        are given when the entry's flags ask for them.
        """
        raise NotImplementedError

    def nll(self, xb: torch.Tensor, zb: torch.Tensor, p: Params) -> torch.Tensor:
        """Per-entry loss (a negative log-likelihood, or a squared error in standardized units)."""
        raise NotImplementedError

    def mean(self, p: Params, units: str) -> torch.Tensor:
        """Expected value per entry in ``units`` (one of :data:`UNITS`, see the module docstring)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<likelihood {self.name!r}>"


class Mse(Likelihood):
    """Squared error of the standardized input (SAUCIE's reconstruction loss); expected values stay standardized."""

    name = "mse"
    standardized = True

    def params(self, raw, *, library=None, theta=None, dropout_logits=None) -> Params:  # noqa: D102
        return {"mean": raw}

    def nll(self, xb, zb, p) -> torch.Tensor:  # noqa: D102
        return (zb - p["mean"]).pow(2)

    def mean(self, p, units) -> torch.Tensor:  # noqa: D102
        return p["mean"]


class Bernoulli(Likelihood):
    """``P(x = 1) = sigmoid(raw)`` for 0/1 features."""

    name = "bernoulli"
    value_kind = "binary"

    def params(self, raw, *, library=None, theta=None, dropout_logits=None) -> Params:  # noqa: D102
        return {"logits": raw}

    def nll(self, xb, zb, p) -> torch.Tensor:  # noqa: D102
        return -losses.bernoulli_log_likelihood(xb, p["logits"])

    def mean(self, p, units) -> torch.Tensor:  # noqa: D102
        return torch.sigmoid(p["logits"])


def log_normalize_np(x, library: np.ndarray, target_sum: float = TARGET_SUM):
    """``log1p(x / max(library, 1) × target_sum)`` per row, float32; scipy sparse stays sparse (CSR)."""
    scale = _scale(library, target_sum)
    if sp.issparse(x):
        y = sp.csr_matrix(x, dtype=np.float32, copy=True)
        y.data *= np.repeat(scale, np.diff(y.indptr))
        np.log1p(y.data, out=y.data)
        return y
    return np.log1p(np.asarray(x, dtype=np.float32) * scale[:, None])


def _scale(library: np.ndarray, target_sum: float = TARGET_SUM) -> np.ndarray:
    return (target_sum / np.clip(library, 1.0, None)).astype(np.float32)


class CountLikelihood(Likelihood):
    """Base of the count likelihoods: ``μ = library × softmax(raw)``, encoder input ``log1p`` of normalized counts.

    A subclass sets ``name`` (and the dispersion/dropout flags it needs) and defines :meth:`nll`.
    """

    value_kind = "counts"
    is_count = True

    def encoder_input(self, xb, library) -> torch.Tensor:  # noqa: D102
        return torch.log1p(xb / library * TARGET_SUM)

    def encoder_input_np(self, xb):  # noqa: D102
        return log_normalize_np(xb, np.asarray(xb.sum(1), dtype=np.float64).ravel())

    def expected_to_encoder_np(self, values, units, library):  # noqa: D102
        if units == "counts":
            return np.log1p(values * _scale(library())[:, None])
        if units == "normalized":
            return np.log1p(values)
        return values

    def params(self, raw, *, library=None, theta=None, dropout_logits=None) -> Params:  # noqa: D102
        rate = torch.softmax(raw, dim=1)
        out = {"rate": rate, "mu": rate * library}
        if self.has_dispersion:
            out["theta"] = theta
        if self.has_dropout:
            out["dropout_logits"] = dropout_logits
        return out

    def mean(self, p, units) -> torch.Tensor:  # noqa: D102
        if units == "counts":
            return p["mu"]
        if units == "normalized":
            return p["rate"] * TARGET_SUM
        return torch.log1p(p["rate"] * TARGET_SUM)


class NegativeBinomial(CountLikelihood):
    """Negative binomial with one inverse dispersion ``θ`` per feature."""

    name = "nb"
    has_dispersion = True

    def nll(self, xb, zb, p) -> torch.Tensor:  # noqa: D102
        return -losses.nb_log_likelihood(xb, p["mu"], p["theta"])


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """Negative binomial plus a dropout probability per entry (logits from the clustering codes)."""

    name = "zinb"
    has_dropout = True

    def nll(self, xb, zb, p) -> torch.Tensor:  # noqa: D102
        return -losses.zinb_log_likelihood(xb, p["mu"], p["theta"], p["dropout_logits"])


_REGISTRY: dict[str, Likelihood] = {}


def register_likelihood(entry: Likelihood) -> Likelihood:
    """Add ``entry`` to the registry (under ``entry.name``) and return it."""
    if not isinstance(entry, Likelihood) or not entry.name:
        msg = f"a likelihood entry is a named scae.nn.likelihoods.Likelihood instance, got {entry!r}"
        raise TypeError(msg)
    if entry.name in _REGISTRY:
        msg = f"likelihood {entry.name!r} is already registered"
        raise ValueError(msg)
    if entry.value_kind not in VALUE_KINDS:
        msg = f"likelihood {entry.name!r}: `value_kind` must be one of {VALUE_KINDS}, got {entry.value_kind!r}"
        raise ValueError(msg)
    _REGISTRY[entry.name] = entry
    return entry


def unregister_likelihood(name: str) -> None:
    """Remove a likelihood added by :func:`register_likelihood` (models using it can no longer be built)."""
    del _REGISTRY[name]


@contextmanager
def registered(entry: Likelihood) -> Iterator[Likelihood]:
    """Register ``entry`` for the duration of a ``with`` block."""
    register_likelihood(entry)
    try:
        yield entry
    finally:
        unregister_likelihood(entry.name)


def get_likelihood(name: str) -> Likelihood:
    """The registry entry ``name`` (``KeyError`` when there is none; callers word the user's error)."""
    return _REGISTRY[name]


def is_plain(blocks: Iterable[Any]) -> bool:
    """Whether every block (anything with a ``likelihood`` name) reconstructs standardized inputs (all ``mse``).

    Such a model is SAUCIE's: its predictions are de-standardized outputs and its clusters merge on input values.
    """
    return all(b.likelihood in _REGISTRY and _REGISTRY[b.likelihood].standardized for b in blocks)


class _Names(Sequence[str]):
    """Live, read-only view of the registered names (optionally filtered); compares and prints as a tuple."""

    def __init__(self, keep: Callable[[Likelihood], bool] = lambda e: True) -> None:
        self._keep = keep

    def _names(self) -> tuple[str, ...]:
        return tuple(n for n, e in _REGISTRY.items() if self._keep(e))

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __eq__(self, other: object) -> bool:
        return self._names() == (tuple(other) if isinstance(other, tuple | list | _Names) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._names())


for _entry in (Mse(), NegativeBinomial(), ZeroInflatedNegativeBinomial(), Bernoulli()):
    register_likelihood(_entry)

#: Names of the registered likelihoods (a live view: entries registered later appear in it).
LIKELIHOODS: Sequence[str] = _Names()
#: Names of the registered count likelihoods (those using the library size).
COUNT_LIKELIHOODS: Sequence[str] = _Names(lambda e: e.is_count)
