"""Synthetic data engine: card renderer, capture simulator, counter-scan sequences."""

from models.synth.capture import CaptureConfig, augment_crop, simulate_capture
from models.synth.render import render_card
from models.synth.stack import StackConfig, simulate_stack

__all__ = ["CaptureConfig", "StackConfig", "augment_crop", "render_card", "simulate_capture", "simulate_stack"]
