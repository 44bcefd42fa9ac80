"""The one way every stage consumes, runs its pure functions off the event loop, produces and dead-letters.

Delivery is at least once: a batch's offsets are committed only after every record it produced is
acknowledged by the broker, so a crash replays records and downstream deduplicates by key. Where the broker has
transactions (RHD_TRANSACTIONS) a stage that FLOWS marks transactional writes a batch's outputs and commits its
offsets in one; its deduplication stays.
"""

import asyncio
import inspect
import logging
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from google.protobuf.message import DecodeError, Message

from rhd.runtime import kafka, metrics
from rhd.runtime.blobs import BlobStore
from rhd.runtime.frames import FrameStore
from rhd.runtime.http import start_http
from rhd.runtime.records import SCHEMA_HEADER, Output, dead_letter_output, frame_key_of, frame_result, header, schema_of
from rhd.runtime.secrets import SecretError, require_home_region
from rhd.runtime.settings import Settings
from rhd.runtime.topics import DLQ_SUFFIX, FLOWS, Flow, transactional_prefix
from rhd.v1 import rhd_pb2 as pb

log = logging.getLogger(__name__)

Encoded = tuple[str, str, bytes, str]  # topic, key, value, the message type (its schema header)
MAX_REASON = 2_000  # characters of a dead letter's reason kept when the letter would not fit a message


@dataclass(frozen=True)
class Position:
    """Where a record was read: what a stateful stage needs to rebuild its state from its input topic."""

    partition: int
    offset: int
    timestamp: float  # the record's timestamp (CreateTime), seconds
    key: bytes = b""  # the record's key
    headers: tuple[tuple[str, bytes], ...] = ()  # the record's headers
    topic: str = ""  # the topic it was read from (one of the stage's input topics)


class StageService:
    """A stage: what it reads, its logic (`handle`), and what a failure leaves behind (`failed`).

    `handle(message, at)` is either a plain function, run in the worker pool, or a coroutine function, awaited
    on the loop (for I/O-bound stages such as the model client, or cheap stateful ones); `at` says where the
    record was read. A stateful stage keeps its state in its input topic: `committable` holds the committed
    offset back to the oldest record its state still needs, and the partition hooks rebuild or drop state as
    partitions move between replicas. A stage that must not write a key twice names its output topic as
    `written_topic`: before each assignment the runner reads back the keys written there in the last
    `written_window_s` seconds and hands them to `partitions_assigned`.
    """

    name: str
    input_topic: str
    input_type: type[Message]
    # What a stage outside the line writes (the line's stages are in topics.FLOWS, which holds their outputs).
    outputs: tuple[str, ...] = ()
    concurrent: bool = True  # may the records of one batch be handled at once?
    # The most records a batch holds (0: RHD_FETCH_MAX_RECORDS). A stage whose record is a whole study (deid, split)
    # takes one at a time: a batch's outputs are held until they are written, so 32 studies at once would hold 32
    # studies' frames.
    batch_records: int = 0
    tick_seconds: float = 0.0  # > 0: `tick` is called that often (deadlines)
    written_topic: str = ""
    written_window_s: float = 0.0
    # Reads identifiable data: runs only in the home region, its dead letters are sealed (`seal`, `redact`) and what
    # it logs of a failure names no value.
    identifiable: bool = False
    # Where the frames' pixels are (the runner sets it from the settings; a test may set its own).
    frames: FrameStore | None = None

    def __init_subclass__(cls, **declared: Any) -> None:
        """A stage says what it is in its class line: `class Segment(StageService, name="segment", input_topic=...,
        input_type=...)`, and optionally concurrent, tick_seconds, written_topic."""
        super().__init_subclass__()
        for attribute, value in declared.items():
            if attribute not in (
                "name",
                "input_topic",
                "input_type",
                "outputs",
                "concurrent",
                "batch_records",
                "tick_seconds",
                "written_topic",
                "identifiable",
            ):
                raise TypeError(f"{cls.__name__}: a stage does not declare {attribute!r}")
            setattr(cls, attribute, value)
        flow = FLOWS.get(getattr(cls, "name", ""))
        if flow is not None and (cls.input_topic, cls.written_topic) != (flow.input, flow.reads_back):
            raise TypeError(f"{cls.__name__}: its topics differ from FLOWS[{cls.name!r}]")

    @classmethod
    def flow(cls) -> Flow:
        """What it reads and writes: the line's entry in FLOWS, or what a stage outside it declares."""
        return FLOWS.get(cls.name) or Flow(cls.input_topic, cls.outputs, reads_back=cls.written_topic)

    @classmethod
    def input_topics(cls, settings: Settings) -> list[str]:
        """What its consumer group reads: its input topic (deid: every hospital's upload topic besides). A stage
        with several must not keep state by partition: the hooks get the partition numbers of all of them."""
        return [cls.input_topic]

    @classmethod
    def writes(cls) -> tuple[str, ...]:
        """The topics this stage may write: its outputs and its input's dead-letter topic."""
        return cls.flow().writes()

    def handle(self, message: Any, at: Position) -> list[Output]:
        raise NotImplementedError

    def image(self, frame: pb.Frame) -> np.ndarray:
        """The frame's BGR pixels, from the frame store or the record itself (ValueError: the frame fails)."""
        if self.frames is None:  # handled outside a runner (a test): the store the settings name
            settings = Settings()
            self.frames = FrameStore(settings.blob_dir, settings.frame_retention_s)
        return self.frames.image(frame)

    def validate(self, message: Any) -> str | None:
        """Why a decoded message cannot be processed, or None. Frame messages need their identity."""
        key = frame_key_of(message)
        if key is not None and not (key.study_id and key.video_id):
            return "frame without study_id/video_id"
        return None

    def failed(self, message: Any, reason: str) -> list[Output]:
        """Terminal records for a message that could not be processed: a frame still gets accounted."""
        key = frame_key_of(message)
        if key is None:
            return []
        return [frame_result(key, pb.FRAME_STATUS_FAILED, self.name, reason)]

    def tick(self, now: float) -> list[Output]:
        return []

    def seal(self, original: bytes) -> bytes:
        """The original record as its dead letter keeps it (an identifiable stage returns it sealed)."""
        return original

    def redact(self, letter: pb.DeadLetter, message: Any) -> None:
        """Take identifying values out of a dead letter's plain fields (an identifiable stage's: ids -> pseudonyms)."""

    def committable(self, partition: int, next_offset: int) -> int:
        """The offset to commit for a partition whose records up to next_offset are handled."""
        return next_offset

    async def partitions_assigned(self, partitions: set[int], written: list[str]) -> None:
        """Called when this replica starts reading these partitions (at start and at every rebalance), before any
        of their records is handled; `written`: the keys read back from `written_topic` (oldest first)."""

    async def partitions_revoked(self, partitions: set[int]) -> None:
        """Called before these partitions go to another replica, after the last commit of their records."""

    async def start(self, settings: Settings) -> None:
        """Connect to what the stage needs besides Kafka."""

    async def stop(self) -> None:
        pass

    async def ready(self) -> bool:
        return True

    def waiting(self) -> bool:
        """Whether the stage is blocked on a dependency coming back (the model server): not stuck."""
        return False


READY_TIMEOUT_S = 2.0  # /readyz: how long the broker has to answer a metadata request


class StageRunner:
    def __init__(self, service: StageService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.blobs = BlobStore(settings.blob_dir)
        service.frames = FrameStore(settings.blob_dir, settings.frame_retention_s)
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix=service.name)
        self.producer: AIOKafkaProducer | None = None
        self.consumer: AIOKafkaConsumer | None = None
        self.stopping = asyncio.Event()
        self.http_port = 0
        self._positions: dict[TopicPartition, int] = {}
        self._is_async = inspect.iscoroutinefunction(service.handle)
        self.transactional = False  # set at start: the stage asks for it and the broker has it
        self._alive = time.monotonic()  # when the consume loop last came round or a record last finished
        # Records are handled only while no partition hook runs: aiokafka may fetch for new partitions before
        # on_partitions_assigned has finished, and a stateful stage must rebuild its state first.
        self._hooks = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> None:
        s, svc = self.settings, self.service
        if svc.identifiable:
            require_home_region(s.region, s.home_region, f"stage {svc.name}")
        metrics.set_build_info(svc.name)
        metrics.declare_stage(svc.name, svc.input_topic)
        http_runner, self.http_port = await start_http(s.http_host, s.http_port, self.ready, alive=self.alive)
        # A transactional id of its own per process: a restarted replica is a new producer, and its
        # deduplication by key covers what a replica that died mid-transaction left (aborted, never read).
        self.transactional = svc.flow().transactional and s.transactions
        txn = f"{transactional_prefix(svc.name)}{socket.gethostname()}-{os.getpid()}" if self.transactional else None
        self.producer = kafka.producer(s, svc.name, linger_ms=2, transactional_id=txn)
        self.consumer = kafka.consumer(s, svc.name, svc.name)
        await svc.start(s)
        await self.producer.start()
        self.consumer.subscribe(svc.input_topics(s), listener=_PartitionListener(svc, s, self._hooks, self.stopping))
        await self.consumer.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        log.info("stage %s consuming %s as group %s", svc.name, ", ".join(svc.input_topics(s)), svc.name)
        try:
            await self._loop()
        finally:
            await self.consumer.stop()
            await self.producer.stop()
            await svc.stop()
            await http_runner.cleanup()
            self.pool.shutdown(wait=False, cancel_futures=True)
            log.info("stage %s stopped", svc.name)

    async def ready(self) -> bool:
        """Started, the broker answering (a metadata request), and whatever the stage itself needs (its model)."""
        if self.consumer is None or self.producer is None or self.stopping.is_set():
            return False
        try:
            await asyncio.wait_for(self.consumer.topics(), timeout=READY_TIMEOUT_S)
        except (TimeoutError, KafkaError, OSError):
            return False
        return await self.service.ready()

    def alive(self) -> bool:
        """False once the consume loop has not come round (nor a record finished) for settings.stuck_after_s."""
        return self.service.waiting() or time.monotonic() - self._alive < self.settings.stuck_after_s

    async def _loop(self) -> None:
        assert self.consumer is not None
        next_tick = next_lag = time.monotonic()
        while not self.stopping.is_set():
            self._alive = time.monotonic()
            batches = await self.consumer.getmany(
                timeout_ms=200, max_records=self.service.batch_records or self.settings.fetch_max_records
            )
            for tp, records in batches.items():
                await self._process_batch(tp, records)
            now = time.monotonic()
            if self.service.tick_seconds and now >= next_tick:
                next_tick = now + self.service.tick_seconds
                async with self._hooks:  # no partition moves while the tick's outputs are made and written
                    outputs = self.service.tick(time.time())
                    if outputs and self.transactional:
                        async with self.producer.transaction():  # type: ignore[union-attr]
                            await self._produce(outputs)
                    else:
                        await self._produce(outputs)
            if now >= next_lag:
                next_lag = now + 2.0
                self._record_lag()

    # -- one batch of one partition ------------------------------------------------------------
    async def _process_batch(self, tp: TopicPartition, records: list[ConsumerRecord]) -> None:
        """Handle, write and commit one batch with no partition moving meanwhile: a revoke waits for the commit,
        so a stateful stage never drops state its commit still needs, nor commits past state it dropped."""
        assert self.consumer is not None
        async with self._hooks:
            if tp not in self.consumer.assignment():  # revoked between the fetch and now: its new owner reads it
                return
            if self._is_async:
                if self.service.concurrent:
                    results = await asyncio.gather(*(self._process(r) for r in records))
                else:
                    results = [await self._process(r) for r in records]
            else:
                # A plain stage's records go to the worker pool a chunk at a time (one chunk per worker, or one in
                # all for a stage that takes its records one after another): one hand-over between the loop and a
                # worker per chunk, not per record, which cost inspect a fifth of its CPU in waking the loop.
                workers = self.settings.workers if self.service.concurrent else 1
                size = -(-len(records) // max(1, workers))
                loop = asyncio.get_running_loop()
                chunks = [records[i : i + size] for i in range(0, len(records), size)]
                done = await asyncio.gather(*(loop.run_in_executor(self.pool, self._process_chunk, c) for c in chunks))
                results = [outputs for chunk in done for outputs in chunk]
            outputs = [out for outputs in results for out in outputs]
            offsets = {tp: self.service.committable(tp.partition, records[-1].offset + 1)}
            try:
                if self.transactional:
                    assert self.producer is not None
                    # The outputs and the offsets together, or neither: a crash between them leaves nothing
                    # half done for the partition's next owner.
                    async with self.producer.transaction():
                        await self._produce(outputs)
                        await self.producer.send_offsets_to_transaction(offsets, self.service.name)
                else:
                    await self._produce(outputs)
                    await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The group moved on without us (a session timed out): the partition's new owner reads these
                # records again, and the stages downstream drop what they already have.
                log.warning("%s could not commit %s: %s", self.service.name, tp, exc)
                return
            self._positions[tp] = records[-1].offset + 1

    async def _produce(self, outputs: list[Encoded] | list[Output]) -> None:
        assert self.producer is not None
        pending = []
        allowed = self.service.writes()
        for out in outputs:
            topic, key, value, schema = out if isinstance(out, tuple) else self._encode(out)
            if topic not in allowed:
                # A programming error, not bad input: the broker's ACLs would refuse it too.
                raise RuntimeError(f"{self.service.name} writes {topic}, which is not among its outputs {allowed}")
            headers = [(SCHEMA_HEADER, schema.encode())]
            pending.append(await self.producer.send(topic, value, key=key.encode(), headers=headers))
            metrics.OUTPUTS.labels(self.service.name, topic).inc()
            metrics.OUTPUT_BYTES.labels(self.service.name, topic).inc(len(value) + len(key))
            if topic.endswith(DLQ_SUFFIX):  # a whole record, or a part of one (a video of an upload)
                metrics.DEAD_LETTERS.labels(self.service.name, topic.removesuffix(DLQ_SUFFIX)).inc()
        if pending:
            await asyncio.gather(*pending)

    def _encode(self, out: Output) -> Encoded:
        """The record's bytes. A dead letter too large for a message keeps its original in the blob store (and,
        were it still too large, a shortened reason): a letter that cannot be written would stop the stage."""
        message, limit = out.message, self.settings.max_message_bytes
        if isinstance(message, pb.DeadLetter) and message.ByteSize() > limit:
            message = pb.DeadLetter.FromString(message.SerializeToString())
            if message.WhichOneof("original") == "original_bytes":
                message.original_blob_uri = self.blobs.put(message.original_bytes)
            if message.ByteSize() > limit:
                message.reason = message.reason[:MAX_REASON] + " [reason cut: too long for a dead letter]"
        return out.topic, out.key, message.SerializeToString(), schema_of(message)

    def _process_chunk(self, records: list[ConsumerRecord]) -> list[list[Encoded]]:
        """A plain stage's records, one after another, in a worker: each decoded, handled and encoded."""
        return [self._process_sync(record) for record in records]

    def _process_sync(self, record: ConsumerRecord) -> list[Encoded]:
        message: Message | None = None
        try:
            message, at = self._decode(record)
            started = time.perf_counter()  # the histogram shows the stage's work, not the decoding
            try:
                outputs = self.service.handle(message, at)
            finally:
                metrics.STAGE_SECONDS.labels(self.service.name).observe(time.perf_counter() - started)
            return self._encoded(outputs)
        except Exception as exc:  # the line never stops for one bad record
            return self._failure(record, message, exc)
        finally:
            self._alive = time.monotonic()

    async def _process(self, record: ConsumerRecord) -> list[Encoded]:
        """Decode, handle, encode one record; every problem becomes a dead letter, never an exception."""
        if not self._is_async:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self._process_sync, record)
        started = time.perf_counter()
        message: Message | None = None
        try:
            message, at = self._decode(record)
            outputs = await self.service.handle(message, at)  # type: ignore[misc]  # typed as the plain one
            return self._encoded(outputs)
        except Exception as exc:  # the line never stops for one bad record
            return self._failure(record, message, exc)
        finally:
            self._alive = time.monotonic()
            metrics.STAGE_SECONDS.labels(self.service.name).observe(time.perf_counter() - started)

    def _decode(self, record: ConsumerRecord) -> tuple[Message, Position]:
        """The record's message and where it was read; _Rejected says why it cannot be processed."""
        svc, limit = self.service, self.settings.max_message_bytes
        value: bytes = record.value or b""
        if len(value) > limit:
            raise _Rejected(f"payload of {len(value)} bytes is over the {limit}-byte message limit")
        problem = schema_problem(svc.input_type, header(record.headers, SCHEMA_HEADER))
        if problem:
            raise _Rejected(problem)
        try:
            message = svc.input_type.FromString(value)
        except DecodeError as exc:
            raise _Rejected(f"undecodable {svc.input_type.DESCRIPTOR.full_name}: {exc}") from None
        problem = svc.validate(message)
        if problem:
            raise _Rejected(f"invalid {svc.input_type.DESCRIPTOR.full_name}: {problem}")
        at = Position(
            record.partition,
            record.offset,
            record.timestamp / 1000,
            record.key or b"",
            tuple(record.headers or ()),
            record.topic,
        )
        return message, at

    def _encoded(self, outputs: list[Output]) -> list[Encoded]:
        encoded = [self._encode(out) for out in outputs]
        limit = self.settings.max_message_bytes
        for topic, _, data, _ in encoded:
            if len(data) > limit and not topic.endswith(DLQ_SUFFIX):
                raise _Rejected(f"output for {topic} of {len(data)} bytes is over the {limit}-byte limit")
        metrics.MESSAGES.labels(self.service.name, "ok").inc()
        return encoded

    def _failure(self, record: ConsumerRecord, message: Message | None, exc: Exception) -> list[Encoded]:
        """The dead letter (and the terminal records) of a record that could not be processed, logged once."""
        svc = self.service
        reason = str(exc) if isinstance(exc, _Rejected) else f"{type(exc).__name__}: {exc}"
        error_type = "rejected" if isinstance(exc, _Rejected) else type(exc).__name__
        if svc.identifiable and not isinstance(exc, (_Rejected, SecretError)):
            # An exception's text may quote a value of the record: only its type leaves the stage.
            reason = f"{type(exc).__name__} (details withheld: identifiable input)"
            log.error("%s failed on %s[%d]@%d: %s", svc.name, record.topic, record.partition, record.offset, reason)
        elif not isinstance(exc, _Rejected):
            log.exception("%s failed on %s[%d]@%d", svc.name, record.topic, record.partition, record.offset)
        else:
            log.warning(
                "%s dead-letters %s[%d]@%d: %s", svc.name, record.topic, record.partition, record.offset, reason
            )
        metrics.MESSAGES.labels(svc.name, "dead_letter").inc()
        return [self._encode(out) for out in self._dead_letter(record, message, reason, error_type)]

    def _dead_letter(
        self, record: ConsumerRecord, message: Message | None, reason: str, error_type: str
    ) -> list[Output]:
        value: bytes = self.service.seal(record.value or b"")
        key = frame_key_of(message) if message is not None else None
        study_id = key.study_id if key else getattr(message, "study_id", "")
        original: dict[str, Any] = {"original": value}
        if len(value) > self.settings.max_message_bytes // 2:
            original = {"original_blob_uri": self.blobs.put(value)}
        outputs = [
            dead_letter_output(
                record.topic,
                self.service.name,
                reason,
                error_type=error_type,
                key=record.key or b"",
                partition=record.partition,
                offset=record.offset,
                study_id=study_id,
                video_id=key.video_id if key else "",
                frame_index=key.frame_index if key else -1,
                **original,
            )
        ]
        letter = outputs[0].message
        assert isinstance(letter, pb.DeadLetter)
        try:
            self.service.redact(letter, message)
        except Exception:  # a letter is written whatever happens: one that cannot be redacted keeps no plain id
            log.exception("%s could not redact a dead letter; its ids are dropped", self.service.name)
            letter.key, letter.study_id, letter.video_id = b"", "", ""
        outputs[0] = Output(outputs[0].topic, letter.key.decode(errors="replace"), letter)
        if message is not None:
            try:
                outputs += self.service.failed(message, reason)
            except Exception:  # the letter still goes: the study's answer then comes from its deadline
                log.exception("%s could not make the terminal records of a failed record", self.service.name)
        return outputs

    def _record_lag(self) -> None:
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        # A partition that moved to another replica is reported there: drop its series here, or the
        # summed lag of the stage would count it twice, frozen at its last value.
        for tp in [tp for tp in self._positions if tp not in assigned]:
            del self._positions[tp]
            metrics.CONSUMER_LAG.remove(self.service.name, tp.topic, str(tp.partition))
        for tp in assigned:
            highwater = self.consumer.highwater(tp)
            position = self._positions.get(tp)
            if highwater is not None and position is not None:
                metrics.CONSUMER_LAG.labels(self.service.name, tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )


class _PartitionListener(ConsumerRebalanceListener):
    """Tells the stage which partitions of its input it now reads (aiokafka awaits these during a rebalance)."""

    def __init__(self, service: StageService, settings: Settings, hooks: asyncio.Lock, stopping: asyncio.Event) -> None:
        self.service, self.settings, self.hooks, self.stopping = service, settings, hooks, stopping

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            log.info("%s gives up partitions %s", self.service.name, sorted(tp.partition for tp in revoked))
            async with self.hooks:
                await self.service.partitions_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            async with self.hooks:
                svc, written = self.service, []
                if svc.written_topic:
                    written = await self._written()
                log.info("%s reads partitions %s", svc.name, sorted(tp.partition for tp in assigned))
                await svc.partitions_assigned({tp.partition for tp in assigned}, written)

    async def _written(self) -> list[str]:
        """The keys the stage wrote in its window, read back. Each try has a time limit; a failed try is tried again
        (the new partitions wait, holding no records) rather than going on without them, which would write some
        keys a second time."""
        svc, backoff = self.service, 1.0
        while True:
            started = time.monotonic()
            since = time.time() - svc.written_window_s
            try:
                written = await asyncio.wait_for(
                    kafka.read_keys(self.settings, svc.written_topic, since, f"{svc.name}-recovery"),
                    timeout=self.settings.recovery_read_timeout_s,
                )
            except (TimeoutError, KafkaError, OSError) as exc:
                metrics.RECOVERY_FAILURES.labels(svc.name).inc()
                log.warning("%s could not read %s back (%s): trying again", svc.name, svc.written_topic, exc)
                if self.stopping.is_set():
                    raise
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            took = time.monotonic() - started
            log.info("%s read %d keys written to %s back in %.2f s", svc.name, len(written), svc.written_topic, took)
            return written


def schema_problem(expected: type[Message], declared: str | None) -> str | None:
    """Why a record's schema header rules it out for a stage reading `expected`, or None. A type with a `schema`
    field of its own (what hospitals publish, with their own clients) may come without the header."""
    name = expected.DESCRIPTOR.full_name
    if declared is None:
        if "schema" in expected.DESCRIPTOR.fields_by_name:
            return None
        return f"no {SCHEMA_HEADER} header: a record the line did not write (a {name} is read here)"
    if declared != name:
        return f"a {declared} record where a {name} is read ({SCHEMA_HEADER} header)"
    return None


class _Rejected(Exception):
    """A record that is not processable as it stands (size, encoding, content)."""


def run_stage(service: StageService, settings: Settings) -> None:
    asyncio.run(StageRunner(service, settings).run())
