"""Variational autoencoder (Kingma & Welling 2013): a deep latent-variable model with amortized inference.

Generative story (N images of D pixels, latent dimension L)::

    for n in 1..N:                                   plate "data"  (dim -1)
        z[n]   ~ Normal(0, I_L)                                            (N, L)
        obs[n] ~ Bernoulli(logits = decoder(z[n]))                         (N, D)   likelihood="bernoulli"
                 Normal(decoder(z[n]), softplus(pixel_scale) + 1e-3)        (N, D)   likelihood="gaussian"

Guide (amortized: one network for every image)::

    for n in 1..N:                                   plate "data"  (dim -1)
        z[n]   ~ Normal(encoder_loc(x[n]), encoder_scale(x[n]))             (N, L)

``encoder`` and ``decoder`` are MLPs with ``tanh`` hidden layers of sizes ``hidden`` (Burda et al.
2015 use (200, 200) and L = 50 on MNIST). There are no global latent sites: the network weights
are parameters, fitted by maximizing the ELBO, so ``global_sites == ()``; so is ``pixel_scale`` (D,)
of the Gaussian likelihood.

Minibatches: both pair members index the data with the indices the ``data`` plate yields
(``with pyro.plate("data", N) as idx: x = data[idx]``), so a caller who fixes the plate's subsample
(``inference.variational.train`` does, one epoch at a time) gets the ELBO of the whole data set estimated from
the batch, scaled by N / B by the plate; ``subsample_size=B`` lets the plate draw a batch itself.

Evaluation: :meth:`VAE.log_likelihood` is the importance-sampled estimate of log p(x) per image,
``logmeanexp_k [log p(x, z_k) - log q(z_k | x)]`` with ``z_k ~ q(z | x)``: the IWAE bound L_k of
Burda et al., which increases with k towards log p(x) (k = 5000 is the usual "test NLL" estimate).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn
from tqdm import tqdm

from zoo.base import ZooModel, as_matrix, check_setting

LIKELIHOODS = ("bernoulli", "gaussian")


class MLP(nn.Module):
    """``tanh`` multilayer perceptron ``sizes[0] -> ... -> sizes[-1]`` (linear output layer).

    The networks are plain torch modules: their weights are parameters, not Pyro sites, so they
    skip PyroModule's per-call parameter-store scope and attribute hooks (their cost per training step:
    benchmarks/README.md)."""

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Encoder(nn.Module):
    """x (..., D) -> (loc, scale) of q(z | x), each (..., L)."""

    def __init__(self, input_dim: int, hidden: Sequence[int], latent_dim: int):
        super().__init__()
        self.mlp = MLP([input_dim, *hidden, 2 * latent_dim])

    def forward(self, x):
        loc, raw_scale = self.mlp(x).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4


class Decoder(nn.Module):
    """z (..., L) -> Bernoulli logits or Gaussian means (..., D)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], input_dim: int):
        super().__init__()
        self.mlp = MLP([latent_dim, *reversed(hidden), input_dim])

    def forward(self, z):
        return self.mlp(z)


class VAE(ZooModel):
    """Variational autoencoder with MLP encoder and decoder (see the module docstring).

    :param latent_dim: dimension L of the latent code z.
    :param hidden: hidden layer sizes of the encoder (the decoder mirrors them).
    :param likelihood: "bernoulli" (binary images; grey levels in [0, 1] are binarized dynamically
        in training) or "gaussian" (real-valued data, one learned scale per pixel).
    :param input_dim: number of pixels D; default: set by the first data the model validates.
    :param eval_particles: importance samples k per image in :meth:`log_likelihood`.
    :param init_seed: seed of the networks' initial weights (drawn without touching the global RNG).
    """

    name = "vae"
    global_sites = ()
    dims = {"z": ["image", "latent"], "obs": ["image", "pixel"]}
    default_dataset = "digits"

    def __init__(self, latent_dim: int = 50, hidden: Sequence[int] = (200, 200), likelihood: str = "bernoulli",
                 *, input_dim: int | None = None, eval_particles: int = 5000, init_seed: int = 0):
        super().__init__()
        self.latent_dim = check_setting(latent_dim, "latent_dim", kind="int", positive=True)
        if isinstance(hidden, (int, np.integer)):
            hidden = (hidden,)
        if not isinstance(hidden, Sequence) or isinstance(hidden, str):
            raise TypeError(f"hidden: expected a sequence of layer sizes, got {hidden!r}")
        self.hidden = tuple(check_setting(h, "hidden", kind="int", positive=True) for h in hidden)
        self.likelihood = check_setting(likelihood, "likelihood", kind="choice", choices=tuple(LIKELIHOODS))
        self.eval_particles = check_setting(eval_particles, "eval_particles", kind="int", positive=True)
        self.init_seed = check_setting(init_seed, "init_seed", kind="int")
        self.input_dim = None
        if input_dim is not None:
            self._build(check_setting(input_dim, "input_dim", kind="int", positive=True))

    def _build(self, input_dim: int) -> None:
        self.input_dim = input_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.init_seed)
            self.encoder = Encoder(input_dim, self.hidden, self.latent_dim)
            self.decoder = Decoder(self.latent_dim, self.hidden, input_dim)
        if self.likelihood == "gaussian":
            self.pixel_scale = nn.Parameter(torch.zeros(input_dim))   # softplus(0) = 0.69
        self.register_buffer("prior_loc", torch.zeros(self.latent_dim))
        self.register_buffer("prior_scale", torch.ones(self.latent_dim))

    def _require_networks(self) -> None:
        if self.input_dim is None:
            raise ValueError("input_dim: the networks are built from the first data the model sees; "
                             "call validate(data) first or pass input_dim=")

    # --- the distributions ---------------------------------------------------------------------
    def prior(self) -> dist.Distribution:
        """p(z) = Normal(0, I_L), event shape (L,)."""
        return dist.Normal(self.prior_loc, self.prior_scale).to_event(1)

    def observation(self, z: torch.Tensor) -> dist.Distribution:
        """p(x | z), batch shape z.shape[:-1], event shape (D,)."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out, validate_args=False).to_event(1)
        return dist.Normal(out, nn.functional.softplus(self.pixel_scale) + 1e-3).to_event(1)

    def posterior(self, x: torch.Tensor) -> dist.Distribution:
        """The encoder's q(z | x), batch shape x.shape[:-1], event shape (L,)."""
        loc, scale = self.encoder(x)
        return dist.Normal(loc, scale).to_event(1)

    # --- the Pyro pair -------------------------------------------------------------------------
    def model(self, data=None, *, n: int | None = None, subsample_size: int | None = None):
        """The generative story. ``data`` is (N, D); with ``data=None`` draw ``n`` images."""
        self._require_networks()
        N = data.shape[0] if data is not None else (n or 1)
        with pyro.plate("data", N, subsample_size=subsample_size) as idx:
            z = pyro.sample("z", self.prior())                                   # (B, L)
            x = data[idx] if data is not None else None                          # (B, D)
            return pyro.sample("obs", self.observation(z), obs=x)                # (B, D)

    def guide(self, data=None, *, n: int | None = None, subsample_size: int | None = None):
        """Amortized q(z | x): the encoder maps each image to the mean and scale of its code."""
        if data is None:
            raise ValueError("data: the VAE guide is amortized over images; got None")
        self._require_networks()
        with pyro.plate("data", data.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("z", self.posterior(data[idx]))                          # (B, L)

    # --- the protocol --------------------------------------------------------------------------
    def validate(self, data):
        x = as_matrix(data, name="data")
        if x.shape[1] < 2:
            raise ValueError(f"data: expected images flattened to rows of D >= 2 pixels, got shape {tuple(x.shape)}")
        if self.input_dim is None:
            self._build(x.shape[1])
        elif x.shape[1] != self.input_dim:
            raise ValueError(f"data: expected images of {self.input_dim} pixels (the model's input_dim), "
                             f"got {x.shape[1]} per row")
        if self.likelihood == "bernoulli" and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"data: the Bernoulli likelihood needs pixel values in [0, 1], got values in "
                             f"[{float(x.min()):.4g}, {float(x.max()):.4g}]; rescale or use likelihood='gaussian'")
        return x

    def training_transform(self, data):
        """Dynamic binarization (a fresh Bernoulli draw of every grey level each epoch) when a Bernoulli
        likelihood meets non-binary data; None otherwise."""
        if self.likelihood != "bernoulli" or bool(((data == 0) | (data == 1)).all()):
            return None
        return binarize

    def log_likelihood(self, data, params: Mapping[str, torch.Tensor] | None = None, *,
                       num_particles: int | None = None, max_elements: int = 2**24, seed: int = 0) -> torch.Tensor:
        """Importance-sampled log p(x_n) per image, shape (N,): logmeanexp over k draws z ~ q(z | x_n)
        of log p(x_n | z) + log p(z) - log q(z | x_n) (the IWAE bound L_k; k = ``eval_particles``).
        The draws come from their own generator seeded with ``seed`` (same seed, same estimate).

        Work is batched over images and particles so that no (particles, images, D) tensor exceeds
        ``max_elements`` entries. ``params`` (global sites) is empty for a VAE and ignored.
        """
        self._require_networks()
        k = check_setting(num_particles or self.eval_particles, "num_particles", kind="int", positive=True)
        x = data
        rows = max(1, min(x.shape[0], max_elements // (self.input_dim * min(k, 64))))
        chunk = max(1, min(k, max_elements // (self.input_dim * rows)))
        out = []
        starts = range(0, x.shape[0], rows)
        gen = torch.Generator(device=x.device).manual_seed(check_setting(seed, "seed", kind="int"))
        with torch.no_grad():
            for start in tqdm(starts, desc="log p(x) by importance sampling", leave=False,
                              disable=True if len(starts) < 4 else None):   # a bar on a terminal, for long work
                xb = x[start:start + rows]
                loc, scale = self.encoder(xb)                                            # (B, L)
                q = dist.Normal(loc, scale).to_event(1)
                total = torch.full((xb.shape[0],), -math.inf, dtype=xb.dtype, device=xb.device)
                for first in range(0, k, chunk):
                    eps = torch.randn((min(chunk, k - first), *loc.shape), generator=gen, dtype=loc.dtype,
                                      device=loc.device)
                    z = loc + scale * eps                                                # (k', B, L)
                    log_w = self.observation(z).log_prob(xb) + self.prior().log_prob(z) - q.log_prob(z)
                    total = torch.logaddexp(total, torch.logsumexp(log_w, 0))
                out.append(total - math.log(k))
        return torch.cat(out)

    def simulate(self, n: int, seed: int = 0):
        """Draw ``n`` images from the generative story (with the current decoder): ``(x (n, D), {"z": (n, L)})``."""
        n = check_setting(n, "n", kind="int", positive=True)
        self._require_networks()
        with pyro.poutine.seed(rng_seed=seed), torch.no_grad():
            trace = pyro.poutine.trace(self.model).get_trace(None, n=n)
        return trace.nodes["obs"]["value"], {"z": trace.nodes["z"]["value"]}

    def ppc_statistics(self, values, data, params):
        """``pixel_mean`` (each pixel's mean over images, (D,)) and the mean and sd over images of the
        per-image log-likelihood log p(x_n) (importance sampled with 100 particles)."""
        ll = self.log_likelihood(values, num_particles=100)
        return {"pixel_mean": values.mean(0).numpy(), "log_likelihood_mean": float(ll.mean()),
                "log_likelihood_sd": float(ll.std())}

    def initial_values(self, data, seed: int = 0):
        """The encoder's means: a starting point for MCMC on z and for per-image guides."""
        self._require_networks()
        with torch.no_grad():
            return {"z": self.encoder(data)[0]}

    def figures(self, data, posteriors, dataset=None):
        from zoo import plots

        shape = (dataset.meta.get("image_shape") if dataset is not None else None) or _square(self.input_dim)
        labels = dataset.labels if dataset is not None and dataset.labels is not None and len(dataset.labels) == len(data) else None
        figs = {"reconstructions": plots.vae_reconstructions(self, data, shape),
                "samples": plots.vae_samples(self, shape),
                "interpolations": plots.vae_interpolations(self, data, shape),
                "latent": plots.vae_latent_scatter(self, data, labels)}
        return {k: v for k, v in figs.items() if v is not None}


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per grey level: pixel value p in [0, 1] becomes 1 with probability p."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu" if generator is None else generator.device)
    return (u.to(x.device) < x).to(x.dtype)


def _square(d: int | None):
    side = int(round(math.sqrt(d))) if d else 0
    return (side, side) if side * side == d else None
