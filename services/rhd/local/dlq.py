"""`rhd dlq list|show|replay`: an operator's view of the dead letters, and their replay once the cause is fixed.

Every `.dlq` topic is read from its beginning. A letter is named `<topic>[<partition>]@<offset>` (its place in
the .dlq topic). A replay writes the letter's original record (its bytes, or the blob it was moved to) back to the
topic it came from, under its original key, with the schema header of that topic's message and an `rhd-replay-of`
header naming the letter; the stages then handle it as they would have. Replays never duplicate a diagnosis:
assemble drops the records of a study it already closed and diagnose diagnoses a study once. The raw upload's
letters hold the upload sealed, with its record key sealed beside it (the envelope is bound to that key): replaying
them needs the raw keyring, so it runs in the home region.
"""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from rhd.runtime import kafka
from rhd.runtime.blobs import BlobStore
from rhd.runtime.records import SCHEMA_HEADER, schema_of
from rhd.runtime.secrets import RAW_KEYRING, Keyring, load_keyring, require_home_region
from rhd.runtime.settings import Settings
from rhd.runtime.topics import DLQ_SUFFIX, MESSAGE_OF, TOPICS, dlq
from rhd.v1 import rhd_pb2 as pb

REPLAY_HEADER = "rhd-replay-of"


@dataclass(frozen=True)
class Letter:
    where: str  # <dlq topic>[<partition>]@<offset>
    letter: pb.DeadLetter

    @property
    def failed_at(self) -> str:
        stamp = self.letter.failed_at
        return dt.datetime.fromtimestamp(stamp.seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if stamp.seconds else ""


def dlq_topics(topic: str = "") -> list[str]:
    """The .dlq topics to read: every one, or the one of `topic` (named with or without its .dlq)."""
    names = [dlq(t.name) for t in TOPICS]
    if not topic:
        return names
    name = topic if topic.endswith(DLQ_SUFFIX) else dlq(topic)
    if name not in names:
        raise ValueError(f"no dead-letter topic {name!r} (the line's: {', '.join(names)})")
    return [name]


async def read_letters(settings: Settings, topic: str = "") -> list[Letter]:
    letters = []
    for name in dlq_topics(topic):
        for record in await kafka.read_records(settings, name, 0.0, "rhd-dlq"):
            try:
                letter = pb.DeadLetter.FromString(record.value or b"")
            except Exception:
                letter = pb.DeadLetter(reason="(not a DeadLetter record)", key=record.key or b"")
            letters.append(Letter(f"{name}[{record.partition}]@{record.offset}", letter))
    return letters


def select(letters: Iterable[Letter], stage: str = "", study: str = "", where: str = "") -> list[Letter]:
    return [
        x
        for x in letters
        if (not stage or x.letter.stage == stage)
        and (not study or x.letter.study_id == study)
        and (not where or x.where == where)
    ]


def table(letters: list[Letter]) -> str:
    rows = [("letter", "failed at", "stage", "study", "error", "reason")]
    for x in letters:
        reason = x.letter.reason if len(x.letter.reason) <= 90 else x.letter.reason[:87] + "..."
        rows.append((x.where, x.failed_at, x.letter.stage, x.letter.study_id, x.letter.error_type, reason))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows]
    return "\n".join(lines) + f"\n{len(letters)} dead letters\n"


def describe(x: Letter) -> str:
    letter = x.letter
    kind = letter.WhichOneof("original")
    original = (
        f"{len(letter.original_bytes)} bytes in the letter"
        if kind == "original_bytes"
        else f"in the blob store: {letter.original_blob_uri}"
        if kind
        else "none"
    )
    fields = [
        ("letter", x.where),
        ("from", f"{letter.source_topic}[{letter.partition}]@{letter.offset}"),
        ("stage", letter.stage),
        ("error", letter.error_type),
        ("reason", letter.reason),
        ("study", letter.study_id),
        ("video", letter.video_id),
        ("frame", str(letter.frame_index) if letter.frame_index >= 0 else ""),
        ("failed at", x.failed_at),
        ("original", original + (" (sealed)" if letter.sealed_key else "")),
    ]
    return "\n".join(f"{name:<10} {value}" for name, value in fields if value) + "\n"


def original_of(letter: pb.DeadLetter, blobs: BlobStore) -> bytes:
    kind = letter.WhichOneof("original")
    if kind == "original_bytes":
        return letter.original_bytes
    if kind == "original_blob_uri":
        return blobs.get(letter.original_blob_uri)
    raise ValueError("the letter keeps no original to replay")


def replay_record(
    x: Letter, blobs: BlobStore, raw: Keyring | None
) -> tuple[str, bytes, bytes, list[tuple[str, bytes]]]:
    """(topic, key, value, headers) that puts the letter's original back where it came from."""
    letter = x.letter
    message = MESSAGE_OF.get(letter.source_topic)
    if message is None:
        raise ValueError(f"the letter came from {letter.source_topic!r}, not a topic of the line")
    key = letter.key
    if letter.sealed_key:
        if raw is None:
            raise ValueError("the original is sealed: replay it in the home region (the raw keyring opens its key)")
        key = raw.open(letter.sealed_key)
    headers = [(SCHEMA_HEADER, schema_of(message()).encode()), (REPLAY_HEADER, x.where.encode())]
    return letter.source_topic, key, original_of(letter, blobs), headers


async def replay(settings: Settings, letters: list[Letter], dry_run: bool = False) -> list[tuple[Letter, str]]:
    """Write each letter's original back; returns (letter, what happened) for each."""
    blobs = BlobStore(settings.blob_dir)
    raw = None
    if any(x.letter.sealed_key for x in letters):
        require_home_region(settings.region, settings.home_region, "rhd dlq replay of sealed uploads")
        raw = load_keyring(settings.secrets_dir / RAW_KEYRING)
    done, records = [], []
    for x in letters:
        try:
            record = replay_record(x, blobs, raw)
        except (ValueError, FileNotFoundError) as exc:
            done.append((x, f"not replayed: {exc}"))
            continue
        records.append(record)
        done.append((x, f"{'would replay' if dry_run else 'replayed'} to {record[0]}"))
    if records and not dry_run:
        by_topic: dict[str, list] = {}
        for topic, key, value, headers in records:
            by_topic.setdefault(topic, []).append((key, value, headers))
        for topic, batch in by_topic.items():
            await kafka.send_all(settings, "rhd-dlq-replay", topic, batch)
    return done
