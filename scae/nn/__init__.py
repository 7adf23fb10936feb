"""Pure torch building blocks of scae (no AnnData here)."""

from .layers import MaskedLinear, mlp
from .network import SAUCIENet

__all__ = ["MaskedLinear", "SAUCIENet", "mlp"]
