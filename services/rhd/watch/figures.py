"""Reading the line's results back, for `rhd watch`, the demo and tests: frame accounting and diagnoses from the
broker, and the figures of a monitoring dashboard from the services' own Prometheus endpoints."""

import asyncio
import json
import math
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from rhd.runtime import kafka
from rhd.runtime.http import TFS_METRICS_PATH
from rhd.runtime.links import apply_link
from rhd.runtime.secrets import LINK_KEYRING, Keyring, SecretError, load_keyring
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DONE, STUDIES_DIAGNOSED, STUDIES_FEATURES, STUDIES_LINKS, TOPICS, dlq
from rhd.v1 import rhd_pb2 as pb


@dataclass
class Progress:
    """What the line has answered, per study. Downstream of deid studies are known by their pseudonyms; in the home
    region, where the link keyring is, each is filed under the hospital's own study id once its sealed link is read
    (`links`), whichever arrives first; an erased study's tombstone files it back under its pseudonym."""

    expected_frames: dict[str, int] = field(default_factory=dict)  # study -> frames in its manifest
    frame_records: dict[str, set[tuple[str, int]]] = field(default_factory=dict)  # distinct frames ended
    terminal_records: int = 0  # including duplicates
    diagnoses: dict[str, list[pb.Diagnosis]] = field(default_factory=dict)
    studies: dict[str, list[pb.StudyFeatures]] = field(default_factory=dict)  # what assemble emitted
    dead_letters: list[pb.DeadLetter] = field(default_factory=list)
    links: Keyring | None = None
    names: dict[str, str] = field(default_factory=dict)  # pseudonym -> the hospital's study id
    video_names: dict[str, str] = field(default_factory=dict)  # a video's pseudonymous id -> the hospital's
    link_map: dict[str, dict] = field(default_factory=dict)  # pseudonym -> its opened link (rhd.runtime.links)
    ids_seen: dict[str, tuple[str, str]] = field(default_factory=dict)  # pseudonym -> (hospital, study id), erased too

    def frames_accounted(self) -> int:
        return sum(len(v) for v in self.frame_records.values())

    def _name(self, study_id: str) -> str:
        return self.names.get(study_id, study_id)

    def _rename(self, old: str, new: str) -> None:
        """What is filed under `old` (a pseudonym or a name) goes under `new`."""
        if old == new:
            return
        for table in (self.frame_records, self.diagnoses, self.studies):
            if old in table:
                moved = table.pop(old)  # type: ignore[attr-defined]
                mine = table.setdefault(new, type(moved)())  # type: ignore[attr-defined]
                mine.update(moved) if isinstance(mine, set) else mine.extend(moved)
        if old in self.expected_frames:
            self.expected_frames[new] = self.expected_frames.pop(old)

    def _relink(self, pseudonym: str, link: dict) -> None:
        """File the study under the hospital's own id; where two hospitals use the same id, each under `hospital/id`,
        so two studies never merge."""
        study_id, hospital = str(link["study_id"]), str(link.get("hospital_id", ""))
        self.ids_seen[pseudonym] = (hospital, study_id)
        # Any link seen, erased ones included, so the names do not depend on the order the partitions are read in.
        clash = [q for q, (h, sid) in self.ids_seen.items() if q != pseudonym and sid == study_id and h != hospital]
        for q in clash:
            qualified = f"{self.ids_seen[q][0]}/{study_id}"
            if q in self.names:
                self._rename(self.names[q], qualified)
                self.names[q] = qualified
        name = f"{hospital}/{study_id}" if clash else study_id
        self._rename(self.names.get(pseudonym, pseudonym), name)
        self.names[pseudonym] = name

    def _unlink(self, pseudonym: str, link: dict) -> None:
        """The study was erased: what was filed under the hospital's id goes back under the pseudonym."""
        for video in link.get("videos", {}).values():
            self.video_names.pop(video, None)
        self._rename(self.names.pop(pseudonym, pseudonym), pseudonym)

    def add(self, topic: str, value: bytes | None, key: bytes | None = None) -> None:
        """One record; `key` is needed for the link map only (a tombstone, value None, is known by its key)."""
        if topic == STUDIES_LINKS:
            if self.links is not None:
                self._add_link(self.links, key, value)
            return
        value = value or b""
        if topic == FRAMES_DONE:
            done = pb.FrameDone.FromString(value)
            if done.HasField("manifest"):
                study_id = self._name(done.manifest.study_id)
                self.expected_frames[study_id] = sum(v.frame_count for v in done.manifest.videos)
            else:
                key = done.result.key
                self.terminal_records += 1
                self.frame_records.setdefault(self._name(key.study_id), set()).add((key.video_id, key.frame_index))
        elif topic == STUDIES_FEATURES:
            study = pb.StudyFeatures.FromString(value)
            self.studies.setdefault(self._name(study.study_id), []).append(study)
        elif topic == STUDIES_DIAGNOSED:
            diagnosis = pb.Diagnosis.FromString(value)
            self.diagnoses.setdefault(self._name(diagnosis.study_id), []).append(diagnosis)
        elif topic.endswith(".dlq"):
            self.dead_letters.append(pb.DeadLetter.FromString(value))

    def _add_link(self, links: Keyring, key: bytes | None, value: bytes | None) -> None:
        pseudonym = (key or b"").decode(errors="replace")
        before = self.link_map.get(pseudonym)
        apply_link(self.link_map, key, value, links)
        link = self.link_map.get(pseudonym)
        if link is None:
            if before is not None:
                self._unlink(pseudonym, before)
            return
        self.video_names.update({pseudo: original for original, pseudo in link["videos"].items()})
        self._relink(pseudonym, link)


def home_links(settings: Settings) -> Keyring | None:
    """The link keyring, where this runs in the home region and holds it: then results read under the hospitals'
    own study ids; elsewhere they stay pseudonymous."""
    if settings.region != settings.home_region:
        return None
    try:
        return load_keyring(settings.secrets_dir / LINK_KEYRING)
    except SecretError:
        return None


async def follow(
    settings: Settings,
    until: Callable[[Progress], bool],
    timeout_s: float,
    on_update: Callable[[Progress], None] | None = None,
    settle_s: float = 0.0,
) -> Progress:
    """Read frames.done, the assembled studies, diagnoses and every dead-letter topic from the beginning until
    `until` holds (then `settle_s` more seconds, to catch anything duplicated) or the timeout passes."""
    topics = [FRAMES_DONE, STUDIES_FEATURES, STUDIES_DIAGNOSED, *(dlq(t.name) for t in TOPICS)]
    links = home_links(settings)
    if links is not None:
        topics.append(STUDIES_LINKS)
    group = f"watch-{uuid.uuid4().hex[:8]}"
    consumer = kafka.consumer(settings, group, group)
    consumer.subscribe(topics)
    await consumer.start()
    progress = Progress(links=links)
    deadline = time.monotonic() + timeout_s
    settle_until: float | None = None
    try:
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, records in batches.items():
                for record in records:
                    progress.add(tp.topic, record.value, record.key)
            if on_update:
                on_update(progress)
            if settle_until is None and until(progress):
                settle_until = time.monotonic() + settle_s
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            await asyncio.sleep(0)
    finally:
        await consumer.stop()
    return progress


# --- The services' metrics, read as Prometheus would ---------------------------------------------------------------

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]  # (sample name, sorted labels) -> value

MODEL_SERVER_JOB = "model-server"


@dataclass(frozen=True)
class Target:
    """One endpoint to scrape, as a Prometheus file_sd entry names it: its job (the stage, or model-server),
    host:port and path."""

    job: str
    address: str
    metrics_path: str = "/metrics"

    @property
    def url(self) -> str:
        return f"http://{self.address}{self.metrics_path}"


def file_sd(targets: Iterable[Target]) -> list[dict]:
    """Prometheus file_sd entries: one per job and path with every replica as a target, so Prometheus labels each
    series with the job, and the path is given only where it is not the default."""
    groups: dict[tuple[str, str], list[str]] = {}
    for target in targets:
        groups.setdefault((target.job, target.metrics_path), []).append(target.address)
    entries = []
    for (job, path), addresses in groups.items():
        labels = {"job": job} if path == "/metrics" else {"job": job, "__metrics_path__": path}
        entries.append({"targets": addresses, "labels": labels})
    return entries


def read_targets(path: Path) -> list[Target]:
    """The targets of a file_sd JSON file (what EmbeddedStack writes, or one written for a real Prometheus)."""
    try:
        entries = json.loads(Path(path).read_text())
        return [
            Target(
                entry.get("labels", {}).get("job", ""),
                address,
                entry.get("labels", {}).get("__metrics_path__", "/metrics"),
            )
            for entry in entries
            for address in entry["targets"]
        ]
    except (AttributeError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a Prometheus file_sd list of {{targets, labels}}: {exc}") from None


def parse_target(text: str) -> Target:
    """JOB=HOST:PORT[/PATH]; the model server's metrics are at TF Serving's path unless another is given."""
    job, sep, rest = text.partition("=")
    address, slash, path = rest.partition("/")
    if not sep or not job or ":" not in address:
        raise ValueError(f"expected JOB=HOST:PORT[/PATH], got {text!r}")
    default = TFS_METRICS_PATH if job == MODEL_SERVER_JOB else "/metrics"
    return Target(job, address, f"/{path}" if slash else default)


def parse_samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition (a histogram gives its _bucket, _count and _sum samples)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def fetch_samples(http: aiohttp.ClientSession, url: str) -> Samples:
    """One endpoint's samples; a refusal or an error status raises (aiohttp.ClientError)."""
    async with http.get(url, raise_for_status=True) as response:
        return parse_samples(await response.text())


async def scrape(http: aiohttp.ClientSession, target: Target) -> Samples | None:
    """A target's samples, or None when it does not answer with metrics: a dashboard shows it down, never stops."""
    try:
        return await fetch_samples(http, target.url)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def select(samples: Samples, name: str, **labels: str) -> Iterator[tuple[dict[str, str], float]]:
    """The samples called `name` whose labels include `labels`, with all their labels."""
    wanted = labels.items()
    for (sample_name, pairs), value in samples.items():
        if sample_name == name:
            have = dict(pairs)
            if wanted <= have.items():
                yield have, value


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(value for _, value in select(samples, name, **labels))


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """Sums of the samples called `name` by the value of one label (PromQL's sum by (label))."""
    sums: dict[str, float] = {}
    for have, value in select(samples, name, **labels):
        sums[have.get(label, "")] = sums.get(have.get(label, ""), 0.0) + value
    return sums


def counter_increase(before: float, after: float) -> float:
    """How much a counter grew between two readings. A reading below the last one means the process restarted and
    counted again from zero (PromQL's reset rule): then all of the new reading is growth."""
    return after - before if after >= before else after


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """PromQL's histogram_quantile for one histogram, buckets given as (upper bound, cumulative count) with a +Inf
    bucket: linear interpolation inside the bucket the rank falls in, the first bucket starting at 0 (or at its
    bound when that is <= 0), a rank in the +Inf bucket answering the highest finite bound. None where PromQL
    answers NaN: no observations, or no +Inf bucket."""
    ordered = sorted(buckets)
    if len(ordered) < 2 or ordered[-1][0] != math.inf:
        return None
    if q < 0 or q > 1:
        return -math.inf if q < 0 else math.inf
    counts, highest = [], 0.0
    for _, count in ordered:  # counts must not fall as bounds grow; deltas across a restart can, PromQL evens them
        highest = max(highest, count)
        counts.append(highest)
    if counts[-1] <= 0:
        return None
    rank = q * counts[-1]
    index = next((i for i, count in enumerate(counts[:-1]) if count >= rank), len(counts) - 1)
    if index == len(counts) - 1:
        return ordered[-2][0]
    upper = ordered[index][0]
    if index == 0 and upper <= 0:
        return upper
    lower, below = (0.0, 0.0) if index == 0 else (ordered[index - 1][0], counts[index - 1])
    if counts[index] == below:  # q = 0 on an empty first bucket
        return lower
    return lower + (upper - lower) * (rank - below) / (counts[index] - below)


def quantile(samples: Samples, q: float, histogram: str, **labels: str) -> float | None:
    """histogram_quantile(q, sum by (le) (histogram_bucket{labels})) over these samples."""
    buckets: dict[float, float] = {}
    for have, value in select(samples, f"{histogram}_bucket", **labels):
        bound = float(have["le"])
        buckets[bound] = buckets.get(bound, 0.0) + value
    return histogram_quantile(q, buckets.items())


def mean(samples: Samples, histogram: str, **labels: str) -> float | None:
    """A histogram's mean observation (sum / count), None without observations."""
    count = total(samples, f"{histogram}_count", **labels)
    return total(samples, f"{histogram}_sum", **labels) / count if count else None


@dataclass(frozen=True)
class Scrape:
    """One pass over every target: when (time.monotonic()), and each target's samples, None where it was down."""

    at: float
    samples: dict[Target, Samples | None]


async def scrape_all(http: aiohttp.ClientSession, targets: Sequence[Target]) -> Scrape:
    """Every target at once, so one slow replica delays a pass by its timeout, not the sum of them."""
    at = time.monotonic()
    results = await asyncio.gather(*(scrape(http, target) for target in targets))
    return Scrape(at, dict(zip(targets, results, strict=True)))


@dataclass(frozen=True)
class Window:
    """What happened between two scrapes. Counter increases are taken per target before being summed over replicas,
    so a replica that restarted counts from zero instead of subtracting from the others; a target down at either
    end adds nothing. `latest` holds the second scrape's readings summed over the replicas up (gauges, totals)."""

    seconds: float
    increase: Samples
    latest: Samples
    up: dict[str, tuple[int, int]]  # job -> (targets up, targets)
    down: list[Target]

    def rate(self, name: str, **labels: str) -> float:
        return total(self.increase, name, **labels) / self.seconds if self.seconds > 0 else 0.0


def window(before: Scrape, after: Scrape) -> Window:
    increase: Samples = {}
    latest: Samples = {}
    up: dict[str, tuple[int, int]] = {}
    down = []
    for target, samples in after.samples.items():
        answered, known = up.get(target.job, (0, 0))
        up[target.job] = (answered + (samples is not None), known + 1)
        if samples is None:
            down.append(target)
            continue
        for key, value in samples.items():
            latest[key] = latest.get(key, 0.0) + value
        previous = before.samples.get(target)
        if previous is None:
            continue
        for key, value in samples.items():
            # A labelled series appears at its first event (a stage's first dead letter): it was 0 before.
            increase[key] = increase.get(key, 0.0) + counter_increase(previous.get(key, 0.0), value)
    return Window(after.at - before.at, increase, latest, up, down)


# --- The dashboard's figures -----------------------------------------------------------------------------------------

OUTCOMES = ("ok", "dead_letter")
STUDY_QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True)
class StageFigures:
    stage: str
    replicas: tuple[int, int]  # up, targets
    in_per_s: dict[str, float]  # input messages by outcome
    duplicates_per_s: float  # redeliveries dropped (assemble), among the ok ones
    out_per_s: float
    p50_s: float | None  # stage logic per message, over the window
    p95_s: float | None
    lag: float | None  # records behind, summed over partitions; None: no partition assigned
    lag_max_partition: float | None
    dead_letters: float  # since the replicas up now started


@dataclass(frozen=True)
class ModelFigures:
    model: str
    requests_per_s: float  # client side (the view stage), retries included
    failed_per_s: float  # client side, any status but OK
    p95_s: float | None  # client side, round trip
    frames_per_request: float | None  # client side micro-batch
    server_requests_per_s: float  # Predict answered by the model server, any status
    server_p95_s: float | None
    server_batch: float | None  # rows per signature call on the model server (merged batches)
    server_wait_p95_s: float | None  # time a request waited in the server's batch queue


@dataclass(frozen=True)
class StudyFigures:
    label: str
    diagnosed: float
    per_s: float | None
    latency_s: dict[float, float | None]  # quantile -> seconds from upload to diagnosis


@dataclass(frozen=True)
class Figures:
    seconds: float
    stages: list[StageFigures]
    studies: list[StudyFigures]
    models: list[ModelFigures]
    dead_letters: dict[tuple[str, str], tuple[float, float]]  # (stage, input topic) -> (per s, since start)
    up: dict[str, tuple[int, int]]  # job -> (targets up, targets)
    down: list[Target]


def _stage_figures(w: Window, stage: str) -> StageFigures:
    lags = [value for _, value in select(w.latest, "rhd_consumer_lag", stage=stage)]
    return StageFigures(
        stage=stage,
        replicas=w.up.get(stage, (0, 0)),
        in_per_s={outcome: w.rate("rhd_messages_total", stage=stage, outcome=outcome) for outcome in OUTCOMES},
        duplicates_per_s=w.rate("rhd_duplicates_total", stage=stage),
        out_per_s=w.rate("rhd_outputs_total", stage=stage),
        p50_s=quantile(w.increase, 0.5, "rhd_stage_seconds", stage=stage),
        p95_s=quantile(w.increase, 0.95, "rhd_stage_seconds", stage=stage),
        lag=sum(lags) if lags else None,
        lag_max_partition=max(lags) if lags else None,
        dead_letters=total(w.latest, "rhd_messages_total", stage=stage, outcome="dead_letter"),
    )


def _model_figures(w: Window, model: str) -> ModelFigures:
    requests = w.rate("rhd_model_request_seconds_count", model=model)
    return ModelFigures(
        model=model,
        requests_per_s=requests,
        failed_per_s=requests - w.rate("rhd_model_request_seconds_count", model=model, code="OK"),
        p95_s=quantile(w.increase, 0.95, "rhd_model_request_seconds", model=model),
        frames_per_request=mean(w.increase, "rhd_model_batch_size", model=model),
        server_requests_per_s=w.rate("rhd_model_server_request_seconds_count", model=model, method="Predict"),
        server_p95_s=quantile(w.increase, 0.95, "rhd_model_server_request_seconds", model=model, method="Predict"),
        server_batch=mean(w.increase, "rhd_model_server_batch_size", model=model),
        server_wait_p95_s=quantile(w.increase, 0.95, "rhd_model_server_batch_wait_seconds", model=model),
    )


def _study_figures(w: Window) -> list[StudyFigures]:
    """Studies out of `diagnose`: over the window, and since start, as studies are few and far between."""
    histogram, stage = "rhd_study_latency_seconds", "diagnose"
    return [
        StudyFigures(
            f"last {w.seconds:.1f} s",
            total(w.increase, f"{histogram}_count", stage=stage),
            w.rate(f"{histogram}_count", stage=stage),
            {q: quantile(w.increase, q, histogram, stage=stage) for q in STUDY_QUANTILES},
        ),
        StudyFigures(
            "since start",
            total(w.latest, f"{histogram}_count", stage=stage),
            None,
            {q: quantile(w.latest, q, histogram, stage=stage) for q in STUDY_QUANTILES},
        ),
    ]


def figures(w: Window, stages: Sequence[str]) -> Figures:
    """The dashboard's figures from one window. Stages in the given order, then any other job or stage label seen;
    models as the client or the server name them."""
    seen = [job for job in w.up if job != MODEL_SERVER_JOB]
    seen += [have["stage"] for have, _ in select(w.latest, "rhd_messages_total") if "stage" in have]
    ordered = [*stages, *sorted(set(seen) - set(stages))]
    shown = [stage for stage in ordered if stage in seen]
    models: set[str] = set()
    for name in (
        "rhd_model_request_seconds_count",
        "rhd_model_server_batch_size_count",
        "rhd_model_server_request_seconds_count",
    ):
        models |= {have["model"] for have, _ in select(w.latest, name) if have.get("model")}
    dead_letters = {
        (have["stage"], have["topic"]): (
            w.rate("rhd_dead_letters_total", stage=have["stage"], topic=have["topic"]),
            value,
        )
        for have, value in select(w.latest, "rhd_dead_letters_total")
    }
    return Figures(
        w.seconds,
        [_stage_figures(w, stage) for stage in shown],
        _study_figures(w),
        [_model_figures(w, model) for model in sorted(models)],
        dict(sorted(dead_letters.items())),
        w.up,
        w.down,
    )
