"""What the challenger must not forget across a crash, in one SQLite file.

- the cursor: the last block whose BatchPosted events are fully handled;
  it only moves after every batch in the range is recorded, so a crash
  mid-scan re-reads the range and handled batches are skipped by id;
- batches (where their calldata lives, their deadline, how they ended);
- leaf checks and the nodes with a fraud record (checked on every leaf);
- disputes: a leaf found wrong, then the game played over it (game id, the
  block it started in, the last values the node revealed), so a restarted
  challenger resumes its games within their clocks.

Every write is its own transaction (sqlite3 autocommit + WAL): a kill loses
at most the write in flight, which the next pass redoes.

A reorganisation (service.follow) forgets every batch posted above the fork,
with its checks and disputes (the chain may give the same id to another
batch: they are found again by the rescan), and re-reads the games of the
rest; the hashes of the blocks scanned are kept under meta `blocks`."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from challenger.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_id INTEGER PRIMARY KEY, block_number INTEGER NOT NULL, block_hash TEXT NOT NULL,
    tx_hash TEXT NOT NULL, deadline INTEGER NOT NULL, leaf_count INTEGER NOT NULL,
    status TEXT NOT NULL, checked INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS checks (
    batch_id INTEGER NOT NULL, leaf_index INTEGER NOT NULL, node TEXT NOT NULL, model_id INTEGER NOT NULL,
    verdict TEXT NOT NULL, PRIMARY KEY (batch_id, leaf_index));
CREATE TABLE IF NOT EXISTS suspects (node TEXT PRIMARY KEY, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS disputes (
    batch_id INTEGER NOT NULL, leaf_index INTEGER NOT NULL, node TEXT NOT NULL, model_id INTEGER NOT NULL,
    reason TEXT NOT NULL, status TEXT NOT NULL, game_id INTEGER, start_block INTEGER,
    revealed TEXT, PRIMARY KEY (batch_id, leaf_index));
"""

# Dispute statuses: DETECTED (wrong, not yet challenged), OPEN (game running),
# then one of WON, LOST, VOID (another game proved it first), EXPIRED (window
# closed before we could challenge), DROPPED (the full trace agreed with the node).
DETECTED, OPEN, WON, LOST, VOID, EXPIRED, DROPPED = "detected", "open", "won", "lost", "void", "expired", "dropped"
FINISHED = frozenset({WON, LOST, VOID, EXPIRED, DROPPED})


@dataclass
class Dispute:
    batch_id: int
    leaf_index: int
    node: str
    model_id: int
    reason: str
    status: str
    game_id: int | None
    start_block: int | None
    revealed: list | None


@dataclass
class BatchRecord:
    batch_id: int
    block_number: int
    block_hash: bytes
    tx_hash: bytes
    deadline: int
    leaf_count: int
    status: str


class Store:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------ meta

    def get(self, key: str, default: str | None = None) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else default

    def put(self, key: str, value) -> None:
        self._q("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, str(value)))

    def bind(self, chain_id: int, rollup: str) -> None:
        """Refuse a state file written for another chain or deployment: its
        cursor and games would be meaningless here."""
        want = f"{chain_id}:{rollup.lower()}"
        have = self.get("deployment")
        if have is None:
            self.put("deployment", want)
        elif have != want:
            raise ConfigError(f"state file {self.path} belongs to deployment {have}, not {want}")

    @property
    def cursor(self) -> int | None:
        value = self.get("cursor")
        return None if value is None else int(value)

    @cursor.setter
    def cursor(self, block: int) -> None:
        self.put("cursor", block)

    # ------------------------------------------------------------ batches and checks

    def batch(self, batch_id: int) -> BatchRecord | None:
        rows = self._q("SELECT batch_id, block_number, block_hash, tx_hash, deadline, leaf_count, status "
                       "FROM batches WHERE batch_id = ?", (batch_id,))
        return _batch(rows[0]) if rows else None

    def add_batch(self, b: BatchRecord) -> None:
        self._q("INSERT INTO batches (batch_id, block_number, block_hash, tx_hash, deadline, leaf_count, status) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(batch_id) DO UPDATE SET status = excluded.status",
                (b.batch_id, b.block_number, b.block_hash.hex(), b.tx_hash.hex(), b.deadline, b.leaf_count, b.status))

    def forget_above(self, block: int) -> list[int]:
        """Forget the batches posted above `block`, their checks and disputes
        (in one transaction); returns the game ids of those disputes."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                ids = [r[0] for r in self._db.execute("SELECT batch_id FROM batches WHERE block_number > ?",
                                                      (block,)).fetchall()]
                games = []
                for bid in ids:
                    games += [r[0] for r in self._db.execute(
                        "SELECT game_id FROM disputes WHERE batch_id = ? AND game_id IS NOT NULL", (bid,))]
                    for table in ("checks", "disputes", "batches"):
                        self._db.execute(f"DELETE FROM {table} WHERE batch_id = ?", (bid,))
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise
        return games

    def drop_orphans(self) -> None:
        """Checks and disputes of batch ids no longer recorded (written by work begun before a reorganisation)."""
        for table in ("checks", "disputes"):
            self._q(f"DELETE FROM {table} WHERE batch_id NOT IN (SELECT batch_id FROM batches)")

    def reopen(self, batch_id: int, index: int) -> None:
        """A dispute whose game left the chain: wrong leaf found, not yet challenged."""
        self._q("UPDATE disputes SET status = ?, game_id = NULL, start_block = NULL, revealed = NULL "
                "WHERE batch_id = ? AND leaf_index = ?", (DETECTED, batch_id, index))

    def open_batches(self, now: int) -> list[BatchRecord]:
        """Handled batches still inside their challenge window."""
        rows = self._q("SELECT batch_id, block_number, block_hash, tx_hash, deadline, leaf_count, status "
                       "FROM batches WHERE deadline >= ? AND status = 'done' ORDER BY batch_id", (now,))
        return [_batch(r) for r in rows]

    def checked(self, batch_id: int) -> dict[int, str]:
        return dict(self._q("SELECT leaf_index, verdict FROM checks WHERE batch_id = ?", (batch_id,)))

    def add_check(self, batch_id: int, index: int, node: str, model_id: int, verdict: str) -> None:
        self._q("INSERT OR REPLACE INTO checks (batch_id, leaf_index, node, model_id, verdict) VALUES (?, ?, ?, ?, ?)",
                (batch_id, index, node, model_id, verdict))

    def suspects(self) -> set[str]:
        return {r[0] for r in self._q("SELECT node FROM suspects")}

    def add_suspect(self, node: str, reason: str) -> None:
        self._q("INSERT OR IGNORE INTO suspects (node, reason) VALUES (?, ?)", (node.lower(), reason))

    # ------------------------------------------------------------ disputes

    def add_dispute(self, batch_id: int, index: int, node: str, model_id: int, reason: str) -> bool:
        """Record a wrong leaf; False when it is already known."""
        before = self._q("SELECT 1 FROM disputes WHERE batch_id = ? AND leaf_index = ?", (batch_id, index))
        if before:
            return False
        self._q("INSERT INTO disputes (batch_id, leaf_index, node, model_id, reason, status) VALUES (?, ?, ?, ?, ?, ?)",
                (batch_id, index, node, model_id, reason, DETECTED))
        return True

    def disputes(self, *statuses: str) -> list[Dispute]:
        sql = ("SELECT batch_id, leaf_index, node, model_id, reason, status, game_id, start_block, revealed "
               "FROM disputes")
        if statuses:
            sql += f" WHERE status IN ({','.join('?' * len(statuses))})"
        rows = self._q(sql + " ORDER BY batch_id, leaf_index", tuple(statuses))
        return [Dispute(*r[:8], json.loads(r[8]) if r[8] else None) for r in rows]

    def set_dispute(self, batch_id: int, index: int, status: str, game_id: int | None = None,
                    start_block: int | None = None) -> None:
        self._q("UPDATE disputes SET status = ?, game_id = COALESCE(?, game_id), start_block = COALESCE(?, start_block) "
                "WHERE batch_id = ? AND leaf_index = ?", (status, game_id, start_block, batch_id, index))

    def set_revealed(self, game_id: int, revealed: list) -> None:
        """The node's last revealed values (hex for bytes), so a restart need
        not search the logs for them."""
        plain = [v.hex() if isinstance(v, (bytes, bytearray)) else int(v) for v in revealed]
        self._q("UPDATE disputes SET revealed = ? WHERE game_id = ?", (json.dumps(plain), game_id))


def _batch(r) -> BatchRecord:
    return BatchRecord(r[0], r[1], bytes.fromhex(r[2]), bytes.fromhex(r[3]), r[4], r[5], r[6])
