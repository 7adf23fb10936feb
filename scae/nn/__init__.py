"""Pure torch building blocks of scae (no AnnData here)."""

from .heads import Block, BlockHeads
from .layers import MaskedLinear, mlp
from .likelihoods import LIKELIHOODS, CountLikelihood, Likelihood, is_plain, register_likelihood, registered
from .network import SAUCIENet

__all__ = [
    "LIKELIHOODS",
    "Block",
    "BlockHeads",
    "CountLikelihood",
    "Likelihood",
    "MaskedLinear",
    "SAUCIENet",
    "is_plain",
    "mlp",
    "register_likelihood",
    "registered",
]
