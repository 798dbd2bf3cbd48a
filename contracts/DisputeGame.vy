# pragma version 0.4.3
"""
@title DisputeGame
@notice One-versus-one bisection games between a node (who claims its result
        is right) and a bonded challenger, ending with the StepVerifier
        re-executing one element of one op.
        Phase 1 narrows the program to one op by k-ary dissection of state
        roots; phase 2 descends the disputed tensor's Merkle tree, k children
        at a time, to one chunk and then one element. Each party has a chess
        clock; the party to move loses when its clock runs out, and anyone may
        call `claim_timeout`. Several challengers may dispute the same leaf at
        once, each in its own game, so a front-running challenger cannot stall
        honest ones past the window.
        Concurrent games: a node builds one trace at a time, so a game opened
        while k other games against the same node are open gives the node
        `clock_budget + k * trace_budget` (the traces queued ahead of it).
        Rewards: a slash takes the node's whole stake at once; the
        challenger's share is escrowed and goes to the earliest-opened game
        against that node that ends in fraud (a game voided because its leaf
        was proven invalid elsewhere counts, as its challenger was right).
        While an earlier-opened game against the node is still active the
        reward waits, so a cheater that loses a self-challenge at once (on
        any of its leaves) cannot take the reward from an honest challenger
        who disputed first. A leaf already proven fraudulent is never slashed
        again (stake added later is not taken).
@dev    Moves (mover in brackets):
        OPEN [node] open_trace: reveal S_N, proven to hold output_root at N.
        BISECT [node] bisect: k-1 state roots inside (lo, hi).
        PICK [challenger] pick: the first sub-interval it disputes.
        TENSOR [node] reveal_tensor: t_hi, proving S_hi = S_lo + t_hi at hi,
            and the op (its output shape) against the model root.
        DESCEND [node] descend: the 2^m descendants of the disputed subtree.
        CHOOSE [challenger] choose: the descendant it disputes.
        CHUNK [node] reveal_chunk: the CHUNK values of the disputed leaf.
        ELEMENT [challenger] pick_element: the element it disputes.
        STEP [challenger's clock; anyone may call] step: the verifier computes
            the true value; a wrong claim loses the node its stake, a right
            one loses the challenger its bond.
"""

# ---------------------------------------------------------------- interfaces

interface IStakeManager:
    def open_dispute(_node: address, _challenger: address, _bond: uint256): nonpayable
    def award_bond(_node: address, _challenger: address, _bond: uint256): nonpayable
    def release_bond(_node: address, _challenger: address, _bond: uint256): nonpayable
    def slash(_node: address, _challenger: address, _bond: uint256) -> uint256: nonpayable
    def release_reward(_node: address, _challenger: address) -> uint256: nonpayable
    def unbonding_delay() -> uint256: view

interface IModelRegistry:
    def get_model(_model_id: uint256) -> (bytes32, uint256, uint256, bool): view

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

interface IResultRollup:
    def verify_leaf(_batch_id: uint256, _index: uint256, _leaf: Leaf, _proof: DynArray[bytes32, 7]) -> bool: view
    def leaf_signer(_leaf: Leaf) -> address: view
    def batch_deadline(_batch_id: uint256) -> uint256: view
    def invalid(_batch_id: uint256, _index: uint256) -> bool: view
    def challenge_window() -> uint256: view
    def mark_disputed(_batch_id: uint256, _index: uint256): nonpayable
    def mark_undisputed(_batch_id: uint256, _index: uint256): nonpayable
    def mark_invalid(_batch_id: uint256, _index: uint256): nonpayable

interface IStepVerifier:
    def fold(_index: uint256, _leaf: bytes32, _proof: DynArray[bytes32, 32]) -> bytes32: pure
    def job_shape(_model_root: bytes32, _ops_per_step: uint256, _model_header: Bytes[2560], _input: Bytes[4096]) -> (bool, uint256, uint256, bytes32): pure
    def op_output_shape(_model_root: bytes32, _ops_per_step: uint256, _job: uint256, _op_index: uint256, _header: Bytes[2560]) -> (uint256, uint256): pure
    def compute_element(_model_root: bytes32, _ops_per_step: uint256, _job: uint256, _op_index: uint256, _state_root: bytes32, _row: uint256, _col: uint256, _header: Bytes[2560], _witness: Bytes[120000]) -> int256: view

# ---------------------------------------------------------------- events

event GameStarted:
    game_id: indexed(uint256)
    batch_id: indexed(uint256)
    leaf_index: uint256
    node: indexed(address)
    challenger: address
    job_id: bytes16
    model_id: uint256
    input_root: bytes32
    output_root: bytes32

event TraceOpened:
    game_id: indexed(uint256)
    final_state: bytes32

event Bisected:
    game_id: indexed(uint256)
    lo: uint256
    hi: uint256
    claims: DynArray[bytes32, MAX_K]

event Picked:
    game_id: indexed(uint256)
    lo: uint256
    hi: uint256

event TensorRevealed:
    game_id: indexed(uint256)
    position: uint256
    tensor_root: bytes32
    rows: uint256
    cols: uint256

event Descended:
    game_id: indexed(uint256)
    level: uint256
    hashes: DynArray[bytes32, MAX_K]

event Chosen:
    game_id: indexed(uint256)
    level: uint256
    index: uint256

event ChunkRevealed:
    game_id: indexed(uint256)
    values: int256[CHUNK]

event ElementPicked:
    game_id: indexed(uint256)
    row: uint256
    col: uint256
    claimed: int256

event StepExecuted:
    game_id: indexed(uint256)
    claimed: int256
    computed: int256

event GameResolved:
    game_id: indexed(uint256)
    node_won: bool
    reason: String[32]

event GameVoided:
    game_id: indexed(uint256)

# ---------------------------------------------------------------- constants

MAX_K: constant(uint256) = 16
CHUNK: constant(uint256) = 16
MAX_PROOF: constant(uint256) = 32
MAX_BATCH_DEPTH: constant(uint256) = 7
MAX_HEADER: constant(uint256) = 2560
MAX_OP_WITNESS: constant(uint256) = 120000
MAX_INPUT: constant(uint256) = 4096

PHASE_OPEN: constant(uint8) = 1
PHASE_BISECT: constant(uint8) = 2
PHASE_PICK: constant(uint8) = 3
PHASE_TENSOR: constant(uint8) = 4
PHASE_DESCEND: constant(uint8) = 5
PHASE_CHOOSE: constant(uint8) = 6
PHASE_CHUNK: constant(uint8) = 7
PHASE_ELEMENT: constant(uint8) = 8
PHASE_STEP: constant(uint8) = 9

STATUS_ACTIVE: constant(uint8) = 1
STATUS_NODE_WON: constant(uint8) = 2
STATUS_CHALLENGER_WON: constant(uint8) = 3
STATUS_VOID: constant(uint8) = 4

# ---------------------------------------------------------------- storage

struct Game:
    batch_id: uint256
    leaf_index: uint256
    node: address
    challenger: address
    bond: uint256
    model_root: bytes32
    ops_per_step: uint256
    job: uint256
    num_ops: uint256
    status: uint8
    phase: uint8
    node_clock: uint256
    challenger_clock: uint256
    last_move_at: uint256
    lo: uint256
    hi: uint256
    lo_root: bytes32
    hi_root: bytes32
    pending: bytes32
    rows: uint256
    cols: uint256
    col_bits: uint256
    depth: uint256
    level: uint256
    index: uint256
    subtree: bytes32
    row: uint256
    col: uint256
    claimed: int256

# @dev Bonds and slashing.
stake_manager: public(IStakeManager)
# @dev Leaves, deadlines and leaf dispute state.
rollup: public(IResultRollup)
# @dev Model roots and program lengths.
registry: public(IModelRegistry)
# @dev Re-executes the final step.
verifier: public(IStepVerifier)
# @dev Dissection arity (a power of two, 2..MAX_K).
arity: public(uint256)
# @dev log2(arity): tree levels descended per phase-2 round.
arity_bits: public(uint256)
# @dev Seconds each party may spend on its moves in one game (the node gets
#      more when other games against it are open: see trace_budget).
clock_budget: public(uint256)
# @dev Extra node seconds per game already open against the same node when a
#      game starts: at least the time the node needs to build the longest
#      allowed job's trace (deployment checks it against a measurement).
trace_budget: public(uint256)
# @dev Bond locked from the challenger's free bond per game.
challenge_bond: public(uint256)
# @dev Number of games; ids are 1..game_count.
game_count: public(uint256)
# @dev Games by id.
games: public(HashMap[uint256, Game])
# @dev Whether an address has already challenged a leaf (batch, index, who).
has_challenged: public(HashMap[uint256, HashMap[uint256, HashMap[address, bool]]])
# @dev Active games per node.
open_against: public(HashMap[address, uint256])
# @dev Active games per node as a list in opening order (ids grow): the
#      earliest, the latest, and each game's neighbours (0 = none).
first_open: public(HashMap[address, uint256])
last_open: HashMap[address, uint256]
next_open: HashMap[uint256, uint256]
prev_open: HashMap[uint256, uint256]
# @dev The earliest-opened game against a node that ended in fraud and waits
#      for the node's escrowed reward (0 = none).
reward_game: public(HashMap[address, uint256])
# @dev Leaves (batch, index) proven fraudulent by a game: never slashed twice.
fraud_proven: public(HashMap[uint256, HashMap[uint256, bool]])


@deploy
def __init__(
    _stake_manager: IStakeManager,
    _rollup: IResultRollup,
    _registry: IModelRegistry,
    _verifier: IStepVerifier,
    _arity: uint256,
    _clock_budget: uint256,
    _trace_budget: uint256,
    _challenge_bond: uint256,
):
    """
    @param _trace_budget Node seconds added per game already open against
           the node; at least the measured time to build the longest allowed
           job's trace (opinfer.chain.deploy.ProtocolParams.check_trace_time).
    """
    bits: uint256 = 0
    for i: uint256 in range(5):
        if (1 << bits) >= _arity:
            break
        bits += 1
    assert _arity >= 2 and _arity <= MAX_K and (1 << bits) == _arity, "DisputeGame: arity must be a power of two in [2, 16]"
    assert _clock_budget > 0, "DisputeGame: zero clock"
    assert _trace_budget > 0, "DisputeGame: zero trace budget"
    assert _challenge_bond > 0, "DisputeGame: zero bond"
    # Nobody may withdraw ahead of a dispute: a challenge can start at the
    # deadline and the game lasts at most both clocks.
    window: uint256 = staticcall _rollup.challenge_window()
    assert staticcall _stake_manager.unbonding_delay() > window + 2 * _clock_budget, "DisputeGame: unbonding delay too short"
    self.stake_manager = _stake_manager
    self.rollup = _rollup
    self.registry = _registry
    self.verifier = _verifier
    self.arity = _arity
    self.arity_bits = bits
    self.clock_budget = _clock_budget
    self.trace_budget = _trace_budget
    self.challenge_bond = _challenge_bond


# ---------------------------------------------------------------- external: start

@external
@nonreentrant
def challenge(_batch_id: uint256, _index: uint256, _leaf: Leaf, _proof: DynArray[bytes32, MAX_BATCH_DEPTH], _input: Bytes[MAX_INPUT], _model_header: Bytes[MAX_HEADER]) -> uint256:
    """
    @notice Dispute a posted leaf before its batch's deadline, locking
            `challenge_bond` of the caller's free bond in the StakeManager.
            `_input` is the job's posted input (it fixes the job's length);
            a node whose input root does not match its input bytes, or that
            signed a malformed input, loses at once.
    @param _model_header The model root's preimage (StepVerifier.job_shape).
    @return The game id.
    """
    assert staticcall self.rollup.verify_leaf(_batch_id, _index, _leaf, _proof), "DisputeGame: leaf not in batch"
    assert block.timestamp <= staticcall self.rollup.batch_deadline(_batch_id), "DisputeGame: challenge window closed"
    assert not staticcall self.rollup.invalid(_batch_id, _index), "DisputeGame: leaf already invalid"
    node: address = _leaf.node
    assert staticcall self.rollup.leaf_signer(_leaf) == node, "DisputeGame: bad node signature"
    assert msg.sender != node, "DisputeGame: node cannot challenge itself"
    assert not self.has_challenged[_batch_id][_index][msg.sender], "DisputeGame: already challenged by caller"
    model_id: uint256 = _leaf.model_id
    model_root: bytes32 = empty(bytes32)
    num_ops: uint256 = 0
    price: uint256 = 0
    active: bool = False
    ops_per_step: uint256 = 0
    model_root, ops_per_step, price, active = staticcall self.registry.get_model(model_id)
    assert keccak256(_input) == _leaf.input_hash, "DisputeGame: input does not match leaf"
    well_formed: bool = False
    job: uint256 = 0
    input_tensor: bytes32 = empty(bytes32)
    well_formed, num_ops, job, input_tensor = staticcall self.verifier.job_shape(model_root, ops_per_step, _model_header, _input)
    input_root: bytes32 = _leaf.input_root
    output_root: bytes32 = _leaf.output_root

    self.has_challenged[_batch_id][_index][msg.sender] = True
    game_id: uint256 = self.game_count + 1
    self.game_count = game_id
    # The node builds one trace at a time: the games already open against it
    # are queued ahead of this one.
    queued: uint256 = self.open_against[node]
    self._link(game_id, node)
    empty_proof: DynArray[bytes32, MAX_PROOF] = []
    for i: uint256 in range(MAX_PROOF):
        if len(empty_proof) == self._ceil_log2(num_ops + 1):
            break
        empty_proof.append(self._zero_subtree(i))
    self.games[game_id] = Game(
        batch_id=_batch_id,
        leaf_index=_index,
        node=node,
        challenger=msg.sender,
        bond=self.challenge_bond,
        model_root=model_root,
        ops_per_step=ops_per_step,
        job=job,
        num_ops=num_ops,
        status=STATUS_ACTIVE,
        phase=PHASE_OPEN,
        node_clock=self.clock_budget + queued * self.trace_budget,
        challenger_clock=self.clock_budget,
        last_move_at=block.timestamp,
        lo=0,
        hi=num_ops,
        lo_root=staticcall self.verifier.fold(0, input_root, empty_proof),
        hi_root=output_root,
        pending=empty(bytes32),
        rows=0,
        cols=0,
        col_bits=0,
        depth=0,
        level=0,
        index=0,
        subtree=empty(bytes32),
        row=0,
        col=0,
        claimed=0,
    )
    extcall self.stake_manager.open_dispute(node, msg.sender, self.challenge_bond)
    extcall self.rollup.mark_disputed(_batch_id, _index)
    log GameStarted(game_id=game_id, batch_id=_batch_id, leaf_index=_index, node=node, challenger=msg.sender, job_id=_leaf.job_id, model_id=model_id, input_root=input_root, output_root=output_root)
    if not well_formed:
        # A job the model's limits refuse (or a malformed input): an honest
        # node never signs one (StepVerifier.job_shape).
        self._resolve(game_id, False, "job outside the model's limits")
    elif input_tensor != input_root:
        # Input binding: the node signed an input root that is not its input.
        self._resolve(game_id, False, "input does not match its root")
    return game_id


# ---------------------------------------------------------------- external: phase 1

@external
def open_trace(_game_id: uint256, _final_state: bytes32, _proof: DynArray[bytes32, MAX_PROOF]):
    """
    @notice Node: reveal its final state root S_N, holding output_root at N.
    """
    g: Game = self._move(_game_id, PHASE_OPEN, True)
    assert len(_proof) == self._ceil_log2(g.num_ops + 1), "DisputeGame: bad proof length"
    assert staticcall self.verifier.fold(g.num_ops, g.hi_root, _proof) == _final_state, "DisputeGame: output not in final state"
    self.games[_game_id].hi_root = _final_state
    if g.num_ops == 1:
        self.games[_game_id].phase = PHASE_TENSOR
    else:
        self.games[_game_id].phase = PHASE_BISECT
    log TraceOpened(game_id=_game_id, final_state=_final_state)


@external
def bisect(_game_id: uint256, _claims: DynArray[bytes32, MAX_K]):
    """
    @notice Node: the state roots at the inner dissection points of (lo, hi).
    """
    g: Game = self._move(_game_id, PHASE_BISECT, True)
    parts: uint256 = min(self.arity, g.hi - g.lo)
    assert len(_claims) == parts - 1, "DisputeGame: wrong number of claims"
    self.games[_game_id].pending = keccak256(abi_encode(_claims))
    self.games[_game_id].phase = PHASE_PICK
    log Bisected(game_id=_game_id, lo=g.lo, hi=g.hi, claims=_claims)


@external
def pick(_game_id: uint256, _claims: DynArray[bytes32, MAX_K], _part: uint256):
    """
    @notice Challenger: dispute sub-interval `_part` of the last dissection
            (the first one whose end root differs from its own trace).
    """
    g: Game = self._move(_game_id, PHASE_PICK, False)
    assert keccak256(abi_encode(_claims)) == g.pending, "DisputeGame: claims do not match"
    parts: uint256 = len(_claims) + 1
    assert _part < parts, "DisputeGame: part out of range"
    span: uint256 = g.hi - g.lo
    new_lo: uint256 = g.lo + span * _part // parts
    new_hi: uint256 = g.lo + span * (_part + 1) // parts
    if _part > 0:
        self.games[_game_id].lo_root = _claims[_part - 1]
    if _part < parts - 1:
        self.games[_game_id].hi_root = _claims[_part]
    self.games[_game_id].lo = new_lo
    self.games[_game_id].hi = new_hi
    if new_hi - new_lo == 1:
        self.games[_game_id].phase = PHASE_TENSOR
    else:
        self.games[_game_id].phase = PHASE_BISECT
    log Picked(game_id=_game_id, lo=new_lo, hi=new_hi)


@external
def reveal_tensor(_game_id: uint256, _tensor_root: bytes32, _proof: DynArray[bytes32, MAX_PROOF], _header: Bytes[MAX_HEADER]):
    """
    @notice Node: the root of tensor `hi`, with the path that turns the agreed
            S_lo (empty at hi) into the disputed S_hi, and the op header that
            fixes the tensor's shape.
    """
    g: Game = self._move(_game_id, PHASE_TENSOR, True)
    assert len(_proof) == self._ceil_log2(g.num_ops + 1), "DisputeGame: bad proof length"
    assert staticcall self.verifier.fold(g.hi, empty(bytes32), _proof) == g.lo_root, "DisputeGame: position not empty in agreed state"
    assert staticcall self.verifier.fold(g.hi, _tensor_root, _proof) == g.hi_root, "DisputeGame: tensor does not extend agreed state"
    rows: uint256 = 0
    cols: uint256 = 0
    rows, cols = staticcall self.verifier.op_output_shape(g.model_root, g.ops_per_step, g.job, g.hi - 1, _header)
    assert rows > 0 and cols > 0, "DisputeGame: empty tensor"
    col_bits: uint256 = self._ceil_log2((cols + CHUNK - 1) // CHUNK)
    depth: uint256 = self._ceil_log2(rows) + col_bits
    self.games[_game_id].rows = rows
    self.games[_game_id].cols = cols
    self.games[_game_id].col_bits = col_bits
    self.games[_game_id].depth = depth
    self.games[_game_id].subtree = _tensor_root
    if depth == 0:
        self.games[_game_id].phase = PHASE_CHUNK
    else:
        self.games[_game_id].phase = PHASE_DESCEND
    log TensorRevealed(game_id=_game_id, position=g.hi, tensor_root=_tensor_root, rows=rows, cols=cols)


# ---------------------------------------------------------------- external: phase 2

@external
def descend(_game_id: uint256, _hashes: DynArray[bytes32, MAX_K]):
    """
    @notice Node: the 2^m descendants, m levels below the disputed subtree.
    """
    g: Game = self._move(_game_id, PHASE_DESCEND, True)
    levels: uint256 = min(self.arity_bits, g.depth - g.level)
    assert len(_hashes) == 1 << levels, "DisputeGame: wrong number of hashes"
    layer: DynArray[bytes32, MAX_K] = _hashes
    width: uint256 = len(_hashes)
    for i: uint256 in range(4):
        if width == 1:
            break
        width //= 2
        for j: uint256 in range(MAX_K // 2):
            if j >= width:
                break
            layer[j] = keccak256(concat(layer[2 * j], layer[2 * j + 1]))
    assert layer[0] == g.subtree, "DisputeGame: hashes do not match subtree"
    self.games[_game_id].pending = keccak256(abi_encode(_hashes))
    self.games[_game_id].phase = PHASE_CHOOSE
    log Descended(game_id=_game_id, level=g.level, hashes=_hashes)


@external
def choose(_game_id: uint256, _hashes: DynArray[bytes32, MAX_K], _child: uint256):
    """
    @notice Challenger: dispute descendant `_child` of the last descent.
    """
    g: Game = self._move(_game_id, PHASE_CHOOSE, False)
    assert keccak256(abi_encode(_hashes)) == g.pending, "DisputeGame: hashes do not match"
    assert _child < len(_hashes), "DisputeGame: child out of range"
    levels: uint256 = min(self.arity_bits, g.depth - g.level)
    level: uint256 = g.level + levels
    index: uint256 = (g.index << levels) + _child
    self.games[_game_id].level = level
    self.games[_game_id].index = index
    self.games[_game_id].subtree = _hashes[_child]
    if level == g.depth:
        self.games[_game_id].phase = PHASE_CHUNK
    else:
        self.games[_game_id].phase = PHASE_DESCEND
    log Chosen(game_id=_game_id, level=level, index=index)


@external
def reveal_chunk(_game_id: uint256, _values: int256[CHUNK]):
    """
    @notice Node: the values of the disputed chunk.
    """
    g: Game = self._move(_game_id, PHASE_CHUNK, True)
    assert keccak256(abi_encode(_values)) == g.subtree, "DisputeGame: values do not match chunk"
    self.games[_game_id].phase = PHASE_ELEMENT
    log ChunkRevealed(game_id=_game_id, values=_values)


@external
def pick_element(_game_id: uint256, _values: int256[CHUNK], _offset: uint256):
    """
    @notice Challenger: the element of the chunk it disputes.
    """
    g: Game = self._move(_game_id, PHASE_ELEMENT, False)
    assert keccak256(abi_encode(_values)) == g.subtree, "DisputeGame: values do not match chunk"
    assert _offset < CHUNK, "DisputeGame: offset out of range"
    row: uint256 = g.index >> g.col_bits
    col: uint256 = (g.index & ((1 << g.col_bits) - 1)) * CHUNK + _offset
    self.games[_game_id].row = row
    self.games[_game_id].col = col
    self.games[_game_id].claimed = _values[_offset]
    self.games[_game_id].phase = PHASE_STEP
    log ElementPicked(game_id=_game_id, row=row, col=col, claimed=_values[_offset])


@external
@nonreentrant
def step(_game_id: uint256, _header: Bytes[MAX_HEADER], _witness: Bytes[MAX_OP_WITNESS]):
    """
    @notice Anyone: have the verifier compute the disputed element from
            proven inputs and end the game. Runs on the challenger's clock.
    """
    g: Game = self._tick(_game_id, PHASE_STEP)
    computed: int256 = staticcall self.verifier.compute_element(g.model_root, g.ops_per_step, g.job, g.hi - 1, g.lo_root, g.row, g.col, _header, _witness)
    log StepExecuted(game_id=_game_id, claimed=g.claimed, computed=computed)
    if computed == g.claimed:
        self._resolve(_game_id, True, "step upheld claim")
    else:
        self._resolve(_game_id, False, "step refuted claim")


# ---------------------------------------------------------------- external: endings

@external
@nonreentrant
def claim_timeout(_game_id: uint256):
    """
    @notice Anyone: end a game whose party to move has run out of clock.
    """
    g: Game = self._active(_game_id)
    node_to_move: bool = self._node_moves(g.phase)
    left: uint256 = g.challenger_clock
    if node_to_move:
        left = g.node_clock
    assert block.timestamp - g.last_move_at > left, "DisputeGame: clock not expired"
    if self.fraud_proven[g.batch_id][g.leaf_index]:
        # The leaf is already proven wrong: nobody loses this game.
        self._void(_game_id, g)
    elif node_to_move:
        self._resolve(_game_id, False, "node timed out")
    else:
        self._resolve(_game_id, True, "challenger timed out")


@external
@nonreentrant
def void_after_fraud(_game_id: uint256):
    """
    @notice Anyone: end a game whose leaf another game already proved
            fraudulent; the challenger's bond is returned, and the game
            still ranks for the node's escrowed reward (its challenger was
            right). A leaf voided for any other reason (e.g. a forged
            signature after a chain-id change) does not end a game: the
            node stays slashable.
    """
    g: Game = self._active(_game_id)
    assert self.fraud_proven[g.batch_id][g.leaf_index], "DisputeGame: leaf not invalid"
    self._void(_game_id, g)


# ---------------------------------------------------------------- views

@external
@view
def node_to_move(_game_id: uint256) -> bool:
    return self._node_moves(self.games[_game_id].phase)


@external
@view
def time_left(_game_id: uint256) -> (uint256, uint256):
    """
    @notice (node, challenger) seconds left, counting the running clock.
    """
    g: Game = self.games[_game_id]
    node_left: uint256 = g.node_clock
    challenger_left: uint256 = g.challenger_clock
    if g.status == STATUS_ACTIVE:
        elapsed: uint256 = block.timestamp - g.last_move_at
        if self._node_moves(g.phase):
            node_left = node_left - min(elapsed, node_left)
        else:
            challenger_left = challenger_left - min(elapsed, challenger_left)
    return node_left, challenger_left


@external
@view
def max_game_duration() -> uint256:
    """
    @notice Longest a game lasts when no other game against its node is open
            (each open one adds `trace_budget`; see `node_clock_for`).
    """
    return 2 * self.clock_budget


@external
@view
def node_clock_for(_node: address) -> uint256:
    """
    @notice The node clock a game opened now against `_node` would get.
    """
    return self.clock_budget + self.open_against[_node] * self.trace_budget


# ---------------------------------------------------------------- internal

@internal
@view
def _active(_game_id: uint256) -> Game:
    g: Game = self.games[_game_id]
    assert g.status != 0, "DisputeGame: unknown game"
    assert g.status == STATUS_ACTIVE, "DisputeGame: game over"
    return g


@internal
@pure
def _node_moves(_phase: uint8) -> bool:
    return _phase in [PHASE_OPEN, PHASE_BISECT, PHASE_TENSOR, PHASE_DESCEND, PHASE_CHUNK]


@internal
def _tick(_game_id: uint256, _phase: uint8) -> Game:
    """
    @dev Check the phase, charge the mover's clock and hand the turn over.
    """
    g: Game = self._active(_game_id)
    assert g.phase == _phase, "DisputeGame: wrong phase"
    elapsed: uint256 = block.timestamp - g.last_move_at
    if self._node_moves(_phase):
        assert elapsed <= g.node_clock, "DisputeGame: node clock expired"
        self.games[_game_id].node_clock = g.node_clock - elapsed
    else:
        assert elapsed <= g.challenger_clock, "DisputeGame: challenger clock expired"
        self.games[_game_id].challenger_clock = g.challenger_clock - elapsed
    self.games[_game_id].last_move_at = block.timestamp
    return g


@internal
def _move(_game_id: uint256, _phase: uint8, _by_node: bool) -> Game:
    g: Game = self._tick(_game_id, _phase)
    if _by_node:
        assert msg.sender == g.node, "DisputeGame: caller is not the node"
    else:
        assert msg.sender == g.challenger, "DisputeGame: caller is not the challenger"
    return g


@internal
def _resolve(_game_id: uint256, _node_won: bool, _reason: String[32]):
    g: Game = self.games[_game_id]
    if _node_won:
        self.games[_game_id].status = STATUS_NODE_WON
        extcall self.stake_manager.award_bond(g.node, g.challenger, g.bond)
        extcall self.rollup.mark_undisputed(g.batch_id, g.leaf_index)
    else:
        self.games[_game_id].status = STATUS_CHALLENGER_WON
        if self.fraud_proven[g.batch_id][g.leaf_index]:
            # Already proven and slashed for this leaf: no second slash.
            extcall self.stake_manager.release_bond(g.node, g.challenger, g.bond)
            extcall self.rollup.mark_undisputed(g.batch_id, g.leaf_index)
        else:
            self.fraud_proven[g.batch_id][g.leaf_index] = True
            extcall self.stake_manager.slash(g.node, g.challenger, g.bond)
            if staticcall self.rollup.invalid(g.batch_id, g.leaf_index):
                extcall self.rollup.mark_undisputed(g.batch_id, g.leaf_index)
            else:
                extcall self.rollup.mark_invalid(g.batch_id, g.leaf_index)
    self._unlink(_game_id, g.node, not _node_won)
    log GameResolved(game_id=_game_id, node_won=_node_won, reason=_reason)


@internal
def _void(_game_id: uint256, _g: Game):
    """
    @dev End a game on a leaf already proven fraudulent: bond back, no slash;
         it ranks for the reward like a game that ended in fraud.
    """
    self.games[_game_id].status = STATUS_VOID
    extcall self.stake_manager.release_bond(_g.node, _g.challenger, _g.bond)
    extcall self.rollup.mark_undisputed(_g.batch_id, _g.leaf_index)
    self._unlink(_game_id, _g.node, True)
    log GameVoided(game_id=_game_id)


@internal
def _link(_game_id: uint256, _node: address):
    """
    @dev Append a new game to the node's list of active games (ids grow, so
         the list stays in opening order).
    """
    last: uint256 = self.last_open[_node]
    if last == 0:
        self.first_open[_node] = _game_id
    else:
        self.next_open[last] = _game_id
        self.prev_open[_game_id] = last
    self.last_open[_node] = _game_id
    self.open_against[_node] += 1


@internal
def _unlink(_game_id: uint256, _node: address, _fraud: bool):
    """
    @dev Take an ended game off the node's list, rank it for the escrowed
         reward when it ended in fraud, and release the reward once no game
         opened before the one holding it is still active.
    """
    prev: uint256 = self.prev_open[_game_id]
    nxt: uint256 = self.next_open[_game_id]
    if prev == 0:
        self.first_open[_node] = nxt
    else:
        self.next_open[prev] = nxt
    if nxt == 0:
        self.last_open[_node] = prev
    else:
        self.prev_open[nxt] = prev
    self.prev_open[_game_id] = 0
    self.next_open[_game_id] = 0
    self.open_against[_node] -= 1
    holder: uint256 = self.reward_game[_node]
    if _fraud and (holder == 0 or _game_id < holder):
        holder = _game_id
    first: uint256 = self.first_open[_node]
    if holder != 0 and (first == 0 or first > holder):
        self.reward_game[_node] = 0
        extcall self.stake_manager.release_reward(_node, self.games[holder].challenger)
    else:
        self.reward_game[_node] = holder


@internal
@pure
def _ceil_log2(_n: uint256) -> uint256:
    depth: uint256 = 0
    for i: uint256 in range(256):
        if (1 << depth) >= _n:
            break
        depth += 1
    return depth


@internal
@pure
def _zero_subtree(_level: uint256) -> bytes32:
    node: bytes32 = empty(bytes32)
    for i: uint256 in range(MAX_PROOF):
        if i >= _level:
            break
        node = keccak256(concat(node, node))
    return node
