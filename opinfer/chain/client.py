"""The protocol's one read client: every service, the SDK and the tests read
the chain through `ProtocolClient` and get typed results back (GameState,
BatchPosted, BatchRecord, ModelInfo, NodeRecord, GameStarted; the status and
phase enums of opinfer/trace/tables.py), instead of each calling the ABI and
unpacking tuples its own way.

Addresses come from the rollup alone (its stake manager, registry and dispute
game): a reader needs an RPC URL and the rollup's address. A batch's leaves
are decoded from the calldata of the `post_batch` call that posted it by one
decoder (`decode_post_batch`), wherever that call sits in its transaction
(opinfer.chain.calls), and checked against the root the rollup stored.

Light on purpose: web3 and our ABIs only (no signing, no deployment, no trace
building), so the SDK verifies with it (tests/unit/test_light_imports.py).
Sending is opinfer.chain.protocol.ProtocolChain's, which extends this."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from web3 import HTTPProvider, Web3

from opinfer.chain import artifacts, calls
from opinfer.chain.reorg import canonical_hash
from opinfer.errors import ChainError
from opinfer.trace.leaf import Batch
from opinfer.trace.tables import CHOOSE, ELEMENT, PICK, GameState, LeafStatus

# The node move whose event carries what the challenger answers in each phase.
REVEALED_IN = {PICK: ("Bisected", "claims"), CHOOSE: ("Descended", "hashes"), ELEMENT: ("ChunkRevealed", "values")}


class BatchUnavailable(ChainError):
    """The batch's data cannot be read here: its post_batch call was made by a
    contract and the RPC cannot trace transactions."""


class BatchMismatch(ChainError):
    """The posting transaction holds no post_batch call that decodes to the stored batch."""


def contract(w3: Web3, name: str, address: str, build_dir=None):
    """A deployed protocol contract, with its shipped ABI (or the one compiled in build_dir)."""
    abi = artifacts.abi(name) if build_dir is None else artifacts.load(name, build_dir).abi
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=abi)


def connect(rpc_url: str, timeout: float = 30.0) -> Web3:
    return Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))


class _Record:
    """Dataclass records read as mappings too (r["finalized"]), for callers written against dicts."""

    def __getitem__(self, key: str):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass(frozen=True)
class BatchPosted(_Record):
    """A ResultRollup.BatchPosted event (its arguments in order), with where it was mined."""
    batch_id: int
    poster: str
    root: bytes
    data_hash: bytes
    leaf_count: int
    deadline: int
    tx_hash: bytes
    block_number: int
    block_hash: bytes


@dataclass(frozen=True)
class BatchRecord(_Record):
    """ResultRollup.batch(id) as the chain holds it."""
    batch_id: int
    root: bytes
    data_hash: bytes
    leaf_count: int
    deadline: int
    poster: str
    finalized: bool


@dataclass(frozen=True)
class ModelInfo(_Record):
    """ModelRegistry.get_model(id) and model_name(id)."""
    id: int
    name: str
    model_root: bytes
    num_ops: int         # ops per trace step (the game's `ops_per_step`)
    price_per_1k: int = 0   # wei per 1,000 tokens (prompt + completion)
    active: bool = True

    @property
    def model_id(self) -> int:
        return self.id

    @property
    def ops_per_step(self) -> int:
        return self.num_ops

    def cost_wei(self, tokens: int) -> int:
        return -(-self.price_per_1k * tokens // 1000)  # rounded up


@dataclass(frozen=True)
class NodeRecord(_Record):
    """A node as the registry lists it, with its stake."""
    address: str
    endpoint: str
    model_ids: tuple[int, ...]
    staked: bool
    stake_wei: int


@dataclass(frozen=True)
class GameStarted(_Record):
    """A DisputeGame.GameStarted event."""
    game_id: int
    batch_id: int
    leaf_index: int
    node: str
    challenger: str
    job_id: bytes
    model_id: int
    input_root: bytes
    output_root: bytes
    tx_hash: bytes
    block_number: int


def _plain(rows) -> list[tuple]:
    return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]


def decode_post_batch(rollup, raw: bytes) -> Batch:
    """The batch a post_batch call's input carries (raises on malformed calldata)."""
    fn, args = rollup.decode_function_input(raw)
    if fn.fn_name != "post_batch":
        raise ValueError(f"a {fn.fn_name} call, not post_batch")
    return Batch.from_calldata(_plain(args["_leaves"]), _plain(args["_runs"]), bytes(args["_inputs"]))


class ProtocolClient:
    """Typed reads of the protocol's contracts over one web3 connection.
    `registry`, when given, must be the one the rollup uses."""

    def __init__(self, w3: Web3, rollup: str, registry: str | None = None):
        self.w3 = w3
        self.rollup = contract(w3, "ResultRollup", rollup)
        f = self.rollup.functions
        bound = f.registry().call()
        if int(bound, 16) == 0:
            raise ChainError(f"the rollup at {rollup} names no model registry")
        if registry and Web3.to_checksum_address(registry) != Web3.to_checksum_address(bound):
            raise ChainError(f"registry {registry} is not the one the rollup at {rollup} uses ({bound})")
        self.registry = contract(w3, "ModelRegistry", bound)
        self.stake_manager = contract(w3, "StakeManager", f.stake_manager().call())
        self.game_contract = contract(w3, "DisputeGame", f.dispute_game().call())
        self._post_batch = calls.selector(self.rollup, "post_batch")

    @classmethod
    def connect(cls, rpc_url: str, rollup: str, registry: str | None = None, timeout: float = 30.0):
        return cls(connect(rpc_url, timeout), rollup, registry)

    #: the account the reads default to (ProtocolChain: its signer); None for a read-only client
    address: str | None = None

    def _who(self, address: str | None) -> str:
        if address is None and self.address is None:
            raise ChainError("a read-only protocol client needs an address to read")
        return address or self.address

    @cached_property
    def chain_id(self) -> int:
        return self.w3.eth.chain_id

    # ------------------------------------------------------------ blocks

    def head(self) -> int:
        return self.w3.eth.block_number

    def timestamp(self, block="latest") -> int:
        return self.w3.eth.get_block(block)["timestamp"]

    def block_hash(self, number: int) -> bytes | None:
        """The canonical hash of block `number` (None past the head): reorganisation checks."""
        return canonical_hash(self.w3)(number)

    # ------------------------------------------------------------ registry

    def model_count(self) -> int:
        return self.registry.functions.model_count().call()

    def model(self, model_id: int, block="latest") -> ModelInfo:
        f = self.registry.functions
        root, num_ops, price, active = f.get_model(model_id).call(block_identifier=block)
        return ModelInfo(model_id, f.model_name(model_id).call(block_identifier=block), bytes(root), num_ops, price,
                         active)

    def model_id(self, name: str, block="latest") -> int:
        """The registered id of a model name (0: none)."""
        return self.registry.functions.model_id_by_name(name).call(block_identifier=block)

    def find_model(self, ref: str) -> int:
        """An on-chain model id from a name or a decimal id (ChainError when the registry has none)."""
        if ref.isdigit():
            model_id = int(ref)
            if not 1 <= model_id <= self.model_count():
                raise ChainError(f"no model with id {model_id} in the registry")
            return model_id
        model_id = ProtocolClient.model_id(self, ref)   # the registry's answer, whatever a subclass adds
        if not model_id:
            raise ChainError(f"no model named {ref!r} in the registry")
        return model_id

    def models(self) -> list[ModelInfo]:
        return [self.model(i) for i in range(1, self.model_count() + 1)]

    def model_active(self, model_id: int) -> bool:
        return self.registry.functions.model_active(model_id).call()

    def listing(self, address: str | None = None) -> tuple[str, list[int]] | None:
        """(endpoint, model ids) of a node the registry lists, else None."""
        from web3.exceptions import ContractLogicError

        try:
            endpoint, model_ids, _ = self.registry.functions.get_node(self._who(address)).call()
        except ContractLogicError:
            return None
        return endpoint, list(model_ids)

    def nodes(self) -> list[NodeRecord]:
        f = self.registry.functions
        out = []
        for i in range(f.node_count().call()):
            address = f.node_list(i).call()
            endpoint, model_ids, staked = f.get_node(address).call()
            out.append(NodeRecord(address, endpoint, tuple(model_ids), staked, self.stake(address)))
        return out

    # ------------------------------------------------------------ stake

    def stake(self, address: str | None = None) -> int:
        return self.stake_manager.functions.stake(self._who(address)).call()

    def min_stake(self) -> int:
        return self.stake_manager.functions.min_stake().call()

    def is_active(self, address: str | None = None) -> bool:
        return self.stake_manager.functions.is_active(self._who(address)).call()

    def slashable(self, address: str | None = None) -> int:
        return self.stake_manager.functions.slashable(self._who(address)).call()

    def unbonding(self, address: str | None = None) -> tuple[int, int]:
        """(wei unbonding, unlock time)."""
        f, who = self.stake_manager.functions, self._who(address)
        return f.unbonding(who).call(), f.unlock_at(who).call()

    def open_disputes(self, address: str | None = None) -> int:
        return self.stake_manager.functions.open_disputes(self._who(address)).call()

    def bond(self, address: str | None = None) -> int:
        return self.stake_manager.functions.bond(self._who(address)).call()

    def claimable(self, address: str | None = None) -> int:
        return self.stake_manager.functions.claimable(self._who(address)).call()

    def slashed_nodes(self, from_block: int, to_block: int) -> list[str]:
        logs = self.stake_manager.events.Slashed().get_logs(from_block=from_block, to_block=to_block)
        return [e["args"]["node"] for e in logs]

    # ------------------------------------------------------------ rollup

    def challenge_window(self) -> int:
        return self.rollup.functions.challenge_window().call()

    def batch_count(self, block="latest") -> int:
        return self.rollup.functions.batch_count().call(block_identifier=block)

    def batch(self, batch_id: int, block="latest") -> BatchRecord:
        root, data_hash, count, deadline, poster, finalized = self.rollup.functions.batch(batch_id).call(
            block_identifier=block)
        return BatchRecord(batch_id, bytes(root), bytes(data_hash), count, deadline, poster, finalized)

    def leaf_status(self, batch_id: int, index: int, block="latest") -> LeafStatus:
        return LeafStatus(self.rollup.functions.leaf_status(batch_id, index).call(block_identifier=block))

    def includes(self, batch_id: int, index: int, leaf_hash: bytes, proof: list[bytes], block="latest") -> bool:
        return self.rollup.functions.verify_inclusion(batch_id, index, leaf_hash, proof).call(block_identifier=block)

    def leaf_signer(self, record: tuple) -> str:
        """Who signed a posted leaf record (the contract's own ecrecover rule)."""
        return self.rollup.functions.leaf_signer(record).call()

    def batch_events(self, from_block: int, to_block, batch_id: int | None = None) -> list[BatchPosted]:
        filters = {"batch_id": batch_id} if batch_id is not None else None
        logs = self.rollup.events.BatchPosted().get_logs(from_block=from_block, to_block=to_block,
                                                         argument_filters=filters)
        return [self._batch_posted(e) for e in logs]

    @staticmethod
    def _batch_posted(e) -> BatchPosted:
        a = e["args"]
        return BatchPosted(a["batch_id"], a["poster"], bytes(a["root"]), bytes(a["data_hash"]), a["leaf_count"],
                           a["deadline"], bytes(e["transactionHash"]), e["blockNumber"], bytes(e["blockHash"]))

    def batches_posted(self, receipt) -> list[BatchPosted]:
        """The BatchPosted events in a transaction's receipt (in order)."""
        from web3.logs import DISCARD

        return [self._batch_posted(e) for e in self.rollup.events.BatchPosted().process_receipt(receipt,
                                                                                              errors=DISCARD)]

    def load_batch(self, batch_id: int, tx_hash: bytes) -> Batch:
        """The batch rebuilt from the calldata of the post_batch call in `tx_hash`
        that posted it (a direct call, or one made by a contract: opinfer.chain.calls),
        checked against the root and data hash the rollup stores: calldata is never
        trusted blindly. Raises BatchUnavailable when the call was made by a contract
        and the RPC cannot trace, BatchMismatch when no call matches."""
        stored = self.batch(batch_id)
        return self._decode(batch_id, tx_hash, stored.root, stored.data_hash)

    def event_batch(self, event: BatchPosted) -> Batch:
        """The batch a BatchPosted event announced, checked against the event's own root and
        data hash (consistent with the event even when the chain has reorganised since)."""
        return self._decode(event.batch_id, event.tx_hash, event.root, event.data_hash)

    def _decode(self, batch_id: int, tx_hash: bytes, root: bytes, data_hash: bytes) -> Batch:
        try:
            inputs = calls.call_inputs(self.w3, tx_hash, self.rollup.address, self._post_batch)
        except calls.TracerUnavailable as exc:
            raise BatchUnavailable(f"batch {batch_id}: {exc}") from None
        if not inputs:
            raise BatchMismatch(f"batch {batch_id}: transaction 0x{bytes(tx_hash).hex()} makes no post_batch call")
        errors = []
        for raw in inputs:  # a contract may post several batches in one transaction: match by root
            try:
                batch = decode_post_batch(self.rollup, raw)
            except Exception as exc:  # noqa: BLE001 - any malformed calldata
                errors.append(f"calldata does not decode: {exc}")
                continue
            if batch.root == root and batch.data_hash == data_hash:
                return batch
            errors.append("calldata does not match the posted root")
        raise BatchMismatch(f"batch {batch_id}: {'; '.join(errors)}")

    def posted_batch(self, batch_id: int, to_block="latest") -> Batch:
        """Batch `batch_id` from its BatchPosted event's transaction (the newest posting up to `to_block`)."""
        events = self.batch_events(0, to_block, batch_id=batch_id)
        if not events:
            raise BatchMismatch(f"batch {batch_id} not found")
        return self.event_batch(events[-1])

    # ------------------------------------------------------------ dispute game

    def game_count(self) -> int:
        return self.game_contract.functions.game_count().call()

    def game(self, gid: int) -> GameState:
        return GameState.from_raw(self.game_contract.functions.games(gid).call())

    def challenge_bond(self) -> int:
        return self.game_contract.functions.challenge_bond().call()

    def has_challenged(self, batch_id: int, index: int, challenger: str | None = None) -> bool:
        return self.game_contract.functions.has_challenged(batch_id, index, self._who(challenger)).call()

    def games_started(self, from_block: int, to_block="latest", **filters) -> list[GameStarted]:
        """GameStarted events; `filters` on the indexed arguments (node=, batch_id=, game_id=)."""
        logs = self.game_contract.events.GameStarted().get_logs(from_block=from_block, to_block=to_block,
                                                                argument_filters=filters or None)
        return [GameStarted(a["game_id"], a["batch_id"], a["leaf_index"], a["node"], a["challenger"],
                            bytes(a["job_id"]), a["model_id"], bytes(a["input_root"]), bytes(a["output_root"]),
                            bytes(e["transactionHash"]), e["blockNumber"]) for e in logs for a in [e["args"]]]

    def revealed(self, gid: int, phase: int, from_block: int = 0) -> list:
        """What the node's last move published for the challenger's `phase` ([] when nothing yet)."""
        if phase not in REVEALED_IN:
            return []
        name, field = REVEALED_IN[phase]
        logs = getattr(self.game_contract.events, name)().get_logs(from_block=from_block,
                                                                   argument_filters={"game_id": gid})
        return list(logs[-1]["args"][field]) if logs else []

    def resolved_reason(self, gid: int, from_block: int = 0) -> str | None:
        logs = self.game_contract.events.GameResolved().get_logs(from_block=from_block,
                                                                 argument_filters={"game_id": gid})
        return logs[-1]["args"]["reason"] if logs else None

    def challenged_input(self, start: GameStarted) -> bytes:
        """The disputed job's input bytes: from the challenge call (wherever it sits in
        its transaction), else from the batch's post_batch call."""
        sel = calls.selector(self.game_contract, "challenge")
        try:
            for raw in calls.call_inputs(self.w3, start.tx_hash, self.game_contract.address, sel):
                _, args = self.game_contract.decode_function_input(raw)
                if (args["_batch_id"], args["_index"]) == (start.batch_id, start.leaf_index):
                    return bytes(args["_input"])
        except Exception:  # noqa: BLE001 - no tracer, or malformed: fall back to the batch
            pass
        batch = self.posted_batch(start.batch_id, to_block=start.block_number)
        return batch.leaves[start.leaf_index].input
