import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real-data folder (../shared/datasets or $ZOO_DATA_DIR); tests needing it skip without it."""
    root = Path(os.environ.get("ZOO_DATA_DIR", REPO.parent / "shared" / "datasets"))
    if not root.is_dir():
        pytest.skip(f"real datasets not available at {root}")
    return root
