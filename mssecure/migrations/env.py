"""Alembic environment: migrations run on the engine mssecure passes in (never on a URL from alembic.ini)."""

from alembic import context

from mssecure.models import Base

engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    context.run_migrations()
