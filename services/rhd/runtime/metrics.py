"""Prometheus metrics with the same names and labels in every service."""

import time

from google.protobuf.message import Message
from prometheus_client import Counter, Gauge, Histogram, Info

import rhd

MESSAGES = Counter("rhd_messages_total", "Input messages handled, by outcome (ok, dead_letter).", ["stage", "outcome"])
DUPLICATES = Counter(
    "rhd_duplicates_total", "Input records already seen (redeliveries), dropped; among the ok messages.", ["stage"]
)
OUTPUTS = Counter("rhd_outputs_total", "Records produced, by topic.", ["stage", "topic"])
OUTPUT_BYTES = Counter(
    "rhd_output_bytes_total", "Bytes produced to the broker (record values and keys), by topic.", ["stage", "topic"]
)
DEAD_LETTERS = Counter(
    "rhd_dead_letters_total",
    "Dead letters written, by the topic their record came from (<topic>.dlq).",
    ["stage", "topic"],
)
STAGE_SECONDS = Histogram(
    "rhd_stage_seconds",
    "Time the stage logic takes for one input message (the view stage: including the model call).",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CONSUMER_LAG = Gauge(
    "rhd_consumer_lag", "Records behind the partition's high watermark.", ["stage", "topic", "partition"]
)
STUDY_LATENCY = Histogram(
    "rhd_study_latency_seconds",
    "From upload to the study's record leaving this stage.",
    ["stage"],
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
MODEL_REQUEST_SECONDS = Histogram(
    "rhd_model_request_seconds",
    "One Predict call to the model server, by model and gRPC status (OK, UNAVAILABLE, ...); retries count each.",
    ["model", "code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MODEL_BATCH_SIZE = Histogram(
    "rhd_model_batch_size",
    "Frames in each Predict request the client sends, by model.",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
DEID_REMOVED = Counter(
    "rhd_deid_removed_total",
    "Attributes and sidecar fields de-identification removed (unknown and private ones included), by profile.",
    ["profile"],
)
ANONYMITY_K = Gauge(
    "rhd_anonymity_k",
    "k-anonymity of the quasi-identifiers released to the analysis region: the smallest class, over the current UTC "
    "day's releases (window=day) and all releases this replica knows (window=all); a class counts the releases that "
    "could be its patient (withheld values match any).",
    ["window"],
)
ANONYMITY_WITHHELD = Counter(
    "rhd_anonymity_withheld_total",
    "Studies released with quasi-identifiers withheld (the policy's anonymity.generalise) to hold the minimum k.",
    ["profile"],
)
RAW_BLOBS = Gauge("rhd_raw_blobs", "Sealed raw blobs held in the blob store, within the policy's retention.", ["stage"])
RAW_BLOB_BYTES = Gauge("rhd_raw_blob_bytes", "Bytes of the sealed raw blobs held in the blob store.", ["stage"])
RAW_BLOBS_DELETED = Counter(
    "rhd_raw_blobs_deleted_total", "Sealed raw blobs deleted once past the policy's retention.", ["stage"]
)
RECOVERY_FAILURES = Counter(
    "rhd_recovery_read_failures_total",
    "Failed tries to read a stage's own output back on partition assignment (each is tried again).",
    ["stage"],
)
BUILD = Info("rhd_build", "Version of the running service.")


def declare_stage(stage: str, input_topic: str) -> None:
    """Expose a stage's series at 0 from the start: a counter born at its first increment would read as no rate
    at all to Prometheus (rate() needs the series before the increase), so the first dead letters would not alert."""
    for outcome in ("ok", "dead_letter"):
        MESSAGES.labels(stage, outcome)
    DEAD_LETTERS.labels(stage, input_topic)
    DUPLICATES.labels(stage)
    STAGE_SECONDS.labels(stage)


def set_build_info(stage: str, **extra: str) -> None:
    BUILD.info({"version": rhd.__version__, "stage": stage, **extra})


def observe_study_latency(stage: str, study: Message) -> None:
    """Upload to now, for a study record (with an `uploaded_at`) leaving `stage`; nothing when that time is unset."""
    if study.HasField("uploaded_at"):
        uploaded = study.uploaded_at.ToMicroseconds() / 1e6  # type: ignore[attr-defined]
        STUDY_LATENCY.labels(stage).observe(max(0.0, time.time() - uploaded))
