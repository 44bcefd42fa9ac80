"""Kafka clients configured one way for every service: producers, consumers, and reading a topic back."""

from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context

from rhd.runtime.settings import Settings

# Records larger than a message may still arrive from foreign producers; fetch them so they can be
# dead-lettered rather than stall the partition.
MAX_FETCH_BYTES = 16 * 1024 * 1024


SASL_MECHANISM = "SCRAM-SHA-512"


def sasl_password(settings: Settings) -> str:
    """The service's password: from RHD_SASL_PASSWORD_FILE (a mounted secret), else RHD_SASL_PASSWORD."""
    if settings.sasl_password_file is not None:
        return settings.sasl_password_file.read_text().strip()
    return settings.sasl_password


def connection(settings: Settings) -> dict[str, Any]:
    """How every client of ours reaches the broker: its address and, on SASL_SSL, the service's principal and the
    CA that signed the broker's certificate (the certificate's name checked against the address)."""
    options: dict[str, Any] = {"bootstrap_servers": settings.bootstrap_servers}
    if settings.security_protocol == "SASL_SSL":
        password = sasl_password(settings)
        if not (settings.sasl_username and password):
            raise ValueError("SASL_SSL needs RHD_SASL_USERNAME and RHD_SASL_PASSWORD_FILE (or RHD_SASL_PASSWORD)")
        options.update(
            security_protocol="SASL_SSL",
            sasl_mechanism=SASL_MECHANISM,
            sasl_plain_username=settings.sasl_username,
            sasl_plain_password=password,
            ssl_context=create_ssl_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None),
        )
    return options


def admin(settings: Settings, **extra: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection(settings), **extra)


def producer(
    settings: Settings, client_id: str, linger_ms: int = 0, transactional_id: str | None = None
) -> AIOKafkaProducer:
    """At least once: acks from every in-sync replica; idempotent where the broker supports it (RHD_IDEMPOTENCE:
    Apache Kafka does, Tansu does not), so a retried send is never written twice; messages capped at
    RHD_MAX_MESSAGE_BYTES (the embedded broker enforces no size of its own)."""
    return AIOKafkaProducer(
        **connection(settings),
        client_id=client_id,
        acks="all",
        enable_idempotence=settings.idempotence or transactional_id is not None,
        transactional_id=transactional_id,
        max_request_size=settings.max_message_bytes,
        linger_ms=linger_ms,
    )


def consumer(settings: Settings, group_id: str | None, client_id: str) -> AIOKafkaConsumer:
    """Offsets committed by hand (after the outputs are acknowledged), from the earliest record of a new group;
    where the line writes in transactions, committed records only."""
    return AIOKafkaConsumer(
        isolation_level="read_committed" if settings.transactions else "read_uncommitted",
        **connection(settings),
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_partition_fetch_bytes=MAX_FETCH_BYTES,
        fetch_max_bytes=MAX_FETCH_BYTES,
    )


async def send_all(
    settings: Settings, client_id: str, topic: str, records: Iterable[tuple[bytes, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Write (key, value, headers) records to `topic`, each acknowledged before the next, then close."""
    writer = producer(settings, client_id)
    await writer.start()
    try:
        for key, value, headers in records:
            await writer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await writer.stop()


async def partitions(settings: Settings, topics: Iterable[str]) -> list[TopicPartition]:
    """Every partition of the named topics that exist, in order. (A consumer's own metadata covers only the topics it
    has been told of: Apache Kafka answers a request for no topics with none, so ask for these by name.)"""
    client = admin(settings)
    await client.start()
    try:
        described = await client.describe_topics(list(topics))
    finally:
        await client.close()
    return [
        TopicPartition(t["topic"], p["partition"])
        for t in described
        if t["error_code"] == 0
        for p in sorted(t["partitions"], key=lambda p: p["partition"])
    ]


async def read_keys(settings: Settings, topic: str, since: float, client_id: str) -> list[str]:
    """The keys of the records written to `topic` since `since` (epoch seconds), oldest first per partition."""
    return [(r.key or b"").decode(errors="replace") for r in await read_records(settings, topic, since, client_id)]


async def read_records(settings: Settings, topic: str, since: float, client_id: str) -> list[ConsumerRecord]:
    """The records written to `topic` since `since` (epoch seconds; 0: all it holds), oldest first per partition."""
    tps = await partitions(settings, [topic])
    if not tps:
        return []
    reader = consumer(settings, None, client_id)
    await reader.start()
    try:
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        starts = await reader.offsets_for_times({tp: int(since * 1000) for tp in tps})
        for tp in tps:
            found = starts.get(tp)
            reader.seek(tp, found.offset if found is not None else ends[tp])
        out: list[ConsumerRecord] = []
        # Read to the end offsets, then once more: the embedded broker's end offsets can lag behind.
        while True:
            batch = await reader.getmany(timeout_ms=300)
            for records in batch.values():
                out += records
            if not batch and all([await reader.position(tp) >= ends[tp] for tp in tps]):
                return out
    finally:
        await reader.stop()
