"""Device configuration (YAML): identity, broker connection, outbox capacity and relay behaviour.

Loaded with ``device.configfile.load_model`` so every error names the file and the line::

    device_id: pi-kitchen
    mqtt: {host: scanemon.lan, port: 8883, username: pi-kitchen, password: "…", tls: true}
    outbox: {path: /var/lib/scanemon/outbox.db, budget_bytes: 268435456}
    relay: {batch_max: 50, inflight_window: 500}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from device.configfile import load_model
from device.protocol import DEVICE_ID_RE, MAX_BATCH


class MqttConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="Broker host name or address.")
    port: int = Field(1883, description="Broker TCP port (8883 is the usual TLS port).", ge=1, le=65535)
    username: str | None = Field(None, description="Broker user; by convention the device_id.")
    password: str | None = Field(None, description="Broker password (provisioned per device).")
    protocol: Literal["5", "3.1.1"] = Field(
        "5", description="MQTT version: 5 for Mosquitto/EMQX, 3.1.1 for the embedded amqtt broker.")
    tls: bool = Field(False, description="Connect with TLS.")
    ca_certs: Path | None = Field(None, description="CA bundle for TLS (system trust store when empty).")
    keepalive: int = Field(
        30, description="Keepalive seconds; a silent (blackholed) link is noticed after about 1.5x this.", ge=1, le=3600)
    session_expiry_s: int = Field(
        86400, description="MQTT 5 session expiry: acks sent while the device is away wait this long at the broker.",
        ge=0)
    connect_timeout_s: float = Field(5.0, description="TCP connect timeout in seconds.", gt=0)
    reconnect_min_s: float = Field(0.5, description="First reconnect delay; doubles per failed attempt.", gt=0)
    reconnect_max_s: float = Field(60.0, description="Ceiling for the reconnect delay (before jitter).", gt=0)


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Path = Field(Path("/var/lib/scanemon/outbox.db"), description="SQLite file holding unacknowledged scans.")
    budget_bytes: int = Field(
        256 * 1024 * 1024, description="Disk budget for unacknowledged scans (payload bytes plus row overhead).",
        ge=64 * 1024)
    high_water: float = Field(
        0.8, description="Fraction of the budget at which the device warns (log + telemetry) that the outbox is filling.",
        gt=0, le=1)
    full_policy: Literal["refuse", "block"] = Field(
        "refuse",
        description="At the budget: 'refuse' raises OutboxFull at once (the UI shows it, scanning stops); "
                    "'block' waits up to block_timeout_s for acks to free space, then raises OutboxFull. "
                    "Scans are never dropped silently.")
    block_timeout_s: float = Field(30.0, description="How long 'block' waits for space before raising OutboxFull.", ge=0)


class RelayConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_max: int = Field(50, description="Scans per published ScanBatch at most.", ge=1, le=MAX_BATCH)
    batch_wait_ms: int = Field(
        20, description="How long a partial batch may wait for more scans before it is published.", ge=0)
    inflight_window: int = Field(
        500, description="Scans published but not yet acknowledged by the server, at most (flow control).", ge=1)
    ack_timeout_s: float = Field(
        30.0, description="Resend a published scan when its ack has not come back after this long.", gt=0)
    telemetry_interval_s: float = Field(60.0, description="Seconds between telemetry messages (QoS 0).", gt=0)
    poll_interval_ms: int = Field(
        20, description="Longest pause between outbox checks while idle (added latency at most).", ge=1, le=1000)


class DeviceConfig(BaseModel):
    """Everything the appliance's sync path needs."""

    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(description="This device's id: lowercase letters, digits, '-' and '_'.")
    bundle_version: str = Field("", description="Bundle in use (reported in status and telemetry).", max_length=64)
    software_version: str = Field("", description="Device software version (reported in status).", max_length=64)
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection.")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Local store of unacknowledged scans.")
    relay: RelayConfig = Field(default_factory=RelayConfig, description="Publishing, batching and flow control.")

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, v: str) -> str:
        if not DEVICE_ID_RE.match(v):
            raise ValueError("lowercase letters, digits, '-' and '_' only, 2-64 characters")
        return v

    @model_validator(mode="after")
    def _backoff_order(self) -> "DeviceConfig":
        if self.mqtt.reconnect_max_s < self.mqtt.reconnect_min_s:
            raise ValueError("mqtt.reconnect_max_s must be >= mqtt.reconnect_min_s")
        return self


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> DeviceConfig:
    """Read a device YAML file; errors name the file and line (``ConfigFileError``)."""
    return load_model(DeviceConfig, path, overrides)
