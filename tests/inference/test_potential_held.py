"""inference.potential.Potential with held sites (HMC-within-Gibbs): the discrete values are inputs of the
traced graph, which is checked at other values of them before it is used, against scipy by hand."""

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import stats

from inference.potential import Potential


def changepoint(y):
    T = len(y)
    tau = pyro.sample("tau", dist.Categorical(logits=torch.zeros(T)))
    r1 = pyro.sample("r1", dist.Gamma(2.0, 1.0))
    r2 = pyro.sample("r2", dist.Gamma(2.0, 1.0))
    rate = torch.where(torch.arange(T) < tau, r1, r2)
    with pyro.plate("time", T):
        pyro.sample("y", dist.Poisson(rate), obs=y)


def sliced(y):
    """The same model written with Python slicing on tau: a trace freezes the cut where it was made."""
    T = len(y)
    tau = int(pyro.sample("tau", dist.Categorical(logits=torch.zeros(T))))
    r1 = pyro.sample("r1", dist.Gamma(2.0, 1.0))
    r2 = pyro.sample("r2", dist.Gamma(2.0, 1.0))
    pyro.sample("before", dist.Poisson(r1).expand([tau]).to_event(1), obs=y[:tau])
    pyro.sample("after", dist.Poisson(r2).expand([T - tau]).to_event(1), obs=y[tau:])


def by_hand(theta, tau, y):
    """log p(tau, r1, r2, y) + log |J| at theta = (log r1, log r2), by scipy."""
    r1, r2 = np.exp(theta)
    rate = np.where(np.arange(len(y)) < tau, r1, r2)
    return (-np.log(len(y)) + stats.gamma(2.0).logpdf([r1, r2]).sum() + theta.sum()
            + stats.poisson(rate).logpmf(y).sum())


Y = torch.tensor([1.0, 3.0, 0.0, 2.0, 5.0, 4.0, 6.0, 3.0])


def test_one_graph_serves_every_held_value():
    p = Potential(changepoint, Y, max_plate_nesting=1, given={"tau": torch.tensor(2)}, route="graph")
    assert p.route == "graph" and p.held_names == ("tau",) and p.names == ("r1", "r2")
    theta = np.array([0.3, 1.1])
    for tau in (2, 5, 0, 7):
        p.set_given({"tau": torch.tensor(tau)})
        value, grad = p(theta)
        np.testing.assert_allclose(value, by_hand(theta, tau, Y.numpy()), rtol=1e-5)
        np.testing.assert_allclose(p.reference(theta)[0], value, rtol=1e-5)


def test_a_graph_frozen_at_one_held_value_is_caught_at_another(caplog):
    """At the value it was traced at the sliced model's graph agrees with Pyro; at the check points' other
    values of tau (one and three steps away) it does not, so the eager route is used."""
    p = Potential(sliced, Y, max_plate_nesting=0, given={"tau": torch.tensor(2)}, route="graph")
    assert p.route == "eager"
    assert "not usable" in caplog.text
    theta = np.array([0.3, 1.1])
    p.set_given({"tau": torch.tensor(5)})
    np.testing.assert_allclose(p(theta)[0], by_hand(theta, 5, Y.numpy()), rtol=1e-5)
