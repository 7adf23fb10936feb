"""The hand-written backward passes of the training step against autograd on the plain formulas.

:func:`scae.losses.id_regularization`, :func:`scae.losses.within_cluster_distance`, the clustering head
(:mod:`scae.nn.clustering_head`), the sparse clustering layer (:func:`scae.nn.layers.relu_linear`) and the flat
Adam update (:func:`scae._fast.flat_adam`) must give the values and gradients of the composition they replace.
"""

import pytest
import torch
from torch import nn

import scae
from scae import _fast, losses
from scae.nn.clustering_head import ClusterLosses, clustering_head
from scae.nn.layers import relu_linear

EPS = 1e-8


def _id_plain(codes):
    a = codes / (codes.max() + EPS)
    mass = a.sum(0)
    p = mass / (mass.sum() + EPS)
    return -(p * torch.log(p + EPS)).sum()


def _within_plain(x, codes):
    a = codes / (codes.max() + EPS)
    same = torch.exp(-losses.squared_distances(a))
    dist = losses.squared_distances(x)
    return (same * dist).sum() / (same.sum() + EPS) / (dist.mean().detach() + EPS)


def _codes(n=64, units=32, silent=0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c = torch.relu(torch.randn(n, units, generator=g, dtype=dtype))
    if silent:
        c[:, units - silent :] = 0.0
    return c


def _grad(fn, c):
    c = c.clone().requires_grad_(True)
    value = fn(c)
    value.backward()
    return value.detach(), c.grad


@pytest.mark.parametrize("silent", [0, 20])
def test_id_regularization_gradient_equals_autograd(silent):
    c = _codes(silent=silent)
    v_new, g_new = _grad(losses.id_regularization, c)
    v_ref, g_ref = _grad(_id_plain, c)
    torch.testing.assert_close(v_new, v_ref, rtol=1e-12, atol=1e-12)
    # autograd also sends a gradient through the maximum, which cancels in the normalization up to eps
    torch.testing.assert_close(g_new, g_ref, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize(("silent", "step"), [(0, 1), (20, 1), (20, 2)])
def test_within_cluster_gradient_equals_autograd(silent, step):
    c = _codes(silent=silent)
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    v_new, g_new = _grad(lambda t: losses.within_cluster_distance(x[::step], t[::step]), c)
    v_ref, g_ref = _grad(lambda t: _within_plain(x[::step], t[::step]), c)
    torch.testing.assert_close(v_new, v_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_new, g_ref, rtol=1e-8, atol=1e-12)
    if step == 2:
        assert float(g_new[1::2].abs().max()) == 0.0  # rows outside the pairwise subset
    if silent:
        assert float(g_new[:, -silent:].abs().max()) == 0.0


def test_device_form_of_the_clustering_losses_equals_autograd(monkeypatch):
    """The form a CUDA step runs (one flat argmax, all units: static shapes), checked on the CPU."""
    from scae import _cluster_grad

    c = _codes(silent=20)
    c[3, 5] = c[10, 7] = c.max() + 1.0  # a tie at the maximum: both forms take the first one
    assert int(_cluster_grad._argmax(c, by_rows=False)) == int(_cluster_grad._argmax(c, by_rows=True)) == 3 * 32 + 5
    argmax = _cluster_grad._argmax
    monkeypatch.setattr(_cluster_grad, "_argmax", lambda t, by_rows=None: argmax(t, by_rows=False))
    monkeypatch.setattr(losses, "active_units", lambda codes: None)
    c = _codes(silent=20)
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for new, plain in ((losses.id_regularization, _id_plain), (lambda t: losses.within_cluster_distance(x, t), None)):
        v_new, g_new = _grad(new, c)
        v_ref, g_ref = _grad(plain or (lambda t: _within_plain(x, t)), c)
        torch.testing.assert_close(v_new, v_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g_new, g_ref, rtol=1e-5, atol=1e-12)


def test_id_regularization_of_bf16_codes_is_computed_in_float32():
    """bf16 codes (autocast) are summed in float32 without a float32 copy: the float32 value of the same numbers."""
    c = _codes(dtype=torch.float32).to(torch.bfloat16)
    v_new, g_new = _grad(losses.id_regularization, c)
    v_ref, g_ref = _grad(_id_plain, c.float())
    assert v_new.dtype == torch.float32 and g_new.dtype == torch.bfloat16
    torch.testing.assert_close(v_new, v_ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_new.float(), g_ref, rtol=1e-2, atol=1e-6)


def test_within_cluster_of_all_silent_codes_is_one_with_zero_gradient():
    c = torch.zeros(16, 8, dtype=torch.float64)
    x = torch.randn(16, 3, dtype=torch.float64)
    value, grad = _grad(lambda t: losses.within_cluster_distance(x, t), c)
    assert float(value) == pytest.approx(1.0, rel=1e-6)
    assert float(grad.abs().max()) == 0.0


def _head_losses(h, code_layer, output, pairs, target, fused: bool):
    if fused:
        codes, raw, terms = clustering_head(h, code_layer, output, ClusterLosses(pairs, 2, True, True))
        id_value, within = terms["id_regularization"], terms["within_cluster"]
    else:
        codes = torch.relu(code_layer(h))
        raw = output(codes)
        id_value, within = _id_plain(codes), _within_plain(pairs, codes[::2])
    # a term on the codes themselves stands for likelihood heads that read them
    return ((raw - target) ** 2).mean() + 0.1 * id_value + 0.2 * within + 0.01 * codes.sum()


@pytest.mark.parametrize("dead", [0, 40, 64])
def test_clustering_head_equals_the_plain_layers(dead):
    torch.manual_seed(0)
    code_layer, output = nn.Linear(16, 64), nn.Linear(64, 5)
    with torch.no_grad():
        code_layer.bias[64 - dead :] -= 100.0  # silent units (all of them when dead == 64)
    h = torch.randn(48, 16, requires_grad=True)
    pairs, target = torch.randn(24, 5), torch.randn(48, 5)
    params = (h, code_layer.weight, code_layer.bias, output.weight, output.bias)
    results = []
    for fused in (True, False):
        for p in params:
            p.grad = None
        value = _head_losses(h, code_layer, output, pairs, target, fused)
        value.backward()
        results.append((value.detach(), [p.grad.clone() for p in params]))
    (v_new, g_new), (v_ref, g_ref) = results
    torch.testing.assert_close(v_new, v_ref, rtol=1e-5, atol=1e-6)
    for new, ref in zip(g_new, g_ref, strict=True):
        torch.testing.assert_close(new, ref, rtol=1e-4, atol=1e-6)
    if dead:
        assert float(g_new[1][64 - dead :].abs().max()) == 0.0


def test_relu_linear_sparse_backward_equals_autograd():
    torch.manual_seed(0)
    layer = nn.Linear(16, 32)
    with torch.no_grad():
        layer.bias[10:] -= 100.0
    x = torch.randn(40, 16, requires_grad=True)
    g = torch.randn(40, 32)
    grads = []
    for fn in (lambda: relu_linear(x, layer), lambda: torch.relu(layer(x))):
        x.grad = None
        layer.zero_grad()
        out = fn()
        out.backward(g)
        grads.append((out.detach(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()))
    for new, ref in zip(*grads, strict=True):
        torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-6)


def test_flat_adam_steps_like_adam_on_separate_tensors():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(7, 33), nn.ReLU(), nn.Linear(33, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    flat, zero_grad = _fast.flat_adam(nets[0], 1e-2)
    plain = torch.optim.Adam(nets[1].parameters(), lr=1e-2, fused=True)
    x = torch.randn(50, 7)
    for _ in range(5):
        zero_grad()
        plain.zero_grad(set_to_none=True)
        for net in nets:
            net(x).pow(2).mean().backward()
        flat.step()
        plain.step()
    for p, q in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    # the module's parameters are views of the one vector the optimizer updates
    (vector,) = flat.param_groups[0]["params"]
    assert all(p.untyped_storage().data_ptr() == vector.untyped_storage().data_ptr() for p in nets[0].parameters())


def test_flat_adam_is_torch_adam_bit_for_bit():
    # scae._fast.FlatAdam calls torch's functional update on state it holds: the same bits as torch.optim.Adam
    # (fused) on the same vector, step after step (its step count, bias corrections and moments included)
    torch.manual_seed(0)
    start = torch.randn(1000)
    ours = torch.nn.Parameter(start.clone())
    theirs = torch.nn.Parameter(start.clone())
    flat = _fast.FlatAdam(ours, 3e-3)
    plain = torch.optim.Adam([theirs], lr=3e-3, fused=True)
    for i in range(6):
        g = torch.randn(1000) * (i + 1)
        ours.grad, theirs.grad = g.clone(), g.clone()
        flat.step()
        plain.step()
        assert torch.equal(ours, theirs), i
    assert float(flat.steps) == 6
    assert torch.equal(flat.exp_avg_sq, plain.state[theirs]["exp_avg_sq"])


def test_cpu_training_pass_uses_the_clustering_head(small):
    model = scae.SAUCIE(small, random_state=0, device="cpu")  # the CPU pass, also where a GPU is present
    net = model.net
    x = torch.as_tensor(small.X[:64], dtype=torch.float32)
    z = net.encoder_input(x)
    request = ClusterLosses(z[::2], 2, True, True)
    out = net(x, z=z, cluster_losses=request)
    assert set(out.cluster_losses) == {"id_regularization", "within_cluster"}
    # the same numbers as the losses of the codes of a plain pass
    plain = net(x, z=z)
    torch.testing.assert_close(out.codes, plain.codes)
    torch.testing.assert_close(out.cluster_losses["id_regularization"], losses.id_regularization(plain.codes))
    torch.testing.assert_close(
        out.cluster_losses["within_cluster"], losses.within_cluster_distance(z[::2], plain.codes[::2])
    )
    with torch.no_grad():  # no gradient: the layers one by one, and the caller computes the losses
        assert net(x, z=z, cluster_losses=request).cluster_losses is None
