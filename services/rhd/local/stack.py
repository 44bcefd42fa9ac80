"""The embedded stack on one machine: broker, model server and every stage as separate processes."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rhd.local.broker import Broker, KafkaBroker, broker_for, free_port
from rhd.local.mirror import MirrorMaker
from rhd.local.security import Security, stage_principal
from rhd.runtime.http import TFS_METRICS_PATH
from rhd.runtime.secrets import init_secrets
from rhd.runtime.settings import Settings
from rhd.runtime.topics import GPU, HOME, STAGES, region_topics, stage_region
from rhd.watch.figures import MODEL_SERVER_JOB, Target, fetch_samples, file_sd, total

log = logging.getLogger(__name__)


async def stage_seconds(
    http: aiohttp.ClientSession, port: int, stage: str | None = None, path: str = "/metrics"
) -> tuple[float, float]:
    """(messages handled, seconds in the stage logic) from a service's rhd_stage_seconds histogram, for one stage
    or, with stage None, summed over every stage the process serves; (0, 0) from a process that has none."""
    samples = await fetch_samples(http, f"http://127.0.0.1:{port}{path}")
    match = {"stage": stage} if stage is not None else {}
    return total(samples, "rhd_stage_seconds_count", **match), total(samples, "rhd_stage_seconds_sum", **match)


class ServiceProcess:
    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        http_port: int = 0,
        metrics_path: str = "/metrics",
    ):
        self.name, self.argv, self.env, self.log_path, self.http_port = name, argv, env, log_path, http_port
        self.metrics_path = metrics_path
        self.process: subprocess.Popen[bytes] | None = None
        self._sent: set[int] = set()

    def start(self) -> None:
        self._sent.clear()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def send_once(self, sig: int = signal.SIGTERM) -> None:
        """Send a signal once: a second SIGTERM would kill a service while it shuts down gracefully."""
        if self.process is not None and self.process.poll() is None and sig not in self._sent:
            self._sent.add(sig)
            self.process.send_signal(sig)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.send_once(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s: killing it", self.name, timeout_s)
                self.process.kill()
                self.process.wait()
        return self.process.returncode


async def wait_serving(port: int, server: ServiceProcess, timeout_s: float, ca: bytes | None = None) -> float:
    """Wait until the gRPC health service on port says SERVING (the model server has loaded its models);
    return the seconds waited. `ca`: the server is TLS, its certificate signed by it."""
    # Imported here: the model client brings TensorFlow (its protos), which a command that merely starts processes
    # need not pay for.
    from rhd.runtime.model_client import channel as model_channel

    started = time.monotonic()
    async with model_channel(f"127.0.0.1:{port}", ca) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited early; see {server.log_path}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return time.monotonic() - started
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{server.name} not serving after {timeout_s:.0f} s; see {server.log_path}")
            await asyncio.sleep(0.2)


class EmbeddedStack:
    """Starts everything `rhd demo` and the integration tests need, and stops all of it. `<workdir>/targets.json`
    lists every service's metrics endpoint in Prometheus file_sd format, for a local Prometheus and `rhd watch`."""

    def __init__(self, workdir: Path, settings: Settings, replicas: dict[str, int] | None = None) -> None:
        self.workdir = Path(workdir)
        self.base = settings
        self.replicas = replicas or {}
        self.broker = broker_for(settings, self.workdir, log_file=self.workdir / "logs" / "broker.log")
        # Two regions (RHD_TWO_REGIONS), as production runs them: this broker is the home region's cluster (deid,
        # the uploads, the links, the results read back); a second Apache Kafka is the GPU region's (every other
        # stage and the model server), each region with its own blob store, MirrorMaker 2 between (rhd.local.mirror).
        self.brokers: dict[str, Broker] = {HOME: self.broker}
        self.blob_dirs = {HOME: settings.blob_dir.resolve()}
        self.mirror: MirrorMaker | None = None
        if settings.two_regions:
            if not isinstance(self.broker, KafkaBroker) or settings.broker_secure:
                raise ValueError("two regions run on Apache Kafka (MirrorMaker 2), plaintext: RHD_BROKER=kafka")
            self.broker.topics = region_topics(HOME, settings.hospitals)
            gpu = broker_for(settings, self.workdir / GPU, log_file=self.workdir / "logs" / "broker-gpu.log")
            assert isinstance(gpu, KafkaBroker)
            gpu.topics = region_topics(GPU)
            self.brokers[GPU] = gpu
            self.blob_dirs[GPU] = self.workdir / GPU / "blobs"
            mm2_log = self.workdir / "logs" / "mm2.log"
            self.mirror = MirrorMaker(self.broker, gpu, self.workdir / "mm2", log_file=mm2_log)
        self.model_port = free_port()
        self.services: list[ServiceProcess] = []
        # The keys of this one-machine stack live in its workdir unless the caller names a secrets directory.
        if settings.secrets_dir == Settings().secrets_dir:
            settings = settings.model_copy(update={"secrets_dir": self.workdir / "secrets"})
        self.base = settings
        self.settings = settings
        self.targets_path = self.workdir / "targets.json"

    @property
    def security(self) -> Security | None:
        """The secured stack's TLS material and credentials (RHD_BROKER_SECURE); None on a plaintext stack."""
        return self.broker.security

    @property
    def idempotence(self) -> bool:
        return self.base.idempotence or self.broker.kind == "kafka"

    @property
    def transactions(self) -> bool:
        return self.base.transactions or self.broker.kind == "kafka"

    def region_of(self, stage: str) -> str:
        """Where a stage runs: its region in a two-region stack (rhd.runtime.topics.stage_region), else home."""
        return stage_region(stage) if self.mirror else HOME

    def _env(self, region: str = HOME, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RHD_")}
        # Every setting the stack was given that is not its default (limits, deadlines, ...), then its own wiring. The
        # defaults are the fields' own: Settings() would read this process's RHD_ variables, and one set there (say
        # RHD_FRAME_CODEC=raw) would equal its "default" and never reach the services, whose RHD_ variables are dropped.
        defaults = {name: f.get_default(call_default_factory=True) for name, f in Settings.model_fields.items()}
        env.update(
            {
                f"RHD_{name.upper()}": json.dumps(value) if isinstance(value, list | dict) else str(value)
                for name, value in self.base.model_dump().items()
                if value != defaults[name] and value is not None and name not in Settings.CONNECTION
            }
        )
        env.update(
            {
                "RHD_BOOTSTRAP_SERVERS": self.brokers[region].bootstrap_servers,
                "RHD_MODEL_SERVER": f"127.0.0.1:{self.model_port}",
                "RHD_BLOB_DIR": str(self.blob_dirs[region]),
                "RHD_MODELS_DIR": str(self.base.models_dir.resolve()),
                "RHD_PARTITIONS": str(self.base.partitions),
                "RHD_STUDY_DEADLINE_S": str(self.base.study_deadline_s),
                "RHD_MODEL_RETRY_FOR_S": str(self.base.model_retry_for_s),
                "RHD_WORKERS": str(self.base.workers),
                "RHD_LOG_LEVEL": self.base.log_level,
                "RHD_SECRETS_DIR": str(self.settings.secrets_dir.resolve()),
                # Two regions: the home region's services say they run at home, the others that they do not.
                "RHD_REGION": (self.base.home_region if region == HOME else GPU) if self.mirror else self.base.region,
                "RHD_IDEMPOTENCE": str(self.idempotence).lower(),
                "RHD_TRANSACTIONS": str(self.transactions).lower(),
                **({"RHD_MODEL_SERVER_CA": str(self.security.ca.resolve())} if self.security else {}),
                "RHD_HOME_REGION": self.base.home_region,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(extra)
        return env

    async def start(self, timeout_s: float = 180.0) -> Settings:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        init_secrets(self.base.secrets_dir)
        await asyncio.gather(*(broker.start(self.base.partitions) for broker in self.brokers.values()))
        if self.mirror:
            self.mirror.start()
        # The caller's clients (publishers, readers of results, the tests) connect as the broker's administrator.
        self.settings = self.broker.admin_settings().model_copy(
            update={
                **{k: v for k, v in self.base.model_dump().items() if k not in Settings.CONNECTION},
                "model_server": f"127.0.0.1:{self.model_port}",
                "model_server_ca": self.security.ca if self.security else None,
                "idempotence": self.idempotence,
                "transactions": self.transactions,
            }
        )
        rhd = [sys.executable, "-m", "rhd.cli"]
        rest_port = free_port()  # its metrics, and /readyz once the models are loaded
        tls = ["--ssl-config-file", str(self.security.ssl_config(MODEL_SERVER_JOB))] if self.security else []
        server = ServiceProcess(
            MODEL_SERVER_JOB,
            [*rhd, "model-server", "--port", str(self.model_port), "--rest-api-port", str(rest_port), *tls],
            self._env(GPU if self.mirror else HOME),
            self.workdir / "logs" / "model-server.log",
            http_port=rest_port,
            metrics_path=TFS_METRICS_PATH,
        )
        server.start()
        self.services.append(server)
        self.write_targets()
        for stage in STAGES:
            for replica in range(self.replicas.get(stage, 1)):
                self.start_stage(stage, replica)
        await self.wait_ready(timeout_s)
        return self.settings

    def start_stage(self, stage: str, replica: int = 0) -> ServiceProcess:
        port = free_port()
        security = self.security
        credentials = security.client_env(stage_principal(stage)) if security else {}  # its own principal
        service = ServiceProcess(
            stage,
            [sys.executable, "-m", "rhd.cli", "serve", stage],
            self._env(self.region_of(stage), RHD_HTTP_PORT=str(port), **credentials),
            self.workdir / "logs" / f"{stage}-{replica}.log",
            http_port=port,
        )
        service.start()
        self.services.append(service)
        self.write_targets()
        return service

    def write_targets(self, extra: Sequence[Target] = ()) -> None:
        """Every service with an HTTP port as a Prometheus file_sd target, one entry per job, and `extra` targets (a
        supervisor's own). Written whole and renamed into place, so a reader (Prometheus re-reads it on change) never
        sees half a file."""
        targets = [Target(s.name, f"127.0.0.1:{s.http_port}", s.metrics_path) for s in self.services if s.http_port]
        targets += extra
        partial = self.targets_path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(file_sd(targets), indent=2) + "\n")
        partial.replace(self.targets_path)

    async def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        pending = [s for s in self.services if s.http_port]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while pending:
                for service in list(pending):
                    if not service.alive():
                        raise RuntimeError(f"{service.name} exited early; see {service.log_path}")
                    try:
                        async with http.get(f"http://127.0.0.1:{service.http_port}/readyz") as response:
                            if response.status == 200:
                                pending.remove(service)
                    except aiohttp.ClientError:
                        pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready after {timeout_s:.0f} s: {[s.name for s in pending]}")
                await asyncio.sleep(0.5)

    def stop(self) -> dict[str, int | None]:
        """Stop every service (graceful first), then the broker; return each exit code."""
        codes = {}
        for service in reversed(self.services):
            service.send_once(signal.SIGTERM)
        for service in reversed(self.services):
            codes[f"{service.name}:{service.http_port}"] = service.stop()
        if self.mirror:
            self.mirror.stop()
        for broker in self.brokers.values():
            broker.stop()
        return codes

    def all_stopped(self) -> bool:
        procs = [s.process for s in self.services] + [b.process for b in self.brokers.values()]
        procs += [self.mirror.process] if self.mirror else []
        return all(p is None or p.poll() is not None for p in procs)
