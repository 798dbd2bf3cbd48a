# pragma version 0.4.3
"""
@title ResultRollup
@notice Batches of signed inference results, posted as calldata by authorised
        coordinators. The contract keeps only the batch's Merkle root, a hash of
        its data and a deadline; anyone can rebuild every leaf (including the job
        input) from the transaction's calldata. After the deadline a batch
        finalizes; a leaf with an open dispute is not final until its game ends,
        and a leaf proven wrong is `invalid` for good.
@dev    A leaf is the static struct `Leaf` below; leaf hash =
        keccak256(abi_encode(leaf)). The batch's job inputs travel in the same
        calldata as one blob, concatenated in leaf order (`input_len` bytes
        each); post_batch checks every input against its leaf's `input_hash`,
        so whoever sees a posted leaf can re-execute it from calldata alone.
        batch root = binary Merkle root over the leaf hashes, padded with zero
        hashes to a power of two; internal node = keccak256(left ++ right);
        data hash = keccak256(inputs blob). Coordinators post `PostedLeaf`s
        plus `Run`s (node, model, count) over consecutive leaves; the
        contract rebuilds each full `Leaf`, computing input_hash itself. The signature is compact (EIP-2098:
        r, and s with the recovery bit on top); the one signature rule is
        the ecrecover precompile's (any s in [1, n), high s included), so
        every compact form that proves the node signed can be challenged
        and none of them can be voided as forged (opinfer.trace.leaf.
        recover_compact is its twin). The node signs the EIP-712 struct
        ResultLeaf(bytes16 jobId,uint256 modelId,bytes32 inputRoot,
        bytes32 outputRoot,bytes32 inputHash,address node) under the domain
        {name: "opinfer", version: "1", chainId, verifyingContract: this}.
        Sizes are bounded so that ABI decoding stays cheap: Vyper copies
        arguments into memory at their maximum size, and memory costs grow
        quadratically (see bench/gas.py).
"""

# ---------------------------------------------------------------- interfaces

interface IStakeManager:
    def is_active(_node: address) -> bool: view
    def unbonding(_node: address) -> uint256: view
    def unlock_at(_node: address) -> uint256: view

interface IModelRegistry:
    def model_active(_model_id: uint256) -> bool: view

# ---------------------------------------------------------------- events

event BatchPosted:
    batch_id: indexed(uint256)
    poster: indexed(address)
    root: bytes32
    data_hash: bytes32
    leaf_count: uint256
    deadline: uint256

event BatchFinalized:
    batch_id: indexed(uint256)

event LeafDisputed:
    batch_id: indexed(uint256)
    leaf_index: indexed(uint256)
    open_games: uint256

event LeafUndisputed:
    batch_id: indexed(uint256)
    leaf_index: indexed(uint256)
    open_games: uint256

event LeafInvalidated:
    batch_id: indexed(uint256)
    leaf_index: indexed(uint256)
    reason: String[32]

event CoordinatorSet:
    coordinator: indexed(address)
    allowed: bool

event DisputeGameSet:
    game: address

# ---------------------------------------------------------------- constants

MAX_LEAVES: constant(uint256) = 128
MAX_INPUTS_BYTES: constant(uint256) = 16384
# One leaf's input: DisputeGame.challenge takes it as Bytes[4096] (MAX_INPUT),
# so a longer one could never be disputed.
MAX_LEAF_INPUT_BYTES: constant(uint256) = 4096
MAX_DEPTH: constant(uint256) = 7  # log2(MAX_LEAVES)
MAX_RUNS: constant(uint256) = 32
UPPER_BIT: constant(uint256) = 1 << 255

DOMAIN_TYPEHASH: constant(bytes32) = keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
LEAF_TYPEHASH: constant(bytes32) = keccak256("ResultLeaf(bytes16 jobId,uint256 modelId,bytes32 inputRoot,bytes32 outputRoot,bytes32 inputHash,address node)")
NAME_HASH: constant(bytes32) = keccak256("opinfer")
VERSION_HASH: constant(bytes32) = keccak256("1")

# Leaf status codes (see `leaf_status`).
STATUS_UNKNOWN: constant(uint8) = 0
STATUS_POSTED: constant(uint8) = 1
STATUS_DISPUTED: constant(uint8) = 2
STATUS_FINAL: constant(uint8) = 3
STATUS_INVALID: constant(uint8) = 4

# ---------------------------------------------------------------- storage

struct Leaf:
    job_id: bytes16
    model_id: uint256
    input_root: bytes32
    output_root: bytes32
    input_hash: bytes32
    input_len: uint256
    node: address
    r: bytes32
    vs: bytes32

# What a coordinator posts per leaf: node, model and input hash are left out
# (they come from the leaf's run and from the input bytes), and the 128-bit
# job id shares a word with the input length: job = job_id << 128 | input_len.
struct PostedLeaf:
    job: uint256
    input_root: bytes32
    output_root: bytes32
    r: bytes32
    vs: bytes32

# A run of consecutive leaves from one node for one model.
struct Run:
    node: address
    model_id: uint256
    count: uint256

# Stored per batch in three slots: info = deadline | leaf_count << 64 | poster << 96.
struct Batch:
    root: bytes32
    data_hash: bytes32
    info: uint256

# @dev Adds and removes coordinators; wires the dispute game once.
owner: public(address)
# @dev Checks that each leaf's node is staked when posted.
stake_manager: public(immutable(IStakeManager))
# @dev Checks that each leaf's model exists and is active when posted.
registry: public(immutable(IModelRegistry))
# @dev The only contract that may change a leaf's dispute state.
dispute_game: public(address)
# @dev Seconds after posting during which leaves can be challenged.
challenge_window: public(immutable(uint256))
# @dev Addresses allowed to post batches.
is_coordinator: public(HashMap[address, bool])
# @dev Number of posted batches; ids are 1..batch_count.
batch_count: public(uint256)
# @dev Posted batches by id (read them with `batch`).
batches: HashMap[uint256, Batch]
# @dev Batches finalized after their deadline.
finalized: public(HashMap[uint256, bool])
# @dev Open dispute games per leaf (batch id, leaf index).
open_games: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Leaves proven wrong (or forged).
invalid: public(HashMap[uint256, HashMap[uint256, bool]])


@deploy
def __init__(_stake_manager: IStakeManager, _registry: IModelRegistry, _challenge_window: uint256):
    assert _challenge_window > 0, "ResultRollup: zero challenge window"
    self.owner = msg.sender
    stake_manager = _stake_manager
    registry = _registry
    challenge_window = _challenge_window


# ---------------------------------------------------------------- external: admin

@external
def set_coordinator(_coordinator: address, _allowed: bool):
    assert msg.sender == self.owner, "ResultRollup: caller is not the owner"
    self.is_coordinator[_coordinator] = _allowed
    log CoordinatorSet(coordinator=_coordinator, allowed=_allowed)


@external
def set_dispute_game(_game: address):
    assert msg.sender == self.owner, "ResultRollup: caller is not the owner"
    assert self.dispute_game == empty(address), "ResultRollup: dispute game already set"
    assert _game != empty(address), "ResultRollup: game is zero"
    self.dispute_game = _game
    log DisputeGameSet(game=_game)


# ---------------------------------------------------------------- external: coordinators

@external
def post_batch(_leaves: DynArray[PostedLeaf, MAX_LEAVES], _runs: DynArray[Run, MAX_RUNS], _inputs: Bytes[MAX_INPUTS_BYTES]) -> uint256:
    """
    @notice Post a batch of result leaves and their job inputs; returns the
            batch id. `_runs` assigns node and model to consecutive leaves.
    @dev Every run's node must be staked (or unbonding, while the leaves'
         challenge window closes before its stake unlocks: `_check_postable`)
         and its model active now, and
         each leaf's input at most MAX_LEAF_INPUT_BYTES (what
         DisputeGame.challenge can take). The contract hashes each leaf's
         input itself, so the committed leaf binds exactly the bytes in this
         calldata. Signatures are checked only when a leaf is challenged (or
         voided as forged).
    """
    assert self.is_coordinator[msg.sender], "ResultRollup: caller is not a coordinator"
    count: uint256 = len(_leaves)
    assert count > 0, "ResultRollup: empty batch"
    # Incremental Merkle tree: frontier[l] is the last complete subtree of
    # height l, so each leaf costs one keccak on average.
    frontier: bytes32[MAX_DEPTH + 1] = empty(bytes32[MAX_DEPTH + 1])
    done: uint256 = 0
    offset: uint256 = 0
    for run: Run in _runs:
        assert run.count > 0, "ResultRollup: empty run"
        assert done + run.count <= count, "ResultRollup: runs exceed leaves"
        self._check_postable(run.node)
        assert staticcall registry.model_active(run.model_id), "ResultRollup: model not active"
        for i: uint256 in range(MAX_LEAVES):
            if i == run.count:
                break
            leaf: PostedLeaf = _leaves[done]
            input_len: uint256 = leaf.job & (2**128 - 1)
            # Every per-leaf limit a later step depends on is enforced here:
            # a leaf that cannot be challenged must never be posted.
            assert input_len <= MAX_LEAF_INPUT_BYTES, "ResultRollup: leaf input above 4096 bytes"
            assert offset + input_len <= len(_inputs), "ResultRollup: inputs too short"
            input_hash: bytes32 = keccak256(slice(_inputs, offset, input_len))
            offset += input_len
            # abi_encode(Leaf): bytes16 job_id is left-aligned in its word.
            node: bytes32 = keccak256(abi_encode(
                (leaf.job >> 128) << 128, run.model_id, leaf.input_root, leaf.output_root, input_hash, input_len,
                run.node, leaf.r, leaf.vs,
            ))
            done += 1
            size: uint256 = done
            level: uint256 = 0
            for l: uint256 in range(MAX_DEPTH):
                if size % 2 == 1:
                    break
                node = keccak256(concat(frontier[level], node))
                size //= 2
                level += 1
            frontier[level] = node
    assert done == count, "ResultRollup: runs do not cover leaves"
    assert offset == len(_inputs), "ResultRollup: unused input bytes"
    root: bytes32 = self._root_of(frontier, count)
    data_hash: bytes32 = keccak256(_inputs)
    batch_id: uint256 = self.batch_count + 1
    self.batch_count = batch_id
    deadline: uint256 = block.timestamp + challenge_window
    self.batches[batch_id] = Batch(root=root, data_hash=data_hash, info=deadline | (count << 64) | (convert(msg.sender, uint256) << 96))
    log BatchPosted(batch_id=batch_id, poster=msg.sender, root=root, data_hash=data_hash, leaf_count=count, deadline=deadline)
    return batch_id


@external
def finalize(_batch_id: uint256):
    """
    @notice Finalize a batch after its deadline. Leaves under dispute become
            final only if their games end in the node's favour.
    """
    deadline: uint256 = self._deadline(_batch_id)
    assert block.timestamp > deadline, "ResultRollup: challenge window open"
    assert not self.finalized[_batch_id], "ResultRollup: already finalized"
    self.finalized[_batch_id] = True
    log BatchFinalized(batch_id=_batch_id)


@external
def void_forged_leaf(_batch_id: uint256, _index: uint256, _leaf: Leaf, _proof: DynArray[bytes32, MAX_DEPTH]):
    """
    @notice Mark a posted leaf invalid when its signature does not come from
            the node it names (the coordinator forged or corrupted it). Nobody
            is slashed: the node never signed it.
    """
    assert self._includes(_batch_id, _index, keccak256(abi_encode(_leaf)), _proof), "ResultRollup: leaf not in batch"
    assert not self.invalid[_batch_id][_index], "ResultRollup: leaf already invalid"
    assert self._recover(_leaf) != _leaf.node, "ResultRollup: signature is valid"
    self.invalid[_batch_id][_index] = True
    log LeafInvalidated(batch_id=_batch_id, leaf_index=_index, reason="forged signature")


# ---------------------------------------------------------------- external: dispute game only

@external
def mark_disputed(_batch_id: uint256, _index: uint256):
    self._only_game()
    games: uint256 = self.open_games[_batch_id][_index] + 1
    self.open_games[_batch_id][_index] = games
    log LeafDisputed(batch_id=_batch_id, leaf_index=_index, open_games=games)


@external
def mark_undisputed(_batch_id: uint256, _index: uint256):
    self._only_game()
    games: uint256 = self.open_games[_batch_id][_index] - 1
    self.open_games[_batch_id][_index] = games
    log LeafUndisputed(batch_id=_batch_id, leaf_index=_index, open_games=games)


@external
def mark_invalid(_batch_id: uint256, _index: uint256):
    self._only_game()
    self.open_games[_batch_id][_index] -= 1
    self.invalid[_batch_id][_index] = True
    log LeafInvalidated(batch_id=_batch_id, leaf_index=_index, reason="fraud proven")


# ---------------------------------------------------------------- views

@external
@view
def leaf_status(_batch_id: uint256, _index: uint256) -> uint8:
    """
    @notice 0 unknown, 1 posted, 2 disputed, 3 final, 4 invalid.
    """
    if _index >= (self.batches[_batch_id].info >> 64) & (2**32 - 1):
        return STATUS_UNKNOWN
    if self.invalid[_batch_id][_index]:
        return STATUS_INVALID
    if self.open_games[_batch_id][_index] > 0:
        return STATUS_DISPUTED
    if self.finalized[_batch_id]:
        return STATUS_FINAL
    return STATUS_POSTED


@external
@view
def verify_inclusion(_batch_id: uint256, _index: uint256, _leaf_hash: bytes32, _proof: DynArray[bytes32, MAX_DEPTH]) -> bool:
    """
    @notice True when `_leaf_hash` is leaf `_index` of the batch.
    """
    return self._includes(_batch_id, _index, _leaf_hash, _proof)


@external
@view
def verify_leaf(_batch_id: uint256, _index: uint256, _leaf: Leaf, _proof: DynArray[bytes32, MAX_DEPTH]) -> bool:
    """
    @notice True when `_leaf` is leaf `_index` of the batch.
    """
    return self._includes(_batch_id, _index, keccak256(abi_encode(_leaf)), _proof)


@external
@view
def batch(_batch_id: uint256) -> (bytes32, bytes32, uint256, uint256, address, bool):
    """
    @notice (root, data_hash, leaf_count, deadline, poster, finalized); zeros for unknown ids.
    """
    b: Batch = self.batches[_batch_id]
    return b.root, b.data_hash, (b.info >> 64) & (2**32 - 1), b.info & (2**64 - 1), convert(convert(b.info >> 96, uint160), address), self.finalized[_batch_id]


@external
@view
def batch_deadline(_batch_id: uint256) -> uint256:
    return self._deadline(_batch_id)


@external
@view
def domain_separator() -> bytes32:
    return self._domain_separator()


@external
@view
def leaf_digest(_leaf: Leaf) -> bytes32:
    """
    @notice The EIP-712 digest the node signs for this leaf.
    """
    return self._digest(_leaf)


@external
@view
def leaf_signer(_leaf: Leaf) -> address:
    """
    @notice The address that signed the leaf (empty when malformed).
    """
    return self._recover(_leaf)


# ---------------------------------------------------------------- internal

@internal
@view
def _only_game():
    assert msg.sender == self.dispute_game, "ResultRollup: caller is not the dispute game"


@internal
@view
def _check_postable(_node: address):
    """
    @dev A node with active stake may have leaves posted. So may a node whose
         stake is unbonding (still slashable: a node that answers and then
         asks to leave must not take its lie off the chain), but only while
         the batch's challenge window closes before the stake unlocks, so
         every challenge the leaves can get is opened before withdrawal is
         possible (and withdrawal waits for open games). That also bounds how
         long re-posted leaves can keep a leaving node's games going: no
         posting after unlock_at - challenge_window.
    """
    if staticcall stake_manager.is_active(_node):
        return
    assert staticcall stake_manager.unbonding(_node) > 0, "ResultRollup: node not staked"
    assert block.timestamp + challenge_window < staticcall stake_manager.unlock_at(_node), "ResultRollup: node stake unlocks within the window"


@internal
@view
def _deadline(_batch_id: uint256) -> uint256:
    info: uint256 = self.batches[_batch_id].info
    assert info != 0, "ResultRollup: unknown batch"
    return info & (2**64 - 1)


@internal
@view
def _domain_separator() -> bytes32:
    return keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chain.id, self))


@internal
@view
def _digest(_leaf: Leaf) -> bytes32:
    struct_hash: bytes32 = keccak256(abi_encode(
        LEAF_TYPEHASH, _leaf.job_id, _leaf.model_id, _leaf.input_root, _leaf.output_root, _leaf.input_hash, _leaf.node
    ))
    return keccak256(concat(b"\x19\x01", self._domain_separator(), struct_hash))


@internal
@view
def _recover(_leaf: Leaf) -> address:
    """
    @dev Signer of a compact (EIP-2098) signature; empty when malformed.
         No low-s rule: the precompile accepts a high s, and refusing one
         here would let a node's high-s twin escape `challenge` while it
         still proves the node signed. Off-chain code stores the canonical
         low-s form (opinfer.trace.leaf.canonical_signature).
    """
    vs: uint256 = convert(_leaf.vs, uint256)
    return ecrecover(self._digest(_leaf), 27 + (vs >> 255), convert(_leaf.r, uint256), vs & (UPPER_BIT - 1))


@internal
@view
def _includes(_batch_id: uint256, _index: uint256, _leaf_hash: bytes32, _proof: DynArray[bytes32, MAX_DEPTH]) -> bool:
    batch: Batch = self.batches[_batch_id]
    leaf_count: uint256 = (batch.info >> 64) & (2**32 - 1)
    if _index >= leaf_count:
        return False
    depth: uint256 = self._depth(leaf_count)
    if len(_proof) != depth:
        return False
    node: bytes32 = _leaf_hash
    index: uint256 = _index
    for sibling: bytes32 in _proof:
        if index % 2 == 0:
            node = keccak256(concat(node, sibling))
        else:
            node = keccak256(concat(sibling, node))
        index //= 2
    return node == batch.root


@internal
@pure
def _depth(_count: uint256) -> uint256:
    depth: uint256 = 0
    for i: uint256 in range(MAX_DEPTH + 1):
        if (1 << depth) >= _count:
            break
        depth += 1
    return depth


@internal
@pure
def _root_of(_frontier: bytes32[MAX_DEPTH + 1], _count: uint256) -> bytes32:
    """
    @dev Root of the tree over `_count` leaves padded with zero leaves to a
         power of two, from the incremental frontier: walk up from the first
         padding position; a left sibling is a complete subtree of real
         leaves (frontier), a right sibling is all padding (zero subtree).
    """
    depth: uint256 = self._depth(_count)
    if _count == 1 << depth:
        return _frontier[depth]
    node: bytes32 = empty(bytes32)
    zero: bytes32 = empty(bytes32)
    for level: uint256 in range(MAX_DEPTH):
        if level == depth:
            break
        if (_count >> level) % 2 == 1:
            node = keccak256(concat(_frontier[level], node))
        else:
            node = keccak256(concat(node, zero))
        zero = keccak256(concat(zero, zero))
    return node
