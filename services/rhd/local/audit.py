"""`rhd audit`: look for every identifier the generator wrote wherever identifiable data must not be: every topic
but the raw upload topic and the sealed re-link map (dead letters included), the blob store, the services' logs,
their metric labels, and the pixels of a sample of frames (OCR). A hit is a leak."""

import asyncio
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

import cv2
import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from rhd.runtime import frames, kafka
from rhd.runtime.settings import Settings
from rhd.runtime.topics import FRAMES_DECODED, MESSAGE_OF, STUDIES_UPLOADED, all_topic_names
from rhd.v1 import rhd_pb2 as pb
from rhd.watch.figures import Target

OCR_SCALE = 3  # burned-in text is 8-10 px high at 240 rows; tesseract reads it at three times that
OCR_MATCH = 0.8  # similarity (difflib ratio) at which an OCR'd window counts as the identifier
# A short word nearly matches somewhere in what OCR makes of speckle (a name part of 6 letters did, at 0.8): below
# this length an identifier must be read exactly.
OCR_NEAR_MIN = 10
MIN_TEXT = 5  # shorter identifier forms are not searched for in free text (too common to mean anything)


def ascii_fold(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def normalised(text: str) -> str:
    """Letters and digits only, accent-folded and lower case: how OCR'd text and an identifier are compared."""
    return re.sub(r"[^0-9a-z]", "", ascii_fold(text).lower())


def forms(name: str, value: str) -> set[str]:
    """The spellings an identifier may take where it leaked: as written, accent-folded, upper case, as a DICOM
    person name (Family^Given), dates as DICOM and day-first, times without the colon, and names' parts."""
    value = str(value).strip()
    found = {value, ascii_fold(value), ascii_fold(value).upper()}
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        y, m, d = value.split("-")
        found |= {f"{y}{m}{d}", f"{d}/{m}/{y}", f"{d}-{m}-{y}", f"{d}.{m}.{y}"}
    if re.fullmatch(r"\d{2}:\d{2}", value):
        found |= {value.replace(":", "") + "00"}
    if re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", value):  # a date and time, as an overlay or DICOM writes it
        date, time = value.split()
        y, m, d = date.split("-")
        found |= {f"{y}{m}{d}{time.replace(':', '')}", f"{d}/{m}/{y} {time}", f"{y}{m}{d} {time.replace(':', '')}"}
    words = value.split()
    if name in ("patient_name", "operator", "referring_physician", "performing_physician") and len(words) > 1:
        found.add(f"{' '.join(words[1:])}^{words[0]}")
        found |= {w for w in words if len(w) >= MIN_TEXT + 1}
    return {f for f in found if len(f) >= MIN_TEXT}


@dataclass(frozen=True)
class Hit:
    where: str  # topic[partition]@offset, a blob, a log file, a metric endpoint, an OCR'd frame
    identifier: str  # which identifier (its name, never its value)


@dataclass
class Report:
    hits: list[Hit] = field(default_factory=list)
    records: int = 0
    blobs: int = 0
    log_files: int = 0
    metric_pages: int = 0
    frames_ocred: int = 0

    @property
    def clean(self) -> bool:
        return not self.hits


class Needles:
    """Every identifier's forms, as bytes (UTF-8 and Latin-1) for binary search and as text."""

    def __init__(self, identifiers: Mapping[str, object]) -> None:
        self.by_name: dict[str, set[str]] = {}
        for name, value in identifiers.items():
            values = value if isinstance(value, list) else [value]
            for v in values:
                self.by_name.setdefault(name, set()).update(forms(name, str(v)))
        self.patterns = {
            name: {p for f in fs for p in (f.encode(), f.encode("latin-1", "ignore")) if len(p) >= MIN_TEXT}
            for name, fs in self.by_name.items()
        }

    def in_bytes(self, data: bytes) -> list[str]:
        return sorted(name for name, patterns in self.patterns.items() if any(p in data for p in patterns))

    def in_ocr(self, text: str) -> list[str]:
        """Identifiers whose normalised form OCR'd text holds: exactly anywhere, or nearly (OCR misreads a character
        or two) within one line it read. A burned-in identifier is one line of text; across lines, OCR's reading of
        speckle (hundreds of short scraps on a cleaned frame) joins into strings that nearly match anything long."""
        page = normalised(text)
        lines = [line for line in map(normalised, text.splitlines()) if line]
        found = []
        for name, fs in self.by_name.items():
            for f in fs:
                target = normalised(f)
                if len(target) < MIN_TEXT + 1:
                    continue
                if target in page or (len(target) >= OCR_NEAR_MIN and any(_near(target, line) for line in lines)):
                    found.append(name)
                    break
        return sorted(found)


def _near(target: str, line: str) -> bool:
    n = len(target)
    for start in range(0, max(1, len(line) - n + 1)):
        window = line[start : start + n]
        if window[:1] in target and SequenceMatcher(None, target, window).ratio() >= OCR_MATCH:
            return True
    return False


def ocr_text(bgr: np.ndarray) -> str:
    """What tesseract reads on a frame (upscaled, grey, inverted: dark text on light, as it reads best)."""
    import pytesseract

    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    grey = cv2.resize(grey, None, fx=OCR_SCALE, fy=OCR_SCALE, interpolation=cv2.INTER_CUBIC)
    return str(pytesseract.image_to_string(255 - grey, config="--psm 11"))


def tesseract_available() -> bool:
    try:
        import pytesseract

        pytesseract.get_tesseract_version()
        return True
    except Exception:
        return False


async def audit_topics(
    settings: Settings, needles: Needles, report: Report, frames_to_ocr: int = 0, every: int = 25
) -> None:
    """Read every topic but the identifiable ones from the beginning; OCR every `every`-th decoded frame, up to
    `frames_to_ocr` of them."""
    # The raw topic's dead letters, the re-link map and the access trail are read too: what they hold must be sealed.
    topics = [t for t in all_topic_names() if t != STUDIES_UPLOADED]
    tps = await kafka.partitions(settings, topics)
    store = frames.FrameStore(settings.blob_dir, settings.frame_retention_s)  # where stored frames' pixels are
    reader = kafka.consumer(settings, None, "rhd-audit")
    await reader.start()
    try:
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        await reader.seek_to_beginning(*tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        seen_frames = 0
        while remaining:
            batches = await reader.getmany(*remaining, timeout_ms=1000, max_records=500)
            if not batches:
                positions = {tp: await reader.position(tp) for tp in remaining}
                remaining = {tp for tp in remaining if positions[tp] < ends[tp]}
                continue
            for tp, records in batches.items():
                for record in records:
                    report.records += 1
                    data = (record.key or b"") + b"\x00" + _searchable(tp.topic, record.value or b"")
                    data += b"".join(k.encode() + b"\x00" + (v or b"") for k, v in (record.headers or ()))
                    where = f"{tp.topic}[{tp.partition}]@{record.offset}"
                    report.hits += [Hit(where, name) for name in needles.in_bytes(data)]
                    if tp.topic == FRAMES_DECODED and report.frames_ocred < frames_to_ocr:
                        image = _frame_pixels(record.value or b"", store)
                        if image is None:  # not a frame (a bad record, dead-lettered by inspect): bytes only
                            continue
                        seen_frames += 1
                        if (seen_frames - 1) % every == 0:
                            report.frames_ocred += 1
                            report.hits += [Hit(f"{where} (OCR)", n) for n in needles.in_ocr(ocr_text(image))]
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()


# Messages whose bytes fields are pixels: text in them is pixels, read by OCR; as bytes they only match by chance.
PIXEL_MESSAGES = (pb.Frame, pb.Mask)


def _clear_pixels(message: Message) -> None:
    for descriptor, value in message.ListFields():
        if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            if descriptor.message_type.GetOptions().map_entry:
                continue  # a map of messages: none holds pixels
            for child in value if descriptor.is_repeated else [value]:
                _clear_pixels(child)
        elif descriptor.type == FieldDescriptor.TYPE_BYTES and isinstance(message, PIXEL_MESSAGES):
            message.ClearField(descriptor.name)


def _searchable(topic: str, value: bytes) -> bytes:
    """A record's bytes to search for identifiers: its message without pixel data where it parses as its topic's
    message, else every byte."""
    kind = MESSAGE_OF.get(topic)
    if kind is None:
        return value
    try:
        message = kind.FromString(value)
    except DecodeError:
        return value
    _clear_pixels(message)
    return message.SerializeToString()


def _frame_pixels(value: bytes, store: frames.FrameStore) -> np.ndarray | None:
    """The pixels of a decoded-frame record (in it, or in the frame store), or None when it is not a readable frame."""
    try:
        return store.image(pb.Frame.FromString(value))
    except (DecodeError, ValueError):
        return None


def audit_files(paths: Iterable[Path], needles: Needles, report: Report, kind: str) -> None:
    for path in paths:
        if not path.is_file():
            continue
        data = path.read_bytes()
        if kind == "blob":
            report.blobs += 1
        else:
            report.log_files += 1
        report.hits += [Hit(f"{kind} {path.name}", name) for name in needles.in_bytes(data)]


def audit_metrics(pages: Mapping[str, str], needles: Needles, report: Report) -> None:
    for where, text in pages.items():
        report.metric_pages += 1
        report.hits += [Hit(f"metrics {where}", name) for name in needles.in_bytes(text.encode())]


async def scrape_pages(targets: Iterable[Target]) -> dict[str, str]:
    """Each target's metrics page, as Prometheus would scrape it (labels and all)."""
    import aiohttp

    pages = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        for target in targets:
            try:
                async with http.get(target.url) as response:
                    pages[f"{target.job} {target.address}"] = await response.text()
            except (aiohttp.ClientError, OSError):
                continue
    return pages


async def audit(
    settings: Settings,
    identifiers: Iterable[Mapping[str, object]],
    blob_dir: Path | None = None,
    log_dir: Path | None = None,
    metric_pages: Mapping[str, str] | None = None,
    frames_to_ocr: int = 0,
    ocr_every: int = 25,
) -> Report:
    """Every place at once: topics (and OCR of every `ocr_every`-th decoded frame), blobs, logs, metric pages."""
    needles = Needles(_merged(identifiers))
    report = Report()
    await audit_topics(settings, needles, report, frames_to_ocr, ocr_every)
    await asyncio.to_thread(_audit_stores, needles, report, blob_dir, log_dir)
    if metric_pages:
        audit_metrics(metric_pages, needles, report)
    return report


def _audit_stores(needles: Needles, report: Report, blob_dir: Path | None, log_dir: Path | None) -> None:
    if blob_dir is not None:
        # The frame store's files are pixels, like a frame record's pixel fields: OCR reads them (audit_topics).
        stored_frames = Path(blob_dir) / frames.FOLDER
        blobs = [path for path in sorted(Path(blob_dir).rglob("*")) if stored_frames not in path.parents]
        audit_files(blobs, needles, report, "blob")
    if log_dir is not None:
        audit_files(sorted(Path(log_dir).glob("*.log")), needles, report, "log")


def _merged(identifiers: Iterable[Mapping[str, object]]) -> dict[str, list]:
    """Every study's identifiers under one name each. A study's time of day is looked for with its date: alone, a
    time is any log line's clock (a log written at 07:46 matched a study done at 07:46)."""
    merged: dict[str, list] = {}
    for one in identifiers:
        one = dict(one)
        if one.get("study_time") and one.get("study_date"):
            one["study_time"] = f"{one['study_date']} {one['study_time']}"
        for name, value in one.items():
            merged.setdefault(name, []).extend(value if isinstance(value, list) else [value])
    return merged
