"""`rhd up`: the whole line on one machine as a long-running stack, and `rhd ps`, what it is doing.

The broker (Apache Kafka where Java and `make kafka`'s jars are, else Tansu), the model server, every stage (with
`--replicas`) and the web page, each a process of its own, supervised: a service that exits is started again after a
backoff that doubles from 1 s to 60 s (back to 1 s once it has run a minute), each restart counted
(rhd_service_restarts_total, on the supervisor's /metrics, and in `rhd ps`). SIGTERM or Ctrl-C drains: every
service is sent SIGTERM (each finishes and commits what it holds), then the broker stops; nothing is left running.

The broker is supervised too, with the same backoff: Apache Kafka comes back on the same ports with its storage
(every record, every committed offset), and the services' clients reconnect by themselves; Tansu keeps its records
in memory, so one that is started again comes back empty (said in the log).

Why not supervisord: it restarts a service that has run past `startsecs` at once, every time (its backoff covers
start-up failures only), and it would need a configuration file and a daemon of its own beside the stack's broker
and secrets; the stack's own processes (rhd.local.stack) already know how to start and stop each service.
"""

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client import Counter, Gauge

from rhd.local.broker import free_port, kafka_available
from rhd.local.security import Security
from rhd.local.stack import EmbeddedStack, ServiceProcess
from rhd.runtime.http import start_http
from rhd.runtime.settings import Settings
from rhd.runtime.topics import HOME
from rhd.watch.figures import Target, counter_increase, scrape, total

log = logging.getLogger(__name__)

FIRST_BACKOFF_S, MAX_BACKOFF_S, HEALTHY_AFTER_S = 1.0, 60.0, 60.0
STATE_FILE = "services.json"
WEB = "web"

RESTARTS = Counter("rhd_service_restarts_total", "Services started again after they exited", ["service"])
UP = Gauge("rhd_service_up", "1 while the service's process runs", ["service", "replica"])


@dataclass(kw_only=True)
class Restarts:
    """When a supervised process that exited is started again: after a backoff that doubles from FIRST_BACKOFF_S to
    MAX_BACKOFF_S, back to the first once it has run HEALTHY_AFTER_S. The stages, the page and the broker alike."""

    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None  # when it is started again (it exited)
    last_exit: int | None = None

    def up(self, now: float) -> None:
        if now - self.started_at >= HEALTHY_AFTER_S:
            self.backoff_s = FIRST_BACKOFF_S

    def down(self, now: float, code: int | None, what: str, note: str = "") -> bool:
        """It is not running: the first call notes the exit and when to start it again; True once that time has
        come (the restart is then counted, and the caller starts it)."""
        if self.restart_at is None:
            self.last_exit, self.restart_at = code, now + self.backoff_s
            log.warning("%s exited (%s): starting it again in %.0f s%s", what, code, self.backoff_s, note)
            self.backoff_s = min(self.backoff_s * 2, MAX_BACKOFF_S)
            return False
        if now < self.restart_at:
            return False
        self.restart_at, self.started_at = None, now
        self.restarts += 1
        return True


@dataclass
class Supervised(Restarts):
    process: ServiceProcess
    replica: int
    lag: float | None = None
    rate: float | None = None
    _handled: tuple[float, float] | None = None  # (time, messages) at the last scrape

    @property
    def name(self) -> str:
        return self.process.name

    def state(self) -> str:
        if self.process.alive():
            return "running"
        return "backoff" if self.restart_at is not None else "exited"


def choose_broker(settings: Settings) -> Settings:
    """Apache Kafka when it is installed and RHD_BROKER was not set: the embedded Tansu keeps every record in memory,
    which a stack that runs for days cannot afford."""
    if "RHD_BROKER" not in os.environ and kafka_available():
        return settings.model_copy(update={"broker": "kafka"})
    return settings


class Supervisor:
    def __init__(
        self,
        workdir: Path,
        settings: Settings,
        replicas: dict[str, int] | None = None,
        web_host: str = "127.0.0.1",
        web_port: int = 8443,
        db: str = "",
    ) -> None:
        self.workdir = Path(workdir)
        self.stack = EmbeddedStack(self.workdir, choose_broker(settings), replicas)
        self.web_host, self.web_port = web_host, web_port
        self.db = db or str(self.workdir / "web.sqlite")  # an SQLite file or a postgresql:// address
        self.services: list[Supervised] = []
        self.broker = Restarts()
        self.stopping = asyncio.Event()
        self.state_path = self.workdir / STATE_FILE
        self.http_port = 0
        self.prometheus_port = 0

    @property
    def url(self) -> str:
        return f"https://{'localhost' if self.web_host in ('127.0.0.1', '0.0.0.0') else self.web_host}:{self.web_port}/"

    def _prometheus(self) -> ServiceProcess | None:
        """A real Prometheus where one is installed (`make promtool` takes Debian's into the venv): every service
        through the stack's file_sd list, the page over HTTPS, compose/prometheus's recording and alert rules."""
        binary = shutil.which("prometheus", path=str(Path(sys.executable).parent)) or shutil.which("prometheus")
        if not binary:
            return None
        self.prometheus_port = free_port()
        rules = sorted(
            str(p) for p in (Path(__file__).resolve().parents[3] / "compose" / "prometheus" / "rules").glob("*.yml")
        )
        ca = self.workdir / "web-tls" / "tls" / "ca.pem"
        config = {
            "global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
            "rule_files": rules,
            "scrape_configs": [
                {"job_name": "rhd", "file_sd_configs": [{"files": [str(self.stack.targets_path)]}]},
                {
                    "job_name": WEB,
                    "scheme": "https",
                    "tls_config": {"ca_file": str(ca), "server_name": "localhost"},
                    "static_configs": [{"targets": [f"127.0.0.1:{self.web_port}"]}],
                },
            ],
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
        argv = [
            binary,
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
        ]
        argv += [f"--web.listen-address=127.0.0.1:{self.prometheus_port}", "--storage.tsdb.retention.time=15d"]
        return ServiceProcess("prometheus", argv, {}, self.workdir / "logs" / "prometheus.log")

    def _web(self) -> ServiceProcess:
        tls = Security.create(self.workdir / "web-tls", [], servers=(WEB,))
        argv = [sys.executable, "-m", "rhd.cli", "web", "--host", self.web_host, "--port", str(self.web_port)]
        argv += ["--tls", str(tls.server_pem(WEB)), "--db", self.db, "--workdir", str(self.workdir)]
        argv += ["--services", str(self.state_path)]
        if self.prometheus_port:
            argv += ["--prometheus-url", f"http://127.0.0.1:{self.prometheus_port}/alerts"]
        return ServiceProcess(WEB, argv, self.stack._env(HOME), self.workdir / "logs" / "web.log")

    async def start(self) -> None:
        await self.stack.start()
        prometheus = self._prometheus()
        web = self._web()
        for process in (prometheus, web):
            if process is not None:
                process.start()
                self.stack.services.append(process)
        replica_of: dict[str, int] = {}
        for process in self.stack.services:
            replica = replica_of.get(process.name, 0)
            replica_of[process.name] = replica + 1
            self.services.append(Supervised(process, replica))
        runner, self.http_port = await start_http("127.0.0.1", 0, self._ready)
        self._http = runner
        self.stack.write_targets(extra=[Target("supervisor", f"127.0.0.1:{self.http_port}")])
        self.write_state()

    async def _ready(self) -> bool:
        return not self.stopping.is_set()

    def check(self, now: float | None = None) -> list[Supervised]:
        """One round: note exits, start again those whose backoff is over; the services started again."""
        now = time.monotonic() if now is None else now
        started = []
        for s in self.services:
            alive = s.process.alive()
            UP.labels(s.name, str(s.replica)).set(1 if alive else 0)
            if alive:
                s.up(now)
            elif s.down(now, s.process.process.returncode if s.process.process else None, f"{s.name}-{s.replica}"):
                s.process.start()
                RESTARTS.labels(s.name).inc()
                started.append(s)
        return started

    async def check_broker(self, now: float | None = None) -> bool:
        """The broker's round: an exit noted, its restart once the backoff is over; whether it was started again."""
        now = time.monotonic() if now is None else now
        broker, state = self.stack.broker, self.broker
        process = broker.process
        alive = process is not None and process.poll() is None
        UP.labels("broker", "0").set(1 if alive else 0)
        if alive:
            state.up(now)
            return False
        lost = "; Tansu keeps records in memory: it comes back empty" if broker.kind == "tansu" else ""
        if not state.down(now, process.returncode if process is not None else None, "the broker", lost):
            return False
        RESTARTS.labels("broker").inc()
        try:
            await broker.start(self.stack.base.partitions)
        except (RuntimeError, TimeoutError, OSError) as exc:
            broker.stop()  # a half-started broker is stopped, and tried again after the next backoff
            log.warning("the broker did not come back (%s)", exc)
            return False
        log.info("the broker runs again (restart %d)", state.restarts)
        return True

    async def scrape(self) -> None:
        """Each stage's lag and rate from its own /metrics."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for s in self.services:
                if not s.process.http_port or not s.process.alive():
                    continue
                samples = await scrape(http, Target(s.name, f"127.0.0.1:{s.process.http_port}"))
                if samples is None:
                    continue
                s.lag = total(samples, "rhd_consumer_lag")
                handled, now = total(samples, "rhd_messages_total"), time.monotonic()
                if s._handled is not None and now > s._handled[0]:
                    s.rate = counter_increase(s._handled[1], handled) / (now - s._handled[0])
                s._handled = (now, handled)

    def write_state(self) -> None:
        rows = [
            {
                "name": s.name if s.replica == 0 else f"{s.name}-{s.replica}",
                "state": s.state(),
                "pid": s.process.process.pid if s.process.alive() and s.process.process else None,
                "restarts": s.restarts,
                "last_exit": s.last_exit,
                "lag": None if s.lag is None else int(s.lag),
                "rate": None if s.rate is None else round(s.rate, 2),
            }
            for s in self.services
        ]
        process = self.stack.broker.process
        alive = process is not None and process.poll() is None
        broker_row = {
            "name": f"broker ({self.stack.broker.kind})",
            "state": "running" if alive else "backoff",
            "pid": process.pid if alive and process else None,
            "restarts": self.broker.restarts,
            "last_exit": self.broker.last_exit,
        }
        rows.insert(0, broker_row)
        partial = self.state_path.with_suffix(".tmp")
        partial.write_text(json.dumps(rows, indent=1) + "\n")
        partial.replace(self.state_path)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        next_scrape = 0.0
        while not self.stopping.is_set():
            await self.check_broker()
            self.check()
            if time.monotonic() >= next_scrape:
                next_scrape = time.monotonic() + 5.0
                await self.scrape()
            self.write_state()
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def stop(self) -> dict[str, int | None]:
        codes = self.stack.stop()
        await self._http.cleanup()
        self.state_path.unlink(missing_ok=True)
        return codes


async def run_up(
    settings: Settings,
    workdir: Path,
    replicas: dict[str, int],
    host: str,
    port: int,
    users: list[tuple[str, str, str]],
    db: str,
) -> int:
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    settings = settings.model_copy(update={"blob_dir": workdir / "blobs"})
    supervisor = Supervisor(workdir, settings, replicas, host, port, db)
    print("starting the broker, the model server, every stage and the web page ...", flush=True)
    try:
        await supervisor.start()
        print(f"broker: {supervisor.stack.broker.kind} ({supervisor.stack.settings.bootstrap_servers})")
        if supervisor.prometheus_port:
            print(f"prometheus: http://127.0.0.1:{supervisor.prometheus_port}/ (every service, the alert rules)")
        print(f"web page: {supervisor.url}  (its certificate is signed by {workdir / 'web-tls' / 'tls' / 'ca.pem'})")
        for name, role, password in users:
            print(f"  first user {name} ({role}), password {password}")
        if users:
            print(f"  (also in {workdir / 'first-users.tsv'}; add users with `rhd users add`)")
        print(f"services: `rhd ps --workdir {workdir}`; Ctrl-C stops everything", flush=True)
        await supervisor.run()
    finally:
        print("stopping: every service drains, then the broker ...", flush=True)
        codes = await supervisor.stop() if supervisor.services else supervisor.stack.stop()
        print(f"stopped (exit codes {codes}); all stopped: {supervisor.stack.all_stopped()}", flush=True)
    return 0


def ps_table(workdir: Path) -> str:
    path = Path(workdir) / STATE_FILE
    if not path.exists():
        return f"no stack running in {workdir} (start one with `rhd up`)"
    rows = json.loads(path.read_text())
    lines = [f"{'service':<22} {'state':<8} {'pid':>7} {'restarts':>8} {'lag':>7} {'rate/s':>8}"]
    for r in rows:
        lag = "" if r.get("lag") is None else str(r["lag"])
        rate = "" if r.get("rate") is None else f"{r['rate']:.2f}"
        lines.append(f"{r['name']:<22} {r['state']:<8} {r.get('pid') or '':>7} {r['restarts']:>8} {lag:>7} {rate:>8}")
    return "\n".join(lines)
