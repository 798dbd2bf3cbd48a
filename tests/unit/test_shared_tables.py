"""Each table the Python side shares with the contracts is defined once in
Python (opinfer/semantics: op codes, ref kinds, chunk sizes, element-rule
constants; opinfer/trace/tables.py: game phases, statuses and fields, leaf
statuses) and equals the contract's own: its constants read from the Vyper
sources, the game's fields from the compiled ABI."""

import dataclasses
import re
from pathlib import Path

import pytest

from opinfer.semantics import decoder_ops, elements, ops, program, tensor
from opinfer.chain import artifacts
from opinfer.trace import leaf, tables

ROOT = Path(__file__).resolve().parents[2]
_CONST = re.compile(r"^([A-Z][A-Z0-9_]*): constant\((\w+)\) = (.+?)\s*(?:#.*)?$", re.M)


def constants(contract: str) -> dict[str, int]:
    """The integer constants of contracts/<contract>.vy (expressions over numbers and earlier constants)."""
    out: dict[str, int] = {}
    for name, _type, expr in _CONST.findall((ROOT / "contracts" / f"{contract}.vy").read_text()):
        expr = expr.replace("max_value(uint256)", str(2**256 - 1))
        if re.fullmatch(r"[\w\s()+\-*/<>]+", expr):
            try:
                out[name] = int(eval(expr, {"__builtins__": {}}, dict(out)))  # noqa: S307 - our own sources
            except (NameError, SyntaxError):
                pass
    return out


def same_names(contract: str, module) -> list[str]:
    """Constants of one name in the contract and the module: they must agree."""
    c = constants(contract)
    shared = [n for n in c if isinstance(getattr(module, n, None), int)]
    assert [(n, c[n]) for n in shared] == [(n, getattr(module, n)) for n in shared]
    return shared


def test_opcodes_and_ref_kinds():
    names = {name.upper(): code for code, name in ops.NAMES.items()}
    for contract in ("StepVerifier", "DecoderOps"):
        c = constants(contract)
        opcodes = {k[3:]: v for k, v in c.items() if k.startswith("OP_") and k[3:] in names}
        assert opcodes, contract
        assert all(names[op] == v for op, v in opcodes.items()), contract
    sv = constants("StepVerifier")
    assert sorted(sv[f"OP_{n}"] for n in names if f"OP_{n}" in sv) == list(range(1, 13))
    assert sv["OP_DECODER_FIRST"] == ops.EMBED_TOKEN
    codes = set(range(1, 28)) | {ops.EXP_SUMS, ops.PROBS, ops.PENALTY}   # 30, 31: softmax in chunks; 32: penalties
    assert set(ops.NAMES) == codes and set(ops.NAMES) <= set(ops.RUN) and set(ops.NAMES) <= set(ops.READS)
    assert (sv["KIND_INPUT"], sv["KIND_SAME"], sv["KIND_PREV"], sv["KIND_WEIGHT"]) == (ops.INPUT, ops.SAME, ops.PREV,
                                                                                        ops.WEIGHT)
    assert sv["PARAMS_AT"] == 3 + 4 * ops.MAX_SLOTS and sv["DESC_WORDS"] == ops.DESC_WORDS


@pytest.mark.parametrize("contract,module,at_least", [
    ("StepVerifier", ops, 4), ("StepVerifier", program, 3), ("StepVerifier", tensor, 1),
    ("DecoderOps", ops, 4), ("DecoderOps", decoder_ops, 5), ("DecoderOps", elements, 4),
    ("ElementRules", elements, 12), ("DisputeGame", tensor, 1),
])
def test_chunk_sizes_and_element_constants(contract, module, at_least):
    assert len(same_names(contract, module)) >= at_least


def test_game_phases_statuses_and_fields():
    c = constants("DisputeGame")
    assert {v: k[6:].lower() for k, v in c.items() if k.startswith("PHASE_")} == tables.PHASE_NAMES
    assert {v: k[7:].lower().replace("_", " ") for k, v in c.items() if k.startswith("STATUS_")} == \
        {k: v for k, v in tables.GAME_STATUS_NAMES.items() if k}
    abi = artifacts.abi("DisputeGame")   # the shipped ABI (test_packaged_abis: = the compiled one)
    games = next(f for f in abi if f.get("name") == "games")
    assert tuple(c["name"] for c in games["outputs"][0]["components"]) == tables.GAME_FIELDS


def test_leaf_statuses_and_sizes():
    c = constants("ResultRollup")
    assert {v: k[7:].lower() for k, v in c.items() if k.startswith("STATUS_")} == tables.LEAF_STATUS_NAMES
    assert (c["MAX_LEAF_INPUT_BYTES"], c["MAX_INPUTS_BYTES"]) == (leaf.MAX_INPUT_BYTES, leaf.MAX_INPUTS_BYTES)


def test_one_definition_each():
    """The services and the SDK use these tables; none defines its own."""
    from coordinator import chain
    from coordinator.explorer import games, views
    from opinfer.sdk import commands, verify
    from opinfer.trace import player

    assert chain.LEAF_STATUS is verify.STATUS is tables.LEAF_STATUS_NAMES
    assert games.PHASES is commands.PHASES is tables.PHASE_NAMES and games.NODE_PHASES is player.NODE_PHASES
    assert views.GAME_FIELDS is player.GAME_FIELDS is tables.GAME_FIELDS and games.CHUNK == tensor.CHUNK
    copy = re.compile(r'\d\s*:\s*"(challenger won|descend|disputed)"|"leaf_index", "node"')   # a table written out
    for top in ("node", "challenger", "coordinator", "opinfer"):
        for path in (ROOT / top).rglob("*.py"):
            if path.name != "tables.py":
                assert not copy.search(path.read_text()), path


def _abi(contract: str) -> list:
    return artifacts.abi(contract)


def test_enums_are_the_contracts_constants():
    """The typed client's enums (tables.Phase, GameStatus, LeafStatus) are the one definition: each
    member is the contract's constant of that name, and the plain names derive from them."""
    game, rollup = constants("DisputeGame"), constants("ResultRollup")
    assert {f"PHASE_{p.name}": int(p) for p in tables.Phase} == {k: v for k, v in game.items()
                                                                 if k.startswith("PHASE_")}
    assert {f"STATUS_{s.name}": int(s) for s in tables.GameStatus if s} == {k: v for k, v in game.items()
                                                                            if k.startswith("STATUS_")}
    assert {f"STATUS_{s.name}": int(s) for s in tables.LeafStatus} == {k: v for k, v in rollup.items()
                                                                       if k.startswith("STATUS_")}
    assert tables.LEAF_FINAL is tables.LeafStatus.FINAL and tables.LeafStatus(4).label == "invalid"
    assert tables.CHALLENGER_WON is tables.GameStatus.CHALLENGER_WON and tables.PHASE_NAMES[tables.PICK] == "pick"


def test_typed_records_follow_the_abi():
    """GameState is games(id)'s tuple field for field (and decodes one); the event records carry the
    events' arguments; ModelInfo reads get_model's outputs."""
    from opinfer.chain import client

    fields = lambda cls: tuple(f.name for f in dataclasses.fields(cls))  # noqa: E731
    games = next(f for f in _abi("DisputeGame") if f.get("name") == "games")
    assert fields(tables.GameState) == tuple(c["name"] for c in games["outputs"][0]["components"])
    raw = list(range(len(tables.GAME_FIELDS)))
    for i, name in enumerate(tables.GAME_FIELDS):
        if name in ("model_root", "lo_root", "hi_root", "pending", "subtree"):
            raw[i] = bytes([i]) * 32
    raw[tables.GAME_FIELDS.index("status")], raw[tables.GAME_FIELDS.index("phase")] = 3, 8
    g = tables.GameState.from_raw(raw)
    assert g.status is tables.GameStatus.CHALLENGER_WON and g.phase is tables.Phase.ELEMENT and not g.active
    assert g["subtree"] == bytes([25]) * 32 and "lo" in g and g.as_tuple()[0] == 0

    def event_args(contract, name):
        event = next(e for e in _abi(contract) if e.get("type") == "event" and e["name"] == name)
        return tuple(i["name"] for i in event["inputs"])

    where = ("tx_hash", "block_number")
    assert fields(client.BatchPosted) == event_args("ResultRollup", "BatchPosted") + where + ("block_hash",)
    assert fields(client.GameStarted) == event_args("DisputeGame", "GameStarted") + where
    get_model = next(f for f in _abi("ModelRegistry") if f.get("name") == "get_model")
    assert len(get_model["outputs"]) == len(fields(client.ModelInfo)) - 2      # + id and name
    batch = next(f for f in _abi("ResultRollup") if f.get("name") == "batch")
    assert len(batch["outputs"]) == len(fields(client.BatchRecord)) - 1        # + batch_id
