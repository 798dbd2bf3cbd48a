"""Alembic: upgrade from empty matches the models; each step goes down and up again."""

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from coordinator.db import alembic_config, make_engine
from coordinator.models import Base


def tables(url):
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_from_empty_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    command.upgrade(alembic_config(url), "head")
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    engine.dispose()
    assert diff == []
    assert mode == "wal"
    assert tables(url) == set(Base.metadata.tables)


def test_every_step_downgrades_and_upgrades_again(tmp_path):
    url = f"sqlite:///{tmp_path}/m.db"
    cfg = alembic_config(url)
    revisions = [r.revision for r in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))]
    assert revisions == ["0001", "0002", "0003", "0004"]
    seen = []
    for rev in revisions:
        before = tables(url)
        command.upgrade(cfg, rev)
        after = tables(url)
        assert after > before, f"{rev} creates nothing"
        command.downgrade(cfg, "-1")
        assert tables(url) == before, f"{rev} downgrade leaves {tables(url) - before}"
        command.upgrade(cfg, rev)
        assert tables(url) == after
        seen.append(after - before)
    command.downgrade(cfg, "base")
    assert tables(url) == set()
    assert set().union(*seen) == set(Base.metadata.tables)
