"""What the defender must not forget across a crash, in one SQLite file:

- the cursor: the last block whose GameStarted events (against this node)
  are recorded; it moves only after every game of the range is stored;
- games: the disputed leaf, its job input, the block the game started in,
  its status and outcome, how many moves the node made;
- claims: every root the node has published in a game (state roots by
  position, tensor roots), so that no later answer, even one computed after
  a restart from a rebuilt trace, can contradict an earlier one.

Every write is its own transaction (autocommit + WAL): a kill loses at most
the write in flight; the chain holds the truth and the next pass redoes it.

A reorganisation (defender.follow) forgets the games started above the fork
with their claims (a game id may now name another game; the rescan finds
what the canonical chain holds); the hashes of the blocks scanned are kept
under meta `blocks`."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS games (
    game_id INTEGER PRIMARY KEY, batch_id INTEGER NOT NULL, leaf_index INTEGER NOT NULL,
    challenger TEXT NOT NULL, job_id TEXT NOT NULL, model_id INTEGER NOT NULL, input TEXT NOT NULL,
    input_root TEXT NOT NULL, output_root TEXT NOT NULL, start_block INTEGER NOT NULL,
    status TEXT NOT NULL, outcome TEXT, moves INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS claims (
    game_id INTEGER NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (game_id, key));
"""

OPEN, OVER = "open", "over"
WON, LOST, VOID = "won", "lost", "void"


@dataclass
class Game:
    game_id: int
    batch_id: int
    leaf_index: int
    challenger: str
    job_id: bytes
    model_id: int
    input: bytes
    input_root: bytes
    output_root: bytes
    start_block: int
    status: str
    outcome: str | None
    moves: int


class Store:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(SCHEMA)

    def _q(self, sql: str, args: tuple = ()) -> list:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def bind(self, chain_id: int, rollup: str, node: str) -> None:
        """Refuse a state file of another deployment or another key."""
        want = f"{chain_id}:{rollup.lower()}:{node.lower()}"
        have = self._q("SELECT value FROM meta WHERE key = 'binding'")
        if have and have[0][0] != want:
            raise ValueError(f"state file {self.path} belongs to {have[0][0]}, not {want}")
        if not have:
            self._q("INSERT INTO meta (key, value) VALUES ('binding', ?)", (want,))

    @property
    def cursor(self) -> int | None:
        rows = self._q("SELECT value FROM meta WHERE key = 'cursor'")
        return int(rows[0][0]) if rows else None

    @cursor.setter
    def cursor(self, block: int) -> None:
        self._q("INSERT OR REPLACE INTO meta (key, value) VALUES ('cursor', ?)", (str(block),))

    def get(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def put(self, key: str, value: str) -> None:
        self._q("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value)))

    def forget_above(self, block: int) -> list[int]:
        """Forget the games started above `block` and their claims; returns their ids."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                ids = [r[0] for r in self._db.execute("SELECT game_id FROM games WHERE start_block > ?", (block,))]
                for gid in ids:
                    self._db.execute("DELETE FROM claims WHERE game_id = ?", (gid,))
                    self._db.execute("DELETE FROM games WHERE game_id = ?", (gid,))
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def reopen(self, game_id: int) -> None:
        """A game whose end left the chain: play it again."""
        self._q("UPDATE games SET status = ?, outcome = NULL WHERE game_id = ?", (OPEN, game_id))

    def add_game(self, s, job_input: bytes) -> bool:
        if self._q("SELECT 1 FROM games WHERE game_id = ?", (s.game_id,)):
            return False
        self._q("INSERT INTO games (game_id, batch_id, leaf_index, challenger, job_id, model_id, input, input_root, "
                "output_root, start_block, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (s.game_id, s.batch_id, s.leaf_index, s.challenger, s.job_id.hex(), s.model_id, job_input.hex(),
                 s.input_root.hex(), s.output_root.hex(), s.block_number, OPEN))
        return True

    def games(self, status: str | None = None) -> list[Game]:
        sql = ("SELECT game_id, batch_id, leaf_index, challenger, job_id, model_id, input, input_root, output_root, "
               "start_block, status, outcome, moves FROM games")
        rows = self._q(sql + (" WHERE status = ?" if status else "") + " ORDER BY game_id",
                       (status,) if status else ())
        return [Game(r[0], r[1], r[2], r[3], bytes.fromhex(r[4]), r[5], bytes.fromhex(r[6]), bytes.fromhex(r[7]),
                     bytes.fromhex(r[8]), r[9], r[10], r[11], r[12]) for r in rows]

    def finish(self, game_id: int, outcome: str) -> None:
        self._q("UPDATE games SET status = ?, outcome = ? WHERE game_id = ?", (OVER, outcome, game_id))

    def count_move(self, game_id: int) -> None:
        self._q("UPDATE games SET moves = moves + 1 WHERE game_id = ?", (game_id,))

    def claims(self, game_id: int) -> dict[str, str]:
        return dict(self._q("SELECT key, value FROM claims WHERE game_id = ?", (game_id,)))

    def add_claims(self, game_id: int, claims: dict[str, str]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            try:
                for key, value in claims.items():
                    self._db.execute("INSERT OR IGNORE INTO claims (game_id, key, value) VALUES (?, ?, ?)",
                                     (game_id, key, value))
                self._db.execute("COMMIT")
            except Exception:
                self._db.execute("ROLLBACK")
                raise
