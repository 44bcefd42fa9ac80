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


def _postgres_bin(tool: str) -> str | None:
    """A PostgreSQL server program: on PATH, else where Debian's packages put it (`make postgres`)."""
    import glob
    import shutil

    found = shutil.which(tool) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))[-1:]
    return found if isinstance(found, str) else (found[0] if found else None)


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session, started in a temporary directory with password (scram) sign-in over
    TCP: its admin address (the password in PGPASSWORD, as libpq reads it). As root, the server runs as the postgres
    user Debian's package made, since PostgreSQL refuses to run as root."""
    import secrets
    import shutil
    import subprocess
    import tempfile

    from rhd.local.broker import free_port

    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        missing_tool("PostgreSQL's server (initdb, pg_ctl) is not installed (`make postgres` installs Debian's)")
    root = tempfile.mkdtemp(prefix="rhd-pg-")
    run_as: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        run_as = ["runuser", "-u", "postgres", "--"]
    password = secrets.token_urlsafe(16)
    pwfile = os.path.join(root, "pw")
    with open(pwfile, "w") as f:
        f.write(password)
    if run_as:
        shutil.chown(pwfile, "postgres")
    data, port = os.path.join(root, "data"), free_port()
    quiet = {"check": True, "stdout": subprocess.DEVNULL}
    subprocess.run([*run_as, initdb, "-D", data, "-U", "rhd", "--auth=scram-sha-256", f"--pwfile={pwfile}"], **quiet)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*run_as, pg_ctl, "-D", data, "-l", os.path.join(root, "log"), "-w", "-o", options, "start"], **quiet
    )
    before = os.environ.get("PGPASSWORD")
    os.environ["PGPASSWORD"] = password
    try:
        yield f"postgresql://rhd@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", data, "-m", "fast", "-w", "stop"], **quiet)
        if before is None:
            os.environ.pop("PGPASSWORD", None)
        else:
            os.environ["PGPASSWORD"] = before
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server):
    """A new, empty database on the session's server: its address."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield postgres_server.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
