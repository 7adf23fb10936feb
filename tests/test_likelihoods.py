"""Count and binary likelihoods: oracle values from scipy.stats, input checks, NB/ZINB fits on real counts, and a
new likelihood (Poisson) added as one registry entry."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy import stats

import scae
from scae import _blocks, _features, losses, objectives
from scae.nn import Block, CountLikelihood, SAUCIENet, heads, registered
from scae.nn.likelihoods import VALUE_KINDS


def _grid():
    x = np.array([0, 0, 1, 3, 7, 25, 0, 120, 2], dtype=np.float64)
    mu = np.array([0.1, 5.0, 1.0, 2.5, 10.0, 30.0, 0.01, 100.0, 40.0])
    theta = np.array([0.5, 2.0, 1.0, 10.0, 0.2, 5.0, 3.0, 50.0, 1.5])
    return x, mu, theta


def test_nb_log_likelihood_matches_scipy():
    x, mu, theta = _grid()
    got = losses.nb_log_likelihood(*(torch.tensor(v) for v in (x, mu, theta))).numpy()
    want = stats.nbinom.logpmf(x, n=theta, p=theta / (theta + mu))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_zinb_log_likelihood_matches_scipy():
    x, mu, theta = _grid()
    logits = np.array([-3.0, 0.0, 2.0, -1.0, 1.5, -0.5, 4.0, -6.0, 0.3])
    pi = 1 / (1 + np.exp(-logits))
    nb_pmf = stats.nbinom.pmf(x, n=theta, p=theta / (theta + mu))
    want = np.log(np.where(x == 0, pi + (1 - pi) * nb_pmf, (1 - pi) * nb_pmf))
    got = losses.zinb_log_likelihood(*(torch.tensor(v) for v in (x, mu, theta, logits))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_bernoulli_kl_and_contractive_values():
    x = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    logits = torch.tensor([-2.0, 0.5, 3.0, 1.0], dtype=torch.float64)
    want = stats.bernoulli.logpmf(x.numpy(), 1 / (1 + np.exp(-logits.numpy())))
    np.testing.assert_allclose(losses.bernoulli_log_likelihood(x, logits).numpy(), want, rtol=1e-9)
    mean = torch.tensor([[0.5, -1.0], [2.0, 0.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, 1.0], [-2.0, 0.3]], dtype=torch.float64)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    want_kl = torch.distributions.kl_divergence(q, p).sum(1).mean()
    assert float(losses.gaussian_kl(mean, logvar)) == pytest.approx(float(want_kl), rel=1e-9)
    # a linear encoder's Jacobian is its weight: penalty = squared Frobenius norm
    w = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    inp = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    assert float(losses.contractive(inp @ w, inp)) == pytest.approx(float(w.pow(2).sum()), rel=1e-9)


@pytest.fixture(scope="module")
def counts(data_dir):
    """300 real CellBench cells (singlets) × their 300 most expressed genes, raw counts (CSR)."""
    a = scae.datasets.cellbench(data_dir)
    a = a[a.obs["demuxlet_cls"].astype(str) != "DBL"]
    rng = np.random.default_rng(0)
    a = a[np.sort(rng.choice(a.n_obs, 300, replace=False))]
    top = np.argsort(-np.asarray(a.X.sum(0)).ravel())[:300]
    return a[:, np.sort(top)].copy()


@pytest.mark.parametrize("bad", ["negative", "fraction"])
def test_count_likelihood_refuses_non_counts(counts, guard, bad):
    a = counts.copy()
    X = a.X.toarray()
    if bad == "negative":
        X[0, 0] = -1.0
        match = "negative"
    else:
        X = np.log1p(X)
        match = "non-integer"
    a.X = X
    check = guard(a)
    for lik in ("nb", "zinb"):
        with pytest.raises(ValueError, match=match):
            scae.tl.fit(a, likelihood=lik, max_epochs=1, progress=False)
    check()


def test_bernoulli_refuses_non_binary_and_unknown_likelihood(small, guard):
    check = guard(small)
    with pytest.raises(ValueError, match="0 and 1"):
        scae.tl.fit(small, likelihood="bernoulli", max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="unknown likelihood"):
        scae.tl.fit(small, likelihood="poisson", max_epochs=1, progress=False)
    check()


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_fit_on_sparse_counts(counts, likelihood):
    a = counts.copy()
    assert sp.issparse(a.X)
    model_kw = dict(likelihood=likelihood, hidden=(64, 32, 16), random_state=0)
    scae.tl.fit(a, max_epochs=30, progress=False, **model_kw)
    hist = a.uns["scae"]["history"]
    assert hist["reconstruction"][-1] < hist["reconstruction"][0]
    assert a.uns["scae"]["params"]["likelihood"] == likelihood
    imputed = a.layers["scae_imputed"]
    assert imputed.shape == a.shape and np.all(imputed >= 0)
    # expected counts: library × softmax rates, so every cell keeps its observed library size
    library = np.asarray(a.X.sum(1)).ravel()
    np.testing.assert_allclose(imputed.sum(1), library, rtol=1e-3)
    normalized = np.expm1(scae.SAUCIE(a, **model_kw).train(30, progress=False).get_reconstruction(counts="log1p"))
    np.testing.assert_allclose(normalized, imputed / library[:, None] * 1e4, rtol=1e-3, atol=1e-3)


def test_count_fit_sparse_and_dense_agree(counts):
    kw = dict(likelihood="zinb", max_epochs=2, hidden=(64, 32, 16), progress=False, random_state=0)
    s = scae.tl.fit(counts, copy=True, **kw)
    d = counts.copy()
    d.X = d.X.toarray()
    scae.tl.fit(d, **kw)
    np.testing.assert_allclose(d.obsm["X_scae"], s.obsm["X_scae"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(d.layers["scae_imputed"], s.layers["scae_imputed"], rtol=1e-3, atol=1e-3)


class _Poisson(CountLikelihood):
    """A likelihood added by the test alone: one class, registered for the test's duration."""

    name = "poisson"

    def nll(self, xb, zb, p):
        mu = p["mu"]
        return mu - xb * torch.log(mu + 1e-8) + torch.lgamma(xb + 1.0)


def test_a_new_likelihood_is_one_entry(counts):
    X = counts.X.toarray()
    with registered(_Poisson()) as entry:
        assert "poisson" in heads.LIKELIHOODS and "poisson" in heads.COUNT_LIKELIHOODS
        blocks = [Block("all", "poisson")]
        mean, std = _blocks.validate_and_moments(X, blocks, where="x")  # the numpy transform and the count check
        np.testing.assert_allclose(mean, np.log1p(X / X.sum(1, keepdims=True) * 1e4).mean(0), rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="negative"):
            _blocks.validate_and_moments(-X, blocks, where="x")
        torch.manual_seed(0)
        net = SAUCIENet(X.shape[1], hidden=(64, 32, 16), feature_mean=torch.tensor(mean),
                        feature_std=torch.tensor(std), blocks=blocks)  # fmt: skip
        assert not any(k.startswith(("heads.log_theta", "heads.dropout")) for k in net.state_dict())
        x = torch.tensor(X)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        history = []
        for _ in range(30):
            loss, _ = objectives.reconstruction_loss(net, x, net.encoder_input(x), net(x))
            opt.zero_grad()
            loss.backward()
            opt.step()
            history.append(loss.item())
        assert np.all(np.isfinite(history)) and np.mean(history[-5:]) < 0.9 * history[0]
        net.eval()
        with torch.no_grad():
            out = net(x)
            p = net.heads.params(0, out.reconstruction, out.codes, x)
            want = -stats.poisson.logpmf(X, p["mu"].numpy()).mean()
            assert float(objectives.reconstruction_loss(net, x, net.encoder_input(x), out)[0]) == pytest.approx(
                want, rel=1e-4
            )
            imputed = net.predict(x, out).numpy()  # expected counts keep each cell's library size
            np.testing.assert_allclose(imputed.sum(1), X.sum(1), rtol=1e-3)
            log1p = net.predict(x, out, counts="log1p")
        feats = _features.standardized(imputed, X, blocks, mean, std, units="counts")
        np.testing.assert_allclose(feats, net.standardize(log1p).numpy(), rtol=1e-3, atol=1e-3)
        assert entry.is_count and not entry.has_dispersion
    assert set(_blocks.VALUE_CHECKS) == set(VALUE_KINDS)  # every kind of values an entry may declare is checked
    assert "poisson" not in heads.LIKELIHOODS
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        SAUCIENet(X.shape[1], hidden=(8, 4), blocks=[Block("all", "poisson")])


def test_a_new_likelihood_fits_through_the_public_api(counts):
    a = counts.copy()
    with registered(_Poisson()):
        scae.tl.fit(a, likelihood="poisson", hidden=(64, 32, 16), max_epochs=10, random_state=0, progress=False)
    hist = a.uns["scae"]["history"]["reconstruction"]
    assert np.all(np.isfinite(hist)) and hist[-1] < hist[0]
    library = np.asarray(a.X.sum(1)).ravel()
    np.testing.assert_allclose(a.layers["scae_imputed"].sum(1), library, rtol=1e-3)
    assert a.obs["scae_cluster"].nunique() >= 1
