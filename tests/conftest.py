"""Shared test fixtures.

Real-photo data lives outside the repository in ``../shared/data`` (CI always has it; a user's
clone may not). Tests that need it take the ``shared_data`` fixture and are skipped, with the
reason, when it is absent. ``GLUON_SSD_SHARED_DATA`` points elsewhere if needed.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GLUON_SSD_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data():
    """Path to ``../shared/data`` (``raccoon/``, ``coco128/``); skips the test if it is missing."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real-photo test data not found at {SHARED_DATA} "
                    "(set GLUON_SSD_SHARED_DATA or place shared/ beside the repository)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same RNG state."""
    import random

    import mxnet as mx
    import numpy as np
    random.seed(0)
    np.random.seed(0)
    mx.random.seed(0)
