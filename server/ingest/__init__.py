"""Server ingest: MQTT scans → PostgreSQL/SQLite (deduped) → Ack to the device.

``IngestWorker`` is one subscriber in the shared group ``$share/ingest/…`` (MQTT 5) or the single
wildcard subscriber (MQTT 3.1.1, embedded amqtt); ``store.store_batch`` is the database side.
"""

from server.ingest.store import Classified, Inbound, StoreOutcome, classify, store_batch
from server.ingest.worker import IngestStats, IngestWorker

__all__ = ["Classified", "Inbound", "IngestStats", "IngestWorker", "StoreOutcome", "classify", "store_batch"]
