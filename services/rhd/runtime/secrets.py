"""Keys for identifiable data, read from files that live outside the repository (a mounted secret in production,
`<workdir>/secrets` for the embedded stack), and the AES-GCM envelopes sealed with them.

A keyring is a directory of `<key id>.key` files (32 random bytes, hex) and a `current` file naming the key new
envelopes are sealed with; older keys stay to open what they sealed (rotation: add a key, point `current` at it).
The pseudonym key is one file: rotating it changes every pseudonym and ends re-linking, so it is backed up, not
rotated.
"""

import contextlib
import hmac
import os
import secrets
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.message import DecodeError

from rhd.v1 import rhd_pb2 as pb

MAGIC = b"RHDE1"  # an envelope starts with this, the key id's length and the key id, then the nonce
NONCE_BYTES = 12
KEY_ID_HEADER = "rhd-key-id"  # the record header naming the key a payload was sealed with
# The record header naming the sending hospital (an organisation, not a patient): deid refuses an upload whose sealed
# hospital_id says otherwise. Where the broker authenticates (Apache Kafka with SASL), the sender is the principal.
SENDER_HEADER = "rhd-sender"

PSEUDONYM_KEY = "pseudonym.key"
RAW_KEYRING = "raw"  # uploads, their blobs and dead letters
LINK_KEYRING = "link"  # the re-link map: pseudonym -> the hospital's own identifiers


class SecretError(RuntimeError):
    """A key is missing or unreadable, or an envelope does not open with the keys at hand."""


def _read_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise SecretError(f"cannot read key {path.name}: {exc}") from None
    if len(key) != 32:
        raise SecretError(f"key {path.name} is {len(key)} bytes, not 32")
    return key


def _write_key(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")


@dataclass(frozen=True)
class Keyring:
    keys: dict[str, bytes]
    current: str

    def seal(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        """An AES-256-GCM envelope of plaintext under the current key; `aad` is authenticated, not stored."""
        kid = self.current.encode()
        nonce = os.urandom(NONCE_BYTES)
        return MAGIC + bytes([len(kid)]) + kid + nonce + AESGCM(self.keys[self.current]).encrypt(nonce, plaintext, aad)

    def open(self, envelope: bytes, aad: bytes = b"") -> bytes:
        kid = key_id(envelope)
        if kid not in self.keys:
            raise SecretError(f"envelope sealed with key {kid!r}, which this keyring does not hold")
        start = len(MAGIC) + 1 + len(kid)
        nonce, body = envelope[start : start + NONCE_BYTES], envelope[start + NONCE_BYTES :]
        try:
            return AESGCM(self.keys[kid]).decrypt(nonce, body, aad)
        except Exception as exc:  # InvalidTag: altered, or sealed for another record
            raise SecretError(f"envelope does not open with key {kid!r}: {type(exc).__name__}") from None


def is_sealed(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def key_id(envelope: bytes) -> str:
    if not is_sealed(envelope):
        raise SecretError("not an envelope")
    # Cut short or not text where the key id should be: not an envelope (found by the property tests).
    if len(envelope) <= len(MAGIC) or len(envelope) < len(MAGIC) + 1 + envelope[len(MAGIC)] + NONCE_BYTES:
        raise SecretError("not an envelope (cut short)")
    n = envelope[len(MAGIC)]
    try:
        return envelope[len(MAGIC) + 1 : len(MAGIC) + 1 + n].decode()
    except UnicodeDecodeError:
        raise SecretError("not an envelope (its key id is not text)") from None


def load_keyring(directory: Path) -> Keyring:
    directory = Path(directory)
    try:
        current = (directory / "current").read_text().strip()
    except OSError:
        raise SecretError(f"no keyring at {directory} (run `rhd keys init`)") from None
    keys = {p.stem: _read_key(p) for p in sorted(directory.glob("*.key"))}
    if current not in keys:
        raise SecretError(f"keyring {directory.name}: current key {current!r} is missing")
    return Keyring(keys, current)


def load_pseudonym_key(secrets_dir: Path) -> bytes:
    path = Path(secrets_dir) / PSEUDONYM_KEY
    if not path.exists():
        raise SecretError(f"no pseudonym key at {path} (run `rhd keys init`)")
    return _read_key(path)


def rotate(directory: Path, kid: str) -> None:
    """Add a key to a keyring and seal with it from now on; the old keys stay to open old envelopes."""
    _write_key(Path(directory) / f"{kid}.key")
    (Path(directory) / "current").write_text(kid + "\n")


def init_secrets(secrets_dir: Path) -> list[str]:
    """Create whichever keys are missing (never overwriting one); returns what was created."""
    secrets_dir = Path(secrets_dir)
    created = []
    if not (secrets_dir / PSEUDONYM_KEY).exists():
        _write_key(secrets_dir / PSEUDONYM_KEY)
        created.append(PSEUDONYM_KEY)
    for ring in (RAW_KEYRING, LINK_KEYRING):
        if not (secrets_dir / ring / "current").exists():
            rotate(secrets_dir / ring, "k1")
            created.append(f"{ring}/k1.key")
    return created


def keyed_digest(key: bytes, *parts: str) -> bytes:
    """HMAC-SHA256 of the parts (joined unambiguously): the root of every pseudonym, shifted date and new UID."""
    return hmac.new(key, "\x1f".join(parts).encode(), sha256).digest()


SEALED_SCHEMA = "rhd.v1.SealedRecord"
UPLOAD_KIND = "upload"


def sealed_upload(upload: pb.StudyUpload, raw: Keyring) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) of the record that carries an upload on studies.uploaded.v1: the upload sealed whole
    (AES-256-GCM) in a SealedRecord, keyed by the upload's id (the study id is identifying), the key id in a header.
    The envelope is bound to the record key, so a sealed upload cannot be replayed under another."""
    key = upload.upload_id.encode()
    record = pb.SealedRecord(
        schema=SEALED_SCHEMA, kind=UPLOAD_KIND, key_id=raw.current, envelope=raw.seal(upload.SerializeToString(), key)
    )
    return (
        key,
        record.SerializeToString(),
        [(KEY_ID_HEADER, raw.current.encode()), (SENDER_HEADER, upload.hospital_id.encode())],
    )


def opened_upload(record: pb.SealedRecord, record_key: bytes, raw: Keyring) -> pb.StudyUpload:
    """The upload a sealed record carries; SecretError when it is not one, or does not open under its key."""
    if record.schema != SEALED_SCHEMA or record.kind != UPLOAD_KIND:
        raise SecretError("not a sealed upload (a SealedRecord of kind upload is expected)")
    upload, _ = parse_upload(raw.open(record.envelope, record_key))
    if upload.upload_id.encode() != record_key:
        raise SecretError("the sealed upload's id is not its record's key")
    return upload


def parse_upload(data: bytes) -> tuple[pb.StudyUpload, int]:
    """A StudyUpload, and how many of its text values were not UTF-8 and were read as Latin-1 (0 for most). Bytes
    that are no StudyUpload at all still raise DecodeError."""
    try:
        return pb.StudyUpload.FromString(data), 0
    except DecodeError:
        loose = pb.StudyUploadBytes.FromString(data)
    recoded = 0

    def text(value: bytes) -> str:
        nonlocal recoded
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            recoded += 1
            return value.decode("latin-1")

    upload = pb.StudyUpload(
        schema=text(loose.schema),
        study_id=text(loose.study_id),
        upload_id=text(loose.upload_id),
        hospital_id=text(loose.hospital_id),
        metadata={text(e.key): text(e.value) for e in loose.metadata},
    )
    if loose.HasField("uploaded_at"):
        upload.uploaded_at.CopyFrom(loose.uploaded_at)
    for v in loose.videos:
        video = upload.videos.add(
            video_id=text(v.video_id), filename=text(v.filename), sha256=text(v.sha256), error=text(v.error)
        )
        video.size_bytes = v.size_bytes
        if v.inline_data:
            video.inline_data = v.inline_data
        elif v.blob_uri:
            video.blob_uri = text(v.blob_uri)
        for region in v.regions:
            with contextlib.suppress(DecodeError):  # an unreadable region is left out: the fan rule cleans the video
                video.regions.append(pb.UltrasoundRegion.FromString(region))
    return upload, recoded


class RegionError(RuntimeError):
    """A service that reads identifiable data was started outside the home region."""


def require_home_region(region: str, home_region: str, what: str) -> None:
    if region != home_region:
        raise RegionError(
            f"{what} reads identifiable data and runs only in the home region {home_region!r}, not in {region!r}"
        )
