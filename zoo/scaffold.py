"""``zoo new NAME``: a new model file and its test, written from a small, correct example.

The example is a robust model of the location and scale of D features (a Student-t written as a Gaussian
scale mixture): two global sites, one local latent integrated out in closed form by ``log_likelihood``,
a guide, ``simulate``, ``validate`` and ``initial_values``, in the house style of ``zoo/gmm.py``. ``TODO``
comments mark where your maths goes. The new module is found by the registry's module discovery
(``zoo/__init__.py``): no list to edit.
"""

from __future__ import annotations

import keyword
import re
from pathlib import Path
from string import Template

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


def class_name(name: str) -> str:
    """``factor_analysis`` -> ``FactorAnalysis``."""
    return "".join(part.capitalize() for part in name.split("_") if part)


def check_name(name: str, package_dir: Path) -> None:
    """A new model's name must be a lowercase Python identifier (it becomes ``zoo/NAME.py``), not a model
    that exists and not a name the ``zoo`` package already uses."""
    import zoo

    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(f"NAME: expected a lowercase Python identifier such as factor_analysis, got {name!r}")
    if name in zoo.list_models():
        raise ValueError(f"NAME: a model named {name!r} exists already (see `zoo list`)")
    taken = [d / f for d in (package_dir, Path(zoo.__file__).parent) for f in (f"{name}.py", name)]
    if hasattr(zoo, name) or any(path.exists() for path in taken):
        raise ValueError(f"NAME: {name!r} is taken by the zoo package itself; choose another name")


def new_model(name: str, package_dir: str | Path | None = None, tests_dir: str | Path | None = None) -> list[Path]:
    """Write ``<package_dir>/NAME.py`` and ``<tests_dir>/test_NAME.py``; returns their paths.

    Defaults: the ``zoo`` package folder and ``tests/zoo`` beside it (a source checkout; the model tests
    mirror the package, so ``tests/zoo`` is created when only ``tests`` exists). Refuses to
    replace a file (``FileExistsError``, nothing written) and checks ``name`` with :func:`check_name`.
    """
    import zoo

    package_dir = Path(package_dir) if package_dir is not None else Path(zoo.__file__).resolve().parent
    default = tests_dir is None
    tests_dir = package_dir.parent / "tests" / "zoo" if default else Path(tests_dir)
    if not (tests_dir.parent if default else tests_dir).is_dir():
        raise ValueError(f"NAME: `zoo new` writes into a source checkout, and {tests_dir.parent if default else tests_dir} "
                         "is not a folder; "
                         f"for an installed zoo, write your model in your own package and declare it as a "
                         f"plugin (entry-point group {zoo.ENTRY_POINT_GROUP!r}, see the README)")
    check_name(name, package_dir)
    files = {package_dir / f"{name}.py": MODEL, tests_dir / f"test_{name}.py": TEST}
    for path in files:
        if path.exists():
            raise FileExistsError(f"NAME: {path} exists; `zoo new` never replaces a file")
    values = {"name": name, "Class": class_name(name)}
    written = []
    tests_dir.mkdir(exist_ok=True)
    try:
        for path, template in files.items():
            with open(path, "x", encoding="utf-8") as f:   # "x": fails rather than replace a file
                written.append(path)
                f.write(Template(template).substitute(values))
    except BaseException:
        for path in written:   # no half-made model
            path.unlink(missing_ok=True)
        raise
    return written


MODEL = '''"""$Class: TODO one line saying what the model is for.

TODO: this is a working example (a robust model of the location and scale of D features); replace its
story, sites and maths with yours, and keep this docstring's parts: the generative story with the shape
of every site, the priors and why, and what ``log_likelihood`` sums or integrates out.

Generative story (N rows of D features; ``df`` degrees of freedom, fixed)::

    loc                ~ Normal(center, 2 * spread)                        (D,)
    scale              ~ LogNormal(log(spread), 1)                         (D,)
    for n in 1..N:                                   plate "data"  (dim -1)
        weight[n]      ~ Gamma(df / 2, df / 2)                             (N,)    local
        obs[n]         ~ Normal(loc, scale / sqrt(weight[n]))              (N, D)

A row with a small ``weight`` is an outlier: its spread is wider, so it pulls ``loc`` less than under a
Gaussian. Integrating ``weight[n]`` out gives the multivariate Student-t with ``df`` degrees of freedom,
location ``loc`` and scale matrix diag(scale^2): that is :meth:`$Class.log_likelihood` per row.

Priors are weakly informative on the scale of the data: ``center`` and ``spread`` are the per-feature
mean and standard deviation of the data being fitted (as in ``zoo/gmm.py``); without data, 0 and 1.

The guide is mean-field over the global sites, q(loc) = Normal, q(scale) = LogNormal, times the exact
conditional of each local site, q(weight[n]) = p(weight[n] | obs[n], loc, scale) =
Gamma((df + D) / 2, (df + d_n) / 2) with d_n = sum_d ((obs[n, d] - loc_d) / scale_d)^2: computed from the
sampled globals, not learned, so it works for any N.
"""

from __future__ import annotations

import math
from typing import Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

from zoo.base import ZooModel, as_matrix, check_setting


class $Class(ZooModel):
    """TODO one line for `zoo list` (now: robust location and scale, a Student-t as a scale mixture).

    :param df: degrees of freedom of the Student-t (> 0; small values tolerate more outliers).
    :param dim: feature dimension D for the generative story when no data is given.
    """

    name = "$name"
    global_sites = ("loc", "scale")            # TODO: your global latent sites (observed sites are found by tracing)
    dims = {                                   # TODO: named dims of every site (after chain, draw)
        "loc": ["feature"],
        "scale": ["feature"],
        "weight": ["point"],
        "obs": ["point", "feature"],
    }
    default_dataset = "iris-petals"            # TODO: a dataset of `zoo list` for `zoo fit $name`

    def __init__(self, df: float = 4.0, *, dim: int = 2):
        super().__init__()
        self.df = check_setting(df, "df", positive=True)
        self.dim = check_setting(dim, "dim", kind="int", positive=True)

    # --- priors --------------------------------------------------------------------------------
    def hyperparameters(self, data=None):
        """``(center, spread)`` of the priors, each of shape (D,)."""
        if data is None:
            return torch.zeros(self.dim), torch.ones(self.dim)
        spread = data.std(0) if data.shape[0] > 1 else torch.ones(data.shape[-1], dtype=data.dtype)
        return data.mean(0), torch.where(spread > 0, spread, torch.ones_like(spread))

    # --- the Pyro pair -------------------------------------------------------------------------
    def model(self, data=None, *, n: int | None = None):
        """The generative story. ``data`` is (N, D); with ``data=None`` draw ``n`` rows."""
        center, spread = self.hyperparameters(data)
        N = data.shape[0] if data is not None else (n or 1)
        half_df = torch.tensor(self.df / 2, dtype=center.dtype)
        # TODO: your priors
        loc = pyro.sample("loc", dist.Normal(center, 2 * spread).to_event(1))                     # (D,)
        scale = pyro.sample("scale", dist.LogNormal(spread.log(), 1.0).to_event(1))                # (D,)
        with pyro.plate("data", N, dim=-1):
            # TODO: your likelihood (and local latents)
            weight = pyro.sample("weight", dist.Gamma(half_df, half_df))                          # (N,)
            noise = scale / weight.sqrt().unsqueeze(-1)                                           # (N, D)
            return pyro.sample("obs", dist.Normal(loc, noise).to_event(1), obs=data)              # (N, D)

    def guide(self, data=None, *, n: int | None = None):
        """Mean-field over the globals times the exact conditional of ``weight`` (module docstring)."""
        if data is None:
            raise ValueError("data: the guide is initialized from data; got None")
        if not hasattr(self, "q_loc_loc"):
            self._init_guide(data)
        # TODO: one sample statement per latent site of the model, with the same name and shape
        loc = pyro.sample("loc", dist.Normal(self.q_loc_loc, self.q_loc_scale).to_event(1))                # (D,)
        scale = pyro.sample("scale", dist.LogNormal(self.q_scale_loc, self.q_scale_scale).to_event(1))     # (D,)
        with pyro.plate("data", data.shape[0], dim=-1):
            d2 = (((data - loc) / scale) ** 2).sum(-1)                                                    # (N,)
            pyro.sample("weight", dist.Gamma((self.df + data.shape[-1]) / 2, (self.df + d2) / 2))         # (N,)

    def _init_guide(self, data):
        init = self.initial_values(data)
        N = data.shape[0]
        self.q_loc_loc = PyroParam(init["loc"])
        self.q_loc_scale = PyroParam(init["scale"] / math.sqrt(N), constraints.positive)
        self.q_scale_loc = PyroParam(init["scale"].log())
        self.q_scale_scale = PyroParam(torch.full_like(init["scale"], 0.1), constraints.positive)

    # --- the protocol --------------------------------------------------------------------------
    def validate(self, data):
        # TODO: turn user data into what `model` expects, or raise ValueError/TypeError naming `data`
        return as_matrix(data, name="data")

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(obs[n] | loc, scale) per row, ``weight[n]`` integrated out: the multivariate Student-t
        log density. ``params`` may carry leading batch dims; the result is (*batch, N)."""
        # TODO: your pointwise log-likelihood, local latents summed or integrated out
        df, D = self.df, data.shape[-1]
        loc, scale = params["loc"].unsqueeze(-2), params["scale"].unsqueeze(-2)                    # (*b, 1, D)
        d2 = (((data - loc) / scale) ** 2).sum(-1)                                                 # (*b, N)
        const = math.lgamma((df + D) / 2) - math.lgamma(df / 2) - D / 2 * math.log(df * math.pi)
        return const - scale.log().sum(-1) - (df + D) / 2 * torch.log1p(d2 / df)

    def simulate(self, n: int, seed: int = 0, params: Mapping[str, torch.Tensor] | None = None):
        """Draw ``n`` rows; the global sites come from the prior unless ``params`` fixes them.
        Returns ``(data (n, D), truth)``, ``truth`` holding the global sites and ``weight``."""
        n = check_setting(n, "n", kind="int", positive=True)
        with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            model = self.model if params is None else pyro.poutine.condition(self.model, data=dict(params))
            trace = pyro.poutine.trace(model).get_trace(None, n=n)
        truth = {k: trace.nodes[k]["value"].detach() for k in (*self.global_sites, "weight")}
        return trace.nodes["obs"]["value"].detach(), truth

    def initial_values(self, data, seed: int = 0) -> dict[str, torch.Tensor]:
        """Data-driven starting values (constrained) for NUTS chains and the guide: median and spread."""
        _, spread = self.hyperparameters(data)
        return {"loc": data.median(0).values, "scale": spread, "weight": torch.ones(data.shape[0], dtype=data.dtype)}

    # align: the default (zoo.base.ZooModel.align) returns the global sites unchanged, right for a model
    # whose sites are identified. TODO if yours are not (label switching: zoo/gmm.py; rotation: zoo/ppca.py).
'''

TEST = '''"""Tests of zoo/$name.py against independent computations.

TODO: these check the example's maths (scipy's multivariate t, the exact conditional, recovery of known
truth against a classical ML fit). When you change the model, change them to checks of yours. The
contract suite (tests/test_contract.py) checks the protocol of every model, this one included.
"""

import math

import numpy as np
import pyro
import pytest
import scipy.stats
import torch

import inference
import zoo

NAME = "$name"


@pytest.fixture
def model():
    return zoo.get(NAME)


def test_log_likelihood_is_scipys_multivariate_t(model):
    x, truth = model.simulate(40, seed=1)
    x = model.validate(x)
    expected = scipy.stats.multivariate_t(loc=truth["loc"].numpy(), shape=np.diag(truth["scale"].numpy() ** 2),
                                          df=model.df).logpdf(x.numpy())
    np.testing.assert_allclose(model.log_likelihood(x, truth).numpy(), expected, rtol=1e-5)
    batch = {k: torch.stack([v, 2 * v]) for k, v in truth.items() if k in model.global_sites}   # (2, ...)
    ll = model.log_likelihood(x, batch)
    assert ll.shape == (2, 40)
    torch.testing.assert_close(ll[1], model.log_likelihood(x, {k: v[1] for k, v in batch.items()}))


def test_guide_weight_is_the_exact_conditional(model):
    """p(x, w) / q(w | x) does not depend on w when q is the exact conditional: it is p(x)."""
    x, truth = model.simulate(5, seed=2)
    x = model.validate(x).double()
    params = {k: v.double() for k, v in truth.items() if k in model.global_sites}
    for seed in range(3):
        with pyro.poutine.seed(rng_seed=seed):
            q = pyro.poutine.trace(pyro.poutine.condition(model.guide, data=params)).get_trace(x)
        w = q.nodes["weight"]["value"]
        p = pyro.poutine.trace(pyro.poutine.condition(model.model, data={**params, "weight": w})).get_trace(x)
        log_p = p.nodes["obs"]["fn"].log_prob(x) + p.nodes["weight"]["fn"].log_prob(w)
        log_q = q.nodes["weight"]["fn"].log_prob(w)
        torch.testing.assert_close(log_p - log_q, model.log_likelihood(x, params))


def test_recovers_the_maximum_likelihood_fit(model):
    """SVI's posterior means match the classical EM fit of the multivariate t (Liu & Rubin 1995) within half
    the ML standard error (N = 1000 points: the prior hardly matters; what is left is SVI's optimization
    noise, about a third of a standard error, and the draws' Monte Carlo error, a thirtieth), and the ML fit
    matches the truth within 4 standard errors."""
    truth = {"loc": torch.tensor([1.0, -2.0]), "scale": torch.tensor([0.5, 2.0])}
    x, _ = model.simulate(1000, seed=0, params=truth)
    post = inference.fit_svi(model, x, num_steps=400, lr=0.05, seed=0, num_samples=1000, progress=False)
    loc, scale = em_multivariate_t(x.double().numpy(), model.df)
    se_loc, se_log_scale = ml_standard_errors(scale, model.df, len(x))
    np.testing.assert_array_less(np.abs(post.mean()["loc"].numpy() - loc), se_loc / 2)
    np.testing.assert_array_less(np.abs(np.log(post.mean()["scale"].numpy() / scale)), se_log_scale / 2)
    np.testing.assert_array_less(np.abs(loc - truth["loc"].numpy()), 4 * se_loc)


def test_validate_names_the_argument(model):
    with pytest.raises(ValueError, match="data"):
        model.validate(np.array([[1.0, np.nan], [2.0, 3.0]]))
    with pytest.raises(ValueError, match="data"):
        model.validate(np.zeros((2, 3, 4)))


# --- helpers ------------------------------------------------------------------------------------


def em_multivariate_t(x, df, iterations=500):
    """Maximum likelihood of the t with diagonal scale by EM: weights w_n = (df + D) / (df + d_n)."""
    loc, scale = np.median(x, 0), x.std(0)
    for _ in range(iterations):
        w = (df + x.shape[1]) / (df + (((x - loc) / scale) ** 2).sum(1))
        loc = (w[:, None] * x).sum(0) / w.sum()
        scale = np.sqrt((w[:, None] * (x - loc) ** 2).mean(0))
    return loc, scale


def ml_standard_errors(scale, df, N):
    """Standard errors of the ML loc and log scale from the Fisher information of the multivariate t
    (Lange, Little & Taylor 1989), per point: loc_d: (df + D) / ((df + D + 2) scale_d^2); log scale:
    2 ((df + D) I - 1 1^T) / (df + D + 2)."""
    D = len(scale)
    info_log_scale = 2 * ((df + D) * np.eye(D) - np.ones((D, D))) / (df + D + 2)
    se_loc = scale * math.sqrt((df + D + 2) / ((df + D) * N))
    return se_loc, np.sqrt(np.diag(np.linalg.inv(info_log_scale)) / N)
'''
