"""inference.target: how inference sees a plain Pyro callable (structure found by tracing)."""

import pytest
import torch

from inference.target import Target, inspect_model


def test_inspect_model_finds_structure(y, plain_mixture):
    info = inspect_model(plain_mixture, y)
    assert info.observed == ("y",)
    assert info.enumerated == ("z",)
    assert info.global_sites == ("w", "loc")
    assert (info.data_plate, info.data_size, info.max_plate_nesting) == ("data", 100, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_structure_needs_no_valid_point(ordered_positive, ordinal, dtype):
    """The structure of a model is found without a valid point: the ordered-positive model's support is
    wider than its prior's values, and a point on it (positive, not ordered) failed validation here. The
    traced values keep the model's dtype."""
    y = torch.tensor(ordinal, dtype=dtype)
    target = Target(ordered_positive)
    info = target.info(y)
    assert (info.latent, info.observed, info.shapes["c"], info.data_plate) == (("c",), ("y",), (3,), "data")
    assert target.observed_values(y)["y"].dtype == dtype
    c = torch.tensor([0.3, 1.0, 2.0], dtype=dtype)
    assert target.log_likelihood(y, {"c": c})["y"].dtype == dtype


def test_latent_discrete_sites_that_are_not_enumerated_are_listed(poisson_count, y, plain_mixture):
    assert Target(poisson_count).info(torch.ones(3)).discrete == {"n": "Poisson, infinite support"}
    assert Target(plain_mixture).info(y).discrete == {}   # its assignments are enumerated
