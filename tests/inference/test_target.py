"""inference.target: how inference sees a plain Pyro callable (structure found by tracing)."""

from inference.target import inspect_model


def test_inspect_model_finds_structure(y, plain_mixture):
    info = inspect_model(plain_mixture, y)
    assert info.observed == ("y",)
    assert info.enumerated == ("z",)
    assert info.global_sites == ("w", "loc")
    assert (info.data_plate, info.data_size, info.max_plate_nesting) == ("data", 100, 1)
