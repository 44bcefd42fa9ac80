"""Claim-check blob store: payloads too large for a Kafka message are stored by content hash."""

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

SCHEME = "blob:sha256:"


def uri_of(data: bytes) -> str:
    """The reference `BlobStore.put` gives these bytes (their content hash), without storing them."""
    return SCHEME + hashlib.sha256(data).hexdigest()


def pieces(data: bytes, size: int) -> list[bytes]:
    """The bytes cut in order into pieces of at most `size` (at least one piece, for empty bytes too)."""
    if size <= 0:
        raise ValueError(f"piece size {size}: must be positive")
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


class BlobStore:
    """Content-addressed files under one directory every service can read (a volume or bucket mount)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # A temporary file of its own: two writers of the same content (an upload published twice, handled at
            # once) shared one name, and the second rename found it gone. The rename is atomic either way.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{digest[:16]}-", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return SCHEME + digest

    def put_part(self, uri: str, index: int, count: int, data: bytes) -> bool:
        """One of the `count` pieces of blob `uri` (`pieces` cut it): kept until all are in, then the blob is put
        whole, checked against its hash, and the pieces removed. True once the blob is whole. A piece given again
        (a batch redone) is written again, harmlessly; one out of range is refused."""
        digest = self._digest(uri)
        if not 0 <= index < count:
            raise ValueError(f"piece {index} of {count} of blob {uri}: out of range")
        if self._path(digest).exists():
            return True
        folder = self.root / "parts" / digest
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / f"{index:06d}-of-{count:06d}")
        names = [folder / f"{i:06d}-of-{count:06d}" for i in range(count)]
        if not all(path.exists() for path in names):
            return False
        stored = self.put(b"".join(path.read_bytes() for path in names))  # hashed once, by put
        shutil.rmtree(folder, ignore_errors=True)
        if stored != uri:
            self.delete(stored)
            raise ValueError(f"blob {uri}: its {count} pieces do not hash to it (dropped; resend the study)")
        return True

    def get(self, uri: str) -> bytes:
        digest = self._digest(uri)
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {uri} not found under the blob store") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {uri} is corrupt: content hash differs")
        return data

    def delete(self, uri: str) -> bool:
        """Remove one blob (an erasure); False when it was not there."""
        try:
            self._path(self._digest(uri)).unlink()
        except FileNotFoundError:
            return False
        return True

    def sweep_sealed(self, older_than: float, is_sealed: Callable[[bytes], bool]) -> tuple[int, int, int]:
        """Delete the sealed blobs (raw uploads' videos, their dead letters' originals) last written before
        `older_than` (epoch seconds): the raw data's retention. Returns (deleted, held, bytes held)."""
        deleted = held = size = 0
        for path in self.root.glob("??/*"):
            if path.suffix == ".tmp" or not path.is_file():
                continue
            with path.open("rb") as f:
                if not is_sealed(f.read(8)):
                    continue
            stat = path.stat()
            if stat.st_mtime < older_than:
                path.unlink(missing_ok=True)
                deleted += 1
            else:
                held, size = held + 1, size + stat.st_size
        return deleted, held, size

    @staticmethod
    def _digest(uri: str) -> str:
        if not uri.startswith(SCHEME):
            raise ValueError(f"unknown blob reference {uri!r}")
        return uri[len(SCHEME) :]

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"bad blob digest {digest!r}")
        return self.root / digest[:2] / digest
