"""scae: one SAUCIE-style multi-head autoencoder for single-cell and bulk omics, AnnData in, AnnData out."""

from importlib.metadata import PackageNotFoundError, version

from . import datasets, genesets, metrics, pl, pp, tl
from ._model import SAUCIE

try:
    __version__ = version("scae")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["SAUCIE", "datasets", "genesets", "metrics", "pl", "pp", "tl", "__version__"]
