"""Shared test fixtures."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    return request.param


# The test problems are tiny; one intra-op thread avoids oversubscribing the two CI cores
# (subprocess tests and distributed tests start their own interpreters).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _default_dtype_is_restored():
    """A test that changes torch's default dtype must restore it: fail it otherwise, so the
    change cannot leak into the tests that run after it."""
    before = torch.get_default_dtype()
    yield
    after = torch.get_default_dtype()
    torch.set_default_dtype(before)
    assert after == before, f"the test left torch's default dtype at {after} (was {before})"


def _denormals_flushed() -> bool:
    """True when torch flushes denormal floats to zero (``torch.set_flush_denormal(True)``),
    a process-wide mode that torch cannot be asked about directly."""
    tiny = torch.tensor([1e-310], dtype=torch.float64)
    return bool((tiny * 1.0)[0] == 0.0)


@pytest.fixture(autouse=True)
def _denormal_mode_is_restored():
    """A test (or the code it runs) must not leave denormals flushed to zero: later tests'
    float arithmetic would change (seen: ``gradkit compare`` run in-process left it on)."""
    yield
    if _denormals_flushed():
        torch.set_flush_denormal(False)
        pytest.fail("the test left torch flushing denormal floats to zero")
