"""Claim-check blob store: payloads too large for a Kafka message are stored by content hash."""

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

SCHEME = "blob:sha256:"


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

    def get(self, uri: str) -> bytes:
        if not uri.startswith(SCHEME):
            raise ValueError(f"unknown blob reference {uri!r}")
        digest = uri[len(SCHEME) :]
        try:
            data = self._path(digest).read_bytes()
        except FileNotFoundError:
            raise FileNotFoundError(f"blob {uri} not found under the blob store") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {uri} is corrupt: content hash differs")
        return data

    def delete(self, uri: str) -> bool:
        """Remove one blob (an erasure); False when it was not there."""
        if not uri.startswith(SCHEME):
            raise ValueError(f"unknown blob reference {uri!r}")
        try:
            self._path(uri[len(SCHEME) :]).unlink()
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

    def _path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"bad blob digest {digest!r}")
        return self.root / digest[:2] / digest
