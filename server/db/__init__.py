"""Database: SQLAlchemy 2 models, engine/session helpers, Alembic migrations."""

from server.db.models import Base
from server.db.session import Database, make_engine

__all__ = ["Base", "Database", "make_engine"]
