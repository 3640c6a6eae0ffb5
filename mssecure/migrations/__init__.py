"""Alembic migrations of the mssecure schema (run by ``mssecure init`` and ``mssecure db upgrade``)."""
