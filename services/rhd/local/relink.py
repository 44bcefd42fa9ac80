"""Results back to the hospital, in the home region only: its diagnoses under its own identifiers (the re-link map,
filtered to that hospital), an access trail of every read of re-linked records, and LGPD erasure of a patient's
links and de-identified videos. The functions on plain values come first; reading and writing Kafka comes last."""

import asyncio
import csv
import datetime as dt
import getpass
import io
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from aiokafka import ConsumerRecord
from google.protobuf.message import DecodeError

from rhd.deid.ops import patient_key, pseudonym
from rhd.labels import CLASSES
from rhd.runtime import kafka, metrics
from rhd.runtime.blobs import BlobStore
from rhd.runtime.frames import SCHEME as FRAMES_SCHEME
from rhd.runtime.frames import FrameStore
from rhd.runtime.http import start_http
from rhd.runtime.links import Link, read_link_map
from rhd.runtime.records import schema_headers
from rhd.runtime.secrets import (
    KEY_ID_HEADER,
    LINK_KEYRING,
    SEALED_SCHEMA,
    Keyring,
    SecretError,
    load_keyring,
    load_pseudonym_key,
    require_home_region,
)
from rhd.runtime.settings import Settings
from rhd.runtime.topics import (
    ACCESS_TRAIL,
    RESULTS_GROUP,
    STUDIES_DEIDENTIFIED,
    STUDIES_DIAGNOSED,
    STUDIES_LINKS,
    results_topic,
)
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.console import completeness_name, label_name

TRAIL_KIND = "access"
RESULTS, ERASE, DELIVERED = "results", "erase", "delivered"  # the actions the trail records
STUDIES_PER_ENTRY = 10_000  # ~250 kB of pseudonyms: a hospital's whole archive read at once splits into entries


# -- re-linking -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Result:
    """One diagnosis under the hospital's own identifiers."""

    study_id: str
    accession_number: str
    label: str
    probabilities: dict[str, float]
    completeness: str
    referral: str  # why the study was referred to a cardiologist instead of labelled; "" when it was labelled
    reason: str
    model_version: str
    diagnosed_at: str  # ISO 8601, UTC
    pseudonym: str = field(repr=False)  # for the access trail only: never written out beside the identifiers


def latest_diagnoses(diagnoses: Iterable[pb.Diagnosis]) -> dict[str, pb.Diagnosis]:
    """One diagnosis per study pseudonym: the latest made (a redelivered study can be answered twice)."""
    latest: dict[str, pb.Diagnosis] = {}
    for diagnosis in diagnoses:
        before = latest.get(diagnosis.study_id)
        if before is None or diagnosis.diagnosed_at.ToNanoseconds() >= before.diagnosed_at.ToNanoseconds():
            latest[diagnosis.study_id] = diagnosis
    return latest


def relink(links: Mapping[str, Link], diagnoses: Iterable[pb.Diagnosis], hospital: str) -> list[Result]:
    """The hospital's diagnoses under its own study id and accession number. Only studies whose link names this
    hospital: another hospital's study (even one with the same study id, or of the same child) never shows, and a
    diagnosis without a link (not ours, or erased) neither."""
    rows = []
    for pseudo, diagnosis in latest_diagnoses(diagnoses).items():
        link = links.get(pseudo)
        if link is None or link.get("hospital_id") != hospital:
            continue
        rows.append(
            Result(
                study_id=str(link.get("study_id", "")),
                accession_number=str(link.get("accession_number", "")),
                label=label_name(diagnosis.label),
                probabilities={name: round(float(p), 4) for name, p in diagnosis.probabilities.items()},
                completeness=completeness_name(diagnosis.completeness),
                referral=diagnosis.referral if diagnosis.referred else "",
                reason=diagnosis.reason,
                model_version=diagnosis.model_version,
                diagnosed_at=diagnosis.diagnosed_at.ToDatetime(dt.UTC).isoformat(timespec="seconds")
                if diagnosis.HasField("diagnosed_at")
                else "",
                pseudonym=pseudo,
            )
        )
    return sorted(rows, key=lambda r: (r.study_id, r.accession_number))


def undiagnosed(links: Mapping[str, Link], diagnosed: Iterable[str], hospital: str) -> int:
    """The hospital's linked studies with no diagnosis yet."""
    done = set(diagnosed)
    return sum(1 for p, link in links.items() if link.get("hospital_id") == hospital and p not in done)


CSV_COLUMNS = (
    "study_id",
    "accession_number",
    "label",
    *(f"p_{name}" for name in CLASSES),
    "completeness",
    "referral",
    "reason",
    "model_version",
    "diagnosed_at",
)


def csv_rows(rows: Iterable[Result]) -> list[dict[str, str]]:
    out = []
    for r in rows:
        row = {name: str(getattr(r, name)) for name in CSV_COLUMNS if hasattr(r, name)}
        row.update({f"p_{name}": f"{r.probabilities[name]:.4f}" for name in CLASSES if name in r.probabilities})
        out.append(row)
    return out


def csv_text(rows: Iterable[Result]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(rows))
    return buffer.getvalue()


def write_private(path: Path, text: str) -> None:
    """Identifiable output: readable by its owner only (0600), like the keys."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)


def results_table(rows: Iterable[Result]) -> str:
    header = ["study_id", "accession", "label", *CLASSES, "completeness", "referral"]
    lines = [
        [r.study_id, r.accession_number, r.label]
        + [f"{r.probabilities[c]:.2f}" if c in r.probabilities else "-" for c in CLASSES]
        + [r.completeness, r.referral or "-"]
        for r in rows
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *lines, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in [header, *lines]
    )


# -- the access trail -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrailEntry:
    """One read of re-linked records, or one erasure. Study pseudonyms only: the trail names no identifier."""

    at: str  # ISO 8601, UTC
    user: str
    action: str  # RESULTS or ERASE
    hospital: str
    purpose: str
    studies: tuple[str, ...]  # the study pseudonyms read or erased
    blobs_deleted: int = 0


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


def trail_entry(
    action: str, hospital: str, studies: Iterable[str], user: str = "", purpose: str = "", at: float | None = None
) -> TrailEntry:
    when = dt.datetime.fromtimestamp(at, dt.UTC) if at is not None else dt.datetime.now(dt.UTC)
    return TrailEntry(
        at=when.isoformat(timespec="seconds"),
        user=user or os_user(),
        action=action,
        hospital=hospital,
        purpose=purpose,
        studies=tuple(sorted(set(studies))),
    )


def trail_entries(
    action: str, hospital: str, studies: Iterable[str], user: str = "", purpose: str = "", at: float | None = None
) -> list[TrailEntry]:
    """One entry per STUDIES_PER_ENTRY studies read (at least one entry): each stays far under the message limit."""
    entry = trail_entry(action, hospital, studies, user, purpose, at)
    chunks = [entry.studies[i : i + STUDIES_PER_ENTRY] for i in range(0, len(entry.studies), STUDIES_PER_ENTRY)]
    return [replace(entry, studies=chunk) for chunk in chunks] or [entry]


def sealed_trail(entry: TrailEntry, keyring: Keyring) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the entry's record: keyed by hospital (its entries stay in order on one partition),
    sealed with the link keyring and bound to that key."""
    key = entry.hospital.encode()
    plaintext = json.dumps(asdict(entry), sort_keys=True, ensure_ascii=False).encode()
    record = pb.SealedRecord(
        schema=SEALED_SCHEMA, kind=TRAIL_KIND, key_id=keyring.current, envelope=keyring.seal(plaintext, key)
    )
    return key, record.SerializeToString(), [(KEY_ID_HEADER, keyring.current.encode())]


def open_trail(key: bytes, value: bytes, keyring: Keyring) -> TrailEntry:
    record = pb.SealedRecord.FromString(value)
    if record.schema != SEALED_SCHEMA or record.kind != TRAIL_KIND:
        raise SecretError("not a sealed access-trail entry")
    data = json.loads(keyring.open(record.envelope, key))
    return TrailEntry(**{**data, "studies": tuple(data["studies"])})


def trail(
    records: Iterable[tuple[bytes | None, bytes | None]], keyring: Keyring, hospital: str = ""
) -> list[TrailEntry]:
    """The entries, oldest first, of one hospital or of all. An entry that does not open is an error, not a gap."""
    entries = [open_trail(key or b"", value, keyring) for key, value in records if value is not None]
    return sorted((e for e in entries if not hospital or e.hospital == hospital), key=lambda e: e.at)


def trail_lines(entries: Iterable[TrailEntry]) -> list[str]:
    lines = []
    for e in entries:
        erased = f", {e.blobs_deleted} blobs deleted" if e.action == ERASE else ""
        lines.append(
            f"{e.at}  {e.user}  {e.action} {e.hospital}: {len(e.studies)} studies{erased}; "
            f"purpose: {e.purpose or '-'}; {' '.join(e.studies) or '-'}"
        )
    return lines


# -- erasure (LGPD art. 18) ----------------------------------------------------------------------------------------
def patient_pseudonyms(key: bytes, hospital: str, patient_ids: Iterable[str]) -> set[str]:
    """The patient's pseudonyms as deid keyed them: by CNS when an id is one, else by the hospital's own id."""
    return {pseudonym(key, "patient", patient_key(hospital, pid)) for pid in patient_ids if pid.strip()}


def video_blobs(uploads: Iterable[pb.StudyUpload]) -> dict[str, set[str]]:
    """Study pseudonym -> the blobs its de-identified videos are stored in."""
    out: dict[str, set[str]] = {}
    for upload in uploads:
        # Blobs only: frames deid kept in the frame store (frames://) go with their video's (FrameStore.delete_video).
        uris = {
            v.blob_uri for v in upload.videos if v.HasField("blob_uri") and not v.blob_uri.startswith(FRAMES_SCHEME)
        }
        out.setdefault(upload.study_id, set()).update(uris)
    return out


@dataclass(frozen=True)
class Erasure:
    studies: list[str]  # study pseudonyms whose links are tombstoned
    blobs: list[str]  # blobs only those studies reference
    blobs_deleted: int = 0  # of those, the ones that were still there; and the stored frame files of their videos


def erasure_plan(
    links: Mapping[str, Link], patients: set[str], hospital: str, blobs: Mapping[str, set[str]]
) -> Erasure:
    """Every link of the patient at this hospital, and the blobs of those studies that no other study references
    (blobs are content-addressed: a study sent twice shares them). Another hospital's studies of the same child (the
    same CNS) are that hospital's records: they go on its own request."""
    studies = sorted(
        p for p, link in links.items() if link.get("hospital_id") == hospital and link.get("patient") in patients
    )
    kept = {uri for p, uris in blobs.items() if p not in studies for uri in uris}
    return Erasure(studies, sorted({uri for p in studies for uri in blobs.get(p, ())} - kept))


# -- Kafka ----------------------------------------------------------------------------------------------------------
def _pairs(records: Iterable[ConsumerRecord]) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) for r in records]


def _parsed(records: Iterable[ConsumerRecord], message: type) -> list:
    out = []
    for r in records:
        try:
            out.append(message.FromString(r.value or b""))
        except DecodeError:
            continue  # not ours to judge here: the stage that wrote it dead-letters what it cannot read
    return out


async def read_diagnoses(settings: Settings) -> list[pb.Diagnosis]:
    return _parsed(await kafka.read_records(settings, STUDIES_DIAGNOSED, 0, "rhd-relink-diagnoses"), pb.Diagnosis)


def _home(settings: Settings, what: str) -> Keyring:
    require_home_region(settings.region, settings.home_region, what)
    return load_keyring(settings.secrets_dir / LINK_KEYRING)


async def append_trail(settings: Settings, keyring: Keyring, entries: Iterable[TrailEntry]) -> None:
    await kafka.send_all(settings, "rhd-access-trail", ACCESS_TRAIL, (sealed_trail(e, keyring) for e in entries))


async def results(settings: Settings, hospital: str, user: str = "", purpose: str = "") -> tuple[list[Result], int]:
    """`rhd results`: the hospital's diagnoses re-linked, and how many of its studies have none yet. The read is in
    the access trail before anything is returned: a read the trail cannot record is not made."""
    keyring = _home(settings, "rhd results")
    links = await read_link_map(settings, keyring, "rhd-relink")
    diagnoses = await read_diagnoses(settings)
    rows = relink(links, diagnoses, hospital)
    await append_trail(settings, keyring, trail_entries(RESULTS, hospital, (r.pseudonym for r in rows), user, purpose))
    return rows, undiagnosed(links, (d.study_id for d in diagnoses), hospital)


def study_result(link: Link, diagnosis: pb.Diagnosis) -> pb.StudyResult:
    """A diagnosis as its hospital reads it on its results topic: under its own study id and accession number, the
    pseudonym cleared (it never goes out beside the hospital's identifiers)."""
    out = pb.Diagnosis()
    out.CopyFrom(diagnosis)
    out.ClearField("study_id")
    return pb.StudyResult(
        study_id=str(link.get("study_id", "")), accession_number=str(link.get("accession_number", "")), diagnosis=out
    )


def deliveries(
    links: Mapping[str, Link], diagnoses: Iterable[pb.Diagnosis], hospitals: Iterable[str]
) -> tuple[list[tuple[str, pb.StudyResult, str]], list[str]]:
    """(hospital, its result, the study pseudonym) for each diagnosis whose link names one of `hospitals`, and the
    pseudonyms of those without a link yet (none: not ours, or erased; the caller reads the map again for them)."""
    hospitals = set(hospitals)
    out, unlinked = [], []
    for diagnosis in diagnoses:
        link = links.get(diagnosis.study_id)
        if link is None:
            unlinked.append(diagnosis.study_id)
        elif link.get("hospital_id") in hospitals:
            out.append((str(link["hospital_id"]), study_result(link, diagnosis), diagnosis.study_id))
    return out, unlinked


async def serve_results(settings: Settings, stop: asyncio.Event, poll_ms: int = 1000) -> int:
    """`rhd results --serve`: each new diagnosis of a hospital in RHD_HOSPITALS, re-linked, to that hospital's own
    results topic (keyed by its study id, so a hospital reads them with any Kafka client, and a redelivery is the
    same record again), each delivery in the access trail, the diagnoses' offsets committed after both. A diagnosis
    whose link is not in the map is looked up again once (the map is re-read): none means not ours, or erased, and
    nothing is delivered. Returns how many results were delivered when `stop` is set."""
    keyring = _home(settings, "rhd results --serve")
    hospitals = list(settings.hospitals)
    if not hospitals:
        raise ValueError("RHD_HOSPITALS names no hospital: there is no results topic to deliver to")
    links = await read_link_map(settings, keyring, "rhd-results-links")
    consumer = kafka.consumer(settings, RESULTS_GROUP, "rhd-results")
    producer = kafka.producer(settings, "rhd-results")
    await consumer.start()
    await producer.start()
    delivered, last_round = 0, time.monotonic()

    async def ready() -> bool:
        return bool(consumer.assignment())

    # /metrics (rhd_messages_total, rhd_outputs_total under stage "results"), /healthz, /readyz, as every service.
    http, _ = await start_http(
        settings.http_host,
        settings.http_port,
        ready,
        alive=lambda: time.monotonic() - last_round < settings.stuck_after_s,
    )
    try:
        consumer.subscribe([STUDIES_DIAGNOSED])
        while not stop.is_set():
            last_round = time.monotonic()
            batches = await consumer.getmany(timeout_ms=poll_ms)
            diagnoses = [pb.Diagnosis.FromString(r.value) for records in batches.values() for r in records if r.value]
            if not diagnoses:
                continue
            out, unlinked = deliveries(links, diagnoses, hospitals)
            if unlinked:
                links = await read_link_map(settings, keyring, "rhd-results-links")
                missing = set(unlinked)
                out += deliveries(links, [d for d in diagnoses if d.study_id in missing], hospitals)[0]
            for hospital, result, _ in out:
                headers = schema_headers(result)
                await producer.send(
                    results_topic(hospital), result.SerializeToString(), result.study_id.encode(), headers=headers
                )
            await producer.flush()
            by_hospital: dict[str, list[str]] = {}
            for hospital, _, pseudo in out:
                by_hospital.setdefault(hospital, []).append(pseudo)
            entries = [
                e
                for hospital, studies in by_hospital.items()
                for e in trail_entries(DELIVERED, hospital, studies, RESULTS_GROUP, "results topic")
            ]
            await append_trail(settings, keyring, entries)
            await consumer.commit()
            delivered += len(out)
            metrics.MESSAGES.labels(RESULTS_GROUP, "ok").inc(len(diagnoses))
            for hospital, _, _ in out:
                metrics.OUTPUTS.labels(RESULTS_GROUP, results_topic(hospital)).inc()
    finally:
        await http.cleanup()
        await consumer.stop()
        await producer.stop()
    return delivered


async def erase(
    settings: Settings, hospital: str, patient_ids: Iterable[str], user: str = "", purpose: str = ""
) -> Erasure:
    """`rhd erase`: a tombstone on studies.links.v1 for every link of the patient at this hospital, their
    de-identified videos' blobs and stored frames deleted, and the erasure in the access trail (by study pseudonyms)."""
    keyring = _home(settings, "rhd erase")
    patients = patient_pseudonyms(load_pseudonym_key(settings.secrets_dir), hospital, patient_ids)
    if not patients:
        raise ValueError("name the patient: --patient-id and/or --cns")
    links = await read_link_map(settings, keyring, "rhd-relink")
    uploads = _parsed(await kafka.read_records(settings, STUDIES_DEIDENTIFIED, 0, "rhd-erase-blobs"), pb.StudyUpload)
    plan = erasure_plan(links, patients, hospital, video_blobs(uploads))
    producer = kafka.producer(settings, "rhd-erase")
    await producer.start()
    try:
        for study in plan.studies:
            await producer.send_and_wait(STUDIES_LINKS, None, key=study.encode())
    finally:
        await producer.stop()
    store = BlobStore(settings.blob_dir)
    deleted = sum(store.delete(uri) for uri in plan.blobs)
    # Their decoded frames too, where split wrote them in this region's store (within their retention).
    erased = set(plan.studies)
    stored = FrameStore(settings.blob_dir, settings.frame_retention_s)
    deleted += sum(stored.delete_video(v.video_id) for u in uploads if u.study_id in erased for v in u.videos)
    entry = trail_entry(ERASE, hospital, plan.studies, user, purpose)
    await append_trail(settings, keyring, [replace(entry, blobs_deleted=deleted)])
    return replace(plan, blobs_deleted=deleted)


async def access_trail(settings: Settings, hospital: str = "") -> list[TrailEntry]:
    """`rhd access-trail`: who read re-linked results or erased a patient, oldest first."""
    keyring = _home(settings, "rhd access-trail")
    return trail(_pairs(await kafka.read_records(settings, ACCESS_TRAIL, 0, "rhd-access-trail")), keyring, hospital)
