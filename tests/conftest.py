"""Fixtures shared across the test tree."""

from __future__ import annotations

import pytest

from quantrewrite import _kernel_loader


@pytest.fixture(scope="session", autouse=True)
def _compiled_kernels_loaded() -> None:
    """Tests that run "the fused path" need the kernels loaded, not still loading in the background."""
    _kernel_loader.wait_loaded()


@pytest.fixture(params=["fused", "eager"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the fused compiled kernels and on the eager torch path (the kernels check per call)."""
    if request.param == "eager":
        monkeypatch.setenv("QUANTREWRITE_EAGER", "1")
    else:
        monkeypatch.delenv("QUANTREWRITE_EAGER", raising=False)
    return request.param
