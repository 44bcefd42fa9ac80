"""The frame store (claim check for pixels): each video's decoded frames written once, by split, where every later
stage reads them; the frame records carry a reference (`StoredFrame`), masks and small results.

One file per video under `<RHD_BLOB_DIR>/frames/`: a NumPy array of n x height x width x 3 bytes (BGR, lossless, as
OpenCV decodes), read one frame at a time through a memory map, so a stage reads only the pages of its frame and
repeated reads of a video's frames cost no system call. A file is kept `RHD_FRAME_RETENTION_S` seconds after it was
written (split prunes older ones): long enough for the study deadline, a dead letter's replay and the evidence frames a
page shows; a frame asked for after that fails with a reason that says so.

The file's name is the video's pseudonym and a digest of some of its content: a replayed study writes the same file
again, a video uploaded again with other frames writes a new one.
"""

import hashlib
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rhd.runtime.codec import frame_image
from rhd.v1 import rhd_pb2 as pb

SCHEME = "frames://"
FOLDER = "frames"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.npy")
_VIDEO_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
OPEN_FILES = 32  # memory maps kept open per process (a stage reads a few videos at once)
STALE_TEMPORARY_S = 3600.0  # a half-written file older than this was left by a writer that died


class FrameStoreError(ValueError):
    """A stored frame that cannot be read (expired, never written, or not what its record says): the frame fails."""


class FrameStore:
    def __init__(self, blob_dir: Path, retention_s: float) -> None:
        self.root = Path(blob_dir) / FOLDER
        self.retention_s = retention_s
        self._open: OrderedDict[Path, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    # -- writing (split) ---------------------------------------------------------------------
    def put_video(self, video_id: str, images: Sequence[np.ndarray]) -> str:
        """Write a video's frames (all one size) as one file; its uri. Atomic: a reader sees the whole file or none."""
        if not _VIDEO_ID.fullmatch(video_id):
            raise ValueError(f"video id {video_id!r} cannot name a stored file")
        if not images:
            raise ValueError("a video without frames is not stored")
        shape = images[0].shape
        digest = hashlib.sha256(repr((len(images), shape)).encode())
        for image in (images[0], images[len(images) // 2], images[-1]):  # enough to tell one upload from another
            digest.update(np.ascontiguousarray(image).data)
        name = f"{video_id}.{digest.hexdigest()[:16]}.npy"
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=f".{video_id}-", suffix=".tmp")
        try:
            # The .npy header, then each frame's bytes as they are: written, not mapped (a map's page faults cost 5x).
            with os.fdopen(fd, "wb") as f:
                header = {"descr": "|u1", "fortran_order": False, "shape": (len(images), *shape)}
                np.lib.format.write_array_header_1_0(f, header)
                for index, image in enumerate(images):
                    if image.shape != shape or image.dtype != np.uint8:
                        raise ValueError(
                            f"frame {index} is {image.dtype} {image.shape}, frame 0 uint8 {shape}: a video's frames "
                            "are one size"
                        )
                    f.write(np.ascontiguousarray(image).data)
            os.replace(tmp, self.root / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return SCHEME + name

    def prune(self, now: float | None = None) -> int:
        """Remove the files written more than `retention_s` ago (and stale half-written ones); how many went."""
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return 0
        for entry in entries:
            keep_for = STALE_TEMPORARY_S if entry.name.endswith(".tmp") else self.retention_s
            try:
                if entry.is_file() and now - entry.stat().st_mtime > keep_for:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # another replica pruned it first
                continue
        return removed

    def delete_video(self, video_id: str) -> int:
        """Remove a video's stored frames (an erasure); how many files went."""
        if not _VIDEO_ID.fullmatch(video_id):
            return 0
        removed = 0
        for path in self.root.glob(f"{video_id}.*.npy"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed

    # -- reading (every later stage) ---------------------------------------------------------
    def video(self, uri: str) -> list[np.ndarray]:
        """A stored video's frames, each a read-only view of the file's map (split reads the frames deid stored)."""
        return list(self._frames(uri))

    def frame(self, stored: pb.StoredFrame) -> np.ndarray:
        """A copy of the stored frame (the stage functions may work in place; the map is read-only)."""
        frames = self._frames(stored.uri)
        if not 0 <= stored.index < len(frames):
            raise FrameStoreError(f"{stored.uri} holds {len(frames)} frames, not frame {stored.index}")
        return np.array(frames[stored.index])

    def video_frame(self, video_id: str, index: int) -> np.ndarray:
        """A frame of a video named by its (pseudonymous) id, from the newest file the video has: what a page shows
        as the evidence of a measurement."""
        if not _VIDEO_ID.fullmatch(video_id):
            raise FrameStoreError(f"not a video id: {video_id!r}")
        files = sorted(self.root.glob(f"{video_id}.*.npy"), key=lambda path: path.stat().st_mtime)
        if not files:
            raise FrameStoreError(f"video {video_id} is no longer in the frame store (kept {self.retention_s:.0f} s)")
        return self.frame(pb.StoredFrame(uri=SCHEME + files[-1].name, index=index))

    def image(self, frame: pb.Frame) -> np.ndarray:
        """The frame's BGR image whichever way it travels (stored, raw or PNG); ValueError when it cannot be read."""
        if frame.WhichOneof("pixels") != "stored":
            return frame_image(frame)
        image = self.frame(frame.stored)
        if image.shape != (frame.height, frame.width, 3):
            raise FrameStoreError(
                f"{frame.stored.uri} holds {image.shape} frames, the record says {frame.height} x {frame.width} x 3"
            )
        return image

    def path(self, uri: str) -> Path:
        name = uri.removeprefix(SCHEME)
        if not uri.startswith(SCHEME) or not _NAME.fullmatch(name):
            raise FrameStoreError(f"not a frame store uri: {uri!r}")
        return self.root / name

    def _frames(self, uri: str) -> np.ndarray:
        path = self.path(uri)
        with self._lock:
            frames = self._open.get(path)
            if frames is not None:
                self._open.move_to_end(path)
                return frames
        try:
            frames = np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise FrameStoreError(
                f"{uri} is not in the frame store: pruned after RHD_FRAME_RETENTION_S ({self.retention_s:.0f} s), "
                "or never written (replay the study)"
            ) from None
        except (ValueError, OSError) as exc:
            raise FrameStoreError(f"{uri} is not a readable frame file: {exc}") from None
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise FrameStoreError(f"{uri} holds {frames.dtype} {frames.shape}, not BGR frames")
        with self._lock:
            self._open[path] = frames
            while len(self._open) > OPEN_FILES:
                self._open.popitem(last=False)  # the map closes when its last frame copy is made
        return frames
