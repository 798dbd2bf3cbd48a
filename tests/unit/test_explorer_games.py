"""The explorer's picture of a dispute game (coordinator/explorer/games.py): pure, no chain."""

from coordinator.explorer import games as g


def ev(name, **args):
    return {"event": name, "args": args, "tx": f"0x{name.lower()}", "block": 1, "time": 100}


STATE = {"num_ops": 95, "status": 3, "phase": 9, "node_clock": 44, "challenger_clock": 49, "last_move_at": 100}


def test_moves_narrow_from_the_op_range_to_the_tensor_to_one_element():
    events = [ev("GameStarted", batch_id=2, leaf_index=0, job_id="0x" + "11" * 16, output_root="0x" + "22" * 32),
              ev("Bisected", lo=0, hi=95, claims=["0x"] * 3), ev("Picked", lo=23, hi=47),
              ev("Picked", lo=46, hi=47),
              ev("TensorRevealed", position=47, tensor_root="0x" + "33" * 32, rows=5, cols=384),
              ev("Chosen", level=2, index=0), ev("Chosen", level=6, index=1), ev("Chosen", level=8, index=37),
              ev("ElementPicked", row=1, col=83, claimed=41), ev("StepExecuted", claimed=41, computed=1),
              ev("GameResolved", node_won=False, reason="step refuted claim")]
    moves = g.moves(events, STATE)
    assert [m["by"] for m in moves[:3]] == ["challenger", "node", "challenger"]
    assert moves[0]["focus"] == {"scale": "ops", "lo": 0, "hi": 95, "total": 95, "label": "all 95 ops"}
    assert moves[1]["points"] == [23, 47, 71]                     # DisputeGame.pick's dissection
    assert (moves[2]["focus"]["lo"], moves[2]["focus"]["hi"]) == (23, 47)
    assert moves[3]["text"].endswith("op 46")
    # 5 x 384: 24 chunks of 16 per row -> 5 column bits; 8 rows -> depth 3 + 5 = 8.
    tensor = moves[4]["focus"]
    assert (tensor["scale"], tensor["total"], tensor["rows"], tensor["cols"]) == ("tensor", 256, [0, 5], [0, 384])
    assert moves[5]["focus"]["rows"] == [0, 2]                    # level 2 of 8: a quarter = 2 rows
    assert (moves[6]["focus"]["rows"], moves[6]["focus"]["cols"]) == ([0, 1], [64, 128])   # 4 leaves of row 0
    leaf = moves[7]["focus"]                                      # leaf 37 = row 1, chunk 5
    assert (leaf["lo"], leaf["hi"], leaf["rows"], leaf["cols"]) == (37, 38, [1, 2], [80, 96])
    assert moves[8]["focus"]["scale"] == "element" and moves[8]["focus"]["label"] == "element (1, 83) of op 46"
    assert "refuted" in moves[9]["text"] and moves[10]["text"] == "the challenger won: step refuted claim"


def test_outcome_reads_the_slash_in_the_resolving_transaction():
    events = [ev("GameStarted"), ev("GameResolved", node_won=False, reason="step refuted claim")]
    slash = {"event": "Slashed", "args": {"amount": 2 * 10**18, "reward": 10**18, "to_treasury": 10**18}}
    out = g.outcome(events, {"0xgameresolved": [slash]})
    assert out["winner"] == "challenger" and out["slashed_wei"] == str(2 * 10**18)
    assert out["reward_wei"] == str(10**18) and out["tx"] == "0xgameresolved"
    assert g.outcome(events[:1], {}) is None                      # still being played


def test_clocks_run_down_for_the_party_to_move_only():
    active = {**STATE, "status": 1, "phase": 2, "node_clock": 60, "challenger_clock": 50, "last_move_at": 100}
    c = g.clocks(active, 60, now=112)
    assert (c["running"], c["node_left"], c["challenger_left"]) == ("node", 48, 50)
    c = g.clocks({**active, "phase": 3}, 60, now=200)                 # challenger to move, out of time
    assert (c["running"], c["node_left"], c["challenger_left"]) == ("challenger", 60, 0)
    assert g.clocks(STATE, 60, now=500)["running"] is None             # game over: no clock runs
