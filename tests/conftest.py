"""What every test shares: a tool the project installs itself (make promtool) is required under CI."""

import os
import shutil

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
    if kind == "kafka":
        from rhd.local.broker import default_kafka_libs

        if shutil.which("java") is None:
            missing_tool("Apache Kafka needs Java 17 (java not on PATH)")
        if not any(default_kafka_libs().glob("kafka_2.13-*.jar")):
            missing_tool("no Apache Kafka jars: `make kafka` copies them to kafka/target/libs")
    return kind


@pytest.fixture(scope="module", params=BROKERS)
def broker_kind(request: pytest.FixtureRequest) -> str:
    """The broker a module's stack runs on: a module that asks for it runs once per broker."""
    return require_broker(request.param)
