"""Hidden Markov model with Gaussian, categorical, Poisson or Bernoulli (multi-hot) emissions.

Generative story (S states; B sequences, sequence b observed for its first L_b <= T steps; E is
the shape of one observation)::

    initial             ~ Dirichlet(1_S)                                      (S,)
    for i in 1..S:                                   plate "states"     (dim -1)
        transition[i]   ~ Dirichlet(1_S)                                      (S, S)  row i: p(z_t | z_t-1 = i)
        theta[i]        ~ emission prior (below)                              (S, ...)
    for b in 1..B:                                   plate "sequences"  (dim -1)
        z[b, 0]         ~ Categorical(initial)               site states_0   (B,)      enumerated
        x[b, 0]         ~ Emission(theta[z[b, 0]])           site obs_0      (B, *E)
        for t in 1..T-1:                             pyro.markov
            z[b, t]     ~ Categorical(transition[z[b, t-1]]) site states_t   (B,)      enumerated
            x[b, t]     ~ Emission(theta[z[b, t]])           site obs_t      (B, *E)   masked for t >= L_b

Emissions (D features, V keys or symbols)::

    gaussian     locs (S, D) ~ Normal(center, 2 spread)   scales (S, D) ~ LogNormal(log(spread / 2), 1)
                 x_t ~ Normal(locs[z_t], scales[z_t]) (diagonal)                      E = (D,)
    categorical  emission_probs (S, V) ~ Dirichlet(1_V)    x_t ~ Categorical(emission_probs[z_t])    E = ()
    poisson      rates (S,) ~ LogNormal(log(mean), 1.5)    x_t ~ Poisson(rates[z_t])                 E = ()
    bernoulli    emission_probs (S, V) ~ Beta(1, 1)        x_t ~ Bernoulli(emission_probs[z_t])      E = (V,)

``center``/``spread`` are the per-feature mean and standard deviation of the observed steps and
``mean`` their mean count (empirical-Bayes scales, as for the GMM); without data 0, 1 and 1.

**Convention.** ``initial`` is the law of the state OF the first observation, p(z_0), as in Rabiner
(1989) and hmmlearn's ``startprob_``. Pyro's ``DiscreteHMM`` reads its ``initial_logits`` as the
state BEFORE the first observation, so ``DiscreteHMM(log initial, log transition, ...)`` is the HMM
whose first state has law ``initial @ transition``; the tests prove the textbook convention against
hmmlearn and show the difference.

**Data.** :class:`Sequences` ``(values (B, T, *E), lengths (B,))`` is a ragged batch padded to T
(padding is ignored and may hold NaN); a bare array is one sequence ``(T, *E)`` (``(T,)`` for one
Gaussian feature or one Bernoulli key, ``(T, 1)`` for symbols/counts).

**Two forms of one model** (see ``zoo.base.ZooModel`` and ``inference.target.Target``).
:meth:`HiddenMarkovModel.model` above keeps the states explicit: it is the generative story, what
``infer_discrete`` draws ``states_t`` from (``inference.discrete_draws``), and what ``TraceEnum_ELBO``
sums the states out of when ``m.model`` is passed to ``inference.fit_svi`` as a plain callable.
:meth:`HiddenMarkovModel.marginal_model` has the same global sites and priors and one observed site
``obs`` (B, T, *E) whose density is the forward algorithm (:func:`forward_log_prob`), vectorized over
sequences and posterior draws: on the CPU the compiled forward recursion with the backward recursion as
its gradient (:mod:`zoo.forward_backward`), on a GPU a balanced tree of batched ``matmul`` (O(log T)
sequential steps); no Python loop over time either way. MAP maximizes it, the posterior predictive
replicates data from it, and SVI fits it too (``Trace_ELBO``): the guide covers only the global
sites (``inference.target.Target.fits_marginal``), so this loss equals the ``TraceEnum_ELBO`` of ``model`` draw by draw
(tested, step by step), at a fraction of the cost. NUTS samples the same density through
:meth:`HiddenMarkovModel.log_density`, its closed form on unconstrained coordinates with the exact
gradient, which skips Pyro's trace and autograd at every leapfrog step.

Also here: Viterbi :meth:`~HiddenMarkovModel.decode`, forward-backward :meth:`~HiddenMarkovModel.smooth`
(marginals as the gradient of log p(x) with respect to the log emission densities), Baum-Welch
:meth:`~HiddenMarkovModel.em` (expected counts by the same gradient), and :meth:`~HiddenMarkovModel.align`,
which relabels states (label switching) by matching each draw's emission parameters to a reference.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Mapping, NamedTuple

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import scipy.special
import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution
from pyro.nn import PyroParam
from pyro.ops.indexing import Vindex
from torch.distributions import constraints
from torch.distributions.transforms import ExpTransform, SigmoidTransform, Transform, identity_transform
from torch.distributions.utils import clamp_probs
from tqdm.auto import tqdm

from zoo import forward_backward as fb
from zoo.base import ZooModel, as_float_tensor, check_positive_int, check_setting
from zoo.forward_backward import ForwardBackward
from zoo.gmm import GaussianMixture, _match, _permute, kmeans

log = logging.getLogger(__name__)

EMISSIONS = {  # emission family -> its global sites (after "initial", "transition")
    "gaussian": ("locs", "scales"),
    "categorical": ("emission_probs",),
    "poisson": ("rates",),
    "bernoulli": ("emission_probs",),
}
_EVENT_DIM = {"gaussian": 1, "categorical": 0, "poisson": 0, "bernoulli": 1}   # rank of one observation
#: the largest categorical vocabulary accepted (S x V emission probabilities per posterior draw)
MAX_SYMBOLS = 100_000
_LOG_2PI = math.log(2 * math.pi)
_CHUNK = 2**24   # posterior draws are processed in chunks of about this many (draw, sequence, step, S^2) values


class Sequences(NamedTuple):
    """A batch of sequences padded to a common length: ``values`` (B, T, *E), ``lengths`` (B,)."""

    values: torch.Tensor
    lengths: torch.Tensor | None = None

    @property
    def num_observations(self) -> int:
        """Observed time steps in all sequences: the unit held-out scores are reported per."""
        return int(self.lengths.sum())

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) True on observed steps, False on padding."""
        T = self.values.shape[1]
        return torch.arange(T, device=self.lengths.device) < self.lengths.unsqueeze(-1)


class HiddenMarkovModel(ZooModel):
    """Hidden Markov model with enumerated states (see the module docstring).

    :param n_states: number of hidden states S (>= 1).
    :param emission: "gaussian", "categorical", "poisson" or "bernoulli".
    :param dim: features D (gaussian) or keys V (bernoulli); default: from the data.
    :param n_symbols: vocabulary size V (categorical); default: the largest symbol in the data + 1.
    """

    name = "hmm"
    default_dataset = "goog-returns"

    def __init__(self, n_states: int = 2, *, emission: str = "gaussian", dim: int | None = None,
                 n_symbols: int | None = None):
        super().__init__()
        self.n_states = check_setting(n_states, "n_states", kind="int", positive=True)
        self.emission = check_setting(emission, "emission", kind="choice", choices=tuple(EMISSIONS))
        self.dim = check_setting(dim, "dim", kind="int", positive=True, allow_none=True)
        self.n_symbols = check_setting(n_symbols, "n_symbols", kind="int", positive=True, allow_none=True)
        if (self.n_symbols or 0) > MAX_SYMBOLS:
            raise ValueError(f"n_symbols: {self.n_symbols} symbols exceed the limit of {MAX_SYMBOLS}; recode the "
                             "symbols to 0..V-1 with V the number of distinct ones")
        self.global_sites = ("initial", "transition", *EMISSIONS[emission])
        event = {"gaussian": "feature", "bernoulli": "feature", "categorical": "symbol"}.get(emission)
        self.dims = {"initial": ["state"], "transition": ["state", "next_state"],
                     **{k: ["state", event] if event else ["state"] for k in EMISSIONS[emission]},
                     "obs": ["sequence", "time", "feature"][:2 + _EVENT_DIM[emission]]}

    # --- priors and the Pyro pair -----------------------------------------------------------
    def hyperparameters(self, data: Sequences | None = None):
        """Data-scale prior settings: gaussian ``(center, spread)`` (D,) each; poisson ``(mean,)``."""
        dtype = _float_dtype(data)
        x = data.values[data.mask] if data is not None else None      # (N, *E) observed steps
        if self.emission == "gaussian":
            D = x.shape[-1] if x is not None else self.dim or 1
            if x is None:
                return torch.zeros(D, dtype=dtype), torch.ones(D, dtype=dtype)
            spread = x.std(0) if x.shape[0] > 1 else torch.ones(D, dtype=dtype)
            return x.mean(0), torch.where(spread > 0, spread, torch.ones_like(spread))
        if self.emission == "poisson":
            return (torch.tensor(1.0, dtype=dtype) if x is None else x.mean().clamp_min(0.1),)
        return ()

    def _sample_globals(self, data: Sequences | None) -> dict[str, torch.Tensor]:
        """The global sites: initial (S,), transition (S, S) and the emission parameters (S, ...)."""
        S, dtype = self.n_states, _float_dtype(data)
        hyper = self.hyperparameters(data)
        params = {"initial": pyro.sample("initial", dist.Dirichlet(torch.ones(S, dtype=dtype)))}     # (S,)
        with pyro.plate("states", S, dim=-1):
            params["transition"] = pyro.sample("transition", dist.Dirichlet(torch.ones(S, S, dtype=dtype)))  # (S, S)
            if self.emission == "gaussian":
                center, spread = hyper
                params["locs"] = pyro.sample("locs", dist.Normal(center, 2 * spread).to_event(1))            # (S, D)
                params["scales"] = pyro.sample(
                    "scales", dist.LogNormal(spread.log() - math.log(2.0), 1.0).to_event(1))               # (S, D)
            elif self.emission == "poisson":
                params["rates"] = pyro.sample("rates", dist.LogNormal(hyper[0].log(), 1.5))                  # (S,)
            elif self.emission == "categorical":
                V = self._vocabulary(data)
                params["emission_probs"] = pyro.sample(
                    "emission_probs", dist.Dirichlet(torch.ones(V, dtype=dtype)))                           # (S, V)
            else:
                V = data.values.shape[-1] if data is not None else self.dim or 1
                params["emission_probs"] = pyro.sample(
                    "emission_probs", dist.Beta(torch.ones(V, dtype=dtype), 1.0).to_event(1))               # (S, V)
        return params

    def model(self, data: Sequences | None = None, *, n: int | None = None):
        """The generative story with the states enumerated (one ``pyro.markov`` step per time step).

        ``data`` is a validated :class:`Sequences`; with ``data=None`` draw one sequence of ``n`` steps.
        """
        B, T = data.values.shape[:2] if data is not None else (1, n or 1)
        params = self._sample_globals(data)
        with pyro.plate("sequences", B, dim=-1):
            z = None
            for t in pyro.markov(range(T)):
                probs = params["initial"] if t == 0 else Vindex(params["transition"])[..., z, :]
                z = pyro.sample(f"states_{t}", dist.Categorical(probs), infer={"enumerate": "parallel"})  # (B,)
                with poutine.mask(mask=data.mask[:, t] if data is not None else True):
                    pyro.sample(f"obs_{t}", self._emission_dist(_at_state(params, z)),
                                obs=data.values[:, t] if data is not None else None)                  # (B, *E)

    def marginal_model(self, data: Sequences | None = None, *, n: int | None = None):
        """The same model with the states summed out by the forward algorithm: one site ``obs`` (B, T, *E)."""
        params = self._sample_globals(data)
        observed = data.values if data is not None else None
        if data is None:  # shapes only
            data = Sequences(torch.zeros(1, n or 1, *self._event_shape(None)), torch.tensor([n or 1]))
        with pyro.plate("sequences", data.values.shape[0], dim=-1):
            return pyro.sample("obs", _ForwardAlgorithm(self, params, data), obs=observed)       # (B, T, *E)

    def log_density(self, data: Sequences):
        """The log joint of :meth:`marginal_model` on unconstrained coordinates, with its exact gradient.

        What ``inference.run_nuts`` samples instead of tracing the Pyro model at every leapfrog step
        (the two are checked equal at the starting point of every run). Returns ``(transforms, fn)``:
        ``transforms[site]`` maps unconstrained values onto the site's support (simplex rows
        ``initial`` and ``transition``, and categorical ``emission_probs``, by additive log-ratios,
        :class:`LogRatioToSimplex`; ``scales`` and ``rates`` by exp; Bernoulli ``emission_probs`` by the
        logistic function; ``locs`` unchanged); ``fn(u)`` takes a dict of unconstrained float64 numpy
        arrays and returns ``(log p(params, x) + log |det J|, gradient dict)``. In these coordinates
        each Dirichlet(alpha) row y = softmax(u, 0) has log p(y) + log |J| = sum_k alpha_k log y_k + const,
        and the forward algorithm's gradient is forward-backward (:mod:`zoo.forward_backward`).
        """
        seqs = data if isinstance(data, Sequences) else self.validate(data)
        lengths = seqs.lengths.numpy().astype(np.int64)
        x = seqs.values.numpy().astype(np.int64 if self.emission == "categorical" else np.float64)
        hyper = [h.double().numpy() for h in self.hyperparameters(seqs)]
        simplex = LogRatioToSimplex()
        transforms = {"initial": simplex, "transition": simplex}
        if self.emission == "gaussian":
            transforms.update(locs=identity_transform, scales=ExpTransform())
        elif self.emission == "poisson":
            transforms.update(rates=ExpTransform())
            log_factorial = scipy.special.gammaln(x + 1)[..., None]                  # (B, T, 1)
        elif self.emission == "categorical":
            transforms.update(emission_probs=simplex)
            V = self._vocabulary(seqs)
            one_hot = np.eye(V)[x]                                                  # (B, T, V)
        else:
            transforms.update(emission_probs=SigmoidTransform())

        def fn(u):
            log_init, log_trans = _log_simplex(u["initial"]), _log_simplex(u["transition"])  # (S,), (S, S)
            if self.emission == "gaussian":
                center, spread = hyper
                locs, log_scales = u["locs"], u["scales"]                                      # (S, D) each
                z = (x[:, :, None, :] - locs) / np.exp(log_scales)                            # (B, T, S, D)
                log_e = (-0.5 * z**2 - log_scales).sum(-1) - 0.5 * z.shape[-1] * _LOG_2PI      # (B, T, S)
            elif self.emission == "poisson":
                log_rates = u["rates"]                                                         # (S,)
                log_e = x[..., None] * log_rates - np.exp(log_rates) - log_factorial           # (B, T, S)
            elif self.emission == "categorical":
                log_probs = _log_simplex(u["emission_probs"])                                 # (S, V)
                log_e = log_probs.T[x]                                                         # (B, T, S)
            else:
                logits = u["emission_probs"]                                                   # (S, V)
                log_p, log_q = -np.logaddexp(0, -logits), -np.logaddexp(0, logits)            # log p, log(1 - p)
                log_e = x @ log_p.T + (1 - x) @ log_q.T                                        # (B, T, S)
            ll, saved = fb.forward(log_init[None], log_trans[None], log_e[None], lengths)
            g_init, g_trans, gamma = (g[0] for g in fb.gradient(saved, np.ones_like(ll)))      # gamma (B, T, S)
            value = ll.sum()
            grad = {}
            value += _dirichlet_log_ratio(log_init, 1 + g_init, grad, "initial")
            value += _dirichlet_log_ratio(log_trans, 1 + g_trans, grad, "transition")
            if self.emission == "gaussian":
                prior_scale = 2 * spread
                value += (-0.5 * ((locs - center) / prior_scale) ** 2 - np.log(prior_scale)
                          - 0.5 * _LOG_2PI).sum()
                grad["locs"] = (-(locs - center) / prior_scale**2
                                + np.einsum("bts,btsd->sd", gamma, z) / np.exp(log_scales))
                mean = np.log(spread) - math.log(2.0)
                value += (-0.5 * (log_scales - mean) ** 2 - 0.5 * _LOG_2PI).sum()
                grad["scales"] = -(log_scales - mean) + np.einsum("bts,btsd->sd", gamma, z**2 - 1)
            elif self.emission == "poisson":
                mean, sd = np.log(hyper[0]), 1.5
                value += (-0.5 * ((log_rates - mean) / sd) ** 2 - math.log(sd) - 0.5 * _LOG_2PI).sum()
                grad["rates"] = -(log_rates - mean) / sd**2 + np.einsum("bts,bt->s", gamma, x) \
                    - gamma.sum((0, 1)) * np.exp(log_rates)
            elif self.emission == "categorical":
                counts = np.einsum("bts,btv->sv", gamma, one_hot)                            # (S, V)
                value += _dirichlet_log_ratio(log_probs, 1 + counts, grad, "emission_probs")
            else:
                p = np.exp(log_p)
                value += (log_p + log_q).sum()                                              # Beta(1, 1) = 1, log |J|
                grad["emission_probs"] = (1 - 2 * p + np.einsum("bts,btv->sv", gamma, x)
                                          - gamma.sum((0, 1))[:, None] * p)
            return float(value), grad

        return transforms, fn

    def guide(self, data: Sequences | None = None, *, n: int | None = None):
        """Mean-field guide over the global sites; the states are summed out, not guided.

        q(initial), q(transition[i]) Dirichlet; q(locs) Normal; q(scales), q(rates) LogNormal;
        q(emission_probs) Dirichlet (categorical) or Beta (bernoulli). Parameters are created on the
        first call, from :meth:`initial_values` of the data.
        """
        if "q_initial" not in self._pyro_params:
            self._init_guide(data)
        one = self.n_states == 1   # a Dirichlet over one state is a point mass: nothing to learn (Adam would drift)
        pyro.sample("initial", dist.Dirichlet(self.q_initial.detach() if one else self.q_initial))   # (S,)
        with pyro.plate("states", self.n_states, dim=-1):
            pyro.sample("transition", dist.Dirichlet(self.q_transition.detach() if one else self.q_transition))
            if self.emission == "gaussian":
                pyro.sample("locs", dist.Normal(self.q_locs_loc, self.q_locs_scale).to_event(1))      # (S, D)
                pyro.sample("scales", dist.LogNormal(self.q_scales_loc, self.q_scales_scale).to_event(1))
            elif self.emission == "poisson":
                pyro.sample("rates", dist.LogNormal(self.q_rates_loc, self.q_rates_scale))            # (S,)
            elif self.emission == "categorical":
                pyro.sample("emission_probs", dist.Dirichlet(self.q_emission_probs))                 # (S, V)
            else:
                pyro.sample("emission_probs", dist.Beta(self.q_emission_a, self.q_emission_b).to_event(1))

    def _init_guide(self, data):
        """Start q at the posterior given the k-means labels of :meth:`initial_values` (counts + 1)."""
        if data is None:
            raise ValueError("data: the HMM guide is initialized from data; got None")
        emission, labels = self._cluster(data, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        first, pairs, visits = _label_counts(labels, self.n_states, emission)   # (S,), (S, S), (S, 1)
        pos = constraints.positive
        self.q_initial = PyroParam(first, pos)
        self.q_transition = PyroParam(pairs, pos)
        if self.emission == "gaussian":
            self.q_locs_loc = PyroParam(emission["locs"])
            self.q_locs_scale = PyroParam(emission["scales"] / visits.sqrt(), pos)
            self.q_scales_loc = PyroParam(emission["scales"].log())
            self.q_scales_scale = PyroParam((2 * visits).rsqrt().expand_as(emission["scales"]).clone(), pos)
        elif self.emission == "poisson":
            rates = emission["rates"]
            self.q_rates_loc = PyroParam(rates.log())
            self.q_rates_scale = PyroParam((rates * visits.squeeze(-1)).rsqrt(), pos)
        elif self.emission == "categorical":
            self.q_emission_probs = PyroParam(emission["emission_probs"] * visits + 1, pos)
        else:
            p = emission["emission_probs"]
            self.q_emission_a = PyroParam(p * visits + 1, pos)
            self.q_emission_b = PyroParam((1 - p) * visits + 1, pos)

    # --- emissions ----------------------------------------------------------------------------
    def _emission_dist(self, p: Mapping[str, torch.Tensor]):
        """The emission distribution for (already state-indexed) parameters ``p``."""
        if self.emission == "gaussian":
            return dist.Normal(p["locs"], p["scales"]).to_event(1)
        if self.emission == "poisson":
            return dist.Poisson(p["rates"])
        if self.emission == "categorical":
            return dist.Categorical(p["emission_probs"])
        return dist.Bernoulli(p["emission_probs"]).to_event(1)

    def _log_emission(self, values: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(x_bt | z_bt = s) for every state: values (B, T, *E), params (*b, S, ...) -> (*b, B, T, S)."""
        if self.emission == "bernoulli":  # one matmul over keys instead of a (.., S, V) tensor
            p = clamp_probs(params["emission_probs"])                               # (*b, S, V)
            weights = (p.log() - (-p).log1p()).unsqueeze(-3).transpose(-1, -2)     # (*b, 1, V, S)
            return values @ weights + (-p).log1p().sum(-1)[..., None, None, :]
        per_state = {k: _insert_sequence_dims(params[k], _param_event_dim(k)) for k in EMISSIONS[self.emission]}
        return self._emission_dist(per_state).log_prob(values.unsqueeze(2))          # (B, T, 1, *E) -> (*b, B, T, S)

    def _event_shape(self, data: Sequences | None) -> tuple[int, ...]:
        if _EVENT_DIM[self.emission] == 0:
            return ()
        return (data.values.shape[-1],) if data is not None else (self.dim or 1,)

    def _vocabulary(self, data: Sequences | None) -> int:
        if self.n_symbols is not None:
            return self.n_symbols
        if data is None:
            raise ValueError("n_symbols: the vocabulary size is needed to simulate categorical emissions")
        return int(data.values[data.mask].max()) + 1

    # --- the forward algorithm and friends ------------------------------------------------------
    def _log_potentials(self, data: Sequences, params: Mapping[str, torch.Tensor]):
        """log initial (*b, S), log transition (*b, S, S), log emission (*b, B, T, S)."""
        return (params["initial"].log(), params["transition"].log(), self._log_emission(data.values, params))

    def log_likelihood(self, data: Sequences, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(x_b | params) per sequence by the forward algorithm (states summed out): (*batch, B).

        ``data`` is a :class:`Sequences` from :meth:`validate` or anything it accepts (a bare sequence
        gives (*batch, 1)). Leading batch dims of ``params`` (posterior draws) are processed in chunks
        to bound memory.
        """
        if not isinstance(data, Sequences):
            data = self.validate(data)
        batch = params["initial"].shape[:-1]
        flat = {k: params[k].reshape(-1, *params[k].shape[len(batch):]) for k in self.global_sites}
        B, T = data.values.shape[:2]
        n = flat["initial"].shape[0]
        step = max(1, _CHUNK // (B * T * self.n_states**2))
        if not batch or n <= step:
            out = forward_log_prob(*self._log_potentials(data, params if not batch else flat), data.mask)
            return out.reshape(*batch, B)
        chunks = [forward_log_prob(*self._log_potentials(data, {k: v[i:i + step] for k, v in flat.items()}),
                                   data.mask) for i in range(0, n, step)]
        return torch.cat(chunks).reshape(*batch, B)

    def smooth(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Posterior state marginals p(z_bt = s | x_b, params), (*batch, B, T, S); 0 on padding.

        Forward-backward by automatic differentiation: d log p(x) / d log e_t(s) = p(z_t = s | x),
        where e_t(s) is the emission density of step t under state s. A bare sequence gives (T, S).
        """
        seqs = self.validate(data)
        with torch.enable_grad():
            log_init, log_trans, log_emit = self._log_potentials(seqs, _detached(params))
            log_emit = log_emit.requires_grad_()
            total = forward_log_prob(log_init, log_trans, log_emit, seqs.mask).sum()
            (marginals,) = torch.autograd.grad(total, log_emit)
        return marginals if isinstance(data, Sequences) else marginals[..., 0, :, :]

    def decode(self, data, params: Mapping[str, torch.Tensor]):
        """Viterbi: the most likely state path and its log joint probability log p(x, z*).

        Returns ``(path (B, T) long, -1 on padding; log_prob (B,))``, or ``((T,), scalar)`` for a bare
        sequence. ``params`` is one parameter set (no draw dims). A loop over time, vectorized over
        sequences and states (decoding is not on an inference hot path).
        """
        seqs = self.validate(data)
        params = _detached(params)
        if params["initial"].dim() != 1:
            raise ValueError(f"params: decode takes one parameter set, got initial of shape "
                             f"{tuple(params['initial'].shape)}; pass e.g. the posterior mean")
        log_init, log_trans, log_emit = self._log_potentials(seqs, params)
        B, T, S = log_emit.shape
        mask, stay = seqs.mask, torch.arange(S).expand(B, S)
        score = log_init + log_emit[:, 0]                                  # (B, S) best log p(x_0..t, z_t = s)
        back = torch.empty(B, T, S, dtype=torch.long)                     # back[b, t, s] = best z_t-1
        back[:, 0] = stay
        for t in range(1, T):
            best, arg = (score.unsqueeze(-1) + log_trans).max(-2)          # over the previous state
            valid = mask[:, t, None]
            score = torch.where(valid, best + log_emit[:, t], score)
            back[:, t] = torch.where(valid, arg, stay)                     # padding: stay put
        log_prob, state = score.max(-1)
        path = torch.empty(B, T, dtype=torch.long)
        for t in range(T - 1, -1, -1):
            path[:, t] = state
            state = back[:, t].gather(-1, state.unsqueeze(-1)).squeeze(-1)
        path = torch.where(mask, path, -1)
        return (path, log_prob) if isinstance(data, Sequences) else (path[0], log_prob[0])

    def em(self, data, *, seed: int = 0, init: Mapping[str, torch.Tensor] | None = None,
           max_iter: int = 500, tol: float | None = 1e-6, progress: bool = True) -> dict[str, torch.Tensor]:
        """Baum-Welch: maximum-likelihood parameters by expectation-maximization.

        E-step: expected state and transition counts, the gradients of the forward algorithm with
        respect to log initial / log transition / log emission potentials. M-step: closed form per
        emission family (weighted means, variances, frequencies). Starts from :meth:`initial_values`
        (seeded) unless ``init`` is given; stops when the log-likelihood per observation improves by
        less than ``tol`` (``None``: run ``max_iter`` iterations).
        """
        seqs = self.validate(data)
        max_iter = check_positive_int(max_iter, "max_iter")
        params = _detached(init) if init is not None else self.initial_values(seqs, seed=seed)
        n_obs = float(seqs.lengths.sum())
        previous = -math.inf
        bar = tqdm(range(max_iter), desc="Baum-Welch", disable=not progress, leave=False)
        for it in bar:
            with torch.enable_grad():
                potentials = [p.detach().requires_grad_() for p in self._log_potentials(seqs, params)]
                ll = forward_log_prob(*potentials, seqs.mask, exact_padding=True).sum()
                counts_initial, counts_transition, gamma = torch.autograd.grad(ll, potentials)
            ll = float(ll.detach()) / n_obs
            bar.set_postfix(loglik_per_step=f"{ll:.5g}")
            if tol is not None and ll - previous < tol:
                break
            previous = ll
            params = {"initial": counts_initial / counts_initial.sum(),
                      "transition": _normalize_rows(counts_transition, params["transition"]),
                      **self._m_step(seqs, gamma, params)}
        bar.close()
        log.info("Baum-Welch: %d iterations, log-likelihood per step %.6g", it + 1, ll)
        return params

    def _m_step(self, seqs: Sequences, gamma: torch.Tensor, params) -> dict[str, torch.Tensor]:
        """Emission parameters maximizing the expected complete-data log-likelihood (weights gamma (B, T, S))."""
        w = gamma[seqs.mask]                                      # (N, S)
        x = seqs.values[seqs.mask]                                # (N, *E)
        n = w.sum(0)                                              # (S,) expected visits
        seen = n > 0                                              # a state never visited keeps its parameters
        if self.emission == "categorical":
            x = F.one_hot(x, params["emission_probs"].shape[-1]).to(w.dtype)
        sums = w.T @ (x if x.dim() == 2 else x.unsqueeze(-1))    # (S, D or V or 1)
        mean = sums / n.clamp_min(1e-300).unsqueeze(-1)
        if self.emission == "gaussian":
            squares = w.T @ x**2
            var = (squares - 2 * mean * sums + mean**2 * n.unsqueeze(-1)) / n.clamp_min(1e-300).unsqueeze(-1)
            floor = 1e-6 * self.hyperparameters(seqs)[1] ** 2
            new = {"locs": mean, "scales": torch.maximum(var, floor).sqrt()}
        elif self.emission == "poisson":
            new = {"rates": mean.squeeze(-1)}
        else:
            new = {"emission_probs": mean}
        return {k: torch.where(seen.reshape(-1, *[1] * (v.dim() - 1)), v, params[k]) for k, v in new.items()}

    # --- the protocol ---------------------------------------------------------------------------
    def validate(self, data) -> Sequences:
        """A :class:`Sequences` with padding set to 0 (see the module docstring), or a clear error."""
        if isinstance(data, Sequences):
            values, lengths, batched = data.values, data.lengths, True
        elif isinstance(data, Mapping) and "values" in data:
            values, lengths, batched = data["values"], data.get("lengths"), True
        else:
            values, lengths, batched = data, None, False
        ev = _EVENT_DIM[self.emission]
        x = as_float_tensor(values, name="data", allow_nan=True,
                            dtype=None if torch.is_tensor(values) and values.is_floating_point() else torch.float64)
        if not batched:
            x = x.unsqueeze(0)
        if ev == 1 and x.dim() == 2:        # one Gaussian feature or one Bernoulli key
            x = x.unsqueeze(-1)
        if ev == 0 and x.dim() == 3 and x.shape[-1] == 1:   # a (T, 1) column of symbols or counts
            x = x.squeeze(-1)
        if x.dim() != 2 + ev:
            expect = ("(T, D) or (T,)" if self.emission == "gaussian" else "(T, V)" if ev else "(T,)")
            raise ValueError(f"data: expected one sequence of shape {expect} or Sequences with values "
                             f"(B, T{', ' + ('D' if self.emission == 'gaussian' else 'V') if ev else ''}); "
                             f"got shape {tuple(values.shape) if hasattr(values, 'shape') else tuple(x.shape)}")
        B, T = x.shape[:2]
        lengths = self._validate_lengths(lengths, B, T)
        mask = Sequences(x, lengths).mask                                    # (B, T)
        if ev == 1 and (self.dim is not None and x.shape[-1] != self.dim):
            raise ValueError(f"data: expected {self.dim} {'features' if self.emission == 'gaussian' else 'keys'} "
                             f"(dim={self.dim}), got {x.shape[-1]}")
        observed = x[mask]                                                    # (N, *E)
        _reject(torch.isnan(observed), observed, mask, "NaN within a sequence (remove or impute it)")
        self._check_support(observed, mask)
        x = torch.where(mask.reshape(B, T, *[1] * ev), x, torch.zeros((), dtype=x.dtype))
        if self.emission == "categorical":
            x = x.long()
        return Sequences(x, lengths)

    def _validate_lengths(self, lengths, B: int, T: int) -> torch.Tensor:
        if lengths is None:
            return torch.full((B,), T, dtype=torch.long)
        t = as_float_tensor(lengths, name="lengths", dtype=torch.float64).reshape(-1)
        if t.numel() != B:
            raise ValueError(f"lengths: expected one length per sequence ({B}), got {t.numel()}")
        if (t != t.round()).any():
            raise ValueError(f"lengths: expected integers, got {t.tolist()[:5]}...")
        if (t < 1).any():
            b = int((t < 1).nonzero()[0, 0])
            raise ValueError(f"lengths: sequence {b} is empty (length {int(t[b])}); every sequence needs at least "
                             "one observation")
        if (t > T).any():
            b = int((t > T).nonzero()[0, 0])
            raise ValueError(f"lengths: sequence {b} has length {int(t[b])}, longer than the padded length T={T}")
        return t.long()

    def _check_support(self, observed: torch.Tensor, mask):
        """Emission-specific checks on the observed steps (N, *E), naming the first offending step."""
        integer = observed == observed.round()
        if self.emission == "poisson":
            _reject(~integer | (observed < 0), observed, mask, "Poisson counts must be non-negative integers")
        elif self.emission == "bernoulli":
            _reject((observed != 0) & (observed != 1), observed, mask, "Bernoulli observations must be 0 or 1")
        elif self.emission == "categorical":
            _reject(~integer | (observed < 0), observed, mask, "categorical symbols must be integers 0..V-1")
            if self.n_symbols is not None:
                _reject(observed >= self.n_symbols, observed, mask,
                        f"symbol outside the vocabulary 0..{self.n_symbols - 1} (n_symbols={self.n_symbols})")
            V = int(observed.max()) + 1 if self.n_symbols is None else self.n_symbols
            if V > MAX_SYMBOLS:
                raise ValueError(f"data: the largest symbol {V - 1} implies a vocabulary of {V} symbols, more than "
                                 f"{MAX_SYMBOLS}; recode the symbols to 0..V-1 with V the number of distinct ones")
            if V > len(observed):
                _warn_vocabulary(V, len(observed))

    def simulate(self, n: int, seed: int = 0, params: Mapping[str, torch.Tensor] | None = None,
                 n_sequences: int | None = None):
        """Draw a sequence of ``n`` steps (or ``n_sequences`` of them). Parameters come from the prior
        unless ``params`` fixes them.

        Returns ``(data, truth)``: data is ``(n, *E)``, or :class:`Sequences` ``(n_sequences, n, *E)``;
        ``truth`` holds the global sites and ``states`` ((n,) or (n_sequences, n)).
        """
        n = check_positive_int(n, "n")
        B = 1 if n_sequences is None else check_positive_int(n_sequences, "n_sequences")
        with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            params = _detached(params if params is not None else self._sample_globals(None))
            states, values = self.sample_sequences(params, B, n)
        truth = {**{k: params[k] for k in self.global_sites}, "states": states if n_sequences else states[0]}
        if n_sequences is None:
            return values[0], truth
        return Sequences(values, torch.full((B,), n, dtype=torch.long)), truth

    def sample_sequences(self, params: Mapping[str, torch.Tensor], n_sequences: int, n: int):
        """Forward simulation: states (B, T) long and observations (B, T, *E) (torch's global RNG)."""
        uniform = torch.rand(n, n_sequences, 1, dtype=params["initial"].dtype)
        cum_init, cum_trans = params["initial"].cumsum(-1), params["transition"].cumsum(-1)
        last = cum_init.shape[-1] - 1
        states = torch.empty(n_sequences, n, dtype=torch.long)
        states[:, 0] = torch.searchsorted(cum_init, uniform[0]).squeeze(-1).clamp_max(last)
        for t in range(1, n):  # inverse-CDF step of the Markov chain, vectorized over sequences
            rows = cum_trans[states[:, t - 1]]
            states[:, t] = torch.searchsorted(rows, uniform[t]).squeeze(-1).clamp_max(last)
        values = self._emission_dist(_at_state(params, states)).sample()
        return states, values

    def align(self, draws, reference=None):
        """Relabel the states of every draw to a common labeling.

        Each draw's states are matched (Hungarian algorithm) to a reference by their emission
        parameters in units of the reference's emission spread (see :func:`_state_signature`); the
        reference is the draw nearest the middle of the run, refined by averaging (Stephens-style),
        or the mean of ``reference``. Without a reference the states are then ordered by the first
        coordinate of their emission mean (gaussian locs[:, 0], poisson rates, probs[:, 0]).
        ``initial`` and ``emission`` parameters are permuted along the state axis, ``transition``
        along both axes.
        """
        sites = self.global_sites
        batch = draws["initial"].shape[:-1]
        flat = {k: draws[k].reshape(-1, *draws[k].shape[len(batch):]) for k in sites}
        if reference is not None:
            ref = {k: reference[k].reshape(-1, *reference[k].shape[-_param_rank(k):]).mean(0) for k in sites}
            iterations = 2
        else:
            mid = flat["initial"].shape[0] // 2
            ref = {k: v[mid] for k, v in flat.items()}
            iterations = 10
        perm = None
        for _ in range(iterations):
            center, _ = self._state_signature(flat)
            ref_center, ref_spread = self._state_signature(ref)
            new_perm = _match(center, ref_center, ref_spread)
            relabeled = _relabel(flat, new_perm)
            ref = {k: v.mean(0) for k, v in relabeled.items()}
            if perm is not None and torch.equal(new_perm, perm):
                break
            perm = new_perm
        if reference is None:
            order = torch.argsort(self._state_signature(ref)[0][:, 0])
            relabeled = _relabel(relabeled, order.expand(relabeled["initial"].shape[0], -1))
        return {k: relabeled[k].reshape(*batch, *relabeled[k].shape[1:]) for k in sites}

    def _state_signature(self, params):
        """Per state: emission mean (..., S, F) and spread (..., S, F) for matching states across draws."""
        if self.emission == "gaussian":
            locs, scales = params["locs"], params["scales"]
            return torch.cat([locs, scales.log()], -1), torch.cat([scales, torch.ones_like(scales)], -1)
        if self.emission == "poisson":
            rates = params["rates"].unsqueeze(-1)
            return rates, rates.sqrt().clamp_min(0.05)
        probs = params["emission_probs"]
        return probs, (probs * (1 - probs)).sqrt().clamp_min(0.05)

    def initial_values(self, data: Sequences, seed: int = 0) -> dict[str, torch.Tensor]:
        """Cluster the observed steps (k-means++ on the emission features, seeded), then read the
        emission parameters, first-state and transition frequencies off the cluster labels (add-one
        smoothing). Different seeds give different starts."""
        emission, labels = self._cluster(data, seed)
        first, pairs, _ = _label_counts(labels, self.n_states, emission)
        return {"initial": first / first.sum(), "transition": pairs / pairs.sum(-1, keepdim=True), **emission}

    def _cluster(self, data: Sequences, seed: int):
        """k-means++ of the observed steps: emission parameters per cluster and labels (B, T) (-1 on padding)."""
        S, mask = self.n_states, data.mask
        x = data.values[mask]                                                   # (N, *E)
        dtype = _float_dtype(data)
        if self.emission == "gaussian":
            init = GaussianMixture(S).initial_values(x.to(dtype), seed=seed)
            labels = _nearest(x, init["locs"], init["scales"])
            emission = {"locs": init["locs"], "scales": init["scales"]}
        else:
            if self.emission == "categorical":
                features = F.one_hot(x, self._vocabulary(data)).to(dtype)
            else:
                features = x.to(dtype).reshape(x.shape[0], -1)
            _, labels = kmeans(features, S, seed=seed)
            hard = F.one_hot(labels, S).to(dtype)                              # (N, S)
            n = hard.sum(0).unsqueeze(-1)
            if self.emission == "poisson":
                emission = {"rates": ((hard.T @ features + 0.5) / (n + 1)).squeeze(-1)}
            elif self.emission == "categorical":
                emission = {"emission_probs": (hard.T @ features + 1) / (n + features.shape[-1])}
            else:
                emission = {"emission_probs": (hard.T @ features + 0.5) / (n + 1)}
        z = torch.full(mask.shape, -1, dtype=torch.long)
        z[mask] = labels
        return emission, z

    def ppc_statistics(self, values, data, params):
        """Persistence. With the states decoded (Viterbi) under ``params``: ``mean_run_length`` and
        ``max_run_length`` (steps spent in a state before leaving it) and ``switches`` (state changes, all
        sequences); and ``autocorrelation``, the lag-1 autocorrelation of the observations within
        sequences (features centred on their overall mean, pooled over features; symbols one-hot)."""
        seqs = Sequences(values, data.lengths)
        path, _ = self.decode(seqs, params)                                       # (B, T), -1 on padding
        runs = []
        for z, n in zip(path, data.lengths.tolist()):
            starts = torch.nonzero(torch.cat([torch.ones(1, dtype=torch.bool), z[1:n] != z[:n - 1]])).squeeze(-1)
            runs.append(torch.diff(starts, append=torch.tensor([n])))
        runs = torch.cat(runs)
        mask = seqs.mask
        x = self.validate(seqs).values
        x = F.one_hot(x, self._vocabulary(data)) if self.emission == "categorical" else x
        x = x.reshape(*mask.shape, -1).double()
        centred = (x - x[mask].mean(0)) * mask[..., None]                         # (B, T, F), 0 on padding
        num, den = (centred[:, 1:] * centred[:, :-1]).sum(), (centred**2).sum()
        return {"mean_run_length": float(runs.double().mean()), "max_run_length": float(runs.max()),
                "switches": float(len(runs) - len(path)), "autocorrelation": float(num / den) if den > 0 else 0.0}

    def coords(self, data) -> dict[str, list]:
        coords = {"state": list(range(self.n_states)), "next_state": list(range(self.n_states))}
        if self.emission == "categorical" and data is not None:
            coords["symbol"] = list(range(self._vocabulary(data)))
        return coords

    def figures(self, data, posteriors, dataset=None):
        from zoo import plots

        return {"states": plots.hmm_states(self, data, posteriors, dataset)}


class _ForwardAlgorithm(TorchDistribution):
    """p(x_b | params) of B sequences with the states summed out; batch (B,), event (T, *E).

    ``log_prob`` is :meth:`HiddenMarkovModel.log_likelihood` (padding ignored), ``sample`` a forward
    simulation of full-length sequences."""

    arg_constraints = {}

    def __init__(self, hmm: HiddenMarkovModel, params, data: Sequences, validate_args=None):
        self.hmm, self.params, self.lengths = hmm, params, data.lengths
        B, T = data.values.shape[:2]
        super().__init__(torch.Size([B]), torch.Size([T, *data.values.shape[2:]]), validate_args=False)

    @property
    def support(self):
        return constraints.real if self.hmm.emission == "gaussian" else constraints.nonnegative_integer

    def log_prob(self, value):
        seqs = Sequences(value, self.lengths)
        return forward_log_prob(*self.hmm._log_potentials(seqs, self.params), seqs.mask)

    def sample(self, sample_shape=torch.Size()):
        if sample_shape:
            raise NotImplementedError("draw one batch of sequences at a time")
        with torch.no_grad():
            return self.hmm.sample_sequences(_detached(self.params), *self.batch_shape, self.event_shape[0])[1]


class LogRatioToSimplex(Transform):
    """R^(K-1) -> the simplex in R^K, y = softmax(u, 0) (additive log-ratios, u_k = log(y_k / y_K)).

    log |det J| = sum_k log y_k; rows are transformed independently (event dim 1)."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.simplex
    bijective = True

    def __eq__(self, other):
        return isinstance(other, LogRatioToSimplex)

    def _call(self, u):
        return F.pad(u, (0, 1)).softmax(-1)

    def _inverse(self, y):
        return y[..., :-1].log() - y[..., -1:].log()

    def log_abs_det_jacobian(self, u, y):
        return F.pad(u, (0, 1)).log_softmax(-1).sum(-1)

    def forward_shape(self, shape):
        return shape[:-1] + (shape[-1] + 1,)

    def inverse_shape(self, shape):
        return shape[:-1] + (shape[-1] - 1,)


def _log_simplex(u: np.ndarray) -> np.ndarray:
    """log softmax(u, 0) along the last axis: (..., K-1) -> (..., K)."""
    padded = np.concatenate([u, np.zeros(u.shape[:-1] + (1,))], -1)
    return padded - np.logaddexp.reduce(padded, axis=-1, keepdims=True)


def _dirichlet_log_ratio(log_y: np.ndarray, weights: np.ndarray, grad: dict, name: str) -> float:
    """Dirichlet(1) rows in log-ratio coordinates: log p(y) + log |J| = sum_k log y_k + log (K-1)!.

    ``weights`` (..., K) is 1 + d(log-likelihood)/d log y; the gradient of sum_k weights_k log y_k in
    u is weights_k - (sum_j weights_j) y_k for k < K; stored in ``grad[name]``."""
    K = log_y.shape[-1]
    grad[name] = weights[..., :-1] - weights.sum(-1, keepdims=True) * np.exp(log_y[..., :-1])
    return float(log_y.sum() + log_y[..., 0].size * math.lgamma(K))


# --- the forward algorithm ----------------------------------------------------------------------


def forward_log_prob(log_initial, log_transition, log_emission, mask, *, exact_padding: bool = False):
    """log p(x_b) = log sum_z initial[z_0] e_0(z_0) prod_t transition[z_t-1, z_t] e_t(z_t), per sequence.

    ``log_initial`` (*b, S), ``log_transition`` (*b, S, S), ``log_emission`` (*b, B, T, S) and
    ``mask`` (B, T), False on padding (which comes at the end of a sequence). Returns (*b, B).

    On the CPU: the compiled forward recursion, whose gradient is the backward recursion
    (:class:`zoo.forward_backward.ForwardBackward`); exact, also on padding. Elsewhere (a GPU) and
    under ``torch.jit`` tracing: :func:`tree_log_prob`, pure tensor operations.
    """
    if log_emission.device.type == "cpu" and not torch.jit.is_tracing():
        return _compiled_forward(log_initial, log_transition, log_emission, mask)
    return tree_log_prob(log_initial, log_transition, log_emission, mask, exact_padding=exact_padding)


def tree_log_prob(log_initial, log_transition, log_emission, mask, *, exact_padding: bool = False):
    """:func:`forward_log_prob` as a balanced tree of batched matrix products (O(log T) sequential steps).

    With e_t scaled by its largest entry, step t >= 1 is the matrix M_t[i, j] = transition[i, j] e_t(j)
    and p(x) = v M_1 ... M_T-1 1 with v = initial * e_0 (:func:`_vector_times_product`). Padding has
    emission 1, so its steps contribute transition^k 1 = 1: exact for the likelihood and for its
    gradient along row-stochastic transitions (SVI, NUTS, smoothing). ``exact_padding`` makes padded
    steps identity matrices instead, which the expected transition counts of EM (the gradient in
    every direction of log transition) need.
    """
    if not bool(mask.all()):  # a property of the data, not of the parameters
        log_emission = torch.where(mask[:, :, None], log_emission, 0.0)
    shift = log_emission.detach().amax(-1, keepdim=True).clamp_min(torch.finfo(log_emission.dtype).min)
    emission = (log_emission - shift).exp()                                            # (*b, B, T, S) <= 1
    transition = log_transition.exp().unsqueeze(-3)                                    # (*b, 1, S, S)
    v = log_initial.exp().unsqueeze(-2) * emission[..., 0, :]                         # (*b, B, S)
    if exact_padding and not bool(mask.all()):
        steps = transition.unsqueeze(-3) * emission[..., 1:, None, :]                  # (*b, B, T-1, S, S)
        steps = torch.where(mask[:, 1:, None, None], steps, torch.eye(steps.shape[-1], dtype=steps.dtype))
    else:
        rest = emission[..., 1:, :]
        if rest.shape[-2] % 2:   # take one step into v, so that the others pair up
            v = (v.unsqueeze(-2) @ transition).squeeze(-2) * rest[..., 0, :]
            rest = rest[..., 1:, :]
        steps = _step_pairs(transition, rest)                                          # (*b, B, ~T/2, S, S)
    return _vector_times_product(v, steps) + shift.squeeze(-1).sum(-1)


def _compiled_forward(log_initial, log_transition, log_emission, mask):
    """:func:`forward_log_prob` on the CPU: the compiled recursions of :mod:`zoo.forward_backward`."""
    B, T, S = mask.shape + log_emission.shape[-1:]
    batch = torch.broadcast_shapes(log_initial.shape[:-1], log_transition.shape[:-2], log_emission.shape[:-3])
    dtype = torch.promote_types(torch.promote_types(log_initial.dtype, log_transition.dtype), log_emission.dtype)
    potentials = [p.to(dtype).expand(*batch, *shape).reshape(-1, *shape) for p, shape in
                  ((log_initial, (S,)), (log_transition, (S, S)), (log_emission, (B, T, S)))]
    return ForwardBackward.apply(*potentials, mask.sum(-1)).reshape(*batch, B)


def _step_pairs(transition, emission):
    """The products M_t M_t+1 of consecutive steps (an even number of them), without forming each M_t:
    (M_t M_t+1)[i, l] = sum_j e_t(j) A[i, j] A[j, l] e_t+1(l), one matrix product of the emissions
    (.., n, S) with W[j, (i, l)] = A[i, j] A[j, l] (S, S * S)."""
    n, S = int(emission.shape[-2]), int(emission.shape[-1])
    W = (transition.transpose(-1, -2).unsqueeze(-1) * transition.unsqueeze(-2)).reshape(*transition.shape[:-2], S, S * S)
    pairs = (emission[..., 0:n:2, :] @ W).reshape(*emission.shape[:-2], n // 2, S, S)
    return pairs * emission[..., 1:n:2, None, :]


def _vector_times_product(v, m):
    """log(v m[0] m[1] ... 1) for row vectors v (.., S) and matrices m (.., n, S, S).

    A tree of batched matmuls (O(log n) sequential steps; an odd count gets an identity appended).
    v and every partial product are divided by their largest entry and the scales summed in log
    space: the scales are constants for autograd, so the value and every gradient are exact."""
    n, S = int(m.shape[-3]), int(m.shape[-1])   # int(): python numbers also under torch.jit tracing
    v, log_scale = _rescale(v.unsqueeze(-2))                                           # (.., 1, S), (..,)
    while n > 1:
        if n % 2:
            m = torch.cat([m, torch.eye(S, dtype=m.dtype).expand(*m.shape[:-3], 1, S, S)], dim=-3)
        m, log_m = _rescale(m[..., 0::2, :, :] @ m[..., 1::2, :, :])
        log_scale, n = log_scale + log_m.sum(-1), (n + 1) // 2
    if n:
        v = v @ m[..., 0, :, :]
    return v.sum((-2, -1)).log() + log_scale


def _rescale(x):
    """x divided by the largest entry of each of its matrices (last two dims), and log of those (no grad)."""
    scale = x.detach().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return x / scale, scale.log()[..., 0, 0]


# --- small helpers ------------------------------------------------------------------------------


def _float_dtype(data) -> torch.dtype:
    """The data's float type; float64 for symbols (validated from float64); without data, the default."""
    if data is None:
        return torch.get_default_dtype()
    return data.values.dtype if data.values.is_floating_point() else torch.float64


def _param_event_dim(name: str) -> int:
    """Rank of one state's parameter: locs/scales/emission_probs 1, rates 0."""
    return 0 if name == "rates" else 1


def _param_rank(name: str) -> int:
    """Rank of a global site without draw dims."""
    return 2 if name in ("transition", "locs", "scales", "emission_probs") else 1


def _at_state(params, z):
    """Emission parameters of state ``z`` (any shape; enumerated values welcome)."""
    out = {}
    for k in ("locs", "scales", "rates", "emission_probs"):
        if k in params:
            out[k] = Vindex(params[k])[..., z, :] if _param_event_dim(k) else Vindex(params[k])[..., z]
    return out


@functools.lru_cache(maxsize=None)   # once per (V, N), although data are validated at several stages
def _warn_vocabulary(V: int, N: int) -> None:
    log.warning("vocabulary of %d symbols is larger than the %d observed steps: most emission probabilities are "
                "set by the prior alone (recode the symbols to 0..V-1?)", V, N)


def _insert_sequence_dims(p: torch.Tensor, event_dim: int) -> torch.Tensor:
    """(*b, S, *ev) -> (*b, 1, 1, S, *ev): room for the (B, T) dims of the data."""
    pos = -2 - event_dim
    return p.unsqueeze(pos).unsqueeze(pos)


def _detached(params) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).detach() for k, v in params.items()}


def _normalize_rows(counts: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
    total = counts.sum(-1, keepdim=True)
    return torch.where(total > 0, counts / total.clamp_min(1e-300), previous)


def _reject(bad: torch.Tensor, observed: torch.Tensor, mask: torch.Tensor, what: str) -> None:
    """Raise ``data: {what}; got {value} at sequence b, step t`` for the first observed step with ``bad``."""
    if bad.any():
        row = bad.reshape(bad.shape[0], -1).any(-1).nonzero()[0, 0]
        b, t = mask.nonzero()[row].tolist()
        value = observed[row]
        shown = value.long().tolist() if (value == value.round()).all() else value.tolist()
        raise ValueError(f"data: {what}; got {shown} at sequence {b}, step {t}")


def _label_counts(labels: torch.Tensor, S: int, like):
    """From cluster labels (B, T) (-1 on padding): first-state counts + 1 (S,), transition counts + 1
    (S, S) and visits + 1 per state (S, 1)."""
    dtype = next(iter(like.values())).dtype
    one = torch.ones((), dtype=dtype)
    first = torch.bincount(labels[:, 0], minlength=S).to(dtype) + 1
    pairs = (labels[:, :-1] >= 0) & (labels[:, 1:] >= 0)
    counts = torch.ones(S, S, dtype=dtype).index_put_((labels[:, :-1][pairs], labels[:, 1:][pairs]), one,
                                                       accumulate=True)
    visits = torch.bincount(labels[labels >= 0], minlength=S).to(dtype).unsqueeze(-1) + 1
    return first, counts, visits


def _nearest(x, locs, scales):
    """Index of the Gaussian state with the highest density for every row of x."""
    return dist.Normal(locs, scales).log_prob(x.unsqueeze(-2).to(locs.dtype)).sum(-1).argmax(-1)


def _relabel(flat: Mapping[str, torch.Tensor], perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Permute the state axis of every draw (n, S, ...); transition along both axes."""
    out = {k: _permute(v, perm) for k, v in flat.items()}
    out["transition"] = _permute(out["transition"].transpose(1, 2), perm).transpose(1, 2)
    return out
