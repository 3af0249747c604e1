import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real-data folder (../shared/datasets or $ZOO_DATA_DIR); tests needing it skip without it."""
    root = Path(os.environ.get("ZOO_DATA_DIR", REPO.parent / "shared" / "datasets"))
    if not root.is_dir():
        pytest.skip(f"real datasets not available at {root}")
    return root


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a test module: its tensors are small, and on a shared 2-core machine
    spinning OpenMP threads, not arithmetic, dominated (a 2x2 max: 30 ms with 2 threads, 5 us with one;
    PPCA's SVI tests ten times slower). Modules use it with ``pytestmark = pytest.mark.usefixtures``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
