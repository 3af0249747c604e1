"""VAE: importance-sampled log-likelihood against quadrature, IWAE bounds, minibatch scaling, training,
checkpoints and resume, Lightning DDP, the amortization gap against quadrature, data loaders, bad input."""

import math
import shutil

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.nn import PyroModule, PyroParam
from scipy.special import logsumexp
from torch.distributions import constraints

import zoo
from inference import train as training
from inference.amortization import amortization_gap
from inference.train import FixedSubsample, IWAE, log_weights, read_checkpoint, train
from zoo import datasets


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks: intra-op threads only add contention on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def binary(n, d, seed):
    return torch.tensor(np.random.default_rng(seed).random((n, d)) < 0.4, dtype=torch.float64)


def small_vae(latent_dim=1, d=6, hidden=(8,), seed=0):
    return zoo.get("vae", latent_dim=latent_dim, hidden=hidden, input_dim=d, init_seed=seed).double()


def quadrature(m, x, lim=8.0, n=4001):
    """log p(x) and log E_q[(p(x,z)/q(z))^2] by the trapezoid rule on a grid of the 1-D latent."""
    z = torch.linspace(-lim, lim, n, dtype=torch.float64).unsqueeze(-1)          # (G, 1)
    with torch.no_grad():
        log_joint = (m.observation(z.unsqueeze(1)).log_prob(x) + m.prior().log_prob(z.unsqueeze(1))).numpy()  # (G, N)
        log_q = m.posterior(x).log_prob(z.unsqueeze(1)).numpy()
    log_dz = math.log(2 * lim / (n - 1))
    trap = np.log(np.r_[0.5, np.ones(n - 2), 0.5])[:, None]
    log_px = logsumexp(log_joint + trap, axis=0) + log_dz
    log_second = logsumexp(2 * log_joint - log_q + trap, axis=0) + log_dz       # log int p^2 / q
    return log_px, log_second


# --- the estimator of log p(x) ----------------------------------------------------------------


def test_importance_sampled_log_likelihood_matches_quadrature():
    m = small_vae()
    x = binary(12, 6, seed=1)
    k = 5000
    torch.manual_seed(0)
    ours = m.log_likelihood(x, num_particles=k).numpy()
    log_px, log_second = quadrature(m, x)
    # delta method: sd(log p_hat) = sqrt(Var_q(w) / k) / p(x), Var_q(w) = int p^2/q - p(x)^2
    se = np.sqrt(np.expm1(log_second - 2 * log_px) / k)
    assert np.all(np.abs(ours - log_px) < 5 * se + 1e-9), (ours - log_px, se)


def test_log_likelihood_is_batched_without_changing_the_estimate():
    m = small_vae()
    x = binary(30, 6, seed=2)
    torch.manual_seed(3)
    whole = m.log_likelihood(x, num_particles=64)
    torch.manual_seed(3)
    # tiny memory budget: chunks of images and of particles; same draws in a different order
    chunked = m.log_likelihood(x, num_particles=64, max_elements=6 * 64)
    assert chunked.shape == (30,)
    log_px, _ = quadrature(m, x)
    for est in (whole, chunked):   # both within the same Monte Carlo error of the truth
        assert np.abs(est.numpy() - log_px).max() < 0.5


@pytest.fixture(scope="module")
def digits_fit():
    ds = datasets.load("digits")
    m = zoo.get("vae", latent_dim=2, hidden=(64,))
    x = m.validate(ds.data)
    fit = train(m, x, valid=ds.splits["valid"], epochs=40, batch_size=50, lr=3e-3, progress=False)
    return ds, fit


def test_iwae_bounds_increase_with_k():
    """L_1 <= L_5 <= L_50 (Burda et al. 2015, Theorem 1) on one trained model (L = 8: a posterior the
    diagonal encoder cannot match exactly, so the bounds differ by tenths of a nat).

    Paired by image: each bound is averaged over R = 20 independent estimates per test image, the
    differences of those means are averaged over the 270 images, and each mean difference must
    exceed 4 of its standard errors (the sd of the per-image differences / sqrt(270))."""
    ds = datasets.load("digits")
    m = zoo.get("vae", latent_dim=8, hidden=(64,))
    fit = train(m, m.validate(ds.data), epochs=20, batch_size=50, lr=3e-3, progress=False)
    x = fit.prepare(ds.splits["test"])
    torch.manual_seed(0)
    bounds = {k: fit.model.log_likelihood(x.repeat(20, 1), num_particles=k).reshape(20, -1).mean(0)
              for k in (1, 5, 50)}
    for lo, hi in ((1, 5), (5, 50)):
        diff = bounds[hi] - bounds[lo]
        assert diff.mean() > 4 * diff.std() / math.sqrt(len(diff)), (lo, hi, diff.mean(), diff.std())


# --- objectives and minibatch scaling ------------------------------------------------------------


def per_image_log_w(m, x, z):
    """log p(x, z) - log q(z | x) by hand from the model's distributions: (k, B)."""
    q = m.posterior(x)
    return m.observation(z).log_prob(x) + m.prior().log_prob(z) - q.log_prob(z)


def test_log_weights_and_scaled_objectives_match_hand_formulas():
    m = small_vae(latent_dim=3, d=6)
    x = binary(40, 6, seed=4)
    idx = torch.tensor([3, 17, 22, 31, 8])
    xb = x[idx]
    k = 7
    pyro.set_rng_seed(5)
    lw, scale = log_weights(FixedSubsample("data", idx)(m.model), FixedSubsample("data", idx)(m.guide), x, k,
                            max_plate_nesting=1, data_plate="data")
    pyro.set_rng_seed(5)
    z = m.posterior(xb).rsample((k,))                      # the same draws: same shapes, same RNG stream
    by_hand = per_image_log_w(m, xb, z)
    assert scale == 40 / 5
    torch.testing.assert_close(lw, by_hand, rtol=0, atol=1e-10)
    # IWAE: N/B * sum_b logmeanexp_k, the scale outside the log-mean-exp
    pyro.set_rng_seed(5)
    iwae = IWAE(k, 1, "data")(FixedSubsample("data", idx)(m.model), FixedSubsample("data", idx)(m.guide), x)
    expected = -8 * (torch.logsumexp(by_hand, 0) - math.log(k)).sum()
    torch.testing.assert_close(iwae, expected, rtol=1e-12, atol=1e-9)
    # Trace_ELBO under the fixed subsample: N/B times the batch's ELBO terms
    pyro.set_rng_seed(5)
    loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(FixedSubsample("data", idx)(m.model),
                                                               FixedSubsample("data", idx)(m.guide), x)
    pyro.set_rng_seed(5)
    z1 = m.posterior(xb).rsample()
    torch.testing.assert_close(loss, -8 * per_image_log_w(m, xb, z1).sum(), rtol=1e-12, atol=1e-9)


def test_pyro_renyi_alpha0_is_iwae_on_a_full_batch_but_not_under_subsampling():
    m = small_vae(latent_dim=2, d=6)
    x = binary(20, 6, seed=6)
    k = 5
    renyi = RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(1)
    full_renyi = renyi.loss(m.model, m.guide, x)
    pyro.set_rng_seed(1)
    full_ours = float(IWAE(k, 1, "data")(m.model, m.guide, x).detach())
    assert full_renyi == pytest.approx(full_ours, rel=1e-10)
    idx = torch.arange(4)
    fixed = FixedSubsample("data", idx)
    pyro.set_rng_seed(1)
    sub_renyi = renyi.loss(fixed(m.model), fixed(m.guide), x)
    pyro.set_rng_seed(1)
    sub_ours = float(IWAE(k, 1, "data")(fixed(m.model), fixed(m.guide), x).detach())
    assert abs(sub_renyi - sub_ours) > 1.0   # Renyi scales log w by N/B inside the log-mean-exp


class LinearGaussian(PyroModule):
    """A user's amortized model, not from the zoo: z ~ N(0, 1), x | z ~ N(w z, s^2 I_2), with an
    affine encoder. Its exact posterior is Gaussian with a mean linear in x and a constant sd."""

    def __init__(self):
        super().__init__()
        self.w = PyroParam(torch.tensor([0.5, -0.3], dtype=torch.float64))
        self.s = PyroParam(torch.tensor(1.0, dtype=torch.float64), constraints.positive)
        self.enc = PyroParam(torch.zeros(2, dtype=torch.float64))
        self.enc_scale = PyroParam(torch.tensor(1.0, dtype=torch.float64), constraints.positive)

    def model(self, data):
        with pyro.plate("data", len(data)) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=data.dtype), 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1) * self.w, self.s).to_event(1), obs=data[idx])

    def guide(self, data):
        with pyro.plate("data", len(data)) as idx:
            pyro.sample("z", dist.Normal(data[idx] @ self.enc, self.enc_scale))

    def exact_posterior(self):
        """Set the encoder to the exact posterior of z given x: then every importance weight is p(x)."""
        w, s2 = self.w.detach(), self.s.detach() ** 2
        precision = 1 + w @ w / s2
        self.enc = PyroParam(w / s2 / precision)
        self.enc_scale = PyroParam(precision.rsqrt(), constraints.positive)

    def marginal(self, data):
        w, s = self.w.detach(), self.s.detach()
        cov = torch.outer(w, w) + s ** 2 * torch.eye(2, dtype=w.dtype)
        return dist.MultivariateNormal(torch.zeros(2, dtype=w.dtype), cov).log_prob(data)


def test_log_weights_of_the_exact_posterior_equal_the_marginal_likelihood():
    user = LinearGaussian()
    user.exact_posterior()
    x = torch.tensor(np.random.default_rng(7).normal(size=(25, 2)))
    lw, _ = log_weights(user.model, user.guide, x, 6, max_plate_nesting=1, data_plate="data")
    torch.testing.assert_close(lw, user.marginal(x).expand(6, -1), rtol=0, atol=1e-10)


def test_trainer_fits_a_plain_pyro_module_to_its_maximum_likelihood():
    """For this model the ELBO is tight, so its maximum is the maximum likelihood of a 1-factor PPCA,
    known in closed form (Tipping & Bishop 1999): sigma^2 = smallest eigenvalue of the sample
    covariance S, and w w^T + sigma^2 I = S projected on the leading eigenvector plus sigma^2 I."""
    g = np.random.default_rng(8)
    x = torch.tensor(g.normal(size=(400, 1)) * [1.5, -1.0] + g.normal(size=(400, 2)) * 0.5)
    S = np.cov(x.numpy().T, bias=True)
    evals, evecs = np.linalg.eigh(S)
    cov_ml = (evals[1] - evals[0]) * np.outer(evecs[:, 1], evecs[:, 1]) + evals[0] * np.eye(2)
    best = float(dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.tensor(cov_ml)).log_prob(x).mean())
    fit = train(LinearGaussian(), x, epochs=60, batch_size=40, lr=0.05, lr_decay=0.02, seed=1, progress=False)
    user = fit.model
    user.exact_posterior()
    reached = float(user.marginal(x).mean())
    assert reached <= best + 1e-9
    assert reached > best - 0.01, (reached, best)   # an optimization tolerance: 0.01 nats per point


# --- training, checkpoints, early stopping ----------------------------------------------------


def test_training_improves_the_validation_elbo(digits_fit):
    _, fit = digits_fit
    v = fit.history["valid"]
    # far beyond the Monte Carlo error of either estimate (per-image sd < 3 nats over 270 images: se < 0.2)
    assert len(v) == 40 and v[-1] - v[0] > 2.0
    assert len(fit.losses) == 40 * math.ceil(1257 / 50)
    assert fit.transform is not None   # grey levels: dynamic binarization


def test_heldout_nll_is_the_mean_importance_sampled_log_likelihood(digits_fit):
    """The report's held-out NLL and its se are minus the mean and the se of the model's own per-image
    estimate, recomputed here with numpy from an independent call (same seed, same draws)."""
    ds, fit = digits_fit
    x = fit.prepare(ds.splits["test"])
    pyro.set_rng_seed(3)
    post = fit.posterior(ds.splits["test"])
    held = training.heldout_nll(fit, post, "test")
    pyro.set_rng_seed(3)
    ll = fit.model.log_likelihood(x).numpy()
    np.testing.assert_allclose([held.nll, held.se], [-ll.mean(), ll.std(ddof=1) / math.sqrt(len(ll))], rtol=1e-5)
    assert held.n == 270 and "k = 5000" in held.text and "40 epochs" in held.text


def _interrupt_after(monkeypatch, n_epochs):
    """Make the run die in the validation of epoch n_epochs + 1 (after epoch n_epochs' checkpoint)."""
    calls = [0]
    real = training.evaluate

    def evaluate(*args):
        calls[0] += 1
        if calls[0] > n_epochs:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(training, "evaluate", evaluate)


def test_resumed_run_continues_with_the_same_losses(tmp_path, monkeypatch):
    ds = datasets.load("digits")
    m = zoo.get("vae", latent_dim=3, hidden=(32,))
    x = m.validate(ds.data[:300])
    kw = dict(valid=ds.splits["valid"][:100], epochs=4, batch_size=50, lr=3e-3, seed=3, progress=False)
    whole = train(m, x, checkpoint=tmp_path / "whole.pt", **kw)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(m, x, checkpoint=tmp_path / "part.pt", **kw)
    assert read_checkpoint(tmp_path / "part.pt")["epoch"] == 2
    with pytest.raises(FileExistsError, match="resume"):
        train(m, x, checkpoint=tmp_path / "part.pt", **kw)
    resumed = train(m, x, checkpoint=tmp_path / "part.pt", resume=True, **kw)
    assert resumed.losses == whole.losses
    assert resumed.history["valid"] == whole.history["valid"]
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    # plain tensors and containers: loads with weights_only=True
    payload = torch.load(tmp_path / "part.pt", weights_only=True)
    assert payload["step"] == 4 * 6 and set(payload) >= {"module", "optimizer", "rng", "epoch"}
    with pytest.raises(ValueError, match="other settings"):
        train(m, x, checkpoint=tmp_path / "part.pt", resume=True, **{**kw, "lr": 1e-2})
    with pytest.raises(ValueError, match="does not fit"):
        train(zoo.get("vae", latent_dim=4, hidden=(32,)), x, checkpoint=tmp_path / "part.pt", resume=True, **kw)


def test_unreadable_or_foreign_checkpoints_are_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not read"):
        read_checkpoint(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a Latent Zoo training checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")


def test_early_stopping_keeps_the_best_epochs_parameters(tmp_path, monkeypatch):
    ds = datasets.load("digits")
    m = zoo.get("vae", latent_dim=2, hidden=(16,))
    x = m.validate(ds.data[:200])
    kw = dict(valid=ds.splits["valid"][:50], epochs=10, batch_size=50, seed=0, progress=False)
    scripted = iter([1.0, 3.0, 2.0, 2.5, 2.9])   # best at epoch 2, then 3 epochs without improvement
    monkeypatch.setattr(training, "evaluate", lambda *a: next(scripted))
    fit = train(m, x, patience=3, **kw)
    assert fit.stopped_early and fit.best_epoch == 2 and len(fit.history["epoch"]) == 5
    monkeypatch.setattr(training, "evaluate", lambda *a: 0.0)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            train(m, x, checkpoint=tmp_path / "two.pt", **kw)
    after_two = read_checkpoint(tmp_path / "two.pt")["module"]
    for name, value in fit.model.state_dict().items():
        assert torch.equal(value, after_two[name]), name


# --- Lightning --------------------------------------------------------------------------------


def test_lightning_ddp_on_two_cpu_processes_trains():
    from inference.lightning import train_lightning

    ds = datasets.load("digits")
    m = zoo.get("vae", latent_dim=2, hidden=(32,))
    x = m.validate(ds.data[:600])
    valid = ds.splits["valid"][:200]
    fit = train_lightning(m, x, valid=valid, devices=2, epochs=4, batch_size=50, lr=3e-3, seed=0, progress=False)
    v = fit.history["valid"]
    assert len(v) == 4 and v[-1] > v[0]
    # the weights came back from the workers: the parent's ELBO on the validation set is the last one
    # Lightning reported (two independent single-draw estimates; per-image sd < 3 nats, so the
    # difference of the two means over 200 images has sd < 3 * sqrt(2 / 200) = 0.3)
    vx = fit.prepare(valid)
    mine = training.evaluate(lambda xx, idx: Trace_ELBO().differentiable_loss(
        FixedSubsample("data", idx)(fit.model.model), FixedSubsample("data", idx)(fit.model.guide), xx), vx, 50)
    assert abs(mine - v[-1]) < 0.9
    assert mine > training.evaluate(lambda xx, idx: Trace_ELBO().differentiable_loss(
        FixedSubsample("data", idx)(m.model), FixedSubsample("data", idx)(m.guide), xx), vx, 50) + 3


# --- the amortization gap -----------------------------------------------------------------------


def test_amortization_gap_against_quadrature(digits_fit):
    """log p(x) from NUTS-guided importance sampling and the NUTS posterior means match a 2-D grid
    quadrature of the same decoder; the gaps are non-negative up to Monte Carlo error."""
    ds, fit = digits_fit
    x = fit.prepare(ds.splits["test"])[:3]
    gap = amortization_gap(fit.model, x, num_samples=400, warmup_steps=300, num_chains=2, svi_steps=400,
                           elbo_particles=2000, is_particles=2000, progress=False)
    m = fit.model
    grid = torch.linspace(-6, 6, 241)
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)     # (G, 1, 2)
    with torch.no_grad():
        log_joint = (m.observation(z).log_prob(x) + m.prior().log_prob(z)).double()       # (G, 3)
    log_px = torch.logsumexp(log_joint, 0) + 2 * math.log(float(grid[1] - grid[0]))
    post = torch.softmax(log_joint, 0)
    mean = (post.unsqueeze(-1) * z.double()).sum(0)                                      # (3, 2)
    sd = ((post.unsqueeze(-1) * (z.double() - mean) ** 2).sum(0)).sqrt()
    t = gap.table.drop(index="mean")
    # IS with k = 2000 and ESS > 1000: se of log p_hat < 1 / sqrt(1000) = 0.03; quadrature error ~1e-4
    assert (t["log_px_ess"] > 1000).all()
    np.testing.assert_allclose(t["log_px"], log_px.numpy(), atol=0.1)
    nuts = gap.posteriors["nuts"].samples["z"].reshape(-1, 3, 2).double()
    # 800 draws, ESS >= 200 per coordinate: se of a mean <= sd / sqrt(200); 4 se
    assert ((nuts.mean(0) - mean).abs() < 4 * sd / math.sqrt(200)).all()
    for col, se in (("approximation_gap", t["elbo_optimized_se"] + 0.03),
                    ("amortization_gap", np.hypot(t["elbo_optimized_se"], t["elbo_amortized_se"]))):
        assert (t[col] > -4 * se).all(), t[[col]]
    np.testing.assert_allclose(t["total_gap"], t["approximation_gap"] + t["amortization_gap"], atol=1e-9)
    c = gap.comparisons[0]["amortized"]
    assert list(c.index) == ["z[0]", "z[1]"] and {"smd", "sd_ratio"} <= set(c.columns)


# --- data --------------------------------------------------------------------------------------


def test_digits_are_bundled_and_split():
    ds = datasets.load("digits")
    assert ds.data.shape == (1257, 64) and {k: tuple(v.shape) for k, v in ds.splits.items()} == {
        "valid": (270, 64), "test": (270, 64)}
    assert 0 <= float(ds.data.min()) and float(ds.data.max()) <= 1
    test = ds.split("test")
    assert len(test.labels) == 270 and test.meta["image_shape"] == (8, 8)


def test_mnist_from_idx_files(shared_data_dir):
    ds = datasets.load("mnist", data_dir=shared_data_dir)
    assert ds.data.shape == (50000, 784) and ds.splits["test"].shape == (10000, 784)
    # README: test label counts 0..9
    assert np.bincount(ds.split("test").labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    full_mean = (float(ds.data.mean()) * 50000 + float(ds.splits["valid"].mean()) * 10000) / 60000
    assert full_mean == pytest.approx(0.1306604762738429, abs=1e-6)   # README: train pixel mean
    m = zoo.get("vae")
    assert m.training_transform(m.validate(ds.splits["test"][:10])) is not None


def test_binarized_mnist_from_npz(shared_data_dir):
    ds = datasets.load("binarized-mnist", data_dir=shared_data_dir)
    fractions = [float(v.mean()) for v in (ds.data, ds.splits["valid"], ds.splits["test"])]
    assert fractions == pytest.approx([0.13056, 0.13113, 0.13251], abs=5e-6)   # README
    assert zoo.get("vae").training_transform(ds.data[:100]) is None           # already binary


def test_corrupt_or_missing_image_files(shared_data_dir, tmp_path):
    (tmp_path / "binarized_mnist").mkdir()
    target = tmp_path / "binarized_mnist" / "binarized_mnist.npz"
    shutil.copy(shared_data_dir / "binarized_mnist" / "binarized_mnist.npz", target)
    with open(target, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="corrupt"):
        datasets.load("binarized-mnist", data_dir=tmp_path)
    (tmp_path / "mnist").mkdir()
    shutil.copy(shared_data_dir / "mnist" / "train-images-idx3-ubyte.gz", tmp_path / "mnist")
    with pytest.raises(ValueError, match="does not contain mnist/train-labels"):
        datasets.load("mnist", data_dir=tmp_path)


# --- bad input and configuration ----------------------------------------------------------------


@pytest.mark.parametrize("data, message", [
    (np.full((3, 64), 2.0), r"pixel values in \[0, 1\]"),
    (-np.ones((3, 64)), r"pixel values in \[0, 1\]"),
    (np.zeros((3, 10)), "expected images of 64 pixels"),
    (np.zeros((0, 64)), "empty"),
    (np.r_[np.zeros((1, 64)), np.full((1, 64), np.nan)], "NaN"),
    (np.zeros(5), "D >= 2"),
    (np.zeros((2, 8, 8)), "2-D"),
])
def test_validate_rejects_bad_images(data, message):
    m = zoo.get("vae", input_dim=64)
    with pytest.raises((ValueError, TypeError), match=message):
        m.validate(data)


def test_gaussian_likelihood_takes_any_real_values():
    m = zoo.get("vae", likelihood="gaussian", latent_dim=2, hidden=(8,))
    x = m.validate(np.random.default_rng(0).normal(size=(20, 5)) * 3)
    assert m.training_transform(x) is None
    assert m.log_likelihood(x, num_particles=10).shape == (20,)


@pytest.mark.parametrize("config, message", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"hidden": "wide"}, "hidden"),
    ({"hidden": (200, -1)}, "hidden"),
    ({"likelihood": "poisson"}, "likelihood"),
    ({"components": 3}, "unknown configuration 'components'"),
])
def test_bad_config(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        zoo.get("vae", **config)


def test_trainer_rejects_bad_settings():
    m = zoo.get("vae", latent_dim=2, hidden=(8,))
    x = np.zeros((10, 4))
    for kw, message in (({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"elbo": "renyi"}, "elbo"),
                        ({"patience": 2}, "validation split"), ({"resume": True}, "no checkpoint")):
        with pytest.raises(ValueError, match=message):
            train(m, x, progress=False, **kw)


def test_importance_weights_refuse_global_latents():
    def model(data):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data)) as idx:
            pyro.sample("x", dist.Normal(mu, 1.0), obs=data[idx])

    def guide(data):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 'mu' is outside it"):
        log_weights(model, guide, torch.zeros(5), 2, max_plate_nesting=1, data_plate="data")


def test_simulate_is_reproducible_and_shaped():
    m = zoo.get("vae", latent_dim=3, hidden=(8,), input_dim=16)
    x1, t1 = m.simulate(7, seed=1)
    x2, t2 = m.simulate(7, seed=1)
    assert torch.equal(x1, x2) and x1.shape == (7, 16) and t1["z"].shape == (7, 3)
    assert set(torch.unique(x1).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="input_dim"):
        zoo.get("vae").simulate(3)


# --- the command line ---------------------------------------------------------------------------

TINY = ["--epochs", "3", "--latent-dim", "2", "--hidden", "16", "--eval-particles", "50", "--quiet"]


def test_cli_fit_then_compare_from_the_checkpoint(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "fit"
    assert main(["fit", "vae", "--out", str(out), *TINY]) == 0
    assert {"posterior_svi.nc", "summary.md", "loss.png", "elbo.png", "reconstructions.png", "samples.png",
            "interpolations.png", "latent.png"} <= {p.name for p in out.iterdir()}
    assert "test NLL" in capsys.readouterr().out
    assert "Test log-likelihood" in (out / "summary.md").read_text()
    checkpoint = tmp_path / "fit.ckpt.pt"
    assert read_checkpoint(checkpoint)["epoch"] == 3
    import arviz as az

    idata = az.from_netcdf(out / "posterior_svi.nc")
    assert idata.log_likelihood["obs"].shape == (1, 1, 270)   # per test image, IS estimate

    cmp = tmp_path / "cmp"
    assert main(["compare", "vae", "--out", str(cmp), "--checkpoint", str(checkpoint), "--resume", "--points", "2",
                 "--samples", "60", "--warmup", "60", "--chains", "2", "--steps", "200", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "amortization_gap" in printed and "approximation_gap" in printed
    assert {"amortization_gap.csv", "amortization_compare.csv", "amortization.png"} <= {p.name for p in cmp.iterdir()}
    assert read_checkpoint(checkpoint)["epoch"] == 3   # resumed a finished run: no further training


def test_cli_lightning_trainer(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "ddp"
    assert main(["fit", "vae", "--trainer", "lightning", "--devices", "2", "--out", str(out), *TINY]) == 0
    assert "trainer=lightning" in (out / "summary.md").read_text() and (out / "elbo.png").exists()


@pytest.mark.parametrize("args, message", [
    (["fit", "vae", "--method", "nuts"], "only local latents"),
    (["fit", "vae", "--data", "binarized-mnist", "--data-dir", "/nonexistent"], "does not contain"),
    (["fit", "vae", "--likelihood", "poisson"], "likelihood"),
    (["fit", "vae", "--resume"], "no checkpoint"),
])
def test_cli_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    from zoo.cli import main

    assert main([*args, "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_cli_rejects_bad_images_and_existing_checkpoints(tmp_path, capsys):
    from zoo.cli import main

    csv = tmp_path / "grey.csv"
    csv.write_text("a,b,c\n0.5,2.0,0.1\n0.2,0.3,0.4\n")
    assert main(["fit", "vae", "--data", str(csv), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "pixel values in [0, 1]" in capsys.readouterr().err
    (tmp_path / "r.ckpt.pt").write_bytes(b"")
    assert main(["fit", "vae", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "vae", "--hidden", "wide"])
    assert exit_info.value.code == 2
