"""The DICOM gateway end to end with a sender no one here wrote (dcmtk's echoscu and storescu): C-ECHO answered,
unknown calling AE titles refused, each instance sealed on disk before its C-STORE is confirmed, the study
published sealed to studies.uploaded.v1 after its idle time, plain and over TLS."""

import asyncio
import datetime as dt
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from aiokafka import AIOKafkaConsumer
from conftest import missing_tool
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rhd.local.audit import Needles
from rhd.local.broker import EmbeddedBroker, free_port
from rhd.local.stack import ServiceProcess
from rhd.runtime.blobs import BlobStore
from rhd.runtime.secrets import RAW_KEYRING, init_secrets, load_keyring, opened_upload
from rhd.runtime.topics import STUDIES_UPLOADED
from rhd.synth.generator import SynthConfig, load_truth, synth_studies
from rhd.v1 import rhd_pb2 as pb

pytestmark = pytest.mark.integration


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_tool(f"no {name}: `make tools` installs Debian's dcmtk")
    return str(path)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and the gateway's certificate for 127.0.0.1, made here with cryptography (never kept in the repo)."""
    now = dt.datetime.now(dt.UTC)

    def build(subject: str, key, issuer_name, issuer_key, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            import ipaddress

            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rhd test CA")])
    ca = build("rhd test CA", ca_key, ca_name, ca_key, True)
    cert = build("127.0.0.1", key, ca_name, ca_key, False)
    paths = folder / "ca.pem", folder / "gateway.pem", folder / "gateway.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _gateway(tmp: Path, broker: EmbeddedBroker, port: int, name: str, *extra: str) -> ServiceProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RHD_")}
    env.update(
        RHD_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        RHD_SECRETS_DIR=str(tmp / "secrets"),
        RHD_BLOB_DIR=str(tmp / "blobs"),
        PYTHONUNBUFFERED="1",
    )
    args = ["gateway", "--port", str(port), "--allow", "ECHO-UBS-03=H003", "--idle-s", "3"]
    args += ["--spool", str(tmp / f"spool-{name}"), *extra]
    process = ServiceProcess(name, [sys.executable, "-m", "rhd.cli", *args], env, tmp / f"{name}.log")
    process.start()
    return process


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"gateway not listening on {port}")


async def _uploads(bootstrap: str, count: int, raw, timeout_s: float = 60.0) -> list[pb.StudyUpload]:
    consumer = AIOKafkaConsumer(STUDIES_UPLOADED, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    found: list[pb.StudyUpload] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for r in records:
                    found.append(opened_upload(pb.SealedRecord.FromString(r.value), r.key, raw))
    finally:
        await consumer.stop()
    return found


def test_a_study_stored_by_storescu_is_spooled_sealed_and_published_plain_and_over_tls(tmp_path):
    echoscu, storescu = _tool("echoscu"), _tool("storescu")
    [study] = synth_studies(
        41, 1, tmp_path / "studies", SynthConfig(videos_per_study=4, duration_s=(1.0, 1.0)), dicom=True
    )
    files = sorted((study / "dicom").glob("*.dcm"))
    identifiers = load_truth(study)["identifiers"]
    init_secrets(tmp_path / "secrets")
    raw = load_keyring(tmp_path / "secrets" / RAW_KEYRING)
    ca, cert, key = _certificates(tmp_path)
    broker = EmbeddedBroker(log_file=tmp_path / "broker.log")
    asyncio.run(broker.start(2))
    plain_port, tls_port = free_port(), free_port()
    plain = _gateway(tmp_path, broker, plain_port, "plain")
    tls = _gateway(tmp_path, broker, tls_port, "tls", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        _wait_port(plain_port)
        _wait_port(tls_port)
        address = ["127.0.0.1", str(plain_port)]
        assert subprocess.run([echoscu, "-aet", "ECHO-UBS-03", "-aec", "RHD-GATEWAY", *address]).returncode == 0
        refused = subprocess.run([storescu, "-aet", "INTRUDER", "-aec", "RHD-GATEWAY", *address, str(files[0])])
        assert refused.returncode != 0  # an unlisted calling AE title: the association is rejected
        sent = subprocess.run(
            [storescu, "-aet", "ECHO-UBS-03", "-aec", "RHD-GATEWAY", *address, *map(str, files)],
            capture_output=True,
            text=True,
        )
        assert sent.returncode == 0, sent.stderr
        # Confirmed means on disk: every instance is in the spool, sealed, before the study's idle time ends.
        spooled = list((tmp_path / "spool-plain").rglob("*.sealed"))
        assert len(spooled) == len(files)
        assert all(Needles(identifiers).in_bytes(p.read_bytes()) == [] for p in spooled)
        over_tls = subprocess.run(
            [
                storescu,
                "+tla",
                "+cf",
                str(ca),
                "-aet",
                "ECHO-UBS-03",
                "-aec",
                "RHD-GATEWAY",
                "127.0.0.1",
                str(tls_port),
                *map(str, files[:2]),
            ],
            capture_output=True,
            text=True,
        )
        assert over_tls.returncode == 0, over_tls.stderr
        no_tls = subprocess.run(
            [storescu, "-aet", "ECHO-UBS-03", "-aec", "RHD-GATEWAY", "127.0.0.1", str(tls_port), str(files[0])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert no_tls.returncode != 0  # the TLS port speaks TLS only
        uploads = asyncio.run(_uploads(broker.bootstrap_servers, 2, raw))
    finally:
        plain.stop()
        tls.stop()
        broker.stop()
    assert sorted(len(u.videos) for u in uploads) == [2, len(files)]
    blobs = BlobStore(tmp_path / "blobs")
    for upload in uploads:
        assert upload.hospital_id == "H003" and upload.study_id == identifiers["study_uid"]
        for ref in upload.videos:
            data = ref.inline_data if ref.HasField("inline_data") else raw.open(blobs.get(ref.blob_uri))
            assert pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID == identifiers["study_uid"]
    sent_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    [full] = [u for u in uploads if len(u.videos) == len(files)]
    got = set()
    for ref in full.videos:
        data = ref.inline_data if ref.HasField("inline_data") else raw.open(blobs.get(ref.blob_uri))
        got.add(str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID))
    assert got == sent_uids
    assert not list((tmp_path / "spool-plain").rglob("*.sealed"))  # published, then removed
