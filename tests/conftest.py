"""Shared test fixtures.

Real-photo data lives outside the repository in ``../shared/data`` (CI always has it; a user's
clone may not). Tests that need it take the ``shared_data`` fixture and are skipped, with the
reason, when it is absent. ``GLUON_SSD_SHARED_DATA`` points elsewhere if needed.
"""
import os
from pathlib import Path

import pytest

# One OpenMP thread for the tests and every train_ssd.py they start (before MXNet is imported):
# results depend on the thread count, and the resume tests compare a subprocess run with an
# in-process one bit for bit (train_ssd.py would otherwise use every core: use_every_core).
os.environ.setdefault("OMP_NUM_THREADS", "1")

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


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """The bfloat16 speed probe's cache (gluon_ssd.precision) goes to a per-session temporary
    folder, never the user's ~/.cache; measured once per test session."""
    monkeypatch.setenv("GLUON_SSD_CACHE", str(_session_cache(tmp_path_factory)))


_CACHE = {}


def _session_cache(factory):
    if "dir" not in _CACHE:
        _CACHE["dir"] = factory.mktemp("gluon_ssd_cache")
    return _CACHE["dir"]


@pytest.fixture(autouse=True, scope="session")
def _ctrl_c_works():
    """Ctrl-C raises KeyboardInterrupt in the tests and in the training processes they start,
    even when the test runner was started with SIGINT ignored (a background job of a
    non-interactive shell inherits SIG_IGN, which Python keeps, and so do its children)."""
    import signal
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
