"""What every test shares: a tool the project installs itself (make promtool) is required under CI."""

import os

import pytest


def missing_tool(why: str) -> None:
    """Skip for lack of a tool the project installs; under CI=true, where `make test` has installed it, fail."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: the project installs it, so its absence is a failure)")
    pytest.skip(why)
