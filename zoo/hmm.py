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

Emissions (D features, V keys or symbols; one class each in :mod:`zoo.hmm_emissions`)::

    gaussian     locs (S, D) ~ Normal(center, 2 spread)   scales (S, D) ~ LogNormal(log(spread / 2), 1)
                 x_t ~ Normal(locs[z_t], scales[z_t]) (diagonal)                      E = (D,)
    categorical  emission_probs (S, V) ~ Dirichlet(1_V)    x_t ~ Categorical(emission_probs[z_t])    E = ()
    poisson      rates (S,) ~ LogNormal(log(mean), 1.5)    x_t ~ Poisson(rates[z_t])                 E = ()
    bernoulli    emission_probs (S, V) ~ Beta(1, 1)        x_t ~ Bernoulli(emission_probs[z_t])      E = (V,)

With ``prior="data"`` (the default) ``center``/``spread`` are the per-feature mean and standard
deviation of the observed steps and ``mean`` their mean count (empirical-Bayes scales, as for the
GMM); with ``prior="fixed"``, and without data, they are 0, 1 and 1, so that the prior is the one
``simulate`` draws from whatever the data (what simulation-based calibration needs).

**Convention.** ``initial`` is the law of the state OF the first observation, p(z_0), as in Rabiner
(1989) and hmmlearn's ``startprob_``. Pyro's ``DiscreteHMM`` reads its ``initial_logits`` as the
state BEFORE the first observation: ``DiscreteHMM(log initial, log transition, ...)`` is the HMM whose
first state has law ``initial @ transition`` (the tests show both against hmmlearn).

**Data.** :class:`zoo.data.Sequences` ``(values (B, T, *E), lengths (B,))`` is a ragged batch padded
to T (padding is ignored and may hold NaN); a bare array is one sequence ``(T, *E)`` (``(T,)`` for one
Gaussian feature or one Bernoulli key, ``(T, 1)`` for symbols/counts).

**Two forms of one model.** :meth:`~HiddenMarkovModel.model` keeps the states explicit (what
``TraceEnum_ELBO`` sums out and ``infer_discrete`` draws); :meth:`~HiddenMarkovModel.marginal_model`
has one observed site ``obs`` (B, T, *E) whose density is the forward algorithm
(:func:`zoo.kernels.forward_log_prob`): MAP maximizes it, SVI fits it (``Trace_ELBO``, equal to the
``TraceEnum_ELBO`` of ``model`` draw by draw), predictive draws come from it, and NUTS samples its
closed form :meth:`~HiddenMarkovModel.log_density`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions import TorchDistribution
from pyro.nn import PyroParam
from pyro.ops.indexing import Vindex
from torch.distributions import constraints

from zoo import kernels
from zoo.base import ZooModel, check_setting
from zoo.baselines import baum_welch, kmeans_start
from zoo.data import Sequences, as_sequences
from zoo.hmm_emissions import EMISSIONS
from zoo.hmm_simplex import LogRatioToSimplex, dirichlet_log_ratio, log_simplex
from zoo.relabel import align_draws, permute, permute_all

__all__ = ["HiddenMarkovModel", "Sequences"]

PRIORS = ("data", "fixed")
_CHUNK = 2**24   # posterior draws are processed in chunks of about this many (draw, sequence, step, S^2) values


class HiddenMarkovModel(ZooModel):
    """Hidden Markov model with enumerated states (see the module docstring).

    :param n_states: number of hidden states S (>= 1).
    :param emission: "gaussian", "categorical", "poisson" or "bernoulli" (:data:`zoo.hmm_emissions.EMISSIONS`).
    :param dim: features D (gaussian) or keys V (bernoulli); default: from the data.
    :param n_symbols: vocabulary size V (categorical); default: the largest symbol in the data + 1.
    :param prior: "data" (emission priors on the scale of the observed steps, empirical Bayes) or
        "fixed" (center 0, spread 1, mean count 1 whatever the data: standardize the data first; SBC).
    """

    name = "hmm"
    default_dataset = "goog-returns"

    def __init__(self, n_states: int = 2, *, emission: str = "gaussian", dim: int | None = None,
                 n_symbols: int | None = None, prior: str = "data"):
        super().__init__()
        self.n_states = check_setting(n_states, "n_states", kind="int", positive=True)
        self.emission = check_setting(emission, "emission", kind="choice", choices=tuple(EMISSIONS))
        self.prior = check_setting(prior, "prior", kind="choice", choices=PRIORS)
        self.family = EMISSIONS[emission](dim=dim, n_symbols=n_symbols)
        self.dim, self.n_symbols = self.family.dim, self.family.n_symbols
        self.global_sites = ("initial", "transition", *self.family.sites)
        axis = [self.family.axis] if self.family.axis else []
        self.dims = {"initial": ["state"], "transition": ["state", "next_state"],
                     **{k: ["state", *axis] for k in self.family.sites},
                     "obs": ["sequence", "time", "feature"][:2 + self.family.event_dim]}

    # --- the story, its marginal form and the guide -------------------------------------------
    def hyperparameters(self, data: Sequences | None = None):
        """The emission prior's settings: gaussian ``(center, spread)`` (D,) each; poisson ``(mean,)``."""
        return self.family.hyperparameters(_observed(data), _float_dtype(data), fixed=self.prior == "fixed")

    def _sample_globals(self, data: Sequences | None) -> dict[str, torch.Tensor]:
        """The global sites: initial (S,), transition (S, S) and the emission parameters (S, ...)."""
        S, dtype, x = self.n_states, _float_dtype(data), _observed(data)
        priors = self.family.prior(self.hyperparameters(data), self.family.size(x), dtype)
        params = {"initial": pyro.sample("initial", dist.Dirichlet(torch.ones(S, dtype=dtype)))}     # (S,)
        with pyro.plate("states", S, dim=-1):
            params["transition"] = pyro.sample("transition", dist.Dirichlet(torch.ones(S, S, dtype=dtype)))  # (S, S)
            for name, prior in priors.items():
                params[name] = pyro.sample(name, prior)                    # (S, D), (S, V) or (S,): the table
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
                    pyro.sample(f"obs_{t}", self.family.dist(self.family.at_state(params, z)),
                                obs=data.values[:, t] if data is not None else None)                  # (B, *E)

    def marginal_model(self, data: Sequences | None = None, *, n: int | None = None):
        """The same model with the states summed out by the forward algorithm: one site ``obs`` (B, T, *E)."""
        params = self._sample_globals(data)
        observed = data.values if data is not None else None
        if data is None:  # shapes only
            data = Sequences(torch.zeros(1, n or 1, *self.family.event_shape(None)), torch.tensor([n or 1]))
        with pyro.plate("sequences", data.values.shape[0], dim=-1):
            return pyro.sample("obs", _ForwardAlgorithm(self, params, data), obs=observed)       # (B, T, *E)

    def guide(self, data: Sequences | None = None, *, n: int | None = None):
        """Mean-field guide over the global sites; the states are summed out, not guided.

        q(initial), q(transition[i]) Dirichlet; each emission site its family's factor (``Emission.guide``).
        Parameters are created on the first call, from the k-means labels of :meth:`initial_values`.
        """
        if "q_initial" not in self._pyro_params:
            self._init_guide(data)
        one = self.n_states == 1   # a Dirichlet over one state is a point mass: nothing to learn (Adam would drift)
        pyro.sample("initial", dist.Dirichlet(self.q_initial.detach() if one else self.q_initial))   # (S,)
        with pyro.plate("states", self.n_states, dim=-1):
            pyro.sample("transition", dist.Dirichlet(self.q_transition.detach() if one else self.q_transition))
            for name, factor in self.family.guide(self).items():
                pyro.sample(name, factor)                                  # (S, D), (S, V) or (S,)

    def _init_guide(self, data):
        """Start q at the posterior given the k-means labels of :meth:`initial_values` (counts + 1)."""
        if data is None:
            raise ValueError("data: the HMM guide is initialized from data; got None")
        emission, first, pairs, visits = kmeans_start(self, data, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        self.q_initial = PyroParam(first, constraints.positive)
        self.q_transition = PyroParam(pairs, constraints.positive)
        for name, param in self.family.guide_params(emission, visits).items():
            setattr(self, name, param)

    def log_density(self, data: Sequences):
        """The log joint of :meth:`marginal_model` on unconstrained coordinates, with its exact gradient
        (what ``inference.run_nuts`` samples instead of tracing the model at every leapfrog step).

        Returns ``(transforms, fn)``: ``transforms[site]`` maps unconstrained values onto the site's
        support (simplex rows by :class:`~zoo.hmm_simplex.LogRatioToSimplex`); ``fn(u)`` takes float64
        numpy arrays and returns ``(log p(params, x) + log |det J|, gradient dict)``, the likelihood's
        gradient by forward-backward (:func:`zoo.kernels.gradient`), the emission prior's by its family.
        """
        seqs = data if isinstance(data, Sequences) else self.validate(data)
        lengths = seqs.lengths.numpy().astype(np.int64)
        hyper = [h.double().numpy() for h in self.hyperparameters(seqs)]
        emission, emission_fn = self.family.density(seqs.values.numpy(), hyper, self.family.size(_observed(seqs)))
        transforms = {"initial": LogRatioToSimplex(), "transition": LogRatioToSimplex(), **emission}

        def fn(u):
            log_init, log_trans = log_simplex(u["initial"]), log_simplex(u["transition"])    # (S,), (S, S)
            log_e, emission_prior = emission_fn(u)                                           # (B, T, S)
            ll, saved = kernels.forward(log_init[None], log_trans[None], log_e[None], lengths)
            g_init, g_trans, gamma = (g[0] for g in kernels.gradient(saved, np.ones_like(ll)))  # gamma (B, T, S)
            grad = {}
            value = ll.sum() + dirichlet_log_ratio(log_init, 1 + g_init, grad, "initial")
            value += dirichlet_log_ratio(log_trans, 1 + g_trans, grad, "transition")
            prior, emission_grad = emission_prior(gamma)
            return float(value + prior), {**grad, **emission_grad}

        return transforms, fn

    # --- the forward algorithm and friends ------------------------------------------------------
    def log_potentials(self, data: Sequences, params: Mapping[str, torch.Tensor]):
        """log initial (*b, S), log transition (*b, S, S), log emission (*b, B, T, S): the kernels' inputs."""
        return params["initial"].log(), params["transition"].log(), self.family.log_prob(data.values, params)

    def log_likelihood(self, data: Sequences, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """log p(x_b | params) per sequence by the forward algorithm (states summed out): (*batch, B).

        ``data`` is a :class:`Sequences` from :meth:`validate` or anything it accepts (a bare sequence
        gives (*batch, 1)). Leading batch dims of ``params`` (posterior draws) are processed in chunks
        to bound memory.
        """
        data = data if isinstance(data, Sequences) else self.validate(data)
        batch, (B, T) = params["initial"].shape[:-1], data.values.shape[:2]
        flat = {k: params[k].reshape(-1, *params[k].shape[len(batch):]) for k in self.global_sites}
        step = max(1, _CHUNK // (B * T * self.n_states**2))
        chunks = [kernels.forward_log_prob(*self.log_potentials(data, {k: v[i:i + step] for k, v in flat.items()}),
                                           data.mask) for i in range(0, len(flat["initial"]), step)]
        return torch.cat(chunks).reshape(*batch, B)

    def smooth(self, data, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Posterior state marginals p(z_bt = s | x_b, params), (*batch, B, T, S); 0 on padding
        (:func:`zoo.kernels.state_marginals`). A bare sequence gives (T, S)."""
        seqs = self.validate(data)
        marginals = kernels.state_marginals(*self.log_potentials(seqs, _detached(params)), seqs.mask)
        return marginals if isinstance(data, Sequences) else marginals[..., 0, :, :]

    def decode(self, data, params: Mapping[str, torch.Tensor]):
        """Viterbi (:func:`zoo.kernels.viterbi`): the most likely state path and log p(x, z*).

        Returns ``(path (B, T) long, -1 on padding; log_prob (B,))``, or ``((T,), scalar)`` for a bare
        sequence. ``params`` is one parameter set (no draw dims).
        """
        seqs, params = self.validate(data), _detached(params)
        if params["initial"].dim() != 1:
            raise ValueError(f"params: decode takes one parameter set, got initial of shape "
                             f"{tuple(params['initial'].shape)}; pass e.g. the posterior mean")
        path, log_prob = kernels.viterbi(*self.log_potentials(seqs, params), seqs.mask)
        return (path, log_prob) if isinstance(data, Sequences) else (path[0], log_prob[0])

    def em(self, data, *, seed: int = 0, init: Mapping[str, torch.Tensor] | None = None,
           max_iter: int = 500, tol: float | None = 1e-6, progress: bool = True) -> dict[str, torch.Tensor]:
        """Baum-Welch maximum likelihood (:func:`zoo.baselines.baum_welch`), from :meth:`initial_values`
        (seeded) unless ``init`` is given; stops when the log-likelihood per observation improves by
        less than ``tol`` (``None``: run ``max_iter`` iterations)."""
        seqs = self.validate(data)
        max_iter = check_setting(max_iter, "max_iter", kind="int", positive=True)
        params = _detached(init) if init is not None else self.initial_values(seqs, seed=seed)
        return baum_welch(self, seqs, params, max_iter=max_iter, tol=tol, progress=progress)

    # --- the protocol ---------------------------------------------------------------------------
    def validate(self, data) -> Sequences:
        """A :class:`Sequences` with padding set to 0 (:func:`zoo.data.as_sequences`), the observed steps
        checked against the emission family's support; or a clear error."""
        f = self.family
        seqs = as_sequences(data, f.event_dim, size=self.dim, letter=f.letter, unit=f.unit)
        f.check(seqs.values[seqs.mask], seqs.mask)
        return Sequences(seqs.values.long(), seqs.lengths) if f.symbols else seqs

    def simulate(self, n: int, seed: int = 0, params: Mapping[str, torch.Tensor] | None = None,
                 n_sequences: int | None = None):
        """Draw a sequence of ``n`` steps (or ``n_sequences`` of them). Parameters come from the prior
        unless ``params`` fixes them.

        Returns ``(data, truth)``: data is ``(n, *E)``, or :class:`Sequences` ``(n_sequences, n, *E)``;
        ``truth`` holds the global sites and ``states`` ((n,) or (n_sequences, n)).
        """
        n = check_setting(n, "n", kind="int", positive=True)
        B = 1 if n_sequences is None else check_setting(n_sequences, "n_sequences", kind="int", positive=True)
        with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            params = _detached(params if params is not None else self._sample_globals(None))
            states, values = self.sample_sequences(params, B, n)
        truth = {**{k: params[k] for k in self.global_sites}, "states": states if n_sequences else states[0]}
        if n_sequences is None:
            return values[0], truth
        return Sequences(values, torch.full((B,), n, dtype=torch.long)), truth

    def gibbs_sweep(self, data: Sequences, values: Mapping[str, torch.Tensor], rng: np.random.Generator):
        """One Gibbs sweep (``inference.run_gibbs``): the state paths by forward filtering, backward sampling,
        then ``initial``, ``transition`` and the emission parameters given them, by conjugate draws where
        the prior allows; Gaussian ``scales`` and Poisson ``rates`` are the block left to NUTS
        (:mod:`zoo.hmm_gibbs`)."""
        from zoo.hmm_gibbs import sweep

        return sweep(self, data, values, rng)

    def sample_sequences(self, params: Mapping[str, torch.Tensor], n_sequences: int, n: int):
        """Forward simulation: states (B, T) long and observations (B, T, *E) (torch's global RNG)."""
        states = kernels.sample_states(params["initial"], params["transition"], n_sequences, n)
        return states, self.family.dist(self.family.at_state(params, states)).sample()

    def align(self, draws, reference=None):
        """Relabel the states of every draw to a common labeling (:func:`zoo.relabel.align_draws`).

        States are matched by their emission parameters in units of the reference's emission spread
        (``Emission.signature``); without a reference they are then ordered by the first coordinate of
        their emission mean (gaussian locs[:, 0], poisson rates, probs[:, 0]). ``transition`` is
        permuted along both axes.
        """
        batch = draws["initial"].shape[:-1]
        flat = {k: draws[k].reshape(-1, *draws[k].shape[len(batch):]) for k in self.global_sites}
        ref = None if reference is None else {k: reference[k].reshape(-1, *v.shape[1:]) for k, v in flat.items()}
        out = align_draws(flat, self.family.signature, _relabel, ref)
        return {k: out[k].reshape(*batch, *out[k].shape[1:]) for k in self.global_sites}

    def initial_values(self, data: Sequences, seed: int = 0) -> dict[str, torch.Tensor]:
        """Cluster the observed steps (k-means++ on the emission features, seeded), then read the
        emission parameters, first-state and transition frequencies off the cluster labels (add-one
        smoothing; :func:`zoo.baselines.kmeans_start`). Different seeds give different starts."""
        emission, first, pairs, _ = kmeans_start(self, data, seed)
        return {"initial": first / first.sum(), "transition": pairs / pairs.sum(-1, keepdim=True), **emission}

    def ppc_statistics(self, values, data, params):
        """Persistence. With the states decoded (Viterbi) under ``params``: ``mean_run_length`` and
        ``max_run_length`` (steps spent in a state before leaving it) and ``switches`` (state changes, all
        sequences); and ``autocorrelation``, the lag-1 autocorrelation of the observations within
        sequences (features centred on their overall mean, pooled over features; symbols one-hot)."""
        seqs = Sequences(values, data.lengths)
        path, mask = self.decode(seqs, params)[0], seqs.mask                     # (B, T), -1 on padding
        starts = torch.cat([mask[:, :1], path[:, 1:] != path[:, :-1]], 1)[mask]   # (N,) True where a run starts
        runs = torch.bincount(starts.cumsum(0) - 1)                              # the length of every run
        x = self.family.features(self.validate(seqs).values, self.family.size(_observed(data)))
        x = x.reshape(*mask.shape, -1).double()
        centred = (x - x[mask].mean(0)) * mask[..., None]                         # (B, T, F), 0 on padding
        num, den = (centred[:, 1:] * centred[:, :-1]).sum(), (centred**2).sum()
        return {"mean_run_length": float(runs.double().mean()), "max_run_length": float(runs.max()),
                "switches": float(len(runs) - len(path)), "autocorrelation": float(num / den) if den > 0 else 0.0}

    def coords(self, data) -> dict[str, list]:
        coords = {"state": list(range(self.n_states)), "next_state": list(range(self.n_states))}
        if self.family.symbols and data is not None:
            coords["symbol"] = list(range(self.family.size(_observed(data))))
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
        return self.hmm.family.support

    def log_prob(self, value):
        seqs = Sequences(value, self.lengths)
        return kernels.forward_log_prob(*self.hmm.log_potentials(seqs, self.params), seqs.mask)

    def sample(self, sample_shape=torch.Size()):
        if sample_shape:
            raise NotImplementedError("draw one batch of sequences at a time")
        with torch.no_grad():
            return self.hmm.sample_sequences(_detached(self.params), *self.batch_shape, self.event_shape[0])[1]


# --- small helpers ------------------------------------------------------------------------------


def _observed(data: Sequences | None):
    """The observed steps (N, *E), or None without data."""
    return data.values[data.mask] if data is not None else None


def _float_dtype(data) -> torch.dtype:
    """The data's float type; float64 for symbols (validated from float64); without data, the default."""
    if data is None:
        return torch.get_default_dtype()
    return data.values.dtype if data.values.is_floating_point() else torch.float64


def _detached(params) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).detach() for k, v in params.items()}


def _relabel(flat: Mapping[str, torch.Tensor], perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Permute the state axis of every draw (n, S, ...); transition along both axes."""
    out = permute_all(flat, perm)
    out["transition"] = permute(out["transition"].transpose(1, 2), perm).transpose(1, 2)
    return out
