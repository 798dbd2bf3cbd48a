"""Alembic environment: the URL comes from the Config (set by
coordinator.db.upgrade) or from the coordinator's settings."""

from alembic import context

from coordinator.db import make_engine
from coordinator.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")
if not url:
    from coordinator.settings import Settings

    url = Settings().database_url


def run_offline() -> None:
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        # render_as_batch: SQLite alters tables by copying them.
        context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
