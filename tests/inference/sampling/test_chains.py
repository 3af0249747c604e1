"""inference.sampling.chains.parallel: every chain's result in its place, a chain started as soon as a worker
is free, and a failing chain named."""

import time

import pytest
import torch

from inference.sampling.chains import parallel


def test_a_chain_starts_when_a_worker_is_free_not_when_its_batch_is_done(tmp_path):
    """Two workers, three chains: chain 0 waits until chain 2 has run. Run in fixed pairs, chain 2 would
    wait for chain 0 (which would give up after a minute); scheduled, it runs on the worker chain 1 frees."""
    signal = tmp_path / "chain 2 ran"

    def chain(c, position):
        if c == 2:
            signal.write_text("yes")
        if c == 0:
            deadline = time.monotonic() + 60
            while not signal.exists():
                if time.monotonic() > deadline:
                    raise TimeoutError("chain 2 never started while chain 0 ran")
                time.sleep(0.01)
        return {"x": torch.full((3,), float(c))}, {"chain": c, "position": position}, {}

    results = parallel(chain, 3, 2)
    assert [float(r[0]["x"][0]) for r in results] == [0.0, 1.0, 2.0]
    assert [r[1]["chain"] for r in results] == [0, 1, 2]
    assert results[2][1]["position"] == 1   # chain 2 took the progress-bar row chain 1 left


def test_a_failing_chain_is_named():
    def chain(c, position):
        if c == 1:
            raise ValueError("no good start")
        return {"x": torch.zeros(1)}, {}, {}

    with pytest.raises(RuntimeError, match="NUTS chain 1 failed: ValueError: no good start"):
        parallel(chain, 3, 2)
