"""Per-service HTTP endpoints: /metrics (Prometheus), /healthz (alive), /readyz (can do its work)."""

import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now (the kernel's pick), for a server this process is about to start."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Where TensorFlow Serving answers Prometheus metrics unless its monitoring config names another path
# (PrometheusExporter::kPrometheusPath); the embedded model server too.
TFS_METRICS_PATH = "/monitoring/prometheus/metrics"


async def start_http(
    host: str,
    port: int,
    ready: Callable[[], Awaitable[bool]],
    metrics_path: str | None = "/metrics",
    alive: Callable[[], bool] = lambda: True,
) -> tuple[web.AppRunner, int]:
    """Listen on host:port (0 picks a free one); return the runner and the bound port. The model server puts its
    metrics where TF Serving's monitoring config says (metrics_path), or serves none (None), as tensorflow/serving.
    /healthz answers 503 once `alive` says the service is stuck (a liveness probe then restarts it); /readyz 503
    while `ready` says it cannot do its work (no traffic is sent to it)."""

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(_: web.Request) -> web.Response:
        ok = alive()
        return web.json_response({"status": "alive" if ok else "stuck"}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok = await ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics_path is not None:
        app.router.add_get(metrics_path, metrics)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    paths = " ".join(p for p in (metrics_path, "/healthz", "/readyz") if p)
    log.info("http on %s:%d (%s)", host, bound, paths)
    return runner, bound
