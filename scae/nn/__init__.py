"""Pure torch building blocks of scae (no AnnData here)."""

from .heads import LIKELIHOODS, Block, BlockHeads
from .layers import MaskedLinear, mlp
from .network import SAUCIENet

__all__ = ["LIKELIHOODS", "Block", "BlockHeads", "MaskedLinear", "SAUCIENet", "mlp"]
