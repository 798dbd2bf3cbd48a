"""The protocol's shared tables, defined once: the dispute game's phases,
statuses and state fields, and a result leaf's statuses. Each is the
contract's own (DisputeGame.vy, ResultRollup.vy); tests/unit/test_shared_tables.py
checks them against the contract sources and the compiled ABI. The op codes
and chunk sizes are opinfer/semantics' (ops.py, tensor.py, elements.py),
checked by the same test. Plain data: clients import it without numpy."""

# DisputeGame.PHASE_*: the game's phases in order; the node moves in NODE_PHASES.
OPEN, BISECT, PICK, TENSOR, DESCEND, CHOOSE, CHUNK, ELEMENT, STEP = range(1, 10)
PHASE_NAMES = {OPEN: "open", BISECT: "bisect", PICK: "pick", TENSOR: "tensor", DESCEND: "descend", CHOOSE: "choose",
               CHUNK: "chunk", ELEMENT: "element", STEP: "step"}
NODE_PHASES = frozenset({OPEN, BISECT, TENSOR, DESCEND, CHUNK})

# DisputeGame.STATUS_* (0: no such game).
ACTIVE, NODE_WON, CHALLENGER_WON, VOID = 1, 2, 3, 4
GAME_STATUS_NAMES = {0: "unknown", ACTIVE: "active", NODE_WON: "node won", CHALLENGER_WON: "challenger won",
                     VOID: "void"}

# Field order of DisputeGame.games(id) (the ABI's tuple components).
GAME_FIELDS = ("batch_id", "leaf_index", "node", "challenger", "bond", "model_root", "ops_per_step", "job", "num_ops",
               "status", "phase", "node_clock", "challenger_clock", "last_move_at", "lo", "hi", "lo_root", "hi_root",
               "pending", "rows", "cols", "col_bits", "depth", "level", "index", "subtree", "row", "col", "claimed")

# ResultRollup.STATUS_*: a posted leaf's status (leaf_status(batch, index)).
LEAF_UNKNOWN, LEAF_POSTED, LEAF_DISPUTED, LEAF_FINAL, LEAF_INVALID = range(5)
LEAF_STATUS_NAMES = {LEAF_UNKNOWN: "unknown", LEAF_POSTED: "posted", LEAF_DISPUTED: "disputed", LEAF_FINAL: "final",
                     LEAF_INVALID: "invalid"}
