"""The training step's parts that CUDA uses, checked on the CPU: one cast of the linear weights per step."""

from __future__ import annotations

import numpy as np
import torch

from scae import _step, train
from scae.nn.network import SAUCIENet


def _net_and_minibatch(small, seed: int = 0):
    x = torch.as_tensor(np.asarray(small.X[:256], dtype=np.float32))
    torch.manual_seed(seed)
    net = SAUCIENet(x.shape[1], hidden=(32, 16, 8), feature_mean=x.mean(0), feature_std=x.std(0))
    batch = torch.arange(x.shape[0]) % 2
    kwargs = {"weights": train.LossWeights(), "reference": 0, "n_batches": 2}
    return net, x, batch, kwargs


def _step_values(net, losses, x, batch, kwargs, params):
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        terms = losses(net, x, batch, **kwargs)
    for p in params:
        p.grad = None
    terms["total"].backward()
    return {k: float(v.detach()) for k, v in terms.items()}


def test_cast_weights_gives_the_losses_and_gradients_of_autocast(small):
    """One cast of one weight vector gives the values and gradients of autocast's per-layer casts, and the
    network holds the vector's values (the optimizer updates the vector).
    """
    net, x, batch, kwargs = _net_and_minibatch(small)
    plain_params = [p for p in net.parameters() if p.requires_grad]
    plain = _step_values(net, train.compute_losses, x, batch, kwargs, plain_params)
    plain_grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}

    net.zero_grad(set_to_none=True)
    cast = _step.CastWeights(net, torch.bfloat16)
    n_linear = len(_step._linear(net))
    assert n_linear == 2 * 8  # weight and bias of 4 encoder, 2 decoder, clustering and output layers
    assert cast.vector.numel() == sum(p.numel() for _, p in _step._linear(net))
    assert len(cast.parameters()) == 1 + sum(p.requires_grad for p in net.parameters()) - n_linear
    fast = _step_values(net, cast.wrap(train.compute_losses), x, batch, kwargs, cast.parameters())
    assert fast == plain
    assert all(p.grad is None for _, p in _step._linear(net))  # the layers ran on the cast, not on their own tensors
    grads = dict(zip(cast.names, cast.vector.grad.split(cast.sizes), strict=True))
    for name, g in plain_grads.items():
        got = grads.get(f"net.{name}")
        if got is not None:
            torch.testing.assert_close(got.view_as(g), g, rtol=0, atol=0)
    with torch.no_grad():
        cast.vector.add_(1.0)  # an update of the vector is an update of the network
    start = 0
    for name, size in zip(cast.names, cast.sizes, strict=True):
        p = net.get_parameter(name.removeprefix("net."))
        assert torch.equal(p.detach().reshape(-1), cast.vector.detach()[start : start + size])
        start += size
