"""`rhd watch`: the monitoring dashboard's figures in a terminal (scraped from every service's /metrics), or each
diagnosis as it arrives."""

import asyncio
import sys
import time
from collections.abc import Callable

import aiohttp
from rich.console import Group
from rich.live import Live
from rich.table import Table

from rhd.runtime.settings import Settings
from rhd.runtime.topics import STAGES
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import Figures, Progress, Target, figures, follow, scrape_all, window


def label_name(label: int) -> str:
    return pb.Label.Name(label).removeprefix("LABEL_").lower() if label else "-"


def completeness_name(value: int) -> str:
    return pb.Completeness.Name(value).removeprefix("COMPLETENESS_")


async def watch_diagnoses(settings: Settings, seconds: float) -> None:
    seen: set[str] = set()

    def show(progress: Progress) -> None:
        for study_id, diagnoses in progress.diagnoses.items():
            if study_id not in seen:
                seen.add(study_id)
                d = diagnoses[0]
                probs = ", ".join(f"{k} {v:.2f}" for k, v in d.probabilities.items())
                print(
                    f"{study_id}: {label_name(d.label)} ({probs}) {completeness_name(d.completeness)} {d.reason}",
                    flush=True,
                )

    await follow(settings, lambda _: False, timeout_s=seconds, on_update=show)


Panel = tuple[str, list[str], list[list[str]]]  # title, column headers, rows


def _num(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def figure_tables(f: Figures) -> list[Panel]:
    """The dashboard's panels as tables of text, for the terminal (rich) and for plain output alike."""
    stages = []
    for s in f.stages:
        cells = [
            _num(s.in_per_s["ok"]),
            _num(s.in_per_s["dead_letter"]),
            _num(s.duplicates_per_s),
            _num(s.out_per_s),
            _num(s.p50_s, 1, 1000),
            _num(s.p95_s, 1, 1000),
            _num(s.lag, 0),
            _num(s.lag_max_partition, 0),
            _num(s.dead_letters, 0),
        ]
        if s.replicas[1] and not s.replicas[0]:
            cells = ["-"] * len(cells)  # every replica down: zeros would read as an idle stage
        stages.append([s.stage, f"{s.replicas[0]}/{s.replicas[1]}" if s.replicas[1] else "-", *cells])
    tables: list[Panel] = [
        (
            f"stages: messages/s over the last {f.seconds:.1f} s; lag and dead letters now",
            ["stage", "up", "in ok/s", "dlq/s", "dup/s", "out/s", "p50 ms", "p95 ms", "lag", "lag max", "dead letters"],
            stages,
        ),
        (
            "studies diagnosed: upload to diagnosis",
            ["studies", "diagnosed", "per s", *(f"p{round(q * 100)} s" for q in (0.5, 0.95, 0.99))],
            [
                [s.label, _num(s.diagnosed, 0), _num(s.per_s, 2), *(_num(v) for v in s.latency_s.values())]
                for s in f.studies
            ],
        ),
    ]
    if f.models:
        tables.append(
            (
                "model: client (view) and server (model-server)",
                [
                    "model",
                    "req/s",
                    "failed/s",
                    "p95 ms",
                    "frames/req",
                    "server req/s",
                    "server p95 ms",
                    "server batch",
                    "queue p95 ms",
                ],
                [
                    [
                        m.model,
                        _num(m.requests_per_s),
                        _num(m.failed_per_s),
                        _num(m.p95_s, 1, 1000),
                        _num(m.frames_per_request),
                        _num(m.server_requests_per_s),
                        _num(m.server_p95_s, 1, 1000),
                        _num(m.server_batch),
                        _num(m.server_wait_p95_s, 1, 1000),
                    ]
                    for m in f.models
                ],
            )
        )
    if f.dead_letters:
        tables.append(
            (
                "dead letters by input topic (to <topic>.dlq)",
                ["stage", "topic", "per s", "since start"],
                [
                    [stage, topic, _num(rate, 2), _num(count, 0)]
                    for (stage, topic), (rate, count) in f.dead_letters.items()
                ],
            )
        )
    return tables


def watch_title(f: Figures) -> str:
    answered = sum(up for up, _ in f.up.values())
    known = sum(n for _, n in f.up.values())
    title = f"rhd watch {time.strftime('%H:%M:%S')}: {answered}/{known} targets up"
    if f.down:
        title += "; down: " + ", ".join(f"{t.job} {t.address}" for t in f.down)
    return title


def plain_text(f: Figures) -> str:
    """Aligned columns, first one left: for --once, logs and pipes."""
    lines = [watch_title(f)]
    for title, headers, rows in figure_tables(f):
        widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
        lines += ["", title]
        for row in [headers, *rows]:
            cells = [
                cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def rich_view(f: Figures) -> Group:
    tables = []
    for title, headers, rows in figure_tables(f):
        table = Table(title=title, title_justify="left")
        for i, header in enumerate(headers):
            table.add_column(header, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        tables.append(table)
    return Group(watch_title(f), *tables)


async def watch_metrics(
    load_targets: Callable[[], list[Target]], interval: float, once: bool = False, seconds: float | None = None
) -> int:
    """Scrape every target each interval and show the dashboard's figures over the last interval: a live table on a
    terminal, plain text otherwise. `once`: one snapshot from two scrapes an interval apart; 1 if nothing answered.
    The targets are read again at each scrape, so replicas started later appear; load_targets raises ValueError
    when it cannot read them."""

    def targets() -> list[Target]:
        """A snapshot needs its targets; a live view waits for a stack that is not up yet."""
        try:
            return load_targets()
        except ValueError as exc:
            if once:
                raise
            print(f"rhd watch: {exc}", file=sys.stderr, flush=True)
            return []

    stop_at = None if seconds is None else time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=max(0.5, min(interval, 5.0)))
    async with aiohttp.ClientSession(timeout=timeout) as http:
        before = await scrape_all(http, targets())
        if once:
            await asyncio.sleep(interval)
            snapshot = figures(window(before, await scrape_all(http, targets())), STAGES)
            print(plain_text(snapshot), flush=True)
            return 0 if any(up for up, _ in snapshot.up.values()) else 1
        live = Live(auto_refresh=False) if sys.stdout.isatty() else None
        if live is not None:
            live.start()
        try:
            while stop_at is None or time.monotonic() < stop_at:
                await asyncio.sleep(interval)
                after = await scrape_all(http, targets())
                snapshot = figures(window(before, after), STAGES)
                before = after
                if live is not None:
                    live.update(rich_view(snapshot), refresh=True)
                else:
                    print(plain_text(snapshot) + "\n", flush=True)
        finally:
            if live is not None:
                live.stop()
    return 0
