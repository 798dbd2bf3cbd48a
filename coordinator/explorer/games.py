"""A dispute game as the explorer draws it: its events as moves, and after
each move the part of the computation still in dispute ("focus").

Pure: input is the game's decoded events (events.ChainIndex) and its on-chain
state (DisputeGame.games(id) as a dict); no I/O. The focus has a scale:

- "ops": the op interval [lo, hi) of the program's `total` ops (phase 1);
- "tensor": leaves [lo, hi) of the disputed tensor's Merkle tree (2^depth
  leaves, one chunk of CHUNK values each, rows then chunks), with the rows
  and columns they cover (phase 2);
- "element": one (row, col) of that tensor, then the one-step verdict.
"""

from __future__ import annotations

from opinfer.semantics.tensor import CHUNK  # noqa: F401 - DisputeGame.CHUNK: values per tensor-tree leaf
from opinfer.trace.tables import GAME_STATUS_NAMES as STATUS
from opinfer.trace.tables import NODE_PHASES
from opinfer.trace.tables import PHASE_NAMES as PHASES  # noqa: F401 - the explorer views read g.PHASES
MOVER = {"GameStarted": "challenger", "TraceOpened": "node", "Bisected": "node", "Picked": "challenger",
         "TensorRevealed": "node", "Descended": "node", "Chosen": "challenger", "ChunkRevealed": "node",
         "ElementPicked": "challenger", "StepExecuted": "anyone", "GameResolved": "contract",
         "GameVoided": "anyone"}


def ceil_log2(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0


def _short(h: str) -> str:
    return h[:10] + "…" if isinstance(h, str) and len(h) > 12 else str(h)


def to_move(state: dict) -> str | None:
    if STATUS.get(state["status"]) != "active":
        return None
    return "node" if state["phase"] in NODE_PHASES else "challenger"


def clocks(state: dict, budget: int, now: int) -> dict:
    """Both chess clocks at chain time `now`: the mover's runs from last_move_at."""
    mover = to_move(state)
    elapsed = max(0, now - state["last_move_at"]) if mover else 0
    node = state["node_clock"] - (min(elapsed, state["node_clock"]) if mover == "node" else 0)
    chal = state["challenger_clock"] - (min(elapsed, state["challenger_clock"]) if mover == "challenger" else 0)
    return {"budget": budget, "node_left": node, "challenger_left": chal, "running": mover,
            "node_clock": state["node_clock"], "challenger_clock": state["challenger_clock"],
            "last_move_at": state["last_move_at"]}


def _tensor_focus(t: dict, level: int, index: int) -> dict:
    """Leaves of the tensor tree under node (level, index), and the rows/columns they cover."""
    depth, col_bits = t["depth"], t["col_bits"]
    span = 1 << (depth - level)
    lo, hi = index * span, (index + 1) * span
    chunks = 1 << col_bits
    row_lo, row_hi = lo // chunks, min(t["rows"], -(-hi // chunks))
    if span >= chunks:
        col_lo, col_hi = 0, t["cols"]
    else:
        col_lo, col_hi = (lo % chunks) * CHUNK, min(t["cols"], (lo % chunks + span) * CHUNK)
    label = (f"rows {row_lo}–{row_hi - 1}" if row_hi - row_lo > 1 else f"row {row_lo}") + \
        f", cols {col_lo}–{col_hi - 1} of a {t['rows']}×{t['cols']} tensor"
    return {"scale": "tensor", "lo": lo, "hi": hi, "total": 1 << depth, "level": level, "depth": depth,
            "rows": [row_lo, row_hi], "cols": [col_lo, col_hi], "label": label}


def moves(events: list[dict], state: dict) -> list[dict]:
    """The game's events as moves with a sentence and the focus after each."""
    total = state["num_ops"]
    focus = {"scale": "ops", "lo": 0, "hi": total, "total": total, "label": f"all {total} ops"}
    tensor: dict | None = None
    out = []
    for n, e in enumerate(events, 1):
        a, name = e["args"], e["event"]
        text, points = "", None
        if name == "GameStarted":
            text = (f"challenged leaf {a['leaf_index']} of batch {a['batch_id']} (job {_short(a['job_id'])}): "
                    f"output root {_short(a['output_root'])} disputed")
        elif name == "TraceOpened":
            text = f"opened its trace: final state root {_short(a['final_state'])}"
        elif name == "Bisected":
            parts = len(a["claims"]) + 1
            points = [a["lo"] + (a["hi"] - a["lo"]) * j // parts for j in range(1, parts)]
            roots = f"{len(a['claims'])} state root" + ("s" if len(a["claims"]) != 1 else "")
            text = f"revealed {roots} inside ops {a['lo']}–{a['hi']} (at {', '.join(map(str, points))})"
            focus = {"scale": "ops", "lo": a["lo"], "hi": a["hi"], "total": total,
                     "label": f"ops {a['lo']}–{a['hi']} of {total}"}
        elif name == "Picked":
            text = f"disputes ops {a['lo']}–{a['hi']}" + (f": op {a['hi'] - 1}" if a["hi"] - a["lo"] == 1 else "")
            focus = {"scale": "ops", "lo": a["lo"], "hi": a["hi"], "total": total,
                     "label": f"ops {a['lo']}–{a['hi']} of {total}"}
        elif name == "TensorRevealed":
            rows, cols = a["rows"], a["cols"]
            col_bits = ceil_log2(-(-cols // CHUNK))
            tensor = {"rows": rows, "cols": cols, "col_bits": col_bits, "depth": ceil_log2(rows) + col_bits,
                      "op": a["position"] - 1}
            text = (f"revealed op {a['position'] - 1}'s output: a {rows}×{cols} tensor, root "
                    f"{_short(a['tensor_root'])}")
            focus = _tensor_focus(tensor, 0, 0)
        elif name == "Descended":
            text = f"revealed the {len(a['hashes'])} subtree roots below level {a['level']}"
        elif name == "Chosen" and tensor is not None:
            focus = _tensor_focus(tensor, a["level"], a["index"])
            text = f"disputes subtree {a['index']} at level {a['level']} of {tensor['depth']}: {focus['label']}"
        elif name == "ChunkRevealed":
            text = f"revealed the chunk's {len(a['values'])} values"
        elif name == "ElementPicked":
            text = f"disputes element ({a['row']}, {a['col']}): the node claims {a['claimed']}"
            focus = {"scale": "element", "row": a["row"], "col": a["col"], "claimed": a["claimed"],
                     "label": f"element ({a['row']}, {a['col']})" + (f" of op {tensor['op']}" if tensor else "")}
        elif name == "StepExecuted":
            same = str(a["claimed"]) == str(a["computed"])
            text = (f"one-step proof: the StepVerifier computed {a['computed']}, the node claimed {a['claimed']} "
                    f"({'upheld' if same else 'refuted'})")
        elif name == "GameResolved":
            text = ("the node won" if a["node_won"] else "the challenger won") + f": {a['reason']}"
        elif name == "GameVoided":
            text = "voided: the leaf was already proven invalid in another game; the bond is returned"
        else:
            text = name
        move = {"n": n, "event": name, "by": MOVER.get(name, "anyone"), "text": text, "tx": e["tx"],
                "block": e["block"], "time": e["time"], "focus": dict(focus), "args": a}
        if points is not None:
            move["points"] = points
        out.append(move)
    return out


def outcome(events: list[dict], stake_events_in: dict[str, list[dict]]) -> dict | None:
    """Winner, reason and money moved, from GameResolved and the StakeManager
    events in the same transaction (Slashed: stake taken, challenger's reward,
    treasury's share; BondAwarded: the challenger's bond to the node)."""
    resolved = next((e for e in events if e["event"] in ("GameResolved", "GameVoided")), None)
    if resolved is None:
        return None
    out = {"tx": resolved["tx"], "time": resolved["time"], "block": resolved["block"]}
    if resolved["event"] == "GameVoided":
        return {**out, "winner": None, "reason": "voided"}
    out.update(winner="node" if resolved["args"]["node_won"] else "challenger", reason=resolved["args"]["reason"])
    for e in stake_events_in.get(resolved["tx"], ()):
        if e["event"] == "Slashed":
            out.update(slashed_wei=str(e["args"]["amount"]), reward_wei=str(e["args"]["reward"]),
                       to_treasury_wei=str(e["args"]["to_treasury"]))
        elif e["event"] == "BondAwarded":
            out.update(bond_awarded_wei=str(e["args"]["bond"]))
    return out
