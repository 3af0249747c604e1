"""PPCA's own guide (zoo/ppca_guide.py): the rotation-averaged density against Bartlett's decomposition,
the layout's round trip, and the Laplace approximation computed in float64 whatever the data's dtype."""

import pytest
import torch
from scipy import stats

import zoo
from zoo import datasets
from zoo.ppca_guide import Layout, RotationAveragedGuide, haar, log_lq_jacobian


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def wine():
    return datasets.load("wine").data.double()


def test_rotation_averaged_guide_density_is_exact():
    """The guide scores W = L Q (Q Haar) with q_L(L) / J(L). Bartlett: if W has iid N(0, 1) entries, L
    has chi_{K-k+1} diagonal and N(0, 1) entries below it; then p_W(W) = p_L(L) / J(L) must hold."""
    for Kk, Dd in ((1, 3), (2, 5), (3, 4), (4, 9)):
        g = torch.Generator().manual_seed(Kk)
        for _ in range(5):
            W = torch.randn(Dd, Kk, generator=g, dtype=torch.float64)
            Q, R = torch.linalg.qr(W.T)
            L = (R * torch.sign(torch.diagonal(R)).unsqueeze(-1)).T              # W = L Q', L lower, diag > 0
            diag = torch.diagonal(L)
            rows, cols = torch.tril_indices(Dd, Kk)
            off = L[rows[rows != cols], cols[rows != cols]]
            log_pL = sum(stats.chi(Kk - k).logpdf(float(diag[k])) for k in range(Kk)) + stats.norm.logpdf(off.numpy()).sum()
            log_pW = stats.norm.logpdf(W.numpy()).sum()
            assert log_pW == pytest.approx(log_pL - float(log_lq_jacobian(diag.log(), Kk)), abs=1e-9)


def test_guide_layout_round_trip(wine):
    x = wine
    m = zoo.get("ppca", n_components=3)
    layout = Layout(m, x)
    W = m.ml_solution(x)["loadings"] @ haar(3, torch.float64, generator=torch.Generator().manual_seed(0))
    values = {"loadings": W, "noise_scale": torch.tensor(0.7, dtype=torch.float64), "mean": x.mean(0)}
    theta = layout.pack(values)
    assert len(theta) == layout.size == 13 * 3 - 3 + 13 + 1
    back, _ = layout.unpack(theta)
    # the same W up to a rotation: identical W W^T
    torch.testing.assert_close(back["loadings"] @ back["loadings"].T, W @ W.T)
    torch.testing.assert_close(back["noise_scale"], values["noise_scale"])


@pytest.mark.parametrize("ard", [False, True])
def test_laplace_approximation_is_float64_for_float32_data(ard):
    """float32 data: the mode and the Hessian are computed in float64 (the dtype passed to the log density,
    the data left untouched) and returned in float32, equal to the float64 run up to float32 rounding;
    at the mode the gradient of the log density vanishes."""
    x64 = zoo.get("ppca", n_components=2, dim=5).simulate(60, seed=0)[0].double()
    x32 = x64.float()
    m = zoo.get("ppca", n_components=2, ard=ard)
    g32, g64 = RotationAveragedGuide(m, x32), RotationAveragedGuide(m, x64)
    assert g32.layout.data is x32 and g32.laplace_loc.dtype == g32.laplace_tril.dtype == torch.float32
    torch.testing.assert_close(g32.laplace_loc.double(), g64.laplace_loc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g32.laplace_tril.double(), g64.laplace_tril, rtol=1e-4, atol=1e-4)
    theta = g64.laplace_loc.clone().requires_grad_(True)
    g64.layout.log_density(theta, x64).backward()
    assert theta.grad.abs().max() < 1e-6 * len(x64)
