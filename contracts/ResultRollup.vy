# pragma version 0.4.3
"""
@title ResultRollup
@notice Batches of signed inference results, posted as calldata by authorised
        coordinators. The contract keeps only the batch's Merkle root, a hash of
        its data and a deadline; anyone can rebuild every leaf (including the job
        input) from the transaction's calldata. After the deadline a batch
        finalizes; a leaf with an open dispute is not final until its game ends,
        and a leaf proven wrong is `invalid` for good.
@dev    Leaf record (bytes), 225-byte header then the compressed job input:
          [0:32] job_id  [32:64] model_id  [64:96] input_root  [96:128] output_root
          [128:160] node (address, left-padded)  [160:192] r  [192:224] s  [224] v
          [225:] input
        leaf hash = keccak256(record); batch root = binary Merkle root over the
        leaf hashes, padded with zero hashes to a power of two; internal node =
        keccak256(left ++ right). The node signs the EIP-712 struct
        ResultLeaf(bytes32 jobId,uint256 modelId,bytes32 inputRoot,
        bytes32 outputRoot,bytes32 inputHash,address node) with
        inputHash = keccak256(input), under the domain
        {name: "opinfer", version: "1", chainId, verifyingContract: this}.
"""

# ---------------------------------------------------------------- interfaces

interface IStakeManager:
    def is_active(_node: address) -> bool: view

interface IModelRegistry:
    def get_model(_model_id: uint256) -> (bytes32, uint256, uint256, bool): view

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

MAX_LEAVES: constant(uint256) = 256
MAX_INPUT_BYTES: constant(uint256) = 4096
LEAF_HEADER_BYTES: constant(uint256) = 225
MAX_LEAF_BYTES: constant(uint256) = LEAF_HEADER_BYTES + MAX_INPUT_BYTES
MAX_DEPTH: constant(uint256) = 8  # log2(MAX_LEAVES)
SECP256K1_HALF_N: constant(uint256) = 57896044618658097711785492504343953926418782139537452191302581570759080747168  # secp256k1 n // 2

DOMAIN_TYPEHASH: constant(bytes32) = keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
LEAF_TYPEHASH: constant(bytes32) = keccak256("ResultLeaf(bytes32 jobId,uint256 modelId,bytes32 inputRoot,bytes32 outputRoot,bytes32 inputHash,address node)")
NAME_HASH: constant(bytes32) = keccak256("opinfer")
VERSION_HASH: constant(bytes32) = keccak256("1")

# Leaf status codes (see `leaf_status`).
STATUS_UNKNOWN: constant(uint8) = 0
STATUS_POSTED: constant(uint8) = 1
STATUS_DISPUTED: constant(uint8) = 2
STATUS_FINAL: constant(uint8) = 3
STATUS_INVALID: constant(uint8) = 4

# ---------------------------------------------------------------- storage

struct Batch:
    root: bytes32
    data_hash: bytes32
    leaf_count: uint256
    deadline: uint256
    poster: address
    finalized: bool

# @dev Adds and removes coordinators; wires the dispute game once.
owner: public(address)
# @dev Checks that each leaf's node is staked when posted.
stake_manager: public(IStakeManager)
# @dev Checks that each leaf's model exists and is active when posted.
registry: public(IModelRegistry)
# @dev The only contract that may change a leaf's dispute state.
dispute_game: public(address)
# @dev Seconds after posting during which leaves can be challenged.
challenge_window: public(uint256)
# @dev Addresses allowed to post batches.
is_coordinator: public(HashMap[address, bool])
# @dev Number of posted batches; ids are 1..batch_count.
batch_count: public(uint256)
# @dev Posted batches by id.
batches: public(HashMap[uint256, Batch])
# @dev Open dispute games per leaf (batch id, leaf index).
open_games: public(HashMap[uint256, HashMap[uint256, uint256]])
# @dev Leaves proven wrong (or forged).
invalid: public(HashMap[uint256, HashMap[uint256, bool]])


@deploy
def __init__(_stake_manager: IStakeManager, _registry: IModelRegistry, _challenge_window: uint256):
    assert _challenge_window > 0, "ResultRollup: zero challenge window"
    self.owner = msg.sender
    self.stake_manager = _stake_manager
    self.registry = _registry
    self.challenge_window = _challenge_window


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
def post_batch(_leaves: DynArray[Bytes[MAX_LEAF_BYTES], MAX_LEAVES]) -> uint256:
    """
    @notice Post a batch of result leaves; returns the batch id.
    @dev Every leaf's node must be staked and its model active now. Signatures
         are checked only when a leaf is challenged (or voided as forged).
    """
    assert self.is_coordinator[msg.sender], "ResultRollup: caller is not a coordinator"
    count: uint256 = len(_leaves)
    assert count > 0, "ResultRollup: empty batch"
    hashes: DynArray[bytes32, MAX_LEAVES] = []
    data_hash: bytes32 = empty(bytes32)
    checked_node: address = empty(address)
    checked_model: uint256 = 0
    for leaf: Bytes[MAX_LEAF_BYTES] in _leaves:
        assert len(leaf) >= LEAF_HEADER_BYTES, "ResultRollup: leaf too short"
        # Leaves are usually grouped by node and model: check each run once.
        node: address = self._leaf_node(leaf)
        if node != checked_node:
            assert staticcall self.stake_manager.is_active(node), "ResultRollup: node not staked"
            checked_node = node
        model_id: uint256 = extract32(leaf, 32, output_type=uint256)
        if model_id != checked_model:
            active: bool = (staticcall self.registry.get_model(model_id))[3]
            assert active, "ResultRollup: model not active"
            checked_model = model_id
        leaf_hash: bytes32 = keccak256(leaf)
        hashes.append(leaf_hash)
        data_hash = keccak256(concat(data_hash, leaf_hash))
    root: bytes32 = self._root_of(hashes)
    batch_id: uint256 = self.batch_count + 1
    self.batch_count = batch_id
    deadline: uint256 = block.timestamp + self.challenge_window
    self.batches[batch_id] = Batch(root=root, data_hash=data_hash, leaf_count=count, deadline=deadline, poster=msg.sender, finalized=False)
    log BatchPosted(batch_id=batch_id, poster=msg.sender, root=root, data_hash=data_hash, leaf_count=count, deadline=deadline)
    return batch_id


@external
def finalize(_batch_id: uint256):
    """
    @notice Finalize a batch after its deadline. Leaves under dispute become
            final only if their games end in the node's favour.
    """
    batch: Batch = self._batch(_batch_id)
    assert block.timestamp > batch.deadline, "ResultRollup: challenge window open"
    assert not batch.finalized, "ResultRollup: already finalized"
    self.batches[_batch_id].finalized = True
    log BatchFinalized(batch_id=_batch_id)


@external
def void_forged_leaf(_batch_id: uint256, _index: uint256, _leaf: Bytes[MAX_LEAF_BYTES], _proof: DynArray[bytes32, MAX_DEPTH]):
    """
    @notice Mark a posted leaf invalid when its signature does not come from
            the node it names (the coordinator forged or corrupted it). Nobody
            is slashed: the node never signed it.
    """
    assert self._includes(_batch_id, _index, keccak256(_leaf), _proof), "ResultRollup: leaf not in batch"
    assert not self.invalid[_batch_id][_index], "ResultRollup: leaf already invalid"
    assert self._recover(_leaf) != self._leaf_node(_leaf), "ResultRollup: signature is valid"
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
    batch: Batch = self.batches[_batch_id]
    if _index >= batch.leaf_count:
        return STATUS_UNKNOWN
    if self.invalid[_batch_id][_index]:
        return STATUS_INVALID
    if self.open_games[_batch_id][_index] > 0:
        return STATUS_DISPUTED
    if batch.finalized:
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
def verify_leaf(_batch_id: uint256, _index: uint256, _leaf: Bytes[MAX_LEAF_BYTES], _proof: DynArray[bytes32, MAX_DEPTH]) -> bool:
    """
    @notice True when the leaf record is leaf `_index` of the batch.
    """
    return self._includes(_batch_id, _index, keccak256(_leaf), _proof)


@external
@view
def batch_deadline(_batch_id: uint256) -> uint256:
    return self._batch(_batch_id).deadline


@external
@view
def domain_separator() -> bytes32:
    return self._domain_separator()


@external
@view
def leaf_digest(_leaf: Bytes[MAX_LEAF_BYTES]) -> bytes32:
    """
    @notice The EIP-712 digest the node signs for this leaf record.
    """
    return self._digest(_leaf)


@external
@view
def leaf_signer(_leaf: Bytes[MAX_LEAF_BYTES]) -> address:
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
def _batch(_batch_id: uint256) -> Batch:
    batch: Batch = self.batches[_batch_id]
    assert batch.leaf_count > 0, "ResultRollup: unknown batch"
    return batch


@internal
@pure
def _leaf_node(_leaf: Bytes[MAX_LEAF_BYTES]) -> address:
    assert len(_leaf) >= LEAF_HEADER_BYTES, "ResultRollup: leaf too short"
    word: uint256 = extract32(_leaf, 128, output_type=uint256)
    assert word < 2**160, "ResultRollup: bad node field"
    return convert(convert(word, uint160), address)


@internal
@view
def _domain_separator() -> bytes32:
    return keccak256(abi_encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, chain.id, self))


@internal
@view
def _digest(_leaf: Bytes[MAX_LEAF_BYTES]) -> bytes32:
    node: address = self._leaf_node(_leaf)
    input_hash: bytes32 = keccak256(slice(_leaf, LEAF_HEADER_BYTES, len(_leaf) - LEAF_HEADER_BYTES))
    struct_hash: bytes32 = keccak256(abi_encode(
        LEAF_TYPEHASH,
        extract32(_leaf, 0),
        extract32(_leaf, 32, output_type=uint256),
        extract32(_leaf, 64),
        extract32(_leaf, 96),
        input_hash,
        node,
    ))
    return keccak256(concat(b"\x19\x01", self._domain_separator(), struct_hash))


@internal
@view
def _recover(_leaf: Bytes[MAX_LEAF_BYTES]) -> address:
    r: uint256 = extract32(_leaf, 160, output_type=uint256)
    s: uint256 = extract32(_leaf, 192, output_type=uint256)
    v: uint256 = convert(slice(_leaf, 224, 1), uint256)
    if s > SECP256K1_HALF_N or (v != 27 and v != 28):
        return empty(address)
    return ecrecover(self._digest(_leaf), v, r, s)


@internal
@view
def _includes(_batch_id: uint256, _index: uint256, _leaf_hash: bytes32, _proof: DynArray[bytes32, MAX_DEPTH]) -> bool:
    batch: Batch = self.batches[_batch_id]
    if _index >= batch.leaf_count:
        return False
    depth: uint256 = self._depth(batch.leaf_count)
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
def _root_of(_hashes: DynArray[bytes32, MAX_LEAVES]) -> bytes32:
    layer: DynArray[bytes32, MAX_LEAVES] = _hashes
    width: uint256 = 1 << self._depth(len(_hashes))
    for i: uint256 in range(MAX_LEAVES):
        if len(layer) >= width:
            break
        layer.append(empty(bytes32))
    for level: uint256 in range(MAX_DEPTH):
        if width == 1:
            break
        width //= 2
        for j: uint256 in range(MAX_LEAVES // 2):
            if j >= width:
                break
            layer[j] = keccak256(concat(layer[2 * j], layer[2 * j + 1]))
    return layer[0]
