"""inference.sampling.discrete and .hmc_within_gibbs, the discrete moves of HMC-within-Gibbs, against closed forms: how
sites are classified, the conditional tables (scipy by hand), coupled elements and models that do not
broadcast as enumeration needs (the reference steps in), exact draws and Metropolis-Hastings whose
stationary law is known, on plates of many independent elements (one update moves them all)."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from inference.sampling import discrete, hmc_within_gibbs
from inference.tracing import Mismatch

pytestmark = pytest.mark.usefixtures("one_thread")


def sites_of(model, *args):
    trace = pyro.poutine.trace(pyro.poutine.seed(model, rng_seed=0)).get_trace(*args)
    return discrete.discrete_sites(trace)


def test_each_kind_of_discrete_site_is_classified():
    def model():
        pyro.sample("coin", dist.Bernoulli(0.5))
        pyro.sample("label", dist.Categorical(torch.ones(5)))
        pyro.sample("marked", dist.Categorical(torch.ones(5)), infer={"enumerate": "parallel"})
        pyro.sample("count", dist.Poisson(3.0))
        pyro.sample("failures", dist.Geometric(0.3))
        pyro.sample("overdispersed", dist.NegativeBinomial(5.0, 0.5))
        pyro.sample("small_binomial", dist.Binomial(10, 0.5))
        pyro.sample("large_binomial", dist.Binomial(5000, 0.5))
        pyro.sample("many_labels", dist.Categorical(torch.ones(discrete.MAX_EXACT + 1)))
        pyro.sample("one_hot", dist.OneHotCategorical(torch.ones(3)))
        pyro.sample("counts", dist.Poisson(torch.ones(4)).to_event(1))
        pyro.sample("multinomial", dist.Multinomial(10, torch.ones(3)))
        pyro.sample("rate", dist.Gamma(2.0, 1.0))

    assert sites_of(model) == {
        "coin": "exact", "label": "exact", "marked": "enumerated", "count": "metropolis", "failures": "metropolis",
        "overdispersed": "metropolis", "small_binomial": "exact", "large_binomial": "metropolis",
        "many_labels": "metropolis", "one_hot": "exact", "counts": "metropolis", "multinomial": "impossible"}
    with pytest.raises(ValueError, match=r"\['multinomial'\].*neither enumerated nor updated"):
        discrete.refuse_impossible(sites_of(model))


def nmix(y):
    """Royle's N-mixture: N_i ~ Poisson(lam), y_it ~ Binomial(N_i, p)."""
    lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("sites", y.shape[0], dim=-2):
        N = pyro.sample("N", dist.Poisson(lam))
        with pyro.plate("visits", y.shape[1], dim=-1):
            pyro.sample("y", dist.Binomial(N, p), obs=y)


def coupled(y, total=lambda N: N.sum(-1)):
    """Counts in a plate and a term outside it that depends on all of them: not independent given the rest."""
    lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
    with pyro.plate("sites", len(y)):
        N = pyro.sample("N", dist.Poisson(lam))
        pyro.sample("y", dist.Binomial(N, 0.5), obs=y)
    pyro.sample("total", dist.Normal(total(N), 2.0), obs=torch.tensor(float(2 * y.sum())))


def moves_for(model, data, values):
    return hmc_within_gibbs.Moves(model, data, ("N",), values, max_plate_nesting=2)


def test_the_conditional_table_is_the_markov_blanket_by_hand():
    y = torch.tensor([[3.0, 1.0], [0.0, 2.0], [5.0, 4.0]])
    lam, p = torch.tensor(4.0), torch.tensor(0.6)
    N = torch.tensor([[6.0], [2.0], [5.0]])
    moves = moves_for(nmix, y, {"lam": lam, "p": p, "N": N})
    site = moves.sites[0]
    assert site.kind == "metropolis" and site.separable and site.plates == (0,)
    candidates = torch.stack([N, N + 1, N + torch.tensor([[0.0], [7.0], [-1.0]])])   # (3, 3, 1)
    group = next(site.groups())
    assert group == (slice(None), 0)
    table = moves.conditionals.table(site, {"N": N}, {"lam": lam, "p": p}, candidates, group).numpy()  # (3, 3, 1)
    n = candidates.numpy()
    by_hand = stats.poisson(4.0).logpmf(n[..., 0]) + stats.binom(n, 0.6).logpmf(y.numpy()).sum(-1)
    finite = np.isfinite(by_hand)
    # up to a constant per element (terms that do not depend on N): compare differences to the first candidate
    np.testing.assert_allclose((table[..., 0] - table[:1, :, 0])[finite], (by_hand - by_hand[:1])[finite], rtol=1e-5)
    assert np.all(np.isneginf(table[..., 0][~finite]))   # N = 4 < y = 5: impossible


def joint_by_hand(n, y, lam=3.0):
    return (stats.poisson(lam).logpmf(n).sum() + stats.binom(n, 0.5).logpmf(y.numpy()).sum()
            + stats.norm(n.sum(), 2.0).logpdf(2 * y.numpy().sum()))


def reference_of(model, y):
    """The log joint by Pyro (no enumeration): what the moves' shortcut is checked against."""
    def reference(continuous, held):
        trace = pyro.poutine.trace(pyro.poutine.condition(model, data={**continuous, **held})).get_trace(y)
        return float(trace.log_prob_sum())
    return reference


@pytest.mark.parametrize("total, vectorized", [(lambda N: N.sum(-1, keepdim=True), True), (lambda N: N.sum(), False),
                                               (lambda N: N.sum(-1), False)],
                         ids=["broadcasts", "sums-every-dim", "wrong-dim"])
def test_elements_coupled_outside_their_plate_move_one_at_a_time(total, vectorized, caplog):
    """N.sum(-1, keepdim=True) broadcasts over the candidates' dimension as Pyro's enumeration needs: the
    shortcut finds the coupling and moves one element at a time. N.sum() also sums the candidates: the
    shortcut is wrong, the check against the log joint catches it at the start and the reference (the log
    joint at each value) takes over; N.sum(-1) puts them where no plate is: Pyro refuses, the same."""
    y = torch.tensor([2.0, 3.0, 1.0])
    N = torch.tensor([4.0, 6.0, 3.0])

    def model(y):
        return coupled(y, total)

    moves = hmc_within_gibbs.Moves(model, y, ("N",), {"lam": torch.tensor(3.0), "N": N}, max_plate_nesting=1,
                        reference=reference_of(model, y))
    site = moves.sites[0]
    assert not site.separable and list(site.groups()) == [(0,), (1,), (2,)]
    assert moves.conditionals.vectorized == vectorized
    assert ("one value at a time" in caplog.text) == (not vectorized)
    candidates = torch.stack([N, N + torch.tensor([0.0, 2.0, 0.0])])        # element 1 changes
    table = moves.conditionals.table(site, {"N": N}, {"lam": torch.tensor(3.0)}, candidates, (1,)).numpy()
    expected = joint_by_hand(candidates[1].numpy(), y) - joint_by_hand(N.numpy(), y)
    np.testing.assert_allclose(table[1, 1] - table[0, 1], expected, rtol=1e-5)


def bernoulli_plate(y):
    """z_i ~ Bernoulli(0.3), y_i ~ Normal(2 z_i, 1): z_i | y_i is Bernoulli(sigmoid(logit 0.3 + 2 y_i - 2))."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("points", len(y)):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("y", dist.Normal(mu + 2 * z, 1.0), obs=y)


def test_exact_draws_follow_the_conditional():
    """4000 independent elements drawn in one update; the fraction of ones among the elements of each of
    the two observed values is within 4 binomial standard deviations of the exact probability."""
    y = torch.cat([torch.zeros(2000), torch.full((2000,), 1.5)])
    z = torch.zeros(4000)
    moves = hmc_within_gibbs.Moves(bernoulli_plate, y, ("z",), {"mu": torch.tensor(0.0), "z": z}, max_plate_nesting=1)
    assert moves.kinds == {"z": "exact"}
    drawn, stats_ = moves.update({"mu": torch.tensor(0.0)}, {"z": z}, np.random.default_rng(0))
    assert stats_ == {}
    logit = np.log(0.3 / 0.7) + 2 * y.numpy() - 2
    prob = 1 / (1 + np.exp(-logit))
    for part in (slice(0, 2000), slice(2000, 4000)):
        frac, p = drawn["z"][part].mean().item(), prob[part][0]
        assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / 2000)


def test_metropolis_leaves_the_conditional_invariant():
    """With one visit, N_i - y_i | y_i, lam, p ~ Poisson(lam (1 - p)) exactly. 2000 independent elements
    started at y_i + 30 (far out) and moved by 200 updates (the scales adapted over the first 100) are, at
    the end, a sample of that law: the mean within 4 standard errors (sqrt(mean / 2000)) and the variance
    within 4 standard errors of its estimator (about sqrt(2 / 2000) relative, plus the Poisson excess
    kurtosis) of lam (1 - p)."""
    R, lam, p = 2000, 6.0, 0.5
    y = torch.full((R, 1), 2.0)
    N = y + 30
    values = {"lam": torch.tensor(lam), "p": torch.tensor(p)}
    moves = moves_for(nmix, y, {**values, "N": N})
    rng = np.random.default_rng(1)
    held, accepted = {"N": N}, []
    for i in range(200):
        held, info = moves.update(values, held, rng, adapt=i < 100)
        accepted.append(info["acceptance_rate_N"])
    extra = (held["N"] - y).numpy().ravel()
    target = lam * (1 - p)
    assert abs(extra.mean() - target) < 4 * np.sqrt(target / R)
    assert abs(extra.var() - target) < 4 * target * np.sqrt((2 + 1 / target) / R)
    assert 0.25 < np.mean(accepted[100:]) < 0.6   # adapted towards 0.44


def test_a_start_repairs_impossible_counts():
    y = torch.tensor([[3.0, 1.0], [0.0, 2.0], [9.0, 4.0]])
    values = {"lam": torch.tensor(2.0), "p": torch.tensor(0.5)}
    N = torch.zeros(3, 1)                                      # impossible: N < y
    moves = moves_for(nmix, y, {**values, "N": N})
    held, _ = moves.update(values, {"N": N}, np.random.default_rng(0), repair=True)
    assert torch.all(held["N"] >= y.max(1, keepdim=True).values)


def branching(y):
    """A branch read through numpy on a continuous value: a traced table keeps the branch it was traced in."""
    lam = pyro.sample("lam", dist.Gamma(2.0, 0.5))
    with pyro.plate("sites", len(y)):
        N = pyro.sample("N", dist.Poisson(lam))
        p = 0.8 if lam.detach().numpy() > 3 else 0.3
        pyro.sample("y", dist.Binomial(N, p), obs=y)


def test_a_traced_table_found_wrong_while_it_runs_steps_aside_and_says_so(caplog):
    """Tables traced into a graph at lam = 4 (the 0.8 branch) and checked at their first call; at lam = 2 the
    graph is wrong, which the check at the guard's 10th call catches: Mismatch (the chain runs again) and
    the next route, one trace per table, which is right (against scipy)."""
    y = torch.tensor([2.0, 0.0, 3.0])
    N = torch.tensor([4.0, 1.0, 5.0])
    moves = hmc_within_gibbs.Moves(branching, y, ("N",), {"lam": torch.tensor(4.0), "N": N}, max_plate_nesting=1,
                        reference=reference_of(branching, y), calls=10**6)
    assert moves.conditionals.guard.route == "graph"
    site, candidates = moves.sites[0], torch.stack([N, N + 1])
    moves.conditionals.table(site, {"N": N}, {"lam": torch.tensor(4.0)}, candidates, (slice(None),))
    with pytest.raises(Mismatch):
        for _ in range(10):
            moves.conditionals.table(site, {"N": N}, {"lam": torch.tensor(2.0)}, candidates, (slice(None),))
    assert moves.conditionals.guard.route == "one trace" and "disagrees with the reference" in caplog.text
    table = moves.conditionals.table(site, {"N": N}, {"lam": torch.tensor(2.0)}, candidates, (slice(None),)).numpy()
    n = candidates.numpy()
    by_hand = stats.poisson(2.0).logpmf(n) + stats.binom(n, 0.3).logpmf(y.numpy())
    np.testing.assert_allclose(table[1] - table[0], by_hand[1] - by_hand[0], rtol=1e-5)
