"""The production broker's security, on a real Apache Kafka 4.1 (KRaft) the project starts with SASL_SSL
(SCRAM-SHA-512), TLS certificates it made at set-up, and ACLs generated from the stages' topic list: who is refused
what. (The whole line on the same secured broker: tests/integration/test_line.py on Kafka.)"""

import asyncio
import ssl
import stat
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)
from confluent_kafka import Consumer as LibrdkafkaConsumer
from confluent_kafka import KafkaError as LibrdkafkaError
from confluent_kafka import Producer as LibrdkafkaProducer
from conftest import require_broker
from rhd.deid.ops import link_bytes
from rhd.local.broker import broker_for
from rhd.local.relink import DELIVERED, access_trail, serve_results
from rhd.local.security import (
    ADMIN,
    acls,
    hospital_principal,
    librdkafka_config,
    results_principal,
    stage_principal,
)
from rhd.runtime import kafka
from rhd.runtime.secrets import LINK_KEYRING, SEALED_SCHEMA, init_secrets, load_keyring
from rhd.runtime.settings import Settings
from rhd.runtime.topics import (
    FRAMES_DECODED,
    FRAMES_DONE,
    FRAMES_SEGMENTED,
    RESULTS_GROUP,
    STAGES,
    STUDIES_DIAGNOSED,
    STUDIES_LINKS,
    STUDIES_UPLOADED,
    dlq,
    results_topic,
    upload_topic,
)
from rhd.v1 import rhd_pb2 as pb

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def can_write(settings: Settings, topic: str) -> bool:
    # aiokafka waits for a refused topic's metadata until the request times out: 5 s, not the default 40.
    producer = AIOKafkaProducer(**kafka.connection(settings), request_timeout_ms=5000)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"probe", key=b"probe")
        return True
    except TopicAuthorizationFailedError:
        return False
    finally:
        await producer.stop()


async def can_read(settings: Settings, topic: str, group: str | None) -> bool:
    """Read the record the administrator left at the start of the topic's partition 0: in `group` (committing, as a
    stage does), or assigned without one. A refused read raises, or (aiokafka logs a fetch it is refused) gets
    nothing."""
    # As a stage's consumer, but a refused request gives up after 5 s (aiokafka retries it to the request timeout).
    consumer = AIOKafkaConsumer(
        **kafka.connection(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=5000,
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        if group is None:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
        else:
            consumer.subscribe([topic])
        for _ in range(4):
            if await consumer.getmany(timeout_ms=1000):
                if group is not None:
                    await consumer.commit()
                return True
        return False
    except (TopicAuthorizationFailedError, GroupAuthorizationFailedError):
        return False
    finally:
        await consumer.stop()


async def leave_a_record(settings: Settings, topics: list[str]) -> None:
    producer = kafka.producer(settings, "security-test")
    await producer.start()
    try:
        for topic in topics:
            await producer.send_and_wait(topic, b"left here", key=b"probe", partition=0)
    finally:
        await producer.stop()


async def refused_at_the_door(settings: Settings) -> bool:
    producer = kafka.producer(settings, "security-test")
    try:
        await asyncio.wait_for(producer.start(), 10)  # a client let in is connected within a second or two
    except (KafkaConnectionError, KafkaError, ssl.SSLError, OSError, TimeoutError):
        return True
    else:
        return False
    finally:
        await producer.stop()


def test_each_principal_may_do_its_job_and_nothing_else(tmp_path):
    require_broker("kafka")
    settings = Settings(broker="kafka", broker_secure=True, hospitals=["H1", "H2"])
    broker = broker_for(settings, tmp_path, log_file=tmp_path / "broker.log")
    security = broker.security  # type: ignore[attr-defined]
    assert security is not None

    async def run() -> dict[str, bool]:
        await broker.start(2)
        plain = Settings(bootstrap_servers=broker.bootstrap_servers)
        as_ = lambda who: security.client(plain, who)  # noqa: E731
        segment, hospital = as_(stage_principal("segment")), as_(hospital_principal("H1"))
        wrong_password = segment.model_copy(update={"sasl_password_file": None, "sasl_password": "not-the-one"})
        await leave_a_record(as_(ADMIN), ["frames.doppler.v1", STUDIES_UPLOADED, STUDIES_DIAGNOSED])
        return {
            # No credentials (plaintext to the TLS listener), or the wrong password: not let in at all.
            "anonymous refused": await refused_at_the_door(plain),
            "wrong password refused": await refused_at_the_door(wrong_password),
            # A stage writes its output and its input's dead letters, nothing else.
            "segment writes its output": await can_write(segment, FRAMES_SEGMENTED),
            "segment writes its dead letters": await can_write(segment, dlq("frames.doppler.v1")),
            "segment writes frame results": await can_write(segment, FRAMES_DONE),
            "segment writes diagnoses": await can_write(segment, STUDIES_DIAGNOSED),
            "segment writes uploads": await can_write(segment, STUDIES_UPLOADED),
            # ... and reads its input in its own group only.
            "segment reads its input": await can_read(segment, "frames.doppler.v1", "segment"),
            "segment reads in another's group": await can_read(segment, "frames.doppler.v1", "features"),
            "segment reads raw uploads": await can_read(segment, STUDIES_UPLOADED, None),
            # A hospital writes its own upload topic (the topic names the sender); it reads no result on the broker
            # (nor anyone's uploads).
            "hospital writes its upload topic": await can_write(hospital, upload_topic("H1")),
            "hospital writes another's upload topic": await can_write(hospital, upload_topic("H2")),
            "hospital writes the shared upload topic": await can_write(hospital, STUDIES_UPLOADED),
            "hospital writes frames": await can_write(hospital, FRAMES_DECODED),
            "hospital reads diagnoses": await can_read(hospital, STUDIES_DIAGNOSED, None),
            "hospital reads uploads": await can_read(hospital, STUDIES_UPLOADED, None),
            "admin reads diagnoses": await can_read(as_(ADMIN), STUDIES_DIAGNOSED, None),
        }

    try:
        outcome = asyncio.run(run())
        # A hospital's own Kafka client (librdkafka, as kcat and confluent-kafka are) publishes over SASL_SSL too.
        hospital = security.client(Settings(bootstrap_servers=broker.bootstrap_servers), hospital_principal("H2"))
        producer = LibrdkafkaProducer(librdkafka_config(hospital))
        delivered: list[object] = []
        producer.produce(upload_topic("H2"), b"upload", key=b"u1", on_delivery=lambda err, msg: delivered.append(err))
        assert producer.flush(30) == 0
        assert delivered == [None]
    finally:
        broker.stop()
    assert outcome == {
        "anonymous refused": True,
        "wrong password refused": True,
        "segment writes its output": True,
        "segment writes its dead letters": True,
        "segment writes frame results": True,
        "segment writes diagnoses": False,
        "segment writes uploads": False,
        "segment reads its input": True,
        "segment reads in another's group": False,
        "segment reads raw uploads": False,
        "hospital writes its upload topic": True,
        "hospital writes another's upload topic": False,
        "hospital writes the shared upload topic": False,
        "hospital writes frames": False,
        "hospital reads diagnoses": False,
        "hospital reads uploads": False,
        "admin reads diagnoses": True,
    }
    # Made at set-up, never in the repository: keys and passwords readable by their owner only.
    for secret in [security.root / "tls" / "ca.key", security.server_pem("broker"), *security.root.glob("users/*")]:
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    assert "password=" in (tmp_path / "kafka" / "server.properties").read_text()
    assert stat.S_IMODE((tmp_path / "kafka" / "server.properties").stat().st_mode) == 0o600


def test_the_acls_come_from_the_stage_list_and_the_hospital_list():
    grants = acls(["H1"])
    writes = {(g.principal, g.name) for g in grants if g.operation == "write"}
    assert (stage_principal("diagnose"), STUDIES_DIAGNOSED) in writes
    assert (stage_principal("diagnose"), dlq("studies.features.v1")) in writes
    assert not any(p == stage_principal("diagnose") and t == FRAMES_DONE for p, t in writes)
    assert {t for p, t in writes if p == hospital_principal("H1")} == {upload_topic("H1")}
    reads = {(g.principal, g.name) for g in grants if g.operation == "read"}
    assert {(stage_principal("deid"), t) for t in (STUDIES_UPLOADED, upload_topic("H1"))} <= reads
    groups = {(g.principal, g.name) for g in grants if g.resource == "group"}
    # Each stage its own group; the results service its own; a hospital a group named after itself.
    own = {(stage_principal(s), s) for s in STAGES} | {(results_principal(), RESULTS_GROUP)}
    assert groups == own | {(hospital_principal("H1"), hospital_principal("H1"))}


def read_as_hospital(settings: Settings, hospital: str, topic: str, want: int, timeout_s: float = 60) -> tuple:
    """What the hospital's own librdkafka client (confluent-kafka) reads of `topic` in its own group: (values, the
    error codes it was given)."""
    config = {**librdkafka_config(settings), "group.id": hospital_principal(hospital), "auto.offset.reset": "earliest"}
    consumer = LibrdkafkaConsumer(config)
    values, errors = [], []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(values) < want and not errors:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() != LibrdkafkaError._PARTITION_EOF:
                    errors.append(message.error().code())
                continue
            values.append((message.key(), message.value()))
    finally:
        consumer.close()
    return values, errors


def test_each_hospital_reads_its_own_results_with_its_own_kafka_client_and_no_one_elses(tmp_path):
    """`rhd results --serve` delivers each diagnosis, re-linked, to its hospital's own results topic; the hospital
    reads it with librdkafka as its own principal; another hospital's topic, and the diagnoses, are refused."""
    require_broker("kafka")
    init_secrets(tmp_path / "secrets")
    links = load_keyring(tmp_path / "secrets" / LINK_KEYRING)
    settings = Settings(broker="kafka", broker_secure=True, hospitals=["H1", "H2"], secrets_dir=tmp_path / "secrets")
    broker = broker_for(settings, tmp_path, log_file=tmp_path / "broker.log")
    security = broker.security  # type: ignore[attr-defined]
    studies = {"P1": ("H1", "ECHO-1", "ACC-1"), "P2": ("H2", "ECHO-2", "ACC-2"), "P3": ("H3", "ECHO-3", "")}

    async def run() -> tuple[int, list]:
        await broker.start(2)
        admin = broker.admin_settings().model_copy(update={"secrets_dir": tmp_path / "secrets"})
        producer = kafka.producer(admin, "results-test")
        await producer.start()
        for pseudo, (hospital, study, accession) in studies.items():
            link = {"pseudonym": pseudo, "hospital_id": hospital, "study_id": study, "accession_number": accession}
            sealed = pb.SealedRecord(
                schema=SEALED_SCHEMA, kind="link", key_id=links.current, envelope=links.seal(link_bytes(link))
            )
            await producer.send_and_wait(STUDIES_LINKS, sealed.SerializeToString(), key=pseudo.encode())
        for pseudo in [*studies, "P-not-ours"]:
            diagnosis = pb.Diagnosis(study_id=pseudo, label=pb.LABEL_BORDERLINE, probabilities={"borderline": 0.7})
            await producer.send_and_wait(STUDIES_DIAGNOSED, diagnosis.SerializeToString(), key=pseudo.encode())
        await producer.stop()
        plain = Settings(bootstrap_servers=broker.bootstrap_servers, hospitals=["H1", "H2"])
        service = security.client(plain, results_principal()).model_copy(update={"secrets_dir": tmp_path / "secrets"})
        stop = asyncio.Event()
        task = asyncio.create_task(serve_results(service, stop))
        h1 = security.client(plain, hospital_principal("H1"))
        own = await asyncio.to_thread(read_as_hospital, h1, "H1", results_topic("H1"), 1)
        others = await asyncio.to_thread(read_as_hospital, h1, "H1", results_topic("H2"), 1, 20)
        diagnoses = await asyncio.to_thread(read_as_hospital, h1, "H1", STUDIES_DIAGNOSED, 1, 20)
        stop.set()
        delivered = await task
        return delivered, [own, others, diagnoses, await access_trail(admin)]

    try:
        delivered, (own, others, diagnoses, trail) = asyncio.run(run())
    finally:
        broker.stop()
    assert delivered == 2  # H1's and H2's; H3 is not a hospital of this deployment; P-not-ours has no link
    [(key, value)], errors = own
    result = pb.StudyResult.FromString(value)
    assert errors == [] and key == b"ECHO-1" and result.study_id == "ECHO-1" and result.accession_number == "ACC-1"
    assert result.diagnosis.label == pb.LABEL_BORDERLINE and result.diagnosis.study_id == "", "no pseudonym beside ids"
    assert others == ([], [LibrdkafkaError.TOPIC_AUTHORIZATION_FAILED]), "H1 reads H2's results"
    assert diagnoses == ([], [LibrdkafkaError.TOPIC_AUTHORIZATION_FAILED]), "H1 reads the line's diagnoses"
    delivered_to = {(e.action, e.hospital, e.studies) for e in trail}
    assert delivered_to == {(DELIVERED, "H1", ("P1",)), (DELIVERED, "H2", ("P2",))}
