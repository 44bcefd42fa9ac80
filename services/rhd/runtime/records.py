"""Builders for the records every stage writes alike: terminal frame results and dead letters."""

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from rhd.runtime.topics import FRAMES_DONE, dlq
from rhd.v1 import rhd_pb2 as pb


def now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


# Every record the line writes names its message type in this header; a stage refuses a record that names another
# type (or another version of its own) or none, since protobuf would parse most bytes as most messages.
SCHEMA_HEADER = "rhd-schema"


def schema_of(message: Message) -> str:
    return message.DESCRIPTOR.full_name


def schema_headers(message: Message) -> list[tuple[str, bytes]]:
    """The headers a record carrying `message` is written with (by the runner, and by anything else that writes
    to a topic a stage reads)."""
    return [(SCHEMA_HEADER, schema_of(message).encode())]


def header(headers: object, name: str) -> str | None:
    """A record header's value as text (the first of that name), or None."""
    for key, value in headers or ():  # type: ignore[attr-defined]
        if key == name:
            return (value or b"").decode(errors="replace")
    return None


class Output:
    """One record to produce: topic, key and message."""

    __slots__ = ("topic", "key", "message")

    def __init__(self, topic: str, key: str, message: Message) -> None:
        self.topic, self.key, self.message = topic, key, message

    def __repr__(self) -> str:
        return f"Output({self.topic!r}, {self.key!r}, {type(self.message).__name__})"


def frame_result(
    key: pb.FrameKey,
    status: "pb.FrameStatus",
    stage: str,
    reason: str = "",
    **fields: Message,
) -> Output:
    """The terminal record of one frame, keyed by study so a study's records meet on one partition. A field given
    as an empty message (e.g. the ECG reading of a frame that showed none) is left unset, not set empty."""
    fields = {name: value for name, value in fields.items() if value.ByteSize()}
    result = pb.FrameResult(key=key, status=status, stage=stage, reason=reason, finished_at=now(), **fields)
    return Output(FRAMES_DONE, key.study_id, pb.FrameDone(result=result))


def frame_key_of(message: Message) -> pb.FrameKey | None:
    """The FrameKey inside any frame-carrying message, or None for study-level messages."""
    if isinstance(message, pb.Frame):
        return message.key
    for field in ("frame", "segmented"):
        if hasattr(message, field):
            return frame_key_of(getattr(message, field))
    return None


def dead_letter(
    source_topic: str,
    stage: str,
    reason: str,
    original: bytes = b"",
    *,
    original_blob_uri: str = "",
    error_type: str = "",
    key: bytes = b"",
    partition: int = -1,
    offset: int = -1,
    study_id: str = "",
    video_id: str = "",
    frame_index: int = -1,
) -> pb.DeadLetter:
    letter = pb.DeadLetter(
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=key,
        stage=stage,
        reason=reason,
        error_type=error_type,
        study_id=study_id,
        video_id=video_id,
        frame_index=frame_index,
        failed_at=now(),
    )
    if original_blob_uri:
        letter.original_blob_uri = original_blob_uri
    else:
        letter.original_bytes = original
    return letter


def dead_letter_output(source_topic: str, stage: str, reason: str, *, key: bytes, **fields: object) -> Output:
    """A dead letter for `<source_topic>.dlq`, keyed as its original record was (fields: those of dead_letter)."""
    letter = dead_letter(source_topic, stage, reason, key=key, **fields)  # type: ignore[arg-type]
    return Output(dlq(source_topic), key.decode(errors="replace"), letter)
