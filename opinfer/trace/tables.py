"""The protocol's shared tables, defined once: the dispute game's phases,
statuses and state, and a result leaf's statuses. Each is the contract's own
(DisputeGame.vy, ResultRollup.vy); tests/unit/test_shared_tables.py checks
them against the contract sources and the compiled ABI. The op codes and
chunk sizes are opinfer/semantics' (ops.py, tensor.py, elements.py), checked
by the same test. Plain data: clients import it without numpy or web3.

The enums are the definitions; the module-level names (OPEN, ACTIVE,
LEAF_FINAL, ...) and the *_NAMES tables are derived from them, for the code
that compares with plain ints (an IntEnum member equals and hashes as its
value, so both spellings mix freely)."""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields
from enum import IntEnum


class _Labelled(IntEnum):
    @property
    def label(self) -> str:
        """The lower-case name the APIs and logs use ("challenger won", "final")."""
        return self.name.lower().replace("_", " ")


class Phase(_Labelled):
    """DisputeGame.PHASE_*: the game's phases in order."""
    OPEN = 1
    BISECT = 2
    PICK = 3
    TENSOR = 4
    DESCEND = 5
    CHOOSE = 6
    CHUNK = 7
    ELEMENT = 8
    STEP = 9


class GameStatus(_Labelled):
    """DisputeGame.STATUS_* (0: no such game)."""
    UNKNOWN = 0
    ACTIVE = 1
    NODE_WON = 2
    CHALLENGER_WON = 3
    VOID = 4


class LeafStatus(_Labelled):
    """ResultRollup.STATUS_*: a posted leaf's status (leaf_status(batch, index))."""
    UNKNOWN = 0
    POSTED = 1
    DISPUTED = 2
    FINAL = 3
    INVALID = 4


OPEN, BISECT, PICK, TENSOR, DESCEND, CHOOSE, CHUNK, ELEMENT, STEP = Phase
PHASE_NAMES = {p: p.label for p in Phase}
# The node moves in these phases, the challenger in the others.
NODE_PHASES = frozenset({OPEN, BISECT, TENSOR, DESCEND, CHUNK})

_, ACTIVE, NODE_WON, CHALLENGER_WON, VOID = GameStatus
GAME_STATUS_NAMES = {s: s.label for s in GameStatus}

LEAF_UNKNOWN, LEAF_POSTED, LEAF_DISPUTED, LEAF_FINAL, LEAF_INVALID = LeafStatus
LEAF_STATUS_NAMES = {s: s.label for s in LeafStatus}


@dataclass(frozen=True)
class GameState:
    """DisputeGame.games(id), field for field in the ABI's tuple order (bytes
    for the bytes32 fields, the enums for status and phase). Reads as a
    mapping too (g["phase"], "lo" in g), as the pure player's moves do."""

    batch_id: int
    leaf_index: int
    node: str
    challenger: str
    bond: int
    model_root: bytes
    ops_per_step: int
    job: int
    num_ops: int
    status: GameStatus
    phase: int          # a Phase once the game exists (0 before)
    node_clock: int
    challenger_clock: int
    last_move_at: int
    lo: int
    hi: int
    lo_root: bytes
    hi_root: bytes
    pending: bytes
    rows: int
    cols: int
    col_bits: int
    depth: int
    level: int
    index: int
    subtree: bytes
    row: int
    col: int
    claimed: int

    @classmethod
    def from_raw(cls, raw) -> "GameState":
        values = dict(zip(GAME_FIELDS, raw, strict=True))
        for key in _BYTES32:
            values[key] = bytes(values[key])
        values["status"] = GameStatus(values["status"])
        values["phase"] = Phase(values["phase"]) if values["phase"] in _PHASES else values["phase"]
        return cls(**values)

    @property
    def active(self) -> bool:
        return self.status == GameStatus.ACTIVE

    @property
    def node_to_move(self) -> bool:
        return self.phase in NODE_PHASES

    def __getitem__(self, key: str):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return key in GAME_FIELDS

    def get(self, key: str, default=None):
        return getattr(self, key, default)

    def as_tuple(self) -> tuple:
        return astuple(self)


# Field order of DisputeGame.games(id) (the ABI's tuple components).
GAME_FIELDS = tuple(f.name for f in fields(GameState))
_BYTES32 = ("model_root", "lo_root", "hi_root", "pending", "subtree")
_PHASES = frozenset(int(p) for p in Phase)
