"""``scanemon-device run --source picamera|usb:0|dir:PATH|video:PATH [--config device.yaml] [--bundle DIR]``.

The appliance loop: frames from the source → vision pipeline → stack logic → durable outbox (from the
device config; without ``--config`` the counted scans are only printed) → a console line per card.
"""

from __future__ import annotations

import json

from device.commands.identify import DEFAULT_BUNDLE


def register(sub) -> None:
    p = sub.add_parser("run", help="run the scanning appliance loop", description=__doc__)
    p.add_argument("--source", default="picamera", help="picamera | usb:N | dir:PATH | video:PATH | file:PATH")
    p.add_argument("--config", default=None, help="device YAML (device_id, outbox, mqtt…); scans go to its outbox")
    p.add_argument("--bundle", default=DEFAULT_BUNDLE, help="bundle directory")
    p.add_argument("--public-key", default=None, help="fleet public key (PEM): verify the bundle first")
    p.add_argument("--threads", type=int, default=None, help="TFLite threads (default: all cores)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--fps", type=float, default=None, help="pace dir: sources to this rate")
    p.add_argument("--gpio", action="store_true", help="blink LEDs on GPIO 17 (accept) / 27 (ambiguous)")
    p.add_argument("--stable-frames", type=int, default=3, help="frames a card must be still before it counts")
    p.set_defaults(func=run)


def run(args) -> int:
    from device.appliance import Appliance, Feedback, GpioFeedback
    from device.vision.camera import open_source
    from device.vision.pipeline import VisionPipeline
    from device.vision.stack import StackConfig

    outbox = relay = None
    pipe = VisionPipeline.from_bundle(args.bundle, args.threads, public_key=args.public_key)
    if args.config:
        from device.config import load_config
        from device.outbox import Outbox
        from device.relay import Relay

        cfg = load_config(args.config)
        cfg = cfg.model_copy(update={"bundle_version": pipe.bundle_version or cfg.bundle_version})
        outbox = Outbox.from_config(cfg)
        # The relay runs beside the camera loop: scans are durable in the outbox first, sent when the broker is there.
        relay = Relay(cfg, outbox).start()
    cam = open_source(args.source, fps=args.fps)
    app = Appliance(pipe, cam, outbox, GpioFeedback() if args.gpio else Feedback(),
                    StackConfig(stable_frames=args.stable_frames), args.max_frames)
    try:
        st = app.run()
    finally:
        if relay is not None:
            relay.stop()
        if outbox is not None:
            outbox.close()
    print(json.dumps({"frames": st.frames, "counted": st.counted, "by_decision": st.by_decision,
                      "counts": app.tracker.counts, "ms_median": st.medians()}), flush=True)
    return 0
