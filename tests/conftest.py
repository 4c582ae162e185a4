"""Fixtures shared across the test tree."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["fused", "eager"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the fused numba kernels and on the eager torch path (the kernels check per call)."""
    if request.param == "eager":
        monkeypatch.setenv("QUANTREWRITE_EAGER", "1")
    else:
        monkeypatch.delenv("QUANTREWRITE_EAGER", raising=False)
    return request.param
