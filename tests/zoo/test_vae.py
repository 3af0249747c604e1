"""The VAE's own oracles: importance-sampled log-likelihood against quadrature, the IWAE bounds, data
loaders, bad input and configuration, the command line. (The trainer, Lightning and the amortization
gap are tested in tests/inference/.)"""

import math
import shutil

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

import zoo
from inference.variational.train import read_checkpoint, train
from zoo import datasets


pytestmark = pytest.mark.usefixtures("one_thread")



def binary(n, d, seed):
    return torch.tensor(np.random.default_rng(seed).random((n, d)) < 0.4, dtype=torch.float64)

def small_vae(latent_dim=1, d=6, hidden=(8,), seed=0):
    return zoo.get("vae", latent_dim=latent_dim, hidden=hidden, input_dim=d, init_seed=seed).double()

def quadrature(m, x, lim=8.0, n=4001):
    """log p(x) and log E_q[(p(x,z)/q(z))^2] by the trapezoid rule on a grid of the 1-D latent."""
    z = torch.linspace(-lim, lim, n, dtype=torch.float64).unsqueeze(-1)          # (G, 1)
    with torch.no_grad():
        log_joint = (m.observation(z.unsqueeze(1)).log_prob(x) + m.prior().log_prob(z.unsqueeze(1))).numpy()  # (G, N)
        log_q = m.posterior(x).log_prob(z.unsqueeze(1)).numpy()
    log_dz = math.log(2 * lim / (n - 1))
    trap = np.log(np.r_[0.5, np.ones(n - 2), 0.5])[:, None]
    log_px = logsumexp(log_joint + trap, axis=0) + log_dz
    log_second = logsumexp(2 * log_joint - log_q + trap, axis=0) + log_dz       # log int p^2 / q
    return log_px, log_second

# --- the estimator of log p(x) ----------------------------------------------------------------

def test_importance_sampled_log_likelihood_matches_quadrature():
    m = small_vae()
    x = binary(12, 6, seed=1)
    k = 5000
    torch.manual_seed(0)
    ours = m.log_likelihood(x, num_particles=k).numpy()
    log_px, log_second = quadrature(m, x)
    # delta method: sd(log p_hat) = sqrt(Var_q(w) / k) / p(x), Var_q(w) = int p^2/q - p(x)^2
    se = np.sqrt(np.expm1(log_second - 2 * log_px) / k)
    assert np.all(np.abs(ours - log_px) < 5 * se + 1e-9), (ours - log_px, se)

def test_log_likelihood_is_batched_without_changing_the_estimate():
    m = small_vae()
    x = binary(30, 6, seed=2)
    torch.manual_seed(3)
    whole = m.log_likelihood(x, num_particles=64)
    torch.manual_seed(3)
    # tiny memory budget: chunks of images and of particles; same draws in a different order
    chunked = m.log_likelihood(x, num_particles=64, max_elements=6 * 64)
    assert chunked.shape == (30,)
    log_px, _ = quadrature(m, x)
    for est in (whole, chunked):   # both within the same Monte Carlo error of the truth
        assert np.abs(est.numpy() - log_px).max() < 0.5

def test_iwae_bounds_increase_with_k():
    """L_1 <= L_5 <= L_50 (Burda et al. 2015, Theorem 1) on one trained model (L = 8: a posterior the
    diagonal encoder cannot match exactly, so the bounds differ by tenths of a nat).

    Paired by image: each bound is averaged over R = 20 independent estimates per test image, the
    differences of those means are averaged over the 270 images, and each mean difference must
    exceed 4 of its standard errors (the sd of the per-image differences / sqrt(270))."""
    ds = datasets.load("digits")
    m = zoo.get("vae", latent_dim=8, hidden=(64,))
    fit = train(m, m.validate(ds.data), epochs=20, batch_size=50, lr=3e-3, progress=False)
    x = fit.prepare(ds.splits["test"])
    torch.manual_seed(0)
    bounds = {k: fit.model.log_likelihood(x.repeat(20, 1), num_particles=k).reshape(20, -1).mean(0)
              for k in (1, 5, 50)}
    for lo, hi in ((1, 5), (5, 50)):
        diff = bounds[hi] - bounds[lo]
        assert diff.mean() > 4 * diff.std() / math.sqrt(len(diff)), (lo, hi, diff.mean(), diff.std())

# --- data --------------------------------------------------------------------------------------

def test_digits_are_bundled_and_split():
    ds = datasets.load("digits")
    assert ds.data.shape == (1257, 64) and {k: tuple(v.shape) for k, v in ds.splits.items()} == {
        "valid": (270, 64), "test": (270, 64)}
    assert 0 <= float(ds.data.min()) and float(ds.data.max()) <= 1
    test = ds.split("test")
    assert len(test.labels) == 270 and test.meta["image_shape"] == (8, 8)

def test_mnist_from_idx_files(shared_data_dir):
    ds = datasets.load("mnist", data_dir=shared_data_dir)
    assert ds.data.shape == (50000, 784) and ds.splits["test"].shape == (10000, 784)
    # README: test label counts 0..9
    assert np.bincount(ds.split("test").labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    full_mean = (float(ds.data.mean()) * 50000 + float(ds.splits["valid"].mean()) * 10000) / 60000
    assert full_mean == pytest.approx(0.1306604762738429, abs=1e-6)   # README: train pixel mean
    m = zoo.get("vae")
    assert m.training_transform(m.validate(ds.splits["test"][:10])) is not None

def test_binarized_mnist_from_npz(shared_data_dir):
    ds = datasets.load("binarized-mnist", data_dir=shared_data_dir)
    fractions = [float(v.mean()) for v in (ds.data, ds.splits["valid"], ds.splits["test"])]
    assert fractions == pytest.approx([0.13056, 0.13113, 0.13251], abs=5e-6)   # README
    assert zoo.get("vae").training_transform(ds.data[:100]) is None           # already binary

def test_corrupt_or_missing_image_files(shared_data_dir, tmp_path):
    (tmp_path / "binarized_mnist").mkdir()
    target = tmp_path / "binarized_mnist" / "binarized_mnist.npz"
    shutil.copy(shared_data_dir / "binarized_mnist" / "binarized_mnist.npz", target)
    with open(target, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="corrupt"):
        datasets.load("binarized-mnist", data_dir=tmp_path)
    (tmp_path / "mnist").mkdir()
    shutil.copy(shared_data_dir / "mnist" / "train-images-idx3-ubyte.gz", tmp_path / "mnist")
    with pytest.raises(ValueError, match="does not contain mnist/train-labels"):
        datasets.load("mnist", data_dir=tmp_path)

# --- bad input and configuration ----------------------------------------------------------------

@pytest.mark.parametrize("data, message", [
    (np.full((3, 64), 2.0), r"pixel values in \[0, 1\]"),
    (-np.ones((3, 64)), r"pixel values in \[0, 1\]"),
    (np.zeros((3, 10)), "expected images of 64 pixels"),
    (np.zeros((0, 64)), "empty"),
    (np.r_[np.zeros((1, 64)), np.full((1, 64), np.nan)], "NaN"),
    (np.zeros(5), "D >= 2"),
    (np.zeros((2, 8, 8)), "2-D"),
])
def test_validate_rejects_bad_images(data, message):
    m = zoo.get("vae", input_dim=64)
    with pytest.raises((ValueError, TypeError), match=message):
        m.validate(data)

def test_gaussian_likelihood_takes_any_real_values():
    m = zoo.get("vae", likelihood="gaussian", latent_dim=2, hidden=(8,))
    x = m.validate(np.random.default_rng(0).normal(size=(20, 5)) * 3)
    assert m.training_transform(x) is None
    assert m.log_likelihood(x, num_particles=10).shape == (20,)

@pytest.mark.parametrize("config, message", [
    ({"latent_dim": 0}, "latent_dim"),
    ({"hidden": "wide"}, "hidden"),
    ({"hidden": (200, -1)}, "hidden"),
    ({"likelihood": "poisson"}, "likelihood"),
    ({"components": 3}, "unknown configuration 'components'"),
])
def test_bad_config(config, message):
    with pytest.raises((ValueError, TypeError), match=message):
        zoo.get("vae", **config)

def test_simulate_is_reproducible_and_shaped():
    m = zoo.get("vae", latent_dim=3, hidden=(8,), input_dim=16)
    x1, t1 = m.simulate(7, seed=1)
    x2, t2 = m.simulate(7, seed=1)
    assert torch.equal(x1, x2) and x1.shape == (7, 16) and t1["z"].shape == (7, 3)
    assert set(torch.unique(x1).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="input_dim"):
        zoo.get("vae").simulate(3)

# --- the command line ---------------------------------------------------------------------------

TINY = ["--epochs", "3", "--latent-dim", "2", "--hidden", "16", "--eval-particles", "50", "--quiet"]

def test_cli_fit_then_compare_from_the_checkpoint(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "fit"
    assert main(["fit", "vae", "--out", str(out), *TINY]) == 0
    assert {"posterior_svi.nc", "summary.md", "loss.png", "elbo.png", "reconstructions.png", "samples.png",
            "interpolations.png", "latent.png"} <= {p.name for p in out.iterdir()}
    assert "test NLL" in capsys.readouterr().out
    assert "Test log-likelihood" in (out / "summary.md").read_text()
    checkpoint = tmp_path / "fit.ckpt.pt"
    assert read_checkpoint(checkpoint)["epoch"] == 3
    import arviz as az

    idata = az.from_netcdf(out / "posterior_svi.nc")
    assert idata.log_likelihood["obs"].shape == (1, 1, 270)   # per test image, IS estimate

    cmp = tmp_path / "cmp"
    assert main(["compare", "vae", "--out", str(cmp), "--checkpoint", str(checkpoint), "--resume", "--points", "2",
                 "--samples", "60", "--warmup", "60", "--chains", "2", "--steps", "200", *TINY]) == 0
    printed = capsys.readouterr().out
    assert "amortization_gap" in printed and "approximation_gap" in printed
    assert {"amortization_gap.csv", "amortization_compare.csv", "amortization.png"} <= {p.name for p in cmp.iterdir()}
    assert read_checkpoint(checkpoint)["epoch"] == 3   # resumed a finished run: no further training
    for folder in (out, cmp):   # a model without global latents still gets every section of report.html
        assert "could not be built" not in (folder / "report.html").read_text()

def test_cli_lightning_trainer(tmp_path, capsys):
    from zoo.cli import main

    out = tmp_path / "ddp"
    assert main(["fit", "vae", "--trainer", "lightning", "--devices", "2", "--out", str(out), *TINY]) == 0
    assert "trainer=lightning" in (out / "summary.md").read_text() and (out / "elbo.png").exists()

@pytest.mark.parametrize("args, message", [
    (["fit", "vae", "--method", "nuts"], "only local latents"),
    (["fit", "vae", "--data", "binarized-mnist", "--data-dir", "/nonexistent"], "does not contain"),
    (["fit", "vae", "--likelihood", "poisson"], "likelihood"),
    (["fit", "vae", "--resume"], "no checkpoint"),
])
def test_cli_mistakes_exit_2_with_one_line(tmp_path, capsys, args, message):
    from zoo.cli import main

    assert main([*args, "--out", str(tmp_path / "r"), *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()

def test_cli_rejects_bad_images_and_existing_checkpoints(tmp_path, capsys):
    from zoo.cli import main

    csv = tmp_path / "grey.csv"
    csv.write_text("a,b,c\n0.5,2.0,0.1\n0.2,0.3,0.4\n")
    assert main(["fit", "vae", "--data", str(csv), "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "pixel values in [0, 1]" in capsys.readouterr().err
    (tmp_path / "r.ckpt.pt").write_bytes(b"")
    assert main(["fit", "vae", "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "vae", "--hidden", "wide"])
    assert exit_info.value.code == 2
