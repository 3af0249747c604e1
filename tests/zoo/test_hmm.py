"""HMM: hmmlearn and numpy oracles, the initial-state convention, enumeration, EM, recovery, alignment."""

import itertools

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from hmmlearn import hmm as hl
from scipy import stats
from scipy.special import logsumexp

import inference
import zoo
from inference.posterior import Posterior
from inference.target import Target
from zoo.data import Sequences
from zoo.hmm_simplex import LogRatioToSimplex

E_SHAPE = {"gaussian": (2,), "categorical": (), "poisson": (), "bernoulli": (4,)}
TRUTH = {  # two well separated, sticky states
    "initial": torch.tensor([0.7, 0.3], dtype=torch.float64),
    "transition": torch.tensor([[0.9, 0.1], [0.2, 0.8]], dtype=torch.float64),
    "locs": torch.tensor([[-2.0], [2.0]], dtype=torch.float64),
    "scales": torch.tensor([[0.7], [1.0]], dtype=torch.float64),
}


def random_params(emission, S=3, seed=0, V=4, D=2):
    g = np.random.default_rng(seed)
    p = {"initial": g.dirichlet(np.ones(S)), "transition": g.dirichlet(np.ones(S), size=S)}
    if emission == "gaussian":
        p.update(locs=g.normal(0, 2, (S, D)), scales=g.uniform(0.5, 2.0, (S, D)))
    elif emission == "categorical":
        p.update(emission_probs=g.dirichlet(np.ones(V), size=S))
    elif emission == "poisson":
        p.update(rates=g.uniform(0.5, 10.0, S))
    else:
        p.update(emission_probs=g.uniform(0.05, 0.95, (S, V)))
    return {k: torch.tensor(v) for k, v in p.items()}


def ragged(emission, params, lengths, seed=1):
    """A ragged batch drawn from the model, padding filled with junk (NaN where allowed)."""
    m = zoo.get("hmm", n_states=len(params["initial"]), emission=emission)
    seqs, _ = m.simulate(max(lengths), seed=seed, params=params, n_sequences=len(lengths))
    values = seqs.values.clone().double()
    for b, L in enumerate(lengths):
        values[b, L:] = float("nan")
    return m, Sequences(values, torch.tensor(lengths))


def numpy_forward(log_pi, log_A, log_e):
    """The textbook forward recursion, one step at a time: log p(x) for log_e (T, S)."""
    alpha = log_pi + log_e[0]
    for t in range(1, len(log_e)):
        alpha = logsumexp(alpha[:, None] + log_A, axis=0) + log_e[t]
    return logsumexp(alpha)


def log_joint(emission, p, z, x):
    """log p(x, z) of one path z (T,) for observations x (T, features), with scipy."""
    if emission == "gaussian":
        log_e = stats.norm(p["locs"].numpy()[z], p["scales"].numpy()[z]).logpdf(x).sum(-1)
    elif emission == "categorical":
        log_e = np.log(p["emission_probs"].numpy()[z, x[:, 0]])
    else:
        log_e = stats.poisson(p["rates"].numpy()[z]).logpmf(x[:, 0])
    log_a = np.log(p["transition"].numpy()[z[:-1], z[1:]])
    return np.log(p["initial"].numpy()[z[0]]) + log_e.sum() + log_a.sum()


def hmmlearn_model(emission, p):
    S = len(p["initial"])
    if emission == "gaussian":
        h = hl.GaussianHMM(S, covariance_type="diag", init_params="", params="")
        h.means_, h.covars_ = p["locs"].numpy(), p["scales"].numpy() ** 2
    elif emission == "categorical":
        h = hl.CategoricalHMM(S, n_features=p["emission_probs"].shape[1], init_params="", params="")
        h.emissionprob_ = p["emission_probs"].numpy()
    else:
        h = hl.PoissonHMM(S, init_params="", params="")
        h.lambdas_ = p["rates"].numpy()[:, None]
    h.startprob_, h.transmat_ = p["initial"].numpy(), p["transition"].numpy()
    return h


def concatenated(seqs):
    """hmmlearn's layout: observed steps stacked (N, features) plus lengths."""
    x = seqs.values[seqs.mask].numpy()
    return x.reshape(len(x), -1), seqs.lengths.tolist()


# --- oracles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("emission", ["gaussian", "categorical", "poisson"])
def test_forward_viterbi_and_smoothing_equal_hmmlearn(emission):
    """score, decode (path and log-probability) and predict_proba at the same parameters, ragged batch."""
    p = random_params(emission, seed=2)
    m, seqs = ragged(emission, p, [60, 35, 1, 47])
    seqs = m.validate(seqs)
    h = hmmlearn_model(emission, p)
    x, lengths = concatenated(seqs)
    if emission != "gaussian":
        x = x.astype(np.int64)
    ours = m.log_likelihood(seqs, p)
    theirs = [h.score(xb) for xb in np.split(x, np.cumsum(lengths)[:-1])]
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=0, atol=1e-6)
    assert float(ours.sum()) == pytest.approx(h.score(x, lengths), abs=1e-6)

    path, log_prob = m.decode(seqs, p)
    for b, xb in enumerate(np.split(x, np.cumsum(lengths)[:-1])):
        lp, hp = h.decode(xb, algorithm="viterbi")
        assert float(log_prob[b]) == pytest.approx(lp, abs=1e-6)
        ours = path[b, :lengths[b]].numpy()
        assert log_joint(emission, p, ours, xb) == pytest.approx(lp, abs=1e-6)
        if emission == "gaussian":  # discrete symbols can make two paths exactly equally likely
            assert ours.tolist() == hp.tolist()
        assert (path[b, lengths[b]:] == -1).all()

    marginals = m.smooth(seqs, p)
    np.testing.assert_allclose(marginals[seqs.mask].numpy(), h.predict_proba(x, lengths), rtol=0, atol=1e-6)
    assert (marginals[~seqs.mask] == 0).all()
    for b, xb in enumerate(np.split(x, np.cumsum(lengths)[:-1])):  # one full-length sequence at a time
        alone = seqs.values[b, :lengths[b]]
        assert float(m.log_likelihood(m.validate(alone), p)) == pytest.approx(h.score(xb), abs=1e-6)
        np.testing.assert_allclose(m.smooth(alone, p).numpy(), h.predict_proba(xb), rtol=0, atol=1e-6)


@pytest.mark.parametrize("emission", ["poisson", "bernoulli"])
def test_forward_equals_a_direct_numpy_forward(emission):
    p = random_params(emission, seed=3)
    m, seqs = ragged(emission, p, [80, 23])
    seqs = m.validate(seqs)
    log_pi, log_A = np.log(p["initial"].numpy()), np.log(p["transition"].numpy())
    for b, L in enumerate(seqs.lengths.tolist()):
        x = seqs.values[b, :L].numpy()
        if emission == "poisson":
            log_e = stats.poisson(p["rates"].numpy()).logpmf(x[:, None])
        else:
            log_e = stats.bernoulli(p["emission_probs"].numpy()).logpmf(x[:, None, :]).sum(-1)
        expected = numpy_forward(log_pi, log_A, log_e)
        assert float(m.log_likelihood(seqs, p)[b]) == pytest.approx(expected, abs=1e-8)


def test_initial_is_the_state_of_the_first_observation():
    """Textbook convention: p(x_0) = sum_s initial[s] e_0(s). Pyro's DiscreteHMM reads its initial
    distribution one step earlier: DiscreteHMM(log pi) is our HMM with initial pi @ transition."""
    p = random_params("gaussian", S=3, seed=4)
    m = zoo.get("hmm", n_states=3)
    x, _ = m.simulate(50, seed=5, params=p)
    seqs = m.validate(x)
    first = dist.Normal(p["locs"], p["scales"]).log_prob(x[0]).sum(-1)              # (S,)
    one_step = m.log_likelihood(m.validate(x[:1]), p)
    assert float(one_step) == pytest.approx(float(torch.logsumexp(p["initial"].log() + first, 0)), abs=1e-12)

    pyro_hmm = dist.DiscreteHMM(p["initial"].log(), p["transition"].log(),
                                dist.Normal(p["locs"], p["scales"]).to_event(1))
    shifted = {**p, "initial": p["initial"] @ p["transition"]}
    assert float(pyro_hmm.log_prob(x)) == pytest.approx(float(m.log_likelihood(seqs, shifted)), abs=1e-8)
    assert abs(float(pyro_hmm.log_prob(x)) - float(m.log_likelihood(seqs, p))) > 1e-3
    assert float(m.log_likelihood(seqs, p)) == pytest.approx(hmmlearn_model("gaussian", p).score(x.numpy()), abs=1e-8)


def log_prior(emission, p, seqs, fixed=False):
    """The model's prior density, written with scipy (``fixed``: prior="fixed", centre 0, spread 1, mean 1)."""
    lp = stats.dirichlet(np.ones(len(p["initial"]))).logpdf(p["initial"].numpy())
    lp += sum(stats.dirichlet(np.ones(len(row))).logpdf(row) for row in p["transition"].numpy())
    x = seqs.values[seqs.mask].numpy()
    if emission == "gaussian":
        center, spread = (0.0, 1.0) if fixed else (x.mean(0), x.std(0, ddof=1))
        lp += stats.norm(center, 2 * spread).logpdf(p["locs"].numpy()).sum()
        lp += stats.lognorm(s=1.0, scale=spread / 2).logpdf(p["scales"].numpy()).sum()
    elif emission == "categorical":
        lp += sum(stats.dirichlet(np.ones(len(row))).logpdf(row) for row in p["emission_probs"].numpy())
    elif emission == "poisson":
        lp += stats.lognorm(s=1.5, scale=1.0 if fixed else x.mean()).logpdf(p["rates"].numpy()).sum()
    else:
        lp += stats.beta(1, 1).logpdf(p["emission_probs"].numpy()).sum()
    return lp


@pytest.fixture
def float64():
    """Integer data (symbols) leave the priors in torch's default dtype: make it float64 here."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("emission", ["gaussian", "categorical", "poisson", "bernoulli"])
def test_traceenum_loss_with_delta_guide_is_minus_log_prior_minus_forward(emission, float64):
    """TraceEnum_ELBO on the enumerated model (states_t summed out by Pyro) and Trace_ELBO on the
    marginal model (the forward algorithm) both equal -(log prior + sum_b log p(x_b)) at a point."""
    p = random_params(emission, S=2, seed=6)
    m, seqs = ragged(emission, p, [7, 4, 6])
    seqs = m.validate(seqs)

    def delta_guide(data):
        pyro.sample("initial", dist.Delta(p["initial"], event_dim=1))
        with pyro.plate("states", 2, dim=-1):
            for name in m.global_sites[1:]:
                pyro.sample(name, dist.Delta(p[name], event_dim=0 if name == "rates" else 1))

    expected = -(log_prior(emission, p, seqs) + float(m.log_likelihood(seqs, p).sum()))
    enumerated = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1).loss(m.model, delta_guide, seqs)
    marginal = pyro.infer.Trace_ELBO(max_plate_nesting=1).loss(m.marginal_model, delta_guide, seqs)
    assert enumerated == pytest.approx(expected, rel=1e-9)
    assert marginal == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("emission", ["gaussian", "poisson"])
def test_fixed_prior_is_the_simulation_prior_whatever_the_data(emission):
    """prior="fixed": the log prior of the same parameters under two data sets is the scipy density with
    centre 0, spread 1 and mean count 1 (what simulate draws from), so SBC's check accepts the model;
    prior="data" (empirical Bayes) is refused by that check."""
    from inference.checks.sbc import check_inputs

    p = random_params(emission, S=2, seed=6, D=1)
    m = zoo.get("hmm", n_states=2, emission=emission, prior="fixed")
    for seed in (1, 2):
        seqs = m.validate(ragged(emission, p, [7, 4], seed=seed)[1])
        trace = pyro.poutine.trace(pyro.poutine.condition(m.marginal_model, data=p)).get_trace(seqs)
        lp = sum(float(trace.nodes[k]["fn"].log_prob(trace.nodes[k]["value"]).sum()) for k in m.global_sites)
        assert lp == pytest.approx(log_prior(emission, p, seqs, fixed=True), rel=1e-12)
        assert lp != pytest.approx(log_prior(emission, p, seqs), rel=1e-3)   # the data are not standardized
    check_inputs(m, num_observations=30, seed=0)
    with pytest.raises(ValueError, match="prior of 'hmm' depends on the data"):
        check_inputs(zoo.get("hmm", n_states=2, emission=emission), num_observations=30, seed=0)


class OwnGuide(torch.nn.Module):
    """A zoo model's guide as a module, so that fit_svi finds its parameters when the model is passed
    as a plain callable (a bound method is not a module)."""

    def __init__(self, zoo_model):
        super().__init__()
        self.zoo_model = zoo_model

    def forward(self, data):
        return self.zoo_model.guide(data)


def test_svi_on_the_enumerated_model_follows_svi_on_the_forward_algorithm():
    """fit_svi(m.model, guide=m's guide): a plain callable, fitted with TraceEnum_ELBO (states_t summed
    out by Pyro), takes the same steps as fit_svi(m), which fits marginal_model (svi_marginal) with
    Trace_ELBO: same seed, same guide draws, equal losses, so equal gradients and iterates."""
    p = random_params("gaussian", S=2, seed=13)
    _, seqs = ragged("gaussian", p, [15, 9])
    settings = dict(num_steps=6, num_samples=3, lr=0.05, seed=4, progress=False)
    forward = inference.fit_svi(zoo.get("hmm", n_states=2), seqs, **settings)
    explicit = zoo.get("hmm", n_states=2)
    enumerated = inference.fit_svi(explicit.model, explicit.validate(seqs), guide=OwnGuide(explicit), **settings)
    assert (forward.settings["elbo"], enumerated.settings["elbo"]) == ("Trace_ELBO", "TraceEnum_ELBO")
    np.testing.assert_allclose(enumerated.losses, forward.losses, rtol=1e-9)


def test_log_likelihood_batches_over_draws_and_ignores_padding():
    m = zoo.get("hmm", n_states=3, emission="categorical")
    draws = [random_params("categorical", seed=s) for s in range(6)]
    batched = {k: torch.stack([d[k] for d in draws]).reshape(2, 3, *draws[0][k].shape) for k in draws[0]}
    _, seqs = ragged("categorical", draws[0], [30, 12])
    seqs = m.validate(seqs)
    out = m.log_likelihood(seqs, batched)
    assert out.shape == (2, 3, 2)
    for i, d in enumerate(draws):
        np.testing.assert_allclose(out.reshape(6, 2)[i].numpy(), m.log_likelihood(seqs, d).numpy(), atol=1e-10)
    alone = m.log_likelihood(m.validate(seqs.values[1, :12]), draws[0])
    assert float(out[0, 0, 1]) == pytest.approx(float(alone), abs=1e-10)


def test_nuts_closed_form_keeps_float32_data_in_float32():
    """Bernoulli keys in float32: the closed form is checked against the float32 Pyro model and the
    draws come back in the model's dtype."""
    m = zoo.get("hmm", n_states=2, emission="bernoulli")
    seqs, _ = m.simulate(40, seed=0, params=random_params("bernoulli", S=2, seed=3), n_sequences=2)
    x = Sequences(seqs.values.float(), seqs.lengths)
    post = inference.run_nuts(m, x, num_samples=20, warmup_steps=20, num_chains=1, progress=False)
    assert post.settings["potential"] == "closed form"
    assert post.samples["emission_probs"].dtype == torch.float32
    assert torch.isfinite(post.log_likelihood_of(x)).all()


@pytest.mark.parametrize("emission", ["gaussian", "categorical", "poisson", "bernoulli"])
def test_closed_form_log_density_equals_pyro_log_joint_and_autograd(emission):
    """log_density (numpy, forward-backward gradient) equals the Pyro log joint of marginal_model plus
    the log Jacobians of its transforms at random unconstrained points, and its gradient equals
    autograd's through Pyro, Dirichlet and transform code."""
    p = random_params(emission, S=3, seed=2)
    m, seqs = ragged(emission, p, [12, 5, 9])
    seqs = m.validate(seqs)
    transforms, fn = m.log_density(seqs)
    assert set(transforms) == set(m.global_sites)
    g = np.random.default_rng(0)
    for _ in range(3):
        u = {k: torch.tensor(g.normal(0, 1.5, t.inv(p[k]).shape), requires_grad=True) for k, t in transforms.items()}
        values = {k: transforms[k](v) for k, v in u.items()}
        trace = pyro.poutine.trace(pyro.poutine.condition(m.marginal_model, data=values)).get_trace(seqs)
        expected = trace.log_prob_sum() + sum(transforms[k].log_abs_det_jacobian(u[k], values[k]).sum() for k in u)
        grads = dict(zip(u, torch.autograd.grad(expected, list(u.values()))))
        value, grad = fn({k: v.detach().numpy() for k, v in u.items()})
        assert value == pytest.approx(float(expected.detach()), rel=1e-12)
        for k in u:
            np.testing.assert_allclose(grad[k], grads[k].numpy(), rtol=1e-8, atol=1e-9)


def test_log_ratio_transform_is_a_bijection_with_its_jacobian():
    t = LogRatioToSimplex()
    u = torch.randn(5, 3, dtype=torch.float64)
    y = t(u)
    assert torch.allclose(y.sum(-1), torch.ones(5, dtype=torch.float64)) and (y > 0).all()
    assert torch.allclose(t.inv(y), u)
    for row in range(5):   # |det| of the map to the first K-1 coordinates (the last is 1 - their sum)
        jac = torch.autograd.functional.jacobian(lambda v: t(v)[:-1], u[row])
        assert float(t.log_abs_det_jacobian(u[row], y[row])) == pytest.approx(float(torch.linalg.slogdet(jac)[1]))


def test_generic_marginal_log_likelihood_equals_forward():
    """inference's model-agnostic contraction (enumerated states_t) agrees with the forward algorithm."""
    p = random_params("poisson", S=2, seed=7)
    m, seqs = ragged("poisson", p, [9, 5])
    seqs = m.validate(seqs)
    plain = Target(m.model)  # seen as a plain callable: no zoo protocol used
    generic = plain.log_likelihood(seqs, {k: v.unsqueeze(0) for k, v in p.items()})
    assert list(generic) == ["obs_0+...+obs_8"]   # the steps, coupled by the states: one value per sequence
    np.testing.assert_allclose(generic["obs_0+...+obs_8"][0].numpy(), m.log_likelihood(seqs, p).numpy(), atol=1e-9)


# --- Baum-Welch ------------------------------------------------------------------------------


@pytest.mark.parametrize("emission", ["gaussian", "categorical", "poisson"])
def test_em_iterates_equal_hmmlearn(emission):
    """Same start, five Baum-Welch iterations, maximum likelihood (hmmlearn's priors switched off)."""
    start = random_params(emission, S=2, seed=8)
    m, seqs = ragged(emission, random_params(emission, S=2, seed=9), [120, 70])
    seqs = m.validate(seqs)
    ours = m.em(seqs, init=start, max_iter=5, tol=None, progress=False)
    h = hmmlearn_model(emission, start)
    h.n_iter, h.tol, h.params = 5, -np.inf, {"gaussian": "stmc", "categorical": "ste", "poisson": "stl"}[emission]
    if emission == "gaussian":
        h.means_prior, h.means_weight, h.covars_prior, h.covars_weight = 0.0, 0.0, 0.0, 1.0
    x, lengths = concatenated(seqs)
    h.fit(x if emission == "gaussian" else x.astype(np.int64), lengths)
    np.testing.assert_allclose(ours["initial"].numpy(), h.startprob_, atol=1e-8)
    np.testing.assert_allclose(ours["transition"].numpy(), h.transmat_, atol=1e-8)
    if emission == "gaussian":
        np.testing.assert_allclose(ours["locs"].numpy(), h.means_, atol=1e-8)
        np.testing.assert_allclose(ours["scales"].numpy() ** 2, h._covars_, atol=1e-8)
    elif emission == "categorical":
        np.testing.assert_allclose(ours["emission_probs"].numpy(), h.emissionprob_, atol=1e-8)
    else:
        np.testing.assert_allclose(ours["rates"].numpy(), h.lambdas_[:, 0], atol=1e-8)


def test_em_increases_the_likelihood_and_recovers_bernoulli_truth():
    p = random_params("bernoulli", S=2, seed=10, V=6)
    p["transition"] = torch.tensor([[0.9, 0.1], [0.15, 0.85]], dtype=torch.float64)
    m, seqs = ragged("bernoulli", p, [400, 300, 350])
    seqs = m.validate(seqs)
    fits = [m.em(seqs, seed=0, max_iter=k, tol=None, progress=False) for k in (1, 3, 10, 60)]
    ll = [float(m.log_likelihood(seqs, f).sum()) for f in fits]
    assert all(b >= a - 1e-9 for a, b in zip(ll, ll[1:])), ll
    fit = m.align({k: v[None, None] for k, v in fits[-1].items()}, reference={k: v[None, None] for k, v in p.items()})
    # 1050 steps, ~500 per state: Bernoulli frequencies have sd <= sqrt(0.25 / 500) = 0.022; 5 sd
    assert torch.allclose(fit["emission_probs"][0, 0], p["emission_probs"], atol=0.11)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("emission, data, message", [
    ("poisson", [1, 2, -1, 3], "non-negative integers"),
    ("poisson", [1, 2.5, 3], "non-negative integers"),
    ("categorical", [0, 1, -2], "integers 0..V-1"),
    ("bernoulli", [[0, 1], [1, 0.5]], "must be 0 or 1"),
    ("gaussian", [1.0, float("nan"), 2.0], "NaN within a sequence .*at sequence 0, step 1"),
    ("gaussian", [1.0, float("inf")], "inf"),
    ("gaussian", np.zeros((0, 2)), "empty"),
    ("gaussian", np.zeros((3, 2, 2)), "expected one sequence"),
    ("gaussian", [["a"], ["b"]], "numeric"),
])
def test_validate_rejects_bad_values(emission, data, message):
    with pytest.raises((ValueError, TypeError), match=message):
        zoo.get("hmm", n_states=2, emission=emission).validate(data)


def test_validate_rejects_out_of_vocabulary_and_bad_lengths():
    cat = zoo.get("hmm", n_states=2, emission="categorical", n_symbols=3)
    with pytest.raises(ValueError, match=r"outside the vocabulary 0..2 \(n_symbols=3\); got 3 at sequence 0, step 2"):
        cat.validate([0, 2, 3, 1])
    values = torch.zeros(2, 5)
    for lengths, message in [([5, 6], "longer than the padded length T=5"), ([5, 0], "sequence 1 is empty"),
                             ([5], "one length per sequence"), ([2.5, 3], "integers")]:
        with pytest.raises(ValueError, match=message):
            cat.validate(Sequences(values, torch.tensor(lengths)))
    with pytest.raises(ValueError, match="expected 3 keys"):
        zoo.get("hmm", emission="bernoulli", dim=3).validate(np.zeros((4, 2)))


@pytest.mark.parametrize("config, message", [
    ({"n_states": 0}, "n_states"),
    ({"n_states": 1.5}, "n_states"),
    ({"emission": "student"}, "emission: expected one of"),
    ({"prior": "flat"}, "prior: expected one of 'data', 'fixed'"),
    ({"n_components": 2}, "unknown configuration 'n_components'"),
])
def test_bad_config(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        zoo.get("hmm", **config)


def test_decode_wants_one_parameter_set():
    m = zoo.get("hmm", n_states=2)
    x, _ = m.simulate(10, params=TRUTH)
    with pytest.raises(ValueError, match="one parameter set"):
        m.decode(x, {k: v.expand(3, *v.shape) for k, v in TRUTH.items()})


# --- simulation, enumeration, recovery, alignment ---------------------------------------------


def test_simulate_is_reproducible_and_follows_the_chain():
    m = zoo.get("hmm", n_states=2)
    (x1, t1), (x2, _) = m.simulate(4000, seed=3, params=TRUTH), m.simulate(4000, seed=3, params=TRUTH)
    assert torch.equal(x1, x2) and x1.shape == (4000, 1)
    z = t1["states"]
    for i in range(2):
        stay = (z[1:][z[:-1] == i] == i).double()
        # a proportion from >= 1000 transitions: sd <= sqrt(0.25 / 1000) = 0.016; 4 sd
        assert abs(float(stay.mean()) - float(TRUTH["transition"][i, i])) < 0.064
        xs = x1[z == i, 0]
        assert abs(float(xs.mean()) - float(TRUTH["locs"][i, 0])) < 4 * float(TRUTH["scales"][i, 0]) / len(xs) ** 0.5
    first = torch.stack([m.simulate(1, seed=s, params=TRUTH)[1]["states"][0] for s in range(400)]).double()
    assert abs(float(first.mean()) - 0.3) < 4 * (0.21 / 400) ** 0.5   # initial[1] = 0.3: state of step 0
    seqs, truth = m.simulate(20, seed=1, params=TRUTH, n_sequences=3)
    assert seqs.values.shape == (3, 20, 1) and truth["states"].shape == (3, 20)


def test_generative_story_runs_without_data():
    m = zoo.get("hmm", n_states=3, emission="categorical", n_symbols=5)
    trace = pyro.poutine.trace(pyro.poutine.seed(m.model, rng_seed=0)).get_trace(None, n=12)
    assert trace.nodes["obs_11"]["value"].shape == (1,) and trace.nodes["states_0"]["value"].shape == (1,)
    assert trace.nodes["emission_probs"]["value"].shape == (3, 5)
    with pytest.raises(ValueError, match="n_symbols"):
        zoo.get("hmm", emission="categorical").simulate(5)


def test_infer_discrete_draws_follow_forward_backward():
    """State paths from infer_discrete (inference.discrete_draws on the enumerated model) have the
    forward-backward marginals as frequencies, and at temperature 0 they are the Viterbi path. One
    call draws K independent paths: the sequence is repeated K times as a batch."""
    m = zoo.get("hmm", n_states=2)
    T, K = 12, 2000
    weak = {**TRUTH, "locs": torch.tensor([[-0.6], [0.6]], dtype=torch.float64)}   # overlapping states
    x, _ = m.simulate(T, seed=2, params=weak)
    copies = m.validate(Sequences(x.expand(K, T, 1), None))
    post = Posterior(Target(m), copies, {k: v[None, None] for k, v in weak.items()}, method="fixed", wall_time=0.0)
    draws = inference.discrete_draws(post, progress=False)
    freq = (torch.stack([draws[f"states_{t}"][0, 0] for t in range(T)], -1) == 1).double().mean(0)   # (T,)
    marginal = m.smooth(x, weak)[:, 1]
    assert ((marginal > 0.1) & (marginal < 0.9)).sum() >= 3  # the premise: several steps are uncertain
    # 2000 paths: sd <= sqrt(0.25 / 2000) = 0.0112 per step; 12 steps, Bonferroni at 5%: 2.87 sd
    assert (freq - marginal).abs().max() < 2.87 * 0.0112, (freq, marginal)
    mode = inference.discrete_draws(post, temperature=0, progress=False)
    assert [int(mode[f"states_{t}"][0, 0, 0]) for t in range(T)] == m.decode(x, weak)[0].tolist()


@pytest.fixture(scope="module")
def recovery():
    m = zoo.get("hmm", n_states=2)
    x, truth = m.simulate(100, seed=11, params=TRUTH)
    post = inference.run_nuts(m, x, num_samples=300, warmup_steps=200, num_chains=2, seed=1, progress=False)
    return m, x, truth, post


def test_nuts_recovers_truth(recovery):
    """Every true parameter inside its Bonferroni-adjusted 95% interval after alignment (as for the GMM:
    the union bound keeps the joint level whatever the correlations; intervals mean +- z sd)."""
    m, x, truth, post = recovery
    z = torch.cat([((post.flat(k).mean(0) - truth[k]) / post.flat(k).std(0)).flatten() for k in m.global_sites])
    z = z[torch.isfinite(z)].abs()
    assert len(z) == 10
    assert z.max() < stats.norm.ppf(1 - 0.05 / (2 * len(z))), z
    assert inference.diagnose(post).divergences == 0


def test_nuts_state_posterior_from_draws(recovery):
    """States recovered from NUTS draws (infer_discrete on 4 thinned draws) find the true path."""
    m, x, truth, post = recovery
    keep = {k: v[:, ::150] for k, v in post.samples.items()}                    # (2, 2, ...)
    draws = inference.discrete_draws(Posterior(post.target, post.data, keep, method="nuts", wall_time=0.0),
                                     progress=False)
    states = torch.stack([draws[f"states_{t}"].reshape(2, 2) for t in range(100)], -1)  # (chain, draw, T)
    swapped = m.align(keep)["locs"][..., 0, 0] != keep["locs"][..., 0, 0]        # draws whose labels align() swaps
    states = torch.where(swapped[..., None], 1 - states, states)
    # separation 4 / 0.85 sd: a few steps near the boundary are ambiguous; 95% must be right
    assert (states == truth["states"]).double().mean() > 0.95


def test_align_undoes_every_permutation():
    m = zoo.get("hmm", n_states=3)
    p = random_params("gaussian", S=3, seed=12, D=1)
    p["locs"] = torch.tensor([[-3.0], [0.0], [3.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    draws = {k: v.expand(2, 30, *v.shape).clone() for k, v in p.items()}
    draws["locs"] += 0.05 * torch.randn(draws["locs"].shape, generator=g, dtype=torch.float64)
    perms = list(itertools.permutations(range(3)))
    for c, i in itertools.product(range(2), range(30)):
        q = torch.tensor(perms[(i + c) % 6])
        for k in draws:
            draws[k][c, i] = draws[k][c, i][q] if k != "transition" else draws[k][c, i][q][:, q]
    aligned = m.align(draws)
    for k in p:  # the truth's states are already ordered by locs
        assert torch.allclose(aligned[k].mean((0, 1)), p[k], atol=0.05), k
    order = torch.tensor([2, 0, 1])
    shuffled = {k: v[..., order, :] if k in ("locs", "scales") else v[..., order] if k == "initial"
                else v[..., order, :][..., order] for k, v in aligned.items()}
    again = m.align(draws, reference=shuffled)
    for k in p:
        assert torch.allclose(again[k].mean((0, 1)), shuffled[k].mean((0, 1)), atol=1e-12), k


# --- data ------------------------------------------------------------------------------------


def test_goog_returns_are_bundled():
    from zoo import datasets

    ds = datasets.load("goog-returns")
    assert ds.data.shape == (1046, 1) and len(ds.meta["dates"]) == 1046
    assert float(ds.data[0, 0]) == pytest.approx(100 * np.log(108.31 / 100.34), rel=1e-5)


def test_jsb_chorales_from_data_dir(shared_data_dir):
    from zoo import datasets

    ds = datasets.load("jsb-chorales", data_dir=shared_data_dir)
    # README: 229 / 76 / 77 sequences, 13807 / 4602 / 4725 steps, 51 keys used in training
    assert ds.data.values.shape == (229, 129, 51) and int(ds.data.lengths.sum()) == 13807
    assert ds.splits["valid"].values.shape == (76, 144, 51) and int(ds.splits["valid"].lengths.sum()) == 4602
    assert ds.splits["test"].values.shape == (77, 160, 51) and int(ds.splits["test"].lengths.sum()) == 4725
    assert len(ds.feature_names) == 51 and ds.feature_names[0] == "midi_43"
    m = zoo.get("hmm", n_states=2, emission="bernoulli")
    seqs = m.validate(ds.data)
    assert m.validate(seqs).num_observations == 13807
    assert (seqs.values.sum(-1) <= 4).all()  # four voices


def test_jsb_chorales_corrupt_file_is_detected(shared_data_dir, tmp_path):
    from zoo import datasets

    (tmp_path / "jsb_chorales").mkdir()
    text = (shared_data_dir / "jsb_chorales" / "jsb_chorales.json").read_text()
    (tmp_path / "jsb_chorales" / "jsb_chorales.json").write_text(text.replace("60", "61", 1))
    with pytest.raises(ValueError, match="corrupt"):
        datasets.load("jsb-chorales", data_dir=tmp_path)


# --- the command line --------------------------------------------------------------------------

TINY = ["--steps", "30", "--samples", "20", "--warmup", "20", "--chains", "2", "--quiet"]


@pytest.fixture(scope="module")
def series_csv(tmp_path_factory):
    import pandas as pd

    x, _ = zoo.get("hmm", n_states=2).simulate(60, seed=0, params=TRUTH)
    path = tmp_path_factory.mktemp("hmm") / "series.csv"
    pd.DataFrame({"y": x[:, 0].numpy()}).to_csv(path, index=False)
    return path


def test_cli_compare_writes_a_report_with_the_state_path(series_csv, tmp_path):
    import arviz as az

    from zoo.cli import main

    out = tmp_path / "report"
    assert main(["compare", "hmm", "--data", str(series_csv), "--states", "2", "--out", str(out), *TINY]) == 0
    assert {"states.png", "posterior_svi.nc", "posterior_nuts.nc", "comparison.csv", "summary.md", "trace.png",
            "loss.png"} <= {p.name for p in out.iterdir()}
    idata = az.from_netcdf(out / "posterior_nuts.nc")
    assert idata.log_likelihood["obs"].shape == (2, 20, 1)          # one value per sequence
    replicated = idata.posterior_predictive["obs"].values           # (chain, draw, sequence, time, feature)
    assert replicated.shape[2:] == (1, 60, 1)
    assert not np.allclose(replicated[0, 0, 0], idata.observed_data["obs"].values[0])


def test_cli_fit_em_and_user_mistakes(series_csv, tmp_path, capsys):
    from zoo.cli import main

    assert main(["fit", "hmm", "--method", "em", "--data", str(series_csv), "--out", str(tmp_path / "em"),
                 "--quiet"]) == 0
    assert "posterior_em.nc" in {p.name for p in (tmp_path / "em").iterdir()}
    bad = tmp_path / "counts.csv"
    bad.write_text("count\n1\n4\n-2\n3\n")
    for args, message in [(["--emission", "poisson", "--data", str(bad)], "non-negative integers"),
                          (["--states", "0", "--data", str(series_csv)], "n_states"),
                          (["--emission", "student", "--data", str(series_csv)], "emission: expected one of")]:
        capsys.readouterr()
        assert main(["fit", "hmm", *args, "--out", str(tmp_path / "r"), *TINY]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
        assert not (tmp_path / "r").exists()


def test_cli_jsb_reports_held_out_likelihood_per_time_step(shared_data_dir, tmp_path, capsys):
    import pandas as pd

    from zoo.cli import main

    out = tmp_path / "jsb"
    assert main(["fit", "hmm", "--data", "jsb-chorales", "--data-dir", str(shared_data_dir), "--emission",
                 "bernoulli", "--states", "3", "--steps", "5", "--samples", "4", "--out", str(out), "--quiet"]) == 0
    table = pd.read_csv(out / "heldout.csv", index_col="split")
    assert table.loc["test", "observations"] == 4725 and table.loc["valid", "observations"] == 4602
    # 51 keys: a fair coin per key costs 51 log 2 = 35.4 nats per step; the fit is far better
    assert 0 < table.loc["test", "nll_per_observation"] < 51 * np.log(2)
    assert "held-out" in capsys.readouterr().out
