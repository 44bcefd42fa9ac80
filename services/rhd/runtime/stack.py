"""The embedded stack on one machine: broker, model server and every stage as separate processes."""

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from rhd.runtime.broker import EmbeddedBroker, free_port
from rhd.runtime.settings import Settings

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("split", "inspect", "segment", "view", "features", "assemble", "diagnose")



async def stage_seconds(http: aiohttp.ClientSession, port: int, stage: str | None = None) -> tuple[float, float]:
    """(messages handled, seconds in the stage logic) from a service's rhd_stage_seconds histogram on /metrics,
    for one stage or, with stage None, summed over every stage the process serves."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    count = seconds = 0.0
    for family in text_string_to_metric_families(text):
        if family.name != "rhd_stage_seconds":
            continue
        for sample in family.samples:
            if stage is not None and sample.labels.get("stage") != stage:
                continue
            if sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                seconds += sample.value
    return count, seconds


class ServiceProcess:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path, http_port: int = 0):
        self.name, self.argv, self.env, self.log_path, self.http_port = name, argv, env, log_path, http_port
        self.process: subprocess.Popen[bytes] | None = None
        self._sent: set[int] = set()

    def start(self) -> None:
        self._sent.clear()
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

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


async def wait_serving(port: int, server: ServiceProcess, timeout_s: float) -> float:
    """Wait until the gRPC health service on port says SERVING (the model server has loaded its models);
    return the seconds waited."""
    started = time.monotonic()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
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
    """Starts everything `rhd demo` and the integration tests need, and stops all of it."""

    def __init__(self, workdir: Path, settings: Settings, replicas: dict[str, int] | None = None) -> None:
        self.workdir = Path(workdir)
        self.base = settings
        self.replicas = replicas or {}
        self.broker = EmbeddedBroker(log_file=self.workdir / "logs" / "broker.log")
        self.model_port = free_port()
        self.services: list[ServiceProcess] = []
        self.settings = settings

    def _env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RHD_")}
        env.update({
            "RHD_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers,
            "RHD_MODEL_SERVER": f"127.0.0.1:{self.model_port}",
            "RHD_BLOB_DIR": str(self.base.blob_dir.resolve()),
            "RHD_MODELS_DIR": str(self.base.models_dir.resolve()),
            "RHD_PARTITIONS": str(self.base.partitions),
            "RHD_STUDY_DEADLINE_S": str(self.base.study_deadline_s),
            "RHD_MODEL_RETRY_FOR_S": str(self.base.model_retry_for_s),
            "RHD_WORKERS": str(self.base.workers),
            "RHD_LOG_LEVEL": self.base.log_level,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(extra)
        return env

    async def start(self, timeout_s: float = 180.0) -> Settings:
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        await self.broker.start(self.base.partitions)
        self.settings = self.base.model_copy(update={
            "bootstrap_servers": self.broker.bootstrap_servers,
            "model_server": f"127.0.0.1:{self.model_port}",
        })
        rhd = [sys.executable, "-m", "rhd.cli"]
        server = ServiceProcess(
            "model-server", [*rhd, "model-server", "--port", str(self.model_port)], self._env(),
            self.workdir / "logs" / "model-server.log",
        )
        server.start()
        self.services.append(server)
        for stage in STAGES:
            for replica in range(self.replicas.get(stage, 1)):
                self.start_stage(stage, replica)
        await self.wait_ready(timeout_s)
        return self.settings

    def start_stage(self, stage: str, replica: int = 0) -> ServiceProcess:
        port = free_port()
        service = ServiceProcess(
            stage, [sys.executable, "-m", "rhd.cli", "serve", stage], self._env(RHD_HTTP_PORT=str(port)),
            self.workdir / "logs" / f"{stage}-{replica}.log", http_port=port,
        )
        service.start()
        self.services.append(service)
        return service

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
        self.broker.stop()
        return codes

    def all_stopped(self) -> bool:
        procs = [s.process for s in self.services] + [self.broker.process]
        return all(p is None or p.poll() is not None for p in procs)
