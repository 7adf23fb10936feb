"""Seed autoencoder variants as options of the same model: each trains and records its extra term."""

import numpy as np
import pytest
import torch

import scae
from scae import losses

FAST = dict(max_epochs=6, hidden=(64, 32, 16), progress=False, random_state=0)


@pytest.mark.parametrize(
    ("option", "term"),
    [
        ({"l1_activity": 0.5}, "l1_activity"),
        ({"contractive": 0.1}, "contractive"),
        ({"variational": True, "lambda_kl": 0.05}, "kl"),
        ({"input_dropout": 0.2}, None),
        ({"input_noise": 0.3}, None),
    ],
)
def test_variant_trains_and_records_its_term(small, option, term):
    plain = scae.tl.fit(small, copy=True, **FAST)
    a = scae.tl.fit(small, copy=True, **option, **FAST)
    hist = a.uns["scae"]["history"]
    for k, v in option.items():
        assert a.uns["scae"]["params"][k] == v
    base = {"reconstruction", "id_regularization", "within_cluster", "total"}
    assert set(hist) == base | ({term} if term else set())
    assert all(np.isfinite(v).all() for v in hist.values())
    if term is not None:
        assert hist[term].size == FAST["max_epochs"]
    assert not np.allclose(a.obsm["X_scae"], plain.obsm["X_scae"])


def _penalties(model, x):
    net = model.net.eval()
    x = torch.as_tensor(x, device=model.device)
    z = net.encoder_input(x).requires_grad_(True)
    out = net(x, z=z)
    return float(losses.contractive(out.embedding_mean, z).detach()), float(losses.l1_activity(out.hidden).detach())


def test_variant_penalties_do_their_job(small):
    """The penalized quantity ends lower than in a plain fit of the same seed."""
    x = np.asarray(small.X, dtype=np.float32)
    fits = {}
    for name, kw in (("plain", {}), ("contractive", {"contractive": 1.0}), ("l1", {"l1_activity": 2.0})):
        model = scae.SAUCIE(small, hidden=(64, 32, 16), random_state=0, **kw)
        model.train(max_epochs=8, progress=False)
        fits[name] = _penalties(model, x)
    assert fits["contractive"][0] < 0.7 * fits["plain"][0], fits
    assert fits["l1"][1] < 0.7 * fits["plain"][1], fits


def test_variational_embedding_is_the_mean_at_inference(small):
    model = scae.SAUCIE(small, hidden=(64, 32, 16), variational=True, lambda_kl=0.1, random_state=0)
    model.train(max_epochs=4, progress=False)
    emb = model.get_embedding()
    model._outputs = {}
    np.testing.assert_array_equal(model.get_embedding(), emb)
    assert model.hparams["variational"] is True and model.history["kl"][-1] < model.history["kl"][0]


@pytest.mark.parametrize(
    ("kw", "match"), [({"input_dropout": 1.0}, "input_dropout"), ({"contractive": -1}, "contractive")]
)
def test_variant_arguments_are_checked(small, guard, kw, match):
    check = guard(small)
    with pytest.raises(ValueError, match=match):
        scae.tl.fit(small, **kw)
    check()
