"""Server settings: environment variables (``SCANEMON_…``, nested with ``__``) over an optional YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from device.configfile import load_yaml, error_line, ConfigFileError


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field("127.0.0.1", description="Broker host.")
    port: int = Field(1883, description="Broker TCP port.", ge=1, le=65535)
    username: str | None = Field(None, description="Server's broker user (needs ACL for all device topics).")
    password: str | None = Field(None, description="Server's broker password.")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT version; the embedded amqtt broker needs 3.1.1.")
    client_id: str = Field("scanemon-server", description="Client id prefix; workers append their index.")
    embedded: bool = Field(False, description="Start an in-process amqtt broker (one-box/hobbyist default).")
    keepalive: int = Field(30, description="Keepalive seconds.", ge=5)


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workers: int = Field(1, description="Ingest workers in the shared subscription group.", ge=0, le=64)
    batch_size: int = Field(200, description="Scans committed per database transaction at most.", ge=1)
    batch_wait_ms: int = Field(20, description="How long to gather a batch before committing.", ge=0)
    session_expiry_s: int = Field(3600, description="MQTT 5 session expiry: queued scans survive a worker restart.", ge=0)


class SecuritySettings(BaseModel):
    """Rate limits, upload caps, web sessions and response headers (server/security.py)."""

    model_config = ConfigDict(extra="forbid")
    rate_limit_enabled: bool = Field(True, description="Per-client token-bucket rate limiting (429 + Retry-After).")
    rate_limit_per_s: float = Field(20.0, description="Tokens refilled per second per client (sustained requests/s).", gt=0)
    rate_limit_burst: int = Field(100, description="Bucket size: requests a client may make in a burst.", ge=1)
    rate_limit_exempt: list[str] = Field(default_factory=lambda: ["/healthz", "/readyz", "/metrics", "/static/"],
                                         description="Path prefixes never rate limited (probes, scrapes, static files).")
    trust_forwarded_for: bool = Field(False, description="Key clients by the first X-Forwarded-For address "
                                      "(only behind a proxy that sets it).")
    max_body_bytes: int = Field(16 * 1024 * 1024, description="Largest request body accepted (413 beyond).", ge=1024)
    max_upload_bytes: int = Field(10 * 1024 * 1024, description="Largest image upload accepted (413 beyond).", ge=1024)
    max_image_pixels: int = Field(40_000_000, description="Largest width*height decoded (decompression-bomb guard).",
                                  ge=1)
    session_secret: str | None = Field(None, description="HMAC key for web session cookies; generated into "
                                       "data_dir/session_secret when unset (set it when running several replicas).")
    session_max_age_s: int = Field(14 * 24 * 3600, description="Web session lifetime in seconds.", ge=60)
    cookie_secure: bool = Field(False, description="Mark the session cookie Secure (turn on behind HTTPS).")
    content_security_policy: str = Field(
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
        description="Content-Security-Policy header sent with every response.")
    audit_mutations: bool = Field(True, description="Write an audit_log row for every POST/PUT/PATCH/DELETE.")
    metrics_public: bool = Field(True, description="Serve /metrics without a token (scrapers on a private network).")


class ResolverSettings(BaseModel):
    """Server-side resolution of ambiguous scans (server/resolver): model, catalog, index, thresholds."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, description="Resolve ambiguous scans on the server (off: they wait for review).")
    catalog_dir: Path = Field(Path("var/catalog"), description="Rendered catalog faces <card_id>.jpg + index.jsonl "
                              "(python -m models.synth catalog); embedded into the index and used for verification.")
    checkpoint: Path | None = Field(None, description="Compact server-model checkpoint; default "
                                    "models/server_model/checkpoints/scanemon-tiny-vit.pt.")
    model_name: str | None = Field(None, description="open_clip architecture instead of our checkpoint, e.g. ViT-B-32.")
    pretrained: str | None = Field(None, description="With model_name: open_clip hub tag or local checkpoint file.")
    calibration: Path | None = Field(None, description="Confidence calibration JSON; default "
                                     "models/server_model/checkpoints/resolver_calibration.json.")
    index_kind: Literal["auto", "flat", "ivf", "hnsw"] = Field("auto", description="FAISS index: auto = exact up "
                                                               "to 200k cards, IVF-SQ8 above.")
    top_k: int = Field(10, ge=1, le=200, description="Embedding neighbours taken before verification.")
    max_candidates: int = Field(24, ge=1, le=200, description="Most candidates verified geometrically per scan.")
    accept_confidence: float = Field(0.9, ge=0, le=1, description="Calibrated confidence needed to resolve; "
                                     "below it the scan goes to the review queue.")
    low_score_accept_confidence: float = Field(
        0.999, ge=0, le=1, description="Confidence needed to resolve a scan the device matched to nothing "
        "(quality_flag low_score: a confident detection below its no-card score) — often not a catalog card at "
        "all; on simulated scanner-box frames of playing cards and photo patches the resolver gave such scans up "
        "to 0.995 (models.eval.negatives --resolver --low-score-accept-confidence 0.9).")
    keypoint_store: bool = Field(True, description="Precompute the ORB keypoints of every catalog face once per "
                                 "catalog version (data_dir/keypoints, ~36 bytes × 700 per face, about a minute "
                                 "per 10k faces on 2 cores) instead of per scan.")
    ocr: bool = Field(False, description="Read the collector number with Tesseract (when installed) as a tie-breaker "
                      "for close calls; costs ~0.5 s per call and only reads sharp crops, hence off by default.")
    worker_poll_s: float = Field(2.0, gt=0, description="Resolver worker: seconds between polls for pending scans.")
    worker_batch: int = Field(16, ge=1, description="Resolver worker: pending scans claimed per poll.")


class ServerSettings(BaseSettings):
    """Everything the server needs. Defaults give the embedded one-box setup (SQLite + amqtt)."""

    model_config = SettingsConfigDict(env_prefix="SCANEMON_", env_nested_delimiter="__", extra="forbid")

    database_url: str = Field("sqlite:///var/scanemon.db", description="SQLAlchemy URL; postgresql+psycopg2://… for production.")
    data_dir: Path = Field(Path("var"), description="Writable folder for images, indexes and bundles.")
    catalog_images: Path | None = Field(None, description="Folder of catalog card images keyed by card id.")
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, description="HTTP port.", ge=1, le=65535)
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    mqtt_url: str | None = Field(None, description="Broker as one URL, mqtt://[user[:password]@]host[:port] "
                                 "(env SCANEMON_MQTT_URL); sets mqtt.host/port/username/password and turns the "
                                 "embedded broker off.")
    ingest: IngestSettings = Field(default_factory=IngestSettings, description="Ingest workers.")
    readyz_check_broker: bool = Field(True, description="Whether /readyz requires the broker to be reachable.")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS (empty: same-origin only).")
    log_json: bool = Field(False, description="Structured JSON logs.")
    security: SecuritySettings = Field(default_factory=SecuritySettings, description="Rate limits, uploads, sessions, headers.")
    resolver: ResolverSettings = Field(default_factory=ResolverSettings, description="Server resolver of ambiguous scans.")

    @model_validator(mode="after")
    def _apply_mqtt_url(self) -> "ServerSettings":
        if self.mqtt_url:
            self.mqtt = self.mqtt.model_copy(update=parse_mqtt_url(self.mqtt_url))
        return self


def parse_mqtt_url(url: str) -> dict:
    """``mqtt://user:pass@host:port`` -> MqttSettings fields; a clear error for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "mqtt":
        raise ValueError(f"mqtt_url must look like mqtt://[user[:password]@]host[:port], got scheme {parts.scheme!r} "
                         "(for TLS use a local TLS-terminating listener or the device's mqtt.tls)")
    try:
        port = parts.port or 1883
    except ValueError as exc:
        raise ValueError(f"mqtt_url has a bad port: {url!r}") from exc
    if not parts.hostname:
        raise ValueError(f"mqtt_url has no host: {url!r}")
    out: dict = {"host": parts.hostname, "port": port, "embedded": False}
    if parts.username is not None:
        out["username"] = unquote(parts.username)
        out["password"] = unquote(parts.password) if parts.password is not None else None
    return out


def load_settings(path: str | Path | None = None, **overrides) -> ServerSettings:
    """Settings from an optional YAML file, then environment variables, then explicit overrides."""
    if path is None:
        return ServerSettings(**overrides)
    data, lines = load_yaml(path)
    from pydantic import ValidationError

    try:
        # Init kwargs beat env in pydantic-settings; we want env to beat the file, so validate the file first
        # and let fields that are set in the environment win.
        file_settings = ServerSettings.model_validate({**data})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        raise ConfigFileError(path, error_line(lines, loc), f"{'.'.join(map(str, loc))}: {err['msg']}") from exc
    env_settings = ServerSettings()
    merged = file_settings.model_dump()
    merged.update({k: getattr(env_settings, k) for k in env_settings.model_fields_set})
    merged.update(overrides)
    return ServerSettings.model_validate(merged)
