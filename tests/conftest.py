"""What every test shares: a tool the project installs itself (make promtool) is required under CI."""

import os

import pytest


def missing_tool(why: str) -> None:
    """Skip for lack of a tool the project installs; under CI=true, where `make test` has installed it, fail."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: the project installs it, so its absence is a failure)")
    pytest.skip(why)


# The end-to-end tests run on both brokers the project starts: Tansu (the zero-install default) and Apache Kafka in
# KRaft mode (`make kafka`), so nothing passes on one and fails on the other.
BROKERS = ("tansu", "kafka")


def require_broker(kind: str) -> str:
    from rhd.local.broker import kafka_available

    if kind == "kafka" and not kafka_available():
        missing_tool("Apache Kafka needs Java 17 on PATH and its jars (`make kafka` copies them to kafka/target/libs)")
    return kind


@pytest.fixture(scope="module", params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The broker a module's stack runs on: a module that asks for it runs once per broker."""
    return require_broker(request.param)
