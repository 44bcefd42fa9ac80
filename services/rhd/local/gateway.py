"""`rhd gateway`: the home region's DICOM door. A C-STORE Storage SCP (pynetdicom) for the ultrasound storage
classes and the transfer syntaxes echo machines send; it answers C-ECHO, accepts only the calling AE titles it is
told (each a hospital), offers TLS, and confirms a C-STORE only once the instance is sealed and durably spooled.
Instances are grouped into studies by Study Instance UID; a study idle for `idle_s` is published (sealed, as
docs/hospitals.md says) and its spool removed. A restart publishes what a crash left spooled."""

import asyncio
import hashlib
import logging
import os
import signal
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, Verification

from rhd.local.publish import dicom_upload, raw_keyring
from rhd.runtime import kafka
from rhd.runtime.blobs import BlobStore
from rhd.runtime.secrets import Keyring, require_home_region, sealed_upload
from rhd.runtime.settings import Settings
from rhd.runtime.topics import upload_topic_for

log = logging.getLogger(__name__)

# What echo machines and PACS send: uncompressed, JPEG baseline (by far the most), lossless JPEG, RLE, JPEG 2000.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    RLELossless,
    JPEG2000Lossless,
]
STORAGE_CLASSES = (UltrasoundMultiFrameImageStorage, UltrasoundImageStorage)
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
SPOOLED = ".sealed"
SENDER_FILE = "sender"


@dataclass(frozen=True)
class GatewayConfig:
    port: int
    ae_title: str = "RHD-GATEWAY"
    senders: dict[str, str] = field(default_factory=dict)  # calling AE title -> hospital id
    idle_s: float = 30.0
    spool: Path = Path("var/gateway")
    host: str = "127.0.0.1"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # when set, senders must present a certificate it signed


def _name(text: str) -> str:
    """A spool entry's name: the hash of a UID (UIDs are identifying; file names are seen by anyone listing)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _durable_write(path: Path, data: bytes) -> None:
    """Written, flushed to the disk, renamed into place, and the directory entry flushed too."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Sealed instances on disk, one folder per study, until the study is published."""

    def __init__(self, root: Path, raw: Keyring) -> None:
        self.root, self.raw = Path(root), raw
        self.root.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()

    def put(self, study_uid: str, sop_uid: str, sender: str, part10: bytes) -> Path:
        folder = self.root / _name(study_uid)
        with self.lock:
            folder.mkdir(exist_ok=True)
            if not (folder / SENDER_FILE).exists():
                _durable_write(folder / SENDER_FILE, self.raw.seal(f"{sender}\n{study_uid}".encode()))
        path = folder / (_name(sop_uid) + SPOOLED)
        _durable_write(path, self.raw.seal(part10))
        return path

    def idle(self, idle_s: float, at: float) -> list[Path]:
        """Study folders whose newest instance is older than idle_s."""
        ready = []
        with self.lock:
            for folder in sorted(p for p in self.root.iterdir() if p.is_dir()):
                newest = max((p.stat().st_mtime for p in folder.iterdir()), default=0.0)
                if at - newest >= idle_s:
                    ready.append(folder)
        return ready

    def study(self, folder: Path) -> tuple[str, str, list[bytes]]:
        """(sender, study UID, the instances' Part 10 bytes in arrival order)."""
        sender, _, study_uid = self.raw.open((folder / SENDER_FILE).read_bytes()).decode().partition("\n")
        files = sorted(folder.glob("*" + SPOOLED), key=lambda p: p.stat().st_mtime)
        return sender, study_uid, [self.raw.open(p.read_bytes()) for p in files]


class Gateway:
    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        require_home_region(settings.region, settings.home_region, "rhd gateway")
        self.settings, self.config = settings, config
        self.raw = raw_keyring(settings)
        self.spool = Spool(config.spool, self.raw)
        self.blobs = BlobStore(settings.blob_dir)
        self.received = self.refused = self.published = 0
        self.server = None

    # -- DICOM side (pynetdicom's threads) ---------------------------------------------------------------------
    def _on_store(self, event) -> int:
        sender = event.assoc.requestor.ae_title
        try:
            ds = event.dataset
            study_uid, sop_uid = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
        except Exception:
            self.refused += 1
            return CANNOT_UNDERSTAND
        if not study_uid or not sop_uid:
            self.refused += 1
            return CANNOT_UNDERSTAND
        try:
            self.spool.put(study_uid, sop_uid, sender, event.encoded_dataset(include_meta=True))
        except OSError as exc:
            log.error("gateway cannot spool an instance: %s", type(exc).__name__)
            return OUT_OF_RESOURCES
        self.received += 1
        return SUCCESS  # only now, with the instance on disk

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.config.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.config.tls_cert), str(self.config.tls_key))
        if self.config.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(self.config.tls_client_ca))
        return context

    def start(self) -> None:
        ae = AE(ae_title=self.config.ae_title)
        for sop_class in STORAGE_CLASSES:
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        # Only the hospitals' machines: an association from any other calling AE title is rejected.
        ae.require_calling_aet = list(self.config.senders)
        self.server = ae.start_server(
            (self.config.host, self.config.port),
            block=False,
            ssl_context=self._ssl_context(),
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        log.info(
            "gateway %s on %s:%d (%s), senders %s",
            self.config.ae_title,
            self.config.host,
            self.config.port,
            "TLS" if self.config.tls_cert else "plain TCP",
            ", ".join(sorted(self.config.senders)),
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    # -- Kafka side ------------------------------------------------------------------------------------------
    async def publish_idle(self, producer, at: float) -> int:
        published = 0
        for folder in self.spool.idle(self.config.idle_s, at):
            sender, study_uid, instances = self.spool.study(folder)
            hospital = self.config.senders.get(sender, sender)
            named = [(f"IM{i + 1:04d}.dcm", data) for i, data in enumerate(instances)]
            upload = dicom_upload(
                study_uid, hospital, named, self.blobs, self.settings.max_message_bytes, self.raw.seal
            )
            key, value, headers = sealed_upload(upload, self.raw)
            topic = upload_topic_for(self.settings.hospitals, hospital)
            await producer.send_and_wait(topic, value, key=key, headers=headers)
            for path in folder.iterdir():
                path.unlink()
            folder.rmdir()
            published += 1
            log.info("gateway published a study of %d instances from %s as upload %s", len(instances), hospital, key)
        self.published += published
        return published


async def run_gateway(settings: Settings, config: GatewayConfig) -> None:
    gateway = Gateway(settings, config)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    producer = kafka.producer(settings, "gateway")
    await producer.start()
    gateway.start()
    try:
        while not stopping.is_set():
            await gateway.publish_idle(producer, time.time())
            try:
                await asyncio.wait_for(stopping.wait(), timeout=1.0)
            except TimeoutError:
                pass
    finally:
        gateway.stop()
        await producer.stop()
        log.info("gateway stopped: %d instances received, %d studies published", gateway.received, gateway.published)
