"""Persistence: SQLAlchemy engine, tables and the key repository. Knows nothing of Flask or HTTP."""
