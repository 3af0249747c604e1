"""Fast routes are taken only where they are verified (inference.tracing): the route policy, the agreement
check, and shortcuts built at one point that are wrong at another, caught while they run.

The models here hide part of their computation from the tracer the way real models do: a likelihood
computed in numpy inside a custom ``torch.autograd.Function`` (a numba or C kernel looks the same to
the tracer), and a branch taken on a value read through numpy. Every answer is checked against its
closed form.
"""

import logging
import math
import subprocess
import sys

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions.transforms import ExpTransform, OrderedTransform

import inference
import zoo
import zoo.hmm
from inference import tracing
from inference.potential import Potential
from inference.sampling.mcmc import start_point
from inference.tracing import Guard, Mismatch, compile_graph, has_compiler, mismatch, trace_graph

pytestmark = pytest.mark.usefixtures("one_thread")


class NumpyGaussianLogLik(torch.autograd.Function):
    """sum_n log N(x_n | mu, 1), value and gradient computed in numpy: invisible to the tracer."""

    @staticmethod
    def forward(ctx, mu, x):
        ctx.save_for_backward(mu, x)
        xs, m = x.detach().numpy(), mu.detach().numpy()
        return torch.as_tensor(-0.5 * ((xs - m) ** 2).sum() - 0.5 * xs.size * math.log(2 * math.pi), dtype=mu.dtype)

    @staticmethod
    def backward(ctx, upstream):
        mu, x = ctx.saved_tensors
        return upstream * torch.as_tensor((x.detach().numpy() - mu.detach().numpy()).sum(), dtype=mu.dtype), None


def numpy_model(x):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    pyro.factor("lik", NumpyGaussianLogLik.apply(mu, x))


def branch_model(x):
    """The observation noise is 1 where mu < 5, else 3: a branch read through numpy, which a trace
    freezes at the branch of the point it was traced from."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
    scale = 1.0 if mu.detach().numpy() < 5 else 3.0
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(mu, scale), obs=x)


def exact_posterior(x, prior_sd=10.0, noise=1.0):
    """mu ~ N(0, prior_sd), x_n ~ N(mu, noise): the posterior mean (= the MAP) and sd."""
    precision = len(x) / noise**2 + 1 / prior_sd**2
    return float(x.sum()) / noise**2 / precision, precision**-0.5


@pytest.fixture
def x3():
    return torch.tensor(np.random.default_rng(0).normal(3.0, 1.0, 200))


@pytest.fixture
def x8():
    return torch.tensor(np.random.default_rng(1).normal(8.0, 1.0, 50))


# --- the pieces ---------------------------------------------------------------------------------------

def test_upstream_tracer_compiler_and_distribution_internals():
    """``make_fx``, ``torch._inductor.compile`` (with its cache) and ``Distribution._validate_args`` are
    PyTorch internals: this fails loudly if they change."""
    def f(a, b):
        a = a.detach().requires_grad_(True)
        with torch.enable_grad():
            v = (a.exp() * b).sum()
            g, = torch.autograd.grad(v, a)
        return v.detach(), g

    a, b = torch.tensor([0.1, -0.2], dtype=torch.float64), torch.tensor([2.0, 3.0], dtype=torch.float64)
    graph = trace_graph(f, a, b)
    torch.testing.assert_close(graph(a, b), f(a, b))
    assert tracing.unused_inputs(graph) == [] and tracing.operations(graph) > 3
    normal = torch.distributions.Normal(0.0, 1.0, validate_args=True)
    assert tracing.unvalidated(normal)._validate_args is False and normal._validate_args is True
    if not has_compiler():
        pytest.skip("no C++ compiler: Inductor cannot compile here")
    from torch._dynamo.utils import counters   # Inductor's cache counters: internal too

    compiled = compile_graph(graph, [a, b])
    new = torch.tensor([1.0, 2.0], dtype=torch.float64)   # new data: an input of the graph, not a constant
    torch.testing.assert_close(compiled(a, new), f(a, new))
    # the compiled code is cached (a new process loads it instead of generating and compiling it again)
    counters.clear()
    torch.testing.assert_close(compile_graph(graph, [a, b])(a, new), f(a, new))
    assert counters["inductor"]["fxgraph_cache_bypass"] == 0, dict(counters["inductor"])
    assert counters["inductor"]["fxgraph_cache_hit"] == 1, dict(counters["inductor"])


def test_an_unvectorized_compile_proves_no_vector_isa_and_leaves_them_all_to_a_vectorized_one(monkeypatch):
    """Inductor proves each vector ISA by compiling a test program (seconds each, cold): an unvectorized
    compile needs none; a vectorized compile after it, in the same process, finds the ISAs a new process
    finds (Inductor caches AVX-512's answer for the process: it must not be asked while none is wanted)."""
    if not has_compiler():
        pytest.skip("no C++ compiler: Inductor cannot compile here")
    import torch._inductor.config as config
    from torch._inductor import cpu_vec_isa

    probes = []
    check_build = cpu_vec_isa.VecISA.check_build
    monkeypatch.setattr(cpu_vec_isa.VecISA, "check_build", lambda isa, code: probes.append(isa) or check_build(isa, code))
    a = torch.linspace(-1.0, 1.0, 64, dtype=torch.float64)
    graph = trace_graph(lambda t: (t.sin() * t).sum(), a)
    cpu_vec_isa.valid_vec_isa_list.cache_clear()
    with config.patch({"fx_graph_cache": False}):   # generate the code: the probes happen there
        torch.testing.assert_close(compile_graph(graph, [a])(a), (a.sin() * a).sum())
    assert probes == []
    found = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]
    fresh = subprocess.run([sys.executable, "-c", "from torch._inductor import cpu_vec_isa; "
                            "print([str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()])"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert repr(found) == fresh


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_short_scans_are_written_out_with_atens_numbers(dtype):
    """A stick-breaking simplex's cumulative sums and products (K - 1 = 4 sticks) and a count of booleans
    become running sums and products that Inductor can fuse; they give ATen's numbers and dtypes exactly
    (float32 accumulated in float64, as ATen's loop does), and a scan longer than SHORT_SCAN is left to ATen."""
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 5, generator=gen, dtype=torch.float64) * 1e3).to(dtype)
    long = torch.randn(tracing.SHORT_SCAN + 1, generator=gen, dtype=torch.float64).to(dtype)

    def scans(x, long):
        return x.cumsum(-1), x.cumprod(0), x.cumsum(1).cumprod(-1), (x > 0).cumsum(0), long.cumsum(0)

    graph = trace_graph(scans, x, long)
    written = tracing.unroll_short_scans(graph)
    inputs = [n for n in written.graph.nodes if n.op == "placeholder"]
    kept = [n.args[0] for n in written.graph.nodes if n.target in (torch.ops.aten.cumsum.default,
                                                                     torch.ops.aten.cumprod.default)]
    assert kept == [inputs[1]]
    for got, expected in zip(written(x, long), scans(x, long)):
        assert got.dtype == expected.dtype and torch.equal(got, expected)
    no_scan = trace_graph(lambda t: t * 2, x)
    assert tracing.unroll_short_scans(no_scan) is no_scan


def test_a_scatter_at_the_enumerations_indices_is_the_values_themselves():
    """The gradient of indexing parameters by an enumerated site (``locs[z]``, z = arange(K).view(K, 1) as
    Pyro's enumeration makes it) writes each row once: :func:`identity_scatters` replaces it by the values,
    with the same numbers; indices that repeat or reorder rows keep it."""
    gen = torch.Generator().manual_seed(0)
    locs = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    x = torch.randn(50, 2, generator=gen, dtype=torch.float64)

    def grad_of(index):
        def value_and_grad(locs, x):
            locs = locs.detach().requires_grad_(True)
            with torch.enable_grad():
                value = ((x - locs[index()]) ** 2).sum()
                return torch.autograd.grad(value, locs)
        return value_and_grad

    enumerated = trace_graph(grad_of(lambda: torch.arange(3).view(-1, 1)), locs, x)
    written = tracing.identity_scatters(enumerated)
    scatters = [n for n in written.graph.nodes if n.target is torch.ops.aten.index_put.default]
    assert scatters == [] and any(n.target is torch.ops.aten.index_put.default for n in enumerated.graph.nodes)
    assert torch.equal(written(locs, x)[0], enumerated(locs, x)[0])
    torch.testing.assert_close(written(locs, x)[0], 2 * (locs[:, None] - x).sum(1), rtol=1e-12, atol=1e-12)
    for index in (lambda: torch.tensor([0, 0, 1]).view(-1, 1), lambda: torch.arange(3).flip(0).view(-1, 1)):
        kept = trace_graph(grad_of(index), locs, x)
        assert tracing.identity_scatters(kept) is kept


def test_only_a_graph_that_multiplies_matrices_is_compiled_vectorized(monkeypatch):
    """SVI's loss is vectorized for networks (their layers' elementwise work) and not for a mixture, whose
    compile then proves no vector ISA: the network's graph and its gradient hold matrix products, the
    mixture's none."""
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(20, 5)
    params = [p.detach().requires_grad_() for p in net.parameters()]

    def network_loss(*ps):
        loss = torch.func.functional_call(net, dict(zip(dict(net.named_parameters()), ps)), (x,)).square().sum()
        return loss, *torch.autograd.grad(loss, ps)

    def mixture_loss(locs):
        y = torch.linspace(-2.0, 2.0, 50)
        loss = -torch.logsumexp(-0.5 * (y[:, None] - locs).square(), -1).sum()
        return loss, *torch.autograd.grad(loss, locs)

    assert tracing.multiplies_matrices(trace_graph(network_loss, *params))
    assert not tracing.multiplies_matrices(trace_graph(mixture_loss, torch.zeros(3, requires_grad=True)))

    calls = []
    import inference.variational.traced_loss as traced_loss
    monkeypatch.setattr(traced_loss, "compile_graph", lambda graph, example, **kw: calls.append(kw) or compile_graph(
        graph, example, **kw))

    def model(y):
        locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.MixtureSameFamily(dist.Categorical(torch.ones(2)), dist.Normal(locs, 1.0)), obs=y)

    y = torch.cat([torch.randn(30) - 2, torch.randn(30) + 2])
    post = inference.fit_svi(model, y, num_steps=50, loss_route="compiled", progress=False, num_samples=1)
    assert post.settings["loss_route"] == "compiled" and calls == [{"fallback_random": True, "vectorize": False}]


def test_the_route_policy_reads_counts_and_never_compiles_without_a_compiler(monkeypatch):
    monkeypatch.setattr(tracing, "has_compiler", lambda: True)
    # tracing pays when calls x sites x Pyro's seconds per site x the saving exceed the trace's cost
    steps = tracing.TRACE_SECONDS / (tracing.PYRO_SECONDS_PER_SITE * tracing.GRAPH_SAVING)
    assert tracing.worth_tracing(int(steps) + 1, 1) and not tracing.worth_tracing(int(steps) - 1, 1)
    assert tracing.worth_tracing(int(steps / 4) + 1, 4) and not tracing.worth_tracing(int(steps / 4) - 1, 4)
    # compiling pays when calls x operations x the dispatch saved per operation exceed the compile's cost
    work = tracing.COMPILE_SECONDS / tracing.DISPATCH_SECONDS
    assert tracing.worth_compiling(int(work / 500) + 1, 500) and not tracing.worth_compiling(int(work / 500) - 1, 500)
    # the GMM of issue 18 (about 470 operations), 500 + 500 iterations of NUTS, compiles
    assert tracing.worth_compiling(1000 * tracing.LEAPFROGS_PER_ITERATION, 470)
    assert not tracing.worth_compiling(10**9, 500, on_cpu=False)
    monkeypatch.setattr(tracing, "has_compiler", lambda: False)
    assert not tracing.worth_compiling(10**9, 500)


def test_mismatch_compares_the_value_and_every_gradient():
    ok = (1000.0, [np.array([1.0, -2.0]), np.array([3.0])])
    assert mismatch(ok, ok, torch.float64) == ""
    assert mismatch((1000.0 * (1 + 1e-7), ok[1]), ok, torch.float64) == ""          # rounding
    assert "value" in mismatch((1000.0 * (1 + 1e-5), ok[1]), ok, torch.float64)
    assert "gradient" in mismatch((1000.0, [np.array([1.0, -2.0]), np.array([3.01])]), ok, torch.float64)
    assert "gradient" in mismatch((1000.0, [np.array([1.0, np.nan]), np.array([3.0])]), ok, torch.float64)
    assert mismatch((1000.0 * (1 + 1e-5), ok[1]), ok, torch.float32) == ""          # float32 rounding
    assert mismatch((5.0, ok[1]), (-math.inf, ok[1]), torch.float64) == ""          # outside the support


def test_the_guard_checks_on_its_schedule_and_steps_aside_with_one_warning(caplog):
    guard = Guard("test", ("reference", None))
    guard.add("graph", "g")
    guard.add("compiled", "c")
    due = [call for call in range(1, 12001) if guard.due()]
    assert due == [*tracing.CHECK_AT, 5000, 10000]
    with caplog.at_level(logging.WARNING, logger="inference.tracing"):
        guard.step_aside("value 1 where the reference gives 2")
    assert guard.route == "graph" and guard.fn == "g"
    assert len(caplog.records) == 1 and "compiled route disagrees" in caplog.text and "using the graph" in caplog.text
    assert guard.describe() == "graph (compiled until call 12000: value 1 where the reference gives 2)"
    guard.step_aside("again")
    assert guard.on_reference and not guard.due()


# --- SVI: a graph that cannot see part of the model ---------------------------------------------------

def point_mass_guide(x):
    """A user's MAP guide: a pyro.param point mass."""
    loc = pyro.param("mu_map", torch.tensor(0.0, dtype=x.dtype))
    pyro.sample("mu", dist.Delta(loc))


@pytest.mark.parametrize("guide", ["delta", point_mass_guide], ids=["AutoDelta", "point-mass guide"])
def test_svi_on_a_numpy_likelihood_keeps_pyros_elbo_and_finds_the_map(x3, guide, caplog):
    """The traced loss holds the numpy likelihood as a constant; at the point it was traced from it
    agrees with Pyro's (a Delta guide draws nothing), at perturbed parameters it does not."""
    post = inference.fit_svi(numpy_model, x3, guide=guide, loss_route="graph", progress=False)
    assert "graph route is not usable" in caplog.text and post.settings["loss_route"] == "pyro"
    assert float(post.samples["mu"].mean()) == pytest.approx(exact_posterior(x3)[0], abs=0.01)


def test_svi_on_a_graph_wrong_away_from_where_it_was_traced_steps_aside_while_it_runs(x8, caplog):
    """Traced at mu = 0 (noise 1), checked there and near it: right. The fit moves to mu = 8, where the
    model's noise is 3 and the graph's still 1: the check at call 100 or 1000 catches it, and Pyro's ELBO
    takes over from there."""
    post = inference.fit_svi(branch_model, x8, guide="delta", num_steps=3000, lr=0.1, loss_route="graph",
                             progress=False)
    assert post.settings["loss_route"].startswith("pyro (graph until call ")
    assert "graph route disagrees with the reference" in caplog.text
    mode, sd = exact_posterior(x8, noise=3.0)
    # the mode of the model, not of the frozen graph (8.0 with noise 1), to the optimiser's own precision
    # (its averaged iterates: well within a tenth of a posterior sd)
    assert abs(float(post.samples["mu"].mean()) - mode) < 0.1 * sd


def test_a_route_that_fails_the_check_at_the_end_hands_over_to_pyros_elbo_which_optimises_again(x8):
    """The fit crossed into the branch the graph froze after its last scheduled check (call 10): the
    check at the end catches it, and the optimisation goes on from there on Pyro's ELBO until it converges."""
    post = inference.fit_svi(branch_model, x8, guide="delta", num_steps=40, lr=0.3, converge=False,
                             lr_decay=1.0, loss_route="graph", progress=False)
    assert post.settings["loss_route"].startswith("pyro (graph until call 40: ")
    assert len(post.losses) == 80   # 40 steps, then 40 more on Pyro's ELBO
    fixed = inference.fit_svi(branch_model, x8, guide="delta", num_steps=40, lr=0.3, converge=False,
                              lr_decay=1.0, loss_route="pyro", progress=False)
    assert len(fixed.losses) == 40 and fixed.settings["loss_route"] == "pyro"


def test_hmm_map_is_not_frozen_by_its_compiled_forward_algorithm():
    """The HMM's forward algorithm is numba (opaque to the tracer): the default route must see that and
    reach the same MAP as Pyro's ELBO, not stay at its starting point (issue 18)."""
    m = zoo.get("hmm", n_states=2)
    x, _ = m.simulate(200, seed=0)
    kw = dict(guide="delta", num_steps=200, converge=False, seed=0, progress=False)
    traced = inference.fit_svi(m, x, loss_route="graph", **kw)
    reference = inference.fit_svi(m, x, loss_route="pyro", **kw)
    assert traced.settings["loss_route"] == "pyro"
    assert len(set(traced.losses)) > 100   # not the frozen loss of issue 18, the same at every step
    for k in reference.samples:
        torch.testing.assert_close(traced.samples[k], reference.samples[k])


# --- NUTS: potentials checked where they run ----------------------------------------------------------

def test_a_numpy_likelihood_potential_falls_back_to_pyros(x3, caplog):
    p = Potential(numpy_model, x3, max_plate_nesting=0, route="graph")
    assert p.route == "eager" and "graph route is not usable" in caplog.text
    mean, sd = exact_posterior(x3)
    theta = np.array([2.5])
    expected = -0.5 * ((x3.numpy() - 2.5) ** 2).sum() - 100 * math.log(2 * math.pi) - 0.5 * (2.5 / 10) ** 2 \
        - math.log(10 * math.sqrt(2 * math.pi))
    assert p(theta)[0] == pytest.approx(expected, rel=1e-12)


def test_a_potential_wrong_away_from_its_check_points_is_caught_while_it_runs(x8, caplog):
    p = Potential(branch_model, x8, max_plate_nesting=1, route="graph")
    assert p.route == "graph"   # traced and checked where mu < 5 (the start's range)
    for _ in range(9):
        p(np.array([0.5]))
    with pytest.raises(Mismatch):
        p(np.array([8.0]))   # call 10, a checked one
    assert p.route == "eager" and "graph route disagrees with the reference at call 10" in caplog.text
    assert p(np.array([8.0]))[0] == pytest.approx(p.reference(np.array([8.0]))[0], rel=1e-12)


def test_nuts_reruns_a_chain_whose_route_was_found_wrong_and_matches_the_exact_posterior(x8, caplog):
    post = inference.run_nuts(branch_model, x8, num_samples=150, warmup_steps=150, num_chains=1, seed=0,
                              potential="graph", progress=False)
    assert post.settings["potential"] == "eager" and "graph until call" in post.settings["routes"][0]
    mean, sd = exact_posterior(x8, noise=3.0)
    draws = post.samples["mu"].numpy().ravel()
    ess = float(az.ess(draws[None]))
    assert abs(draws.mean() - mean) < 4 * sd / math.sqrt(ess)


def test_a_potential_moved_to_new_data_is_checked_there(x3, caplog):
    """A graph that holds its data as a constant (read through numpy) is right on the data it was built
    on and wrong on any other: moving it to new data finds that out."""
    def baked(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=torch.as_tensor(x.numpy()))

    p = Potential(baked, x3, max_plate_nesting=1, route="graph")
    assert p.route == "graph"
    same = p.with_data(x3.clone())
    assert same.route == "graph"
    moved = p.with_data(x3 + 1.0)
    assert moved.route == "eager" and "disagrees with the reference on the new data" in caplog.text
    mean, _ = exact_posterior(x3 + 1.0)
    assert moved(np.array([mean]))[1][0] == pytest.approx(0.0, abs=1e-9)   # the new data's mode
    with pytest.raises(ValueError, match="shapes and dtypes"):
        p.with_data(x3[:10])


class _WrongFarOut(zoo.hmm.HiddenMarkovModel):
    """A closed form that is right where it is checked first and wrong where a chain may go."""

    def log_density(self, data):
        transforms, fn = super().log_density(data)

        def wrong(u):
            value, grad = fn(u)
            return value + (5.0 if np.abs(u["locs"]).max() > 3 else 0.0), grad
        return transforms, wrong


def test_a_closed_form_is_checked_while_it_runs():
    m = _WrongFarOut(2)
    x, _ = m.simulate(20, seed=0)
    target = inference.target.as_target(m)
    data = target.validate(x)
    from inference.sampling.mcmc import potential_of

    p = potential_of(target, data)
    assert p.route == "closed form"
    theta = p.flatten(p.prototypes)
    p(theta)   # call 1: checked, right
    far = theta.copy()
    far[[i for i, name in enumerate(np.repeat(p.names, p.sizes)) if name == "locs"]] = 4.0
    for _ in range(8):
        p(theta)
    with pytest.raises(Mismatch):
        p(far)   # call 10
    assert p.route == "eager"


# --- initial points, as Pyro finds them ---------------------------------------------------------------

def ordered_positive(y):
    """Three positive, ordered rates (torch calls the support of this distribution 'positive', so a point
    on it need not be ordered), a factor that corrects the prior, and Poisson counts."""
    mu = pyro.sample("mu", dist.TransformedDistribution(dist.Normal(torch.zeros(3, dtype=y.dtype), 1.0).to_event(1),
                                                        [OrderedTransform(), ExpTransform()]))
    pyro.factor("prior_correction", -0.1 * mu.sum())
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Poisson(mu).to_event(1), obs=y)


def ordered_positive_twin(y):
    """The same posterior, sampled on the unconstrained scale: mu = exp(ordered(u))."""
    u = pyro.sample("u", dist.Normal(torch.zeros(3, dtype=y.dtype), 1.0).to_event(1))
    mu = pyro.deterministic("mu", ExpTransform()(OrderedTransform()(u)))
    pyro.factor("prior_correction", -0.1 * mu.sum())
    with pyro.plate("data", y.shape[0]):
        pyro.sample("y", dist.Poisson(mu).to_event(1), obs=y)


def test_a_model_whose_support_is_wider_than_its_valid_points_samples_as_pyro_would():
    rng = np.random.default_rng(2)
    y = torch.tensor(rng.poisson([1.0, 4.0, 9.0], size=(30, 3)), dtype=torch.float64)
    kw = dict(num_samples=400, warmup_steps=200, num_chains=2, seed=0, potential="graph", progress=False)
    post = inference.run_nuts(ordered_positive, y, **kw)
    twin = inference.run_nuts(ordered_positive_twin, y, **kw)
    twin_mu = ExpTransform()(OrderedTransform()(twin.samples["u"])).numpy()
    a, b = post.samples["mu"].numpy().reshape(-1, 3), twin_mu.reshape(-1, 3)
    ess = np.array([min(float(az.ess(post.samples["mu"].numpy()[..., i])), float(az.ess(twin_mu[..., i])))
                    for i in range(3)])
    # two independent estimates of each mean: their difference has sd sqrt(2) sd / sqrt(ess)
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 4 * math.sqrt(2) * b.std(0) / np.sqrt(ess))


def test_a_start_is_drawn_again_until_the_density_is_finite_and_an_impossible_one_is_named(x3):
    def half(x):   # -inf where mu < 0.5: most uniform draws in (-2, 2) miss
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
        pyro.factor("cut", torch.where(mu > 1.5, 0.0, -math.inf))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(mu, 1.0), obs=x)

    p = Potential(half, x3, max_plate_nesting=1, route="graph")
    theta = start_point(p, None, np.random.default_rng(0))
    assert theta[0] > 1.5 and math.isfinite(p(theta)[0])

    def nowhere(x):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 10.0))
        pyro.factor("cut", torch.where(mu > 100.0, 0.0, -math.inf))

    with pytest.raises(ValueError, match=r"init: the log density is not finite at uniform draws .*\['mu'\]"):
        inference.run_nuts(nowhere, x3, num_samples=5, warmup_steps=5, num_chains=1, progress=False)
