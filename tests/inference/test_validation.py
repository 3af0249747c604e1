"""inference.validation.check_setting (zoo.base.check_setting): wrong type -> TypeError, out of range ->
ValueError, the argument's name first in the message, cleaned values returned."""

import math

import numpy as np
import pytest

import inference
import zoo
from inference.validation import check_setting


@pytest.mark.parametrize("value, kwargs, error, message", [
    (1.5, dict(kind="int"), TypeError, r"^k: expected an integer >= 0, got 1.5"),
    (True, dict(kind="int", positive=True), TypeError, r"^k: expected an integer >= 1"),
    ("3", dict(kind="int"), TypeError, r"^k: expected an integer"),
    (0, dict(kind="int", positive=True), ValueError, r"^k: expected an integer >= 1, got 0"),
    (1, dict(kind="int", minimum=2), ValueError, r"^k: expected an integer >= 2, got 1"),
    ("x", dict(kind="int", minimum=-math.inf), TypeError, r"^k: expected an integer, got 'x'"),
    (0.0, dict(kind="probability"), ValueError, r"^k: expected a probability in \(0, 1\)"),
    (1.0, dict(kind="probability"), ValueError, r"^k: expected a probability in \(0, 1\)"),
    (float("nan"), dict(kind="probability"), ValueError, r"^k: expected a probability"),
    ("0.5", dict(kind="probability"), TypeError, r"^k: expected a probability"),
    (True, dict(kind="probability"), TypeError, r"^k: expected a probability"),
    (-1.0, dict(positive=True), ValueError, r"^k: expected finite values > 0"),
    ("a", dict(kind="choice", choices=("a1", "b")), ValueError, r"^k: expected one of 'a1', 'b'"),
])
def test_mistakes_raise_one_type_each_naming_the_argument(value, kwargs, error, message):
    with pytest.raises(error, match=message):
        check_setting(value, "k", **kwargs)


def test_values_come_back_cleaned():
    assert check_setting(np.int64(3), "k", kind="int") == 3 and type(check_setting(np.int64(3), "k", kind="int")) is int
    assert check_setting(-7, "k", kind="int", minimum=-math.inf) == -7
    assert check_setting(np.float32(0.25), "k", kind="probability") == 0.25
    assert check_setting(None, "k", kind="int", allow_none=True) is None


def test_entry_points_use_it():
    """run_nuts, fit_svi, from_pyro, ppc and sbc: a float where an integer belongs is a TypeError, an integer
    out of range a ValueError (each named), before any work: the same mistake reads the same everywhere."""
    with pytest.raises(TypeError, match="^num_samples: expected an integer >= 1"):
        inference.run_nuts(lambda d: None, None, num_samples=2.5)
    with pytest.raises(TypeError, match="^num_steps: expected an integer >= 1, got 2.5"):
        inference.fit_svi(lambda d: None, None, num_steps=2.5)
    with pytest.raises(ValueError, match="^num_samples: expected an integer >= 1, got 0"):
        inference.from_pyro({}, num_samples=0)
    with pytest.raises(ValueError, match=r"^target_accept: expected a probability in \(0, 1\)"):
        inference.run_nuts(lambda d: None, None, target_accept=1.2)
    with pytest.raises(ValueError, match="^num_simulations: expected an integer >= 2"):
        inference.sbc(zoo.get("hmm", n_states=2), num_simulations=1)
    with pytest.raises(ValueError, match="^n_jobs: expected a non-zero integer"):
        inference.sbc(zoo.get("hmm", n_states=2), num_simulations=2, n_jobs=0)
