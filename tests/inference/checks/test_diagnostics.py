"""Energy and tree-depth diagnostics: E-BFMI per chain against its formula, verdicts, the energy plot."""

import matplotlib.pyplot as plt
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import inference
import zoo
from inference import Posterior
from inference.checks.diagnostics import energy_bfmi
from inference.reporting.plots import plot_energy
from inference.target import Target


def normal_mean(data):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(mu, 1.0), obs=data)


def bfmi_by_hand(energy):
    """Betancourt (2016): sum of squared successive differences over the sum of squared deviations, per chain."""
    return (np.diff(energy, axis=1) ** 2).sum(1) / ((energy - energy.mean(1, keepdims=True)) ** 2).sum(1)


def synthetic(sample_stats, chains=2, draws=1000):
    """A posterior of well-mixed draws of ``mu`` carrying the given sample statistics."""
    rng = np.random.default_rng(1)
    mu = torch.as_tensor(rng.normal(0.1, 0.2, (chains, draws)))
    data = torch.zeros(5, dtype=torch.float64)
    return Posterior(Target(normal_mean), data, {"mu": mu}, method="nuts", wall_time=0.0, sample_stats=sample_stats)


def ar1(phi, n, rng):
    """A stationary AR(1) series: E-BFMI -> 2 (1 - phi) for long series."""
    x = np.empty(n)
    x[0] = rng.normal() / np.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + rng.normal()
    return x


def test_low_bfmi_names_the_chain_and_why():
    """Chain 0: independent energies (E-BFMI near 2); chain 1: energies that move by small steps,
    AR(1) with phi = 0.95 (E-BFMI near 2 (1 - phi) = 0.1). Only chain 1 is flagged."""
    rng = np.random.default_rng(0)
    energy = np.stack([rng.normal(size=1000), ar1(0.95, 1000, rng)])
    expected = bfmi_by_hand(energy)
    assert expected[0] > 1.5 and expected[1] < 0.2
    d = inference.diagnose(synthetic({"energy": energy, "diverging": np.zeros((2, 1000), bool)}))
    np.testing.assert_allclose(d.bfmi, expected, rtol=1e-12)
    [reason] = [r for r in d.reasons if "E-BFMI" in r]
    assert "chain 1 (" in reason and "chain 0" not in reason and "random walk" in reason
    assert d.verdict == "check"
    assert "E-BFMI" in str(d)


def test_good_energy_gives_no_warning():
    rng = np.random.default_rng(2)
    energy = rng.normal(size=(2, 1000))
    d = inference.diagnose(synthetic({"energy": energy, "reached_max_treedepth": np.zeros((2, 1000), bool),
                                      "tree_depth": np.full((2, 1000), 3)}))
    np.testing.assert_allclose(d.bfmi, bfmi_by_hand(energy), rtol=1e-12)
    assert not any("E-BFMI" in r or "tree depth" in r for r in d.reasons), d.reasons
    assert d.max_treedepth_hits == 0


def test_saturated_trees_are_reported():
    hits = np.zeros((2, 1000), bool)
    hits[1, :50] = True
    d = inference.diagnose(synthetic({"reached_max_treedepth": hits, "tree_depth": np.where(hits, 10, 4)}))
    assert d.max_treedepth_hits == 50
    [reason] = [r for r in d.reasons if "tree depth" in r]
    assert "50 transitions (2.5%)" in reason and "depth 10" in reason


def test_without_energy_the_verdict_degrades_gracefully():
    """Pyro's kernel records no energy: no E-BFMI, no such reason, and the plot says why it cannot be drawn."""
    post = synthetic({"diverging": np.zeros((2, 1000), bool)})
    d = inference.diagnose(post)
    assert d.bfmi is None and d.max_treedepth_hits is None and d.ok, d.reasons
    with pytest.raises(ValueError, match="posterior: no 'energy'"):
        plot_energy(post)


def test_hmm_nuts_energy_is_healthy_and_plotted():
    """The closed-form NUTS engine records the energy of every draw: a 2-state HMM posterior gives
    az.bfmi = the formula on the idata's sample_stats, no E-BFMI warning, and an energy plot."""
    m = zoo.get("hmm", n_states=2)
    x, _ = m.simulate(150, seed=3, params={"initial": torch.tensor([0.5, 0.5]),
                                           "transition": torch.tensor([[0.9, 0.1], [0.2, 0.8]]),
                                           "locs": torch.tensor([[-2.0], [2.0]]), "scales": torch.tensor([[1.0], [1.0]])})
    post = inference.run_nuts(m, x, num_chains=2, num_samples=300, warmup_steps=300, seed=0, progress=False,
                              chain_method="sequential")
    energy = post.sample_stats["energy"]
    assert energy.shape == (2, 300)
    np.testing.assert_allclose(energy_bfmi(post), bfmi_by_hand(energy), rtol=1e-10)
    d = inference.diagnose(post)
    assert (d.bfmi > 0.3).all() and not any("E-BFMI" in r for r in d.reasons), d
    fig = plot_energy(post)
    assert fig.axes and "energy" in fig._suptitle.get_text()
    plt.close(fig)


def test_diagnose_flags_rhat_ess_and_divergences(fake_posterior):
    g = torch.Generator().manual_seed(0)
    good = {"w": torch.distributions.Dirichlet(torch.ones(2)).sample((4, 1000)),
            "loc": torch.randn(4, 1000, 2, generator=g)}
    d = inference.diagnose(fake_posterior(good, {"diverging": np.zeros((4, 1000), bool)}))
    assert d.ok and d.divergences == 0, str(d)
    assert list(d.summary.columns[:2]) == ["mean", "sd"] and "r_hat" in d.summary

    shifted = dict(good, loc=good["loc"] + torch.tensor([0.0, 0.0, 0.0, 3.0]).view(4, 1, 1))
    stats = np.zeros((4, 1000), bool)
    stats[1, 10] = True
    d = inference.diagnose(fake_posterior(shifted, {"diverging": stats}))
    assert not d.ok
    assert any("R-hat" in r for r in d.reasons) and any("divergent" in r for r in d.reasons)

    short = {k: v[:, :50] for k, v in good.items()}
    assert any("ESS_bulk" in r for r in inference.diagnose(fake_posterior(short)).reasons)
