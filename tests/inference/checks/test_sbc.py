"""Simulation-based calibration: NUTS calibrated, mean-field SVI not (as the closed form predicts),
the same ranks on a Dask cluster, files, the chi-square by hand, and clear errors.

Tolerances come from the uniformity test itself: ``SBCResult.calibrated`` rejects a quantity at the
Bonferroni level 0.01 / (number of quantities), so a correct sampler fails a calibration test here
with probability at most about 1%, whatever the seed."""

import math

import joblib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import inference
import zoo
from inference.checks.sbc import SBCResult, sbc
from zoo.base import ZooModel, as_float_tensor

HMM = dict(n_states=2, emission="categorical", n_symbols=3)   # Dirichlet(1) priors: nothing depends on the data
HMM_FIT = dict(num_samples=200, warmup_steps=150)


class SumOfTwo(ZooModel):
    """theta ~ N(0, s^2 I_2), y_n ~ N(theta_0 + theta_1, 1), n = 1..N: the data see only the sum.

    The posterior is Gaussian with precision Lambda = I / s^2 + N 1 1^T: the two coordinates are strongly
    negatively correlated, each with marginal variance Sigma_ii = s^2 (1 + N s^2) / (1 + 2 N s^2). The
    mean-field Gaussian closest in KL(q || p) has the exact means but variances 1 / Lambda_ii =
    s^2 / (1 + N s^2) (Bishop 2006, section 10.1.2): an sd ratio sqrt(Sigma_ii Lambda_ii) =
    (1 + N s^2) / sqrt(1 + 2 N s^2) between the truth's spread around the posterior mean and q's, 7.12
    for N s^2 = 100, so the truth falls outside q's central 90% with probability 2 Phi(-1.645 / 7.12) =
    0.82 instead of 0.10.
    """

    name = "sum_of_two"
    global_sites = ("theta",)

    def __init__(self, prior_scale=2.0):
        super().__init__()
        self.prior_scale = prior_scale

    def model(self, data=None, *, n=None):
        theta = pyro.sample("theta", dist.Normal(torch.zeros(2, dtype=torch.float64), self.prior_scale).to_event(1))
        with pyro.plate("data", len(data) if data is not None else n):
            return pyro.sample("obs", dist.Normal(theta.sum(-1), 1.0), obs=data)

    def validate(self, data):
        return as_float_tensor(data, name="data", dtype=torch.float64)

    def initial_values(self, data, seed=0):
        """The moment estimate theta_0 = theta_1 = mean(y) / 2 (the guide's scales start at Pyro's 0.1)."""
        return {"theta": data.mean().expand(2) / 2}

    def simulate(self, n, seed=0):
        with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            trace = pyro.poutine.trace(self.model).get_trace(None, n=n)
        return trace.nodes["obs"]["value"], {"theta": trace.nodes["theta"]["value"]}

    def closed_form(self, n):
        """(mean-field sd, exact marginal sd) of each coordinate for n data points."""
        s2 = self.prior_scale ** 2
        return math.sqrt(s2 / (1 + n * s2)), math.sqrt(s2 * (1 + n * s2) / (1 + 2 * n * s2))


def test_nuts_on_a_small_hmm_is_calibrated():
    m = zoo.get("hmm", **HMM)
    r = sbc(m, num_simulations=20, num_observations=40, fit_kwargs=HMM_FIT, seed=0, progress=False)
    assert set(r.ranks) == {"initial", "transition", "emission_probs"}
    assert r.ranks["transition"].shape == (20, 2, 2)
    assert (r.ranks["transition"] >= 0).all() and (r.ranks["transition"] <= r.stats["num_draws"][:, None, None]).all()
    # thinned to about the smallest effective sample size: stride ceil(200 / ESS), ceil(200 / stride) kept
    stride = np.ceil(200 / np.maximum(r.stats["min_ess"], 1.0))
    np.testing.assert_array_equal(r.stats["num_draws"], np.ceil(200 / stride))
    assert (r.stats["num_draws"] < 200).all()
    assert r.calibrated, r.table()


def test_nuts_on_a_small_gmm_is_calibrated():
    """Two components in one dimension, the prior fixed (not centred on each data set)."""
    m = zoo.get("gmm", n_components=2, dim=1, prior_center=0.0, prior_spread=1.0)
    r = sbc(m, num_simulations=20, num_observations=20, fit_kwargs=dict(num_samples=100, warmup_steps=100),
            seed=0, progress=False)
    assert set(r.ranks) == {"weights", "locs", "scales"}
    assert r.calibrated, r.table()


def test_mean_field_svi_is_miscalibrated_where_it_underestimates_variance():
    """AutoNormal on :class:`SumOfTwo` with N s^2 = 100: the truth lands outside q's central 90% about 82%
    of the time (closed form in the class docstring), the chi-square test rejects, and the fractional
    ranks pile up at both ends (sd above the uniform's 0.289). Power: 30 simulations give 6 bins, the two
    outer ones holding 2 Phi(-0.967 / 7.12) = 0.89 of the fractional ranks instead of 1/3; simulating
    that test (with 50 ranked draws) rejects both coordinates at the Bonferroni level 0.005 in 99.95% of
    runs. 32 vectorized ELBO particles keep the gradient noise low enough for 100 steps to reach the
    mean-field optimum, checked first on one data set against its closed-form sd."""
    n, sims, model = 25, 30, SumOfTwo(prior_scale=2.0)
    fit = dict(guide="normal", num_steps=100, lr=0.1, num_particles=32, vectorize_particles=True)
    q_sd, exact_sd = model.closed_form(n)                                   # 0.199, 1.418

    data, _ = model.simulate(n, seed=5)
    draws = inference.fit_svi(model, data, num_samples=2000, seed=0, progress=False, **fit).samples["theta"]
    sd = draws.reshape(-1, 2).std(0).numpy()
    np.testing.assert_allclose(sd, q_sd, rtol=4 / math.sqrt(2 * 2000) + 0.03)   # MC error of an sd + 3% bias
    assert (sd < exact_sd / 5).all()

    mf = sbc(model, num_simulations=sims, num_observations=n, method="svi", seed=1, progress=False,
             fit_kwargs={**fit, "num_samples": 100})
    table = mf.table()
    assert table.attrs["bins"] == 6
    assert (table["verdict"] == "miscalibrated").all(), table
    assert (table["pit_sd"] > 1 / math.sqrt(12)).all()
    expected = 2 * stats.norm.cdf(-stats.norm.ppf(0.95) * q_sd / exact_sd)   # 0.82
    outside = np.mean((mf.pit["theta"] < 0.05) | (mf.pit["theta"] > 0.95))
    assert abs(outside - expected) < 4 * math.sqrt(expected * (1 - expected) / (2 * sims)), (outside, expected)
    assert outside > 0.10 + 4 * math.sqrt(0.10 * 0.90 / (2 * sims))        # far from a calibrated 10%


def test_a_dask_cluster_gives_the_same_ranks_as_the_local_run():
    distributed = pytest.importorskip("dask.distributed")
    m = zoo.get("hmm", **HMM)
    kw = dict(num_simulations=4, num_observations=30, fit_kwargs=dict(num_samples=60, warmup_steps=60), seed=7,
              progress=False)
    local = sbc(m, n_jobs=1, **kw)
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        with joblib.parallel_backend("dask"):
            remote = sbc(m, n_jobs=2, **kw)
    for name in local.ranks:
        np.testing.assert_array_equal(local.ranks[name], remote.ranks[name])
        np.testing.assert_array_equal(local.truth[name], remote.truth[name])
    np.testing.assert_array_equal(local.stats["num_draws"], remote.stats["num_draws"])


def synthetic_result(rng, sims=50):
    u = rng.uniform(size=(sims, 2))
    L = np.full(sims, 99)
    return SBCResult(model="toy", method="nuts", ranks={"theta": np.floor(u * 100).astype(int)}, pit={"theta": u},
                     truth={"theta": rng.normal(size=(sims, 2))},
                     stats={"num_draws": L, "min_ess": L * 1.0, "divergences": np.zeros(sims, int),
                            "wall_time": np.ones(sims)})


def test_chi_square_by_hand_and_files_round_trip(tmp_path):
    r = synthetic_result(np.random.default_rng(0))
    table = r.table(bins=5)
    counts = np.histogram(r.pit["theta"][:, 1], bins=np.linspace(0, 1, 6))[0]
    chi2 = ((counts - 10) ** 2 / 10).sum()
    assert table.loc["theta[1]", "chi2"] == pytest.approx(chi2)
    assert table.loc["theta[1]", "p_value"] == pytest.approx(stats.chi2.sf(chi2, 4))
    out = r.write(tmp_path / "sbc")
    assert sorted(p.name for p in out.iterdir()) == ["sbc.csv", "sbc.nc", "sbc.png"]
    back = SBCResult.from_netcdf(out / "sbc.nc")
    np.testing.assert_array_equal(back.ranks["theta"], r.ranks["theta"])
    np.testing.assert_allclose(back.pit["theta"], r.pit["theta"])
    assert back.model == "toy" and back.method == "nuts"
    with pytest.raises(FileExistsError, match="out:"):
        r.write(tmp_path / "sbc")
    fig = r.plot()
    assert len([a for a in fig.axes if a.get_title()]) == 2


def test_bad_input_names_the_argument():
    def plain(data):
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"^model: SBC needs a zoo model with simulate"):
        sbc(plain, num_simulations=3)
    with pytest.raises(ValueError, match=r"^model: the prior of 'gmm' depends on the data"):
        sbc(zoo.get("gmm", n_components=2), num_simulations=3)
    with pytest.raises(ValueError, match=r"^model: 'vae' has no global latent sites"):
        sbc(zoo.get("vae"), num_simulations=3)
    with pytest.raises(ValueError, match=r"^method: expected one of 'nuts', 'svi'"):
        sbc(SumOfTwo(), method="map")
    with pytest.raises(ValueError, match=r"^fit_kwargs: 'seed'"):
        sbc(SumOfTwo(), fit_kwargs={"seed": 3})
    with pytest.raises(ValueError, match=r"^num_simulations"):
        sbc(SumOfTwo(), num_simulations=1)
    with pytest.raises(ValueError, match=r"^var_names"):
        synthetic_result(np.random.default_rng(1)).plot(var_names=["nope"])


def test_public_entry_point():
    assert inference.sbc is sbc


def test_cli_writes_the_three_files_and_refuses_mistakes(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "sbc"
    args = ["sbc", "hmm", "--emission", "categorical", "--option", "n_symbols=3", "--simulations", "3",
            "--observations", "30", "--samples", "40", "--warmup", "40", "--chains", "1", "--quiet", "--out", str(out)]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sbc.csv", "sbc.nc", "sbc.png"]
    assert "SBC hmm NUTS: 3 simulations" in capsys.readouterr().out
    before = (out / "sbc.nc").read_bytes()
    assert main(args) == 2                                       # an existing folder is never replaced silently
    assert capsys.readouterr().err.strip().startswith("zoo: error: --out:")
    assert (out / "sbc.nc").read_bytes() == before

    assert main(["sbc", "gmm", "--simulations", "3", "--quiet", "--out", str(tmp_path / "gmm")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error: gmm: the prior of 'gmm' depends on the data") and "\n" not in err
    assert not (tmp_path / "gmm").exists()
    assert main(["sbc", "hmm", "--emission", "categorical", "--option", "n_symbols=3", "--simulations", "1",
                 "--quiet", "--out", str(tmp_path / "one")]) == 2
    assert capsys.readouterr().err.startswith("zoo: error: --simulations: expected an integer >= 2")


def regression(x, y=None):
    """A user's model with Pyro's calling convention: y_n ~ N(a + b x_n, s)."""
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    s = pyro.sample("s", dist.HalfNormal(1.0))
    with pyro.plate("data", len(x)):
        return pyro.sample("y", dist.Normal(a + b * x, s), obs=y)


def test_a_plain_model_given_its_arguments_is_calibrated_whatever_n_jobs():
    """Each replicate draws (a, b, s) and y from the prior on the given x (the given y only says where
    the observations go); batches on two workers give the same ranks as one process (replicate i depends
    on (seed, i) alone, so the first 4 of 10 are those of a run of 4)."""
    x = torch.linspace(-2, 2, 20)
    kw = dict(model_args=(x,), model_kwargs={"y": torch.zeros(20)}, seed=3, progress=False,
              fit_kwargs=dict(num_samples=100, warmup_steps=100, potential="graph"))
    one = sbc(regression, num_simulations=10, **kw)
    assert set(one.ranks) == {"a", "b", "s"} and one.ranks["a"].shape == (10,)
    assert one.calibrated, one.table()
    two = sbc(regression, num_simulations=4, n_jobs=2, **kw)
    for name in one.ranks:
        np.testing.assert_array_equal(one.ranks[name][:4], two.ranks[name])
        np.testing.assert_array_equal(one.truth[name][:4], two.truth[name])


def test_simulation_from_arguments_replaces_only_the_observed_values():
    from inference.checks.sbc import check_inputs

    x, y = torch.linspace(-2, 2, 20), torch.zeros(20)
    plan = check_inputs(regression, model_args=(x,), model_kwargs={"y": y}, num_simulations=2)
    data, truth = plan.simulate(seed=11)
    assert data.args[0] is x and data.kwargs["y"] is not y and data.kwargs["y"].shape == (20,)
    with pyro.poutine.seed(rng_seed=11):   # the same draw, by hand: a, b, s, then y given them
        a, b, s = dist.Normal(0.0, 1.0).sample(), dist.Normal(0.0, 1.0).sample(), dist.HalfNormal(1.0).sample()
        expected = dist.Normal(a + b * x, s).sample()
    assert torch.equal(data.kwargs["y"], expected)
    assert {k: float(v) for k, v in truth.items()} == {"a": float(a), "b": float(b), "s": float(s)}

    def transformed(x, y=None):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(a * x, 1.0), obs=None if y is None else y * 1.0)

    with pytest.raises(ValueError, match="model_args: the value of observed site 'y' is not one of the tensors"):
        check_inputs(transformed, model_args=(x,), model_kwargs={"y": y})

    def empirical(x, y=None):
        a = pyro.sample("a", dist.Normal(y.mean(), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(a * x, 1.0), obs=y)

    with pytest.raises(ValueError, match="model: the prior of 'empirical' depends on the data"):
        check_inputs(empirical, model_args=(x,), model_kwargs={"y": y})


def test_the_replicates_share_one_route_by_the_cost_rule(monkeypatch):
    """NUTS's potential is chosen once for the whole calibration by the one cost rule on the gradient
    evaluations of all replicates (inference.tracing.worth_compiling); never for a model with a closed
    form (the HMM), nor over the caller's choice."""
    import inference.potential
    from inference.checks.sbc import check_inputs
    from inference.tracing import LEAPFROGS_PER_ITERATION

    asked, needed = [], 20 * 200 * LEAPFROGS_PER_ITERATION   # the calls of 20 replicates of 100 + 100 iterations
    monkeypatch.setattr(inference.potential, "worth_compiling",
                        lambda calls, operations, on_cpu=True: asked.append(calls) or calls >= needed)
    monkeypatch.setattr(inference.potential, "compile_graph", lambda graph, example: graph)   # no compiler needed
    x, y = torch.linspace(-2, 2, 20), torch.zeros(20)
    args = dict(model_args=(x,), model_kwargs={"y": y})

    def route(num_simulations, **fit):
        plan = check_inputs(regression, num_simulations=num_simulations, fit_kwargs=fit, **args)
        return plan.fit_kwargs.get("potential")

    assert route(20, num_samples=100, warmup_steps=100) == "compiled"
    assert asked == [needed]
    assert route(19, num_samples=100, warmup_steps=100) == "graph"
    assert route(20, num_samples=100, warmup_steps=100, potential="eager") == "eager"
    assert "potential" not in check_inputs(zoo.get("hmm", **HMM), num_simulations=100).fit_kwargs
