"""scae: one SAUCIE-style multi-head autoencoder for single-cell and bulk omics, AnnData in, AnnData out.

The submodules (``scae.tl``, ``scae.pp``, ``scae.pl``, ...) and :class:`scae.SAUCIE` are imported on first
use (PEP 562, Scientific Python SPEC 1): ``import scae`` and ``scae --help`` do not wait for torch, scanpy,
matplotlib and scikit-learn, and ``scae fit`` loads only what a fit needs.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("scae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load on first use
    from . import datasets, genesets, io, metrics, pl, pp, tl
    from ._model import SAUCIE

__all__ = ["SAUCIE", "datasets", "genesets", "io", "metrics", "pl", "pp", "tl", "__version__"]


def __getattr__(name: str):
    """Import a submodule (``scae.tl``) or :class:`SAUCIE` when it is first used."""
    if name == "SAUCIE":
        from ._model import SAUCIE

        globals()["SAUCIE"] = SAUCIE
        return SAUCIE
    if name.isidentifier() and not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}"):
        return importlib.import_module(f"{__name__}.{name}")  # (the import binds it on the package)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)


def __dir__() -> list[str]:
    """The public API (what tab completion offers), loaded or not."""
    return sorted(__all__)
