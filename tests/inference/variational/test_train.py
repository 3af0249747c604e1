"""inference.variational.train: importance weights and the scaled objectives against hand formulas, the IWAE bound
against Pyro's RenyiELBO, fitting a plain PyroModule to its closed-form maximum likelihood, training,
checkpoints and resume, early stopping, bad settings."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import RenyiELBO, Trace_ELBO
from pyro.nn import PyroModule, PyroParam
from torch.distributions import constraints

import zoo
from inference.variational import train as training
from inference.variational.objectives import IWAE, FixedSubsample, log_weights
from inference.variational.train import read_checkpoint, train
from zoo import datasets

pytestmark = pytest.mark.usefixtures("one_thread")


def binary(n, d, seed):
    return torch.tensor(np.random.default_rng(seed).random((n, d)) < 0.4, dtype=torch.float64)

def small_vae(latent_dim=1, d=6, hidden=(8,), seed=0):
    return zoo.get("vae", latent_dim=latent_dim, hidden=hidden, input_dim=d, init_seed=seed).double()

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
