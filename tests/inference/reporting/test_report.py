"""Every documented model variant writes a full report through `zoo fit` and `zoo compare`, and its
netCDF opens with ArviZ with the posterior, the log-likelihood and the posterior predictive."""

import math

import arviz as az
import numpy as np
import pytest

from inference.files import MARKER
from inference.posterior import heldout
from inference.reporting.report import training_text
from zoo.cli import main

rng = np.random.default_rng(0)


def _csv(path, header, rows, fmt="{:.4f}"):
    path.write_text(",".join(header) + "\n" + "\n".join(",".join("" if np.isnan(v) else fmt.format(v) for v in row)
                                                        for row in rows) + "\n")
    return str(path)


def _data(kind, folder):
    if kind == "points":
        return _csv(folder / "points.csv", ["x", "y"], np.r_[rng.normal(-2, 1, (15, 2)), rng.normal(2, 1, (15, 2))])
    if kind == "wide":
        return _csv(folder / "wide.csv", list("abcd"), rng.normal(size=(30, 1)) @ rng.normal(size=(1, 4))
                    + 0.3 * rng.normal(size=(30, 4)))
    if kind == "gaps":
        x = rng.normal(size=(30, 4))
        x[3, 1] = x[7, 2] = np.nan
        return _csv(folder / "gaps.csv", list("abcd"), x)
    if kind == "series":
        return _csv(folder / "series.csv", ["r"], rng.normal(0, np.repeat([1.0, 3.0], 30))[:, None])
    if kind == "symbols":
        return _csv(folder / "symbols.csv", ["s"], rng.integers(0, 4, (60, 1)).astype(float), "{:.0f}")
    if kind == "counts":
        return _csv(folder / "counts.csv", ["n"], rng.poisson(3, (60, 1)).astype(float), "{:.0f}")
    if kind == "bits":
        return _csv(folder / "bits.csv", list("abc"), rng.integers(0, 2, (60, 3)).astype(float), "{:.0f}")
    if kind == "pixels":
        return _csv(folder / "pixels.csv", list("abcdef"), rng.uniform(size=(40, 6)))
    raise KeyError(kind)


VARIANTS = {
    "gmm": (["gmm", "--components", "2"], "points"),
    "ppca": (["ppca", "--components", "1"], "wide"),
    "ppca-ard": (["ppca", "--components", "2", "--option", "ard=True"], "wide"),
    "ppca-missing": (["ppca", "--components", "1", "--option", "missing=mask"], "gaps"),
    "hmm-gaussian": (["hmm", "--states", "2"], "series"),
    "hmm-categorical": (["hmm", "--states", "2", "--emission", "categorical"], "symbols"),
    "hmm-poisson": (["hmm", "--states", "2", "--emission", "poisson"], "counts"),
    "hmm-bernoulli": (["hmm", "--states", "2", "--emission", "bernoulli"], "bits"),
    "vae-bernoulli": (["vae", "--likelihood", "bernoulli"], "pixels"),
    "vae-gaussian": (["vae", "--likelihood", "gaussian"], "pixels"),
}
TINY = ["--steps", "10", "--samples", "5", "--quiet"]
NUTS = ["--warmup", "5", "--chains", "1"]
VAE = ["--epochs", "2", "--batch-size", "20", "--hidden", "4", "--latent-dim", "2", "--eval-particles", "10", "--quiet"]
VAE_COMPARE = ["--points", "2", "--steps", "10", "--samples", "5", "--warmup", "5", "--chains", "1"]


@pytest.mark.parametrize("command", ["fit", "compare"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_writes_a_full_report(tmp_path, capsys, variant, command):
    model_args, data = VARIANTS[variant]
    vae = model_args[0] == "vae"
    settings = [*TINY, *(NUTS if command == "compare" else [])] if not vae else [
        *VAE, *(VAE_COMPARE if command == "compare" else [])]
    out = tmp_path / "report"
    code = main([command, *model_args, "--data", _data(data, tmp_path), "--out", str(out), *settings])
    assert code == 0, capsys.readouterr().err
    assert (out / MARKER).is_file() and (out / "summary.md").is_file() and (out / "summary.html").is_file()
    labels = ["svi"] if vae or command == "fit" else ["svi", "nuts"]
    for label in labels:
        idata = az.from_netcdf(out / f"posterior_{label}.nc")
        assert np.isfinite(idata.log_likelihood["obs"].values).all()
        if not vae:   # the VAE has no global latents: its posterior is the encoder's, per data point
            assert {"posterior", "posterior_predictive", "observed_data"} <= set(idata.groups())
    if command == "compare" and not vae:
        assert (out / "comparison.csv").is_file()


def test_heldout_nll_of_a_minibatch_fit_is_the_mean_importance_sampled_log_likelihood(digits_fit, one_thread):
    """The held-out NLL of a minibatch fit and its se (``inference.posterior.heldout``, the paragraph of
    ``inference.reporting.report.training_text``) are minus the mean and the se of the model's own per-image
    estimate, recomputed here with numpy from an independent call (same seed, same draws)."""
    ds, fit = digits_fit
    x = fit.prepare(ds.splits["test"])
    post = fit.posterior(ds.splits["test"])
    table = heldout(post, {"test": post.data})
    text = training_text(fit, table, "test", eval_particles=fit.model.eval_particles)
    ll = fit.model.log_likelihood(x).numpy()
    row = table.loc["test"]
    np.testing.assert_allclose([row.nll_per_observation, row.se], [-ll.mean(), ll.std(ddof=1) / math.sqrt(len(ll))],
                               rtol=1e-5)
    assert row.points == 270 and "k = 5000" in text and "40 epochs" in text
