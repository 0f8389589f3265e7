"""The appliance loop (``scanemon-device run``): camera → detect → gate → identify → stack logic → outbox.

Each counted card (``StackTracker`` event ``placed`` / ``slid_on_top``) becomes one scan in the durable
outbox (``device.outbox.Outbox``; the relay publishes it). The operator gets a console line per count and
an optional feedback hook (``Feedback``: e.g. a GPIO LED/buzzer: green = accepted, amber = ambiguous).
Ambiguous scans carry the rectified crop as JPEG for the server's resolver; a card identified despite a soft
quality-gate failure (glare, slight blur, a sliver out of view) is always ambiguous and carries the reason
(``quality_flag``) to the console line and the scan.
"""

from __future__ import annotations

import logging
import signal
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from device.vision.camera import Camera
from device.vision.pipeline import VisionPipeline
from device.vision.stack import Observation, StackConfig, StackEvent, StackTracker

log = logging.getLogger("scanemon.appliance")


class Feedback:
    """Operator feedback; the default prints one console line per counted card."""

    def counted(self, event: StackEvent, decision: str, total: int) -> None:
        card = event.card.result if event.card is not None else None
        score = f"{card.score:.3f}" if card is not None else "-"
        flag = getattr(card, "quality_flag", None)
        conf = getattr(card, "confidence", None)
        print(f"[{event.frame:6d}] {event.kind:11s} {event.card_id or '?':14s} {decision:9s} score {score}  "
              + (f"confidence {conf:.3f}  " if conf is not None else "")
              + f"total {total}" + (f"  ({flag})" if flag else ""), flush=True)

    def rejected(self, reason: str) -> None:  # noqa: B027 - optional hook
        pass


class GpioFeedback(Feedback):
    """Blink an LED per decision through gpiozero (Raspberry Pi); imported lazily."""

    def __init__(self, accept_pin: int = 17, ambiguous_pin: int = 27):
        from gpiozero import LED  # type: ignore

        self.leds = {"accept": LED(accept_pin), "ambiguous": LED(ambiguous_pin)}

    def counted(self, event: StackEvent, decision: str, total: int) -> None:
        super().counted(event, decision, total)
        led = self.leds.get(decision)
        if led is not None:
            led.blink(on_time=0.15, off_time=0.1, n=1, background=True)


@dataclass
class RunStats:
    frames: int = 0
    counted: int = 0
    by_decision: dict[str, int] = field(default_factory=dict)
    ms: dict[str, deque] = field(default_factory=lambda: {k: deque(maxlen=500) for k in ("detect", "embed", "match", "total")})

    def medians(self) -> dict[str, float]:
        return {k: round(statistics.median(v), 2) for k, v in self.ms.items() if v}


def scan_fields(card, bundle_version: str) -> dict:
    """The ``Scan`` fields (all but scan_id, seq, device_id) the appliance records for one identified card:
    scores clamped to the protocol's ranges, the crop only for ambiguous cards (the server resolves those), the
    soft gate failure the card was identified despite (``quality_flag``). Shared with the final-answer
    evaluation (models/eval/final.py), so it evaluates what a device sends."""
    accept = card.decision == "accept"
    return dict(
        decision=card.decision, card_id=card.card_id if accept else None, score=max(-1.0, min(1.0, card.score)),
        margin=max(-2.0, min(2.0, card.margin)),
        candidates=[{"card_id": c, "score": max(-1.0, min(1.0, s))} for c, s in card.candidates],
        quad=[(float(x), float(y)) for x, y in card.quad],
        crop=card.crop_jpeg() if card.decision == "ambiguous" else None,
        crop_margin=getattr(card, "crop_margin", 0.0) if card.decision == "ambiguous" else 0.0,
        quality_flag=getattr(card, "quality_flag", None),
        device_confidence=None if getattr(card, "confidence", None) is None else round(float(card.confidence), 6),
        bundle_version=bundle_version, captured_at=datetime.now(timezone.utc))


class Appliance:
    def __init__(self, pipeline: VisionPipeline, camera: Camera, outbox=None, feedback: Feedback | None = None,
                 stack: StackConfig | None = None, max_frames: int | None = None):
        self.pipeline = pipeline
        self.camera = camera
        self.outbox = outbox
        self.feedback = feedback or Feedback()
        self.tracker = StackTracker(stack)
        self.max_frames = max_frames
        self.stats = RunStats()
        self._stop = False

    def stop(self, *_):
        self._stop = True

    def record(self, event: StackEvent) -> str:
        card = event.card.result if event.card is not None else None
        decision = card.decision if card is not None else "no_card"
        if self.outbox is not None and card is not None:
            self.outbox.record(**scan_fields(card, self.pipeline.bundle_version))
        return decision

    def step(self, frame) -> list[StackEvent]:
        res = self.pipeline.process(frame)
        self.stats.frames += 1
        for k in self.stats.ms:
            self.stats.ms[k].append(res.ms.get(k, 0.0))
        events = self.tracker.update(Observation.from_frame_result(res))
        for ev in events:
            if ev.kind in ("placed", "slid_on_top"):
                decision = self.record(ev)
                self.stats.counted += 1
                self.stats.by_decision[decision] = self.stats.by_decision.get(decision, 0) + 1
                self.feedback.counted(ev, decision, self.stats.counted)
        return events

    def run(self) -> RunStats:
        old = signal.signal(signal.SIGTERM, self.stop)
        t0 = time.monotonic()
        try:
            for frame in self.camera.frames():
                self.step(frame)
                if self._stop or (self.max_frames and self.stats.frames >= self.max_frames):
                    break
        finally:
            signal.signal(signal.SIGTERM, old)
            self.camera.close()
        dt = time.monotonic() - t0
        log.info("frames=%d counted=%d fps=%.1f ms=%s", self.stats.frames, self.stats.counted,
                 self.stats.frames / dt if dt > 0 else 0.0, self.stats.medians())
        return self.stats
