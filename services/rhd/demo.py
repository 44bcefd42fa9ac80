"""`rhd demo` and `rhd watch`: the whole line on one machine, shown to a person."""

import asyncio
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
from rich.console import Group
from rich.live import Live
from rich.table import Table

from rhd.labels import CLASSES
from rhd.runtime.blobs import BlobStore
from rhd.runtime.publish import publish_uploads, upload_from_dir
from rhd.runtime.settings import Settings
from rhd.runtime.stack import STAGES, EmbeddedStack, ServiceProcess, stage_seconds
from rhd.runtime.watch import Figures, Progress, Target, figures, follow, scrape_all, window
from rhd.v1 import rhd_pb2 as pb


def label_name(label: int) -> str:
    return pb.Label.Name(label).removeprefix("LABEL_").lower() if label else "-"


def completeness_name(value: int) -> str:
    return pb.Completeness.Name(value).removeprefix("COMPLETENESS_")


def corrupt_one_video(study_dir: Path) -> str:
    """Truncate one video to half its bytes: the bad input the line must survive. A B-mode video is
    chosen where there is one, so the study keeps colour Doppler frames and ends INCOMPLETE, not FAILED."""
    from rhd.synth.generator import load_truth

    videos = load_truth(study_dir)["videos"]
    chosen = next((v for v in videos if not v["doppler"]), videos[-1])
    video = study_dir / f"{chosen['video_id']}.mp4"
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    return str(chosen["video_id"])


def print_progress(progress: Progress, n_studies: int) -> None:
    expected = sum(progress.expected_frames.values())
    print(f"  frames accounted {progress.frames_accounted():5d}/{expected:<5d} "
          f"studies diagnosed {len(progress.diagnoses)}/{n_studies}  dead letters {len(progress.dead_letters)}",
          flush=True)


def diagnosis_table(progress: Progress, truths: dict[str, str]) -> str:
    header = f"{'study':<12} {'truth':<10} {'diagnosis':<10} " + " ".join(f"{c[:5]:>6}" for c in CLASSES)
    header += f"  {'status':<10} {'frames a/s/f of n':<18} reason"
    lines = [header, "-" * len(header)]
    for study_id in sorted(truths):
        for d in progress.diagnoses.get(study_id, []):
            probs = " ".join(f"{d.probabilities.get(c, 0.0):6.2f}" for c in CLASSES)
            f = d.frames
            counts = f"{f.analysed}/{f.skipped}/{f.failed} of {f.expected}"
            lines.append(f"{study_id:<12} {truths[study_id]:<10} {label_name(d.label):<10} {probs}  "
                         f"{completeness_name(d.completeness):<10} {counts:<18} {d.reason[:70]}")
        if study_id not in progress.diagnoses:
            lines.append(f"{study_id:<12} {truths[study_id]:<10} (no diagnosis)")
    return "\n".join(lines)


async def stage_figures(services: list[ServiceProcess]) -> dict[str, tuple[float, float]]:
    """Per stage: messages handled and busy seconds, scraped from each service's /metrics."""
    figures: dict[str, tuple[float, float]] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        for service in services:
            if not service.http_port:
                continue
            count, seconds = await stage_seconds(http, service.http_port, path=service.metrics_path)
            old = figures.get(service.name, (0.0, 0.0))
            figures[service.name] = (old[0] + count, old[1] + seconds)
    return figures


async def run_demo(settings: Settings, n_studies: int, seed: int, workdir: Path) -> int:
    from rhd.synth.generator import SynthConfig, load_truth, synth_studies

    started = time.monotonic()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)  # noqa: ASYNC240 - before anything runs
    settings = settings.model_copy(update={"blob_dir": workdir / "blobs", "study_deadline_s": 120.0,
                                           "model_retry_for_s": 30.0})
    print(f"generating {n_studies} synthetic studies (seed {seed})", flush=True)
    # The screening protocol's first 10 videos of 1-2 s: every view, B-mode and colour, in a demo of minutes.
    config = SynthConfig(videos_per_study=10, duration_s=(1.0, 2.0))
    study_dirs = synth_studies(seed, n_studies, workdir / "studies", config, balanced=True)
    truths = {d.name: load_truth(d)["label"] for d in study_dirs}
    bad_video = corrupt_one_video(study_dirs[-1])
    print(f"  video {bad_video} truncated on purpose (bad input); study {study_dirs[0].name} "
          "will be published twice (redelivery)", flush=True)

    stack = EmbeddedStack(workdir, settings)
    print("starting broker, model server and 7 stages as separate processes ...", flush=True)
    try:
        live = await stack.start()
        print(f"  ready in {time.monotonic() - started:.1f} s (broker {live.bootstrap_servers})", flush=True)
        blobs = BlobStore(live.blob_dir)
        uploads = [upload_from_dir(d, blobs, live.max_message_bytes) for d in study_dirs]
        uploads.append(upload_from_dir(study_dirs[0], blobs, live.max_message_bytes))
        published = time.monotonic()
        await publish_uploads(live, uploads)
        print(f"published {len(uploads)} uploads of {n_studies} studies", flush=True)

        last_print = [0.0]

        def show(progress: Progress) -> None:
            if time.monotonic() - last_print[0] >= 2.0:
                last_print[0] = time.monotonic()
                print_progress(progress, n_studies)

        def finished(progress: Progress) -> bool:
            expected = sum(progress.expected_frames.values())
            return (len(progress.diagnoses) == n_studies and len(progress.expected_frames) == n_studies
                    and progress.frames_accounted() == expected)

        progress = await follow(live, finished, timeout_s=600, on_update=show, settle_s=3.0)
        line_seconds = time.monotonic() - published
        print_progress(progress, n_studies)
        figures = await stage_figures(stack.services)
    finally:
        codes = stack.stop()
    print()
    print(diagnosis_table(progress, truths))
    print()
    for letter in progress.dead_letters:
        print(f"dead letter [{letter.source_topic}.dlq] {letter.stage}: {letter.reason}")
    frames = progress.frames_accounted()
    print(f"\nline: {frames} frames of {n_studies} studies in {line_seconds:.1f} s "
          f"= {frames / line_seconds:.1f} frames/s end to end; demo wall time {time.monotonic() - started:.1f} s")
    for stage, (count, seconds) in figures.items():
        if count:
            print(f"  {stage:<9} {int(count):5d} messages, {1000 * seconds / count:7.2f} ms each "
                  f"= {count / seconds:8.1f} messages/s per busy worker")
    once = all(len(v) == 1 for v in progress.diagnoses.values())
    ok = finished(progress) and once and stack.all_stopped()
    print(f"\nevery study diagnosed once: {once and len(progress.diagnoses) == n_studies}; "
          f"every frame accounted: {frames == sum(progress.expected_frames.values())}; "
          f"all processes stopped: {stack.all_stopped()} (exit codes {codes})")
    return 0 if ok else 1


async def watch(settings: Settings, seconds: float) -> None:
    seen: set[str] = set()

    def show(progress: Progress) -> None:
        for study_id, diagnoses in progress.diagnoses.items():
            if study_id not in seen:
                seen.add(study_id)
                d = diagnoses[0]
                probs = ", ".join(f"{k} {v:.2f}" for k, v in d.probabilities.items())
                print(f"{study_id}: {label_name(d.label)} ({probs}) {completeness_name(d.completeness)} "
                      f"{d.reason}", flush=True)

    await follow(settings, lambda _: False, timeout_s=seconds, on_update=show)


Panel = tuple[str, list[str], list[list[str]]]  # title, column headers, rows


def _num(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def figure_tables(f: Figures) -> list[Panel]:
    """The dashboard's panels as tables of text, for the terminal (rich) and for plain output alike."""
    stages = []
    for s in f.stages:
        cells = [_num(s.in_per_s["ok"]), _num(s.in_per_s["dead_letter"]), _num(s.duplicates_per_s),
                 _num(s.out_per_s), _num(s.p50_s, 1, 1000), _num(s.p95_s, 1, 1000),
                 _num(s.lag, 0), _num(s.lag_max_partition, 0), _num(s.dead_letters, 0)]
        if s.replicas[1] and not s.replicas[0]:
            cells = ["-"] * len(cells)  # every replica down: zeros would read as an idle stage
        stages.append([s.stage, f"{s.replicas[0]}/{s.replicas[1]}" if s.replicas[1] else "-", *cells])
    tables: list[Panel] = [(
        f"stages: messages/s over the last {f.seconds:.1f} s; lag and dead letters now",
        ["stage", "up", "in ok/s", "dlq/s", "dup/s", "out/s", "p50 ms", "p95 ms", "lag", "lag max", "dead letters"],
        stages,
    ), (
        "studies diagnosed: upload to diagnosis",
        ["studies", "diagnosed", "per s", *(f"p{round(q * 100)} s" for q in (0.5, 0.95, 0.99))],
        [[s.label, _num(s.diagnosed, 0), _num(s.per_s, 2), *(_num(v) for v in s.latency_s.values())]
         for s in f.studies],
    )]
    if f.models:
        tables.append((
            "model: client (view) and server (model-server)",
            ["model", "req/s", "failed/s", "p95 ms", "frames/req", "server req/s", "server p95 ms", "server batch",
             "queue p95 ms"],
            [[m.model, _num(m.requests_per_s), _num(m.failed_per_s), _num(m.p95_s, 1, 1000),
              _num(m.frames_per_request), _num(m.server_requests_per_s), _num(m.server_p95_s, 1, 1000),
              _num(m.server_batch), _num(m.server_wait_p95_s, 1, 1000)] for m in f.models],
        ))
    if f.dead_letters:
        tables.append(("dead letters by input topic (to <topic>.dlq)", ["stage", "topic", "per s", "since start"],
                       [[stage, topic, _num(rate, 2), _num(count, 0)]
                        for (stage, topic), (rate, count) in f.dead_letters.items()]))
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
            cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                               strict=True))]
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


async def watch_metrics(load_targets: Callable[[], list[Target]], interval: float, once: bool = False,
                        seconds: float | None = None) -> int:
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
