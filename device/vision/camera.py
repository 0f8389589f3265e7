"""Frame sources for the appliance: one small ABC, one class per backend.

``open_source(spec)``: ``picamera`` (Pi camera via picamera2), ``usb:N`` (OpenCV V4L2 device N),
``dir:PATH`` (image files in name order), ``video:PATH`` (a video file), or a plain image file path.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class Camera(abc.ABC):
    """A source of BGR uint8 frames. ``read()`` returns None at the end of a finite source."""

    name = "camera"

    @abc.abstractmethod
    def read(self) -> np.ndarray | None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def frames(self) -> Iterator[np.ndarray]:
        while True:
            f = self.read()
            if f is None:
                return
            yield f

    def __enter__(self) -> "Camera":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PiCamera2Source(Camera):
    """Raspberry Pi camera (libcamera) through picamera2; imported lazily (only exists on Pi OS)."""

    name = "picamera"

    def __init__(self, size: tuple[int, int] = (1280, 960), fps: float = 15.0):
        try:
            from picamera2 import Picamera2  # type: ignore
        except ImportError as exc:
            raise RuntimeError("picamera2 is not installed (apt install python3-picamera2 on Raspberry Pi OS)") from exc
        self.cam = Picamera2()
        cfg = self.cam.create_video_configuration(main={"size": tuple(size), "format": "RGB888"},
                                                  controls={"FrameRate": fps})
        self.cam.configure(cfg)
        self.cam.start()

    def read(self) -> np.ndarray | None:
        # picamera2 "RGB888" is B,G,R byte order in memory: exactly OpenCV's BGR.
        return self.cam.capture_array("main")

    def close(self) -> None:
        self.cam.stop()
        self.cam.close()


class OpenCVSource(Camera):
    """A USB (UVC) camera through OpenCV."""

    name = "usb"

    def __init__(self, index: int = 0, size: tuple[int, int] = (1280, 720)):
        self.cap = cv2.VideoCapture(index)
        if not self.cap.isOpened():
            raise RuntimeError(f"cannot open camera usb:{index}")
        self.cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
        self.cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        return frame if ok else None

    def close(self) -> None:
        self.cap.release()


class VideoSource(Camera):
    name = "video"

    def __init__(self, path: str | Path, realtime: bool = False):
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise RuntimeError(f"cannot open video {path}")
        self.realtime = realtime
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 15.0
        self._t = None

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if ok and self.realtime:
            now = time.monotonic()
            if self._t is not None:
                time.sleep(max(0.0, 1.0 / self.fps - (now - self._t)))
            self._t = time.monotonic()
        return frame if ok else None

    def close(self) -> None:
        self.cap.release()


class DirectorySource(Camera):
    """Image files of a directory in name order (a recorded session, or a simulated stack sequence)."""

    name = "dir"

    def __init__(self, path: str | Path, fps: float | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise RuntimeError(f"not a directory: {path}")
        self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        self.i = 0
        self.fps = fps
        self.current: Path | None = None

    def read(self) -> np.ndarray | None:
        while self.i < len(self.files):
            p = self.files[self.i]
            self.i += 1
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is not None:
                self.current = p
                if self.fps:
                    time.sleep(1.0 / self.fps)
                return img
        return None


class FileSource(Camera):
    """One image file, returned once (or ``repeat`` times)."""

    name = "file"

    def __init__(self, path: str | Path, repeat: int = 1):
        self.img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if self.img is None:
            raise RuntimeError(f"cannot read image {path}")
        self.left = repeat

    def read(self) -> np.ndarray | None:
        if self.left <= 0:
            return None
        self.left -= 1
        return self.img.copy()


def open_source(spec: str, size: tuple[int, int] | None = None, fps: float | None = None) -> Camera:
    if spec == "picamera":
        return PiCamera2Source(size or (1280, 960))
    if spec.startswith("usb:"):
        return OpenCVSource(int(spec[4:] or 0), size or (1280, 720))
    if spec.startswith("dir:"):
        return DirectorySource(spec[4:], fps)
    if spec.startswith("video:"):
        return VideoSource(spec[6:])
    if spec.startswith("file:"):
        return FileSource(spec[5:])
    p = Path(spec)
    if p.is_dir():
        return DirectorySource(p, fps)
    if p.is_file():
        return VideoSource(p) if p.suffix.lower() not in IMAGE_SUFFIXES else FileSource(p)
    raise ValueError(f"unknown source {spec!r}: use picamera | usb:N | dir:PATH | video:PATH | file:PATH")
