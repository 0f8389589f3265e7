"""Scanemon device: the Raspberry Pi appliance (camera → detect → identify → outbox → MQTT).

Nothing in this package may import torch, faiss or the ``server`` package: it ships to Pi OS.
"""

__version__ = "0.1.0"
