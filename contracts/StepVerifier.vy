# pragma version 0.4.3
"""
@title StepVerifier
@notice Re-executes one element of one op of an integer program, reading
        only Merkle-proven rows, so the dispute game can end with an
        objective answer. It is stateless: every fact it uses is proven
        against a model root, a state root or the job's input bytes in the
        call itself. The Python twin is opinfer/trace (docs/ops.md).
@dev    Commitments:
        - tensor [R, C]: each row is cut into chunks of 16 words (zero
          padded); chunk hash = keccak256(abi_encode(uint256[16])); a word
          holds one int256 (activations) or 32 / width packed values of
          `width` bytes (weights: big-endian two's complement, first value
          most significant); row root = binary Merkle root of the chunk
          hashes padded with zero-chunk hashes; tensor root = binary Merkle
          root of the row roots padded with zero-row roots.
        - state S_i: binary Merkle root over [t_0 .. t_N] (t_0 = job input,
          t_j = output of op j-1), padded with zero hashes; positions not yet
          computed are zero.
        - model root = keccak256(abi_encode(program_root, weights_root, P,
          num_weights, steps_mode)); program_root = Merkle root over
          keccak256(op_desc) of the P template ops; weights_root = Merkle
          root over the weight tensors' roots. A job runs the template once
          (steps_mode 0) or L + M - 1 times (steps_mode 1); op i of the job
          is template op i % P at step i // P.
        - job input: big-endian uint16 words [version, L, M, temperature,
          top_p - 1, seed x 4, S, stop words x S, tokens x L]; T_0 is one row
          holding the words.
        - op_desc = abi_encode(int256[32]): opcode, rows, cols, then four
          slots (ref, rows, cols, width), then 13 params. dim = c + a*L + b*s
          packed as c | a << 32 | b << 64. ref = kind << 128 | index with
          kind 1 = T_0, 2 = op of this step, 3 = op of the previous step,
          4 = weight tensor.
"""

# ---------------------------------------------------------------- constants

CHUNK: constant(uint256) = 16
MAX_ROW: constant(uint256) = 2048
MAX_CHUNKS: constant(uint256) = MAX_ROW // CHUNK
MAX_VALUES: constant(uint256) = 3200
MAX_PROOF: constant(uint256) = 32
MAX_OP_DESC: constant(uint256) = 1024
MAX_HEADER: constant(uint256) = 2560
MAX_OP_WITNESS: constant(uint256) = 120000
MAX_INPUT: constant(uint256) = 4096
MIN_INT: constant(int256) = min_value(int256)
MAX_INT: constant(int256) = max_value(int256)
MAX_SLOTS: constant(uint256) = 4
DESC_WORDS: constant(uint256) = 32
PARAMS_AT: constant(uint256) = 19
HEADER_WORDS: constant(uint256) = 10
TABLE_WIDTH: constant(uint256) = 256
MASK32: constant(uint256) = 4294967295

KIND_INPUT: constant(uint256) = 1
KIND_SAME: constant(uint256) = 2
KIND_PREV: constant(uint256) = 3
KIND_WEIGHT: constant(uint256) = 4

OP_DOT: constant(uint256) = 1
OP_EMBED_SUM: constant(uint256) = 2
OP_LAYER_NORM: constant(uint256) = 3
OP_DENSE: constant(uint256) = 4
OP_SCORES: constant(uint256) = 5
OP_SOFTMAX: constant(uint256) = 6
OP_TRANSPOSE: constant(uint256) = 7
OP_CONTEXT: constant(uint256) = 8
OP_RESIDUAL: constant(uint256) = 9
OP_LOOKUP: constant(uint256) = 10
OP_POOL: constant(uint256) = 11
OP_L2NORM: constant(uint256) = 12


struct Read:
    root: bytes32
    proof: DynArray[bytes32, MAX_PROOF]
    row: uint256
    row_proof: DynArray[bytes32, MAX_PROOF]

struct Witness:
    values: DynArray[int256, MAX_VALUES]
    reads: DynArray[Read, MAX_SLOTS]

interface IElementRules:
    def elem_requant(_acc: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256: pure
    def elem_dot(_a: DynArray[int256, MAX_ROW], _w: DynArray[int256, MAX_ROW], _bias: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256: pure
    def elem_layer_norm(_row: DynArray[int256, MAX_ROW], _col: uint256, _gain: int256, _beta: int256, _eps: int256, _lo: int256, _hi: int256) -> int256: pure
    def elem_softmax(_row: DynArray[int256, MAX_ROW], _col: uint256, _mult: int256, _shift: uint256, _one: int256) -> int256: pure
    def elem_l2_normalise(_row: DynArray[int256, MAX_ROW], _col: uint256, _out_bits: uint256) -> int256: pure

struct Model:
    program_root: bytes32
    weights_root: bytes32
    num_weights: uint256
    steps_mode: uint256

# ---------------------------------------------------------------- storage

# @dev The element rules (shared with the Python engine by test vectors).
rules: public(IElementRules)


@deploy
def __init__(_rules: IElementRules):
    self.rules = _rules


# ---------------------------------------------------------------- external

@external
@pure
def fold(_index: uint256, _leaf: bytes32, _proof: DynArray[bytes32, MAX_PROOF]) -> bytes32:
    """
    @notice Root of a binary Merkle tree given a leaf, its index and its siblings
            (lowest first).
    """
    return self._fold(_index, _leaf, _proof)


@external
@pure
def ceil_log2(_n: uint256) -> uint256:
    return self._ceil_log2(_n)


@external
@pure
def row_root(_values: DynArray[int256, MAX_ROW], _width: uint256) -> bytes32:
    """
    @notice Root of one tensor row with len(_values) columns of `_width` bytes (32 = unpacked).
    """
    return self._row_root(_values, _width)


@external
@pure
def input_tensor_root(_input: Bytes[MAX_INPUT]) -> bytes32:
    """
    @notice Root of T_0, the one-row tensor of a job input's uint16 words.
    """
    return self._row_root(self._input_words(_input), 32)


@external
@pure
def job_shape(_model_root: bytes32, _ops_per_step: uint256, _model_header: Bytes[MAX_HEADER], _input: Bytes[MAX_INPUT]) -> (bool, uint256, uint256, bytes32):
    """
    @notice Check a job input: (well formed, number of ops of the job, packed
            job dimensions L | tokens_at << 32 | steps << 64, T_0 root).
    @param _model_header abi_encode(program_root, weights_root, num_weights, steps_mode)
    """
    model: Model = abi_decode(_model_header, Model)
    assert self._model_root(model, _ops_per_step) == _model_root, "StepVerifier: header does not match model root"
    if len(_input) < 2 * HEADER_WORDS or len(_input) % 2 != 0:
        return False, 0, 0, empty(bytes32)
    words: DynArray[int256, MAX_ROW] = self._input_words(_input)
    tokens: uint256 = convert(words[1], uint256)
    stops: uint256 = convert(words[9], uint256)
    if words[0] != 1 or tokens == 0 or len(words) != HEADER_WORDS + stops + tokens:
        return False, 0, 0, empty(bytes32)
    steps: uint256 = 1
    if model.steps_mode == 1:
        steps = tokens + max(convert(words[2], uint256), 1) - 1
    job: uint256 = tokens | (HEADER_WORDS + stops) << 32 | steps << 64
    return True, steps * _ops_per_step, job, self._row_root(words, 32)


@external
@pure
def op_output_shape(_model_root: bytes32, _ops_per_step: uint256, _job: uint256, _op_index: uint256, _header: Bytes[MAX_HEADER]) -> (uint256, uint256):
    """
    @notice Shape (rows, cols) of the tensor that op `_op_index` of the job
            produces, after proving the op against the model root.
    @param _header abi_encode(program_root, weights_root, num_weights, steps_mode, op_desc, op_proof)
    """
    model: Model = empty(Model)
    op: int256[DESC_WORDS] = empty(int256[DESC_WORDS])
    model, op = self._proven_op(_model_root, _ops_per_step, _job, _op_index, _header)
    step: uint256 = _op_index // _ops_per_step
    return self._dim(op[1], _job, step), self._dim(op[2], _job, step)


@external
@view
def compute_element(
    _model_root: bytes32,
    _ops_per_step: uint256,
    _job: uint256,
    _op_index: uint256,
    _state_root: bytes32,
    _row: uint256,
    _col: uint256,
    _header: Bytes[MAX_HEADER],
    _witness: Bytes[MAX_OP_WITNESS],
) -> int256:
    """
    @notice The true value of element (_row, _col) of the output of op
            `_op_index`, computed from rows proven against `_state_root`
            (the agreed state before the op) and the model root.
    @dev Reverts when a proof does not hold. The witness holds the rows the
         element reads, one after the other in `values` (each as long as its
         slot's columns), and for each its tensor root, tensor proof, row
         index and row proof.
    """
    model: Model = empty(Model)
    op: int256[DESC_WORDS] = empty(int256[DESC_WORDS])
    model, op = self._proven_op(_model_root, _ops_per_step, _job, _op_index, _header)
    step: uint256 = _op_index // _ops_per_step
    if _row >= self._dim(op[1], _job, step) or _col >= self._dim(op[2], _job, step):
        return 0
    w: Witness = abi_decode(_witness, Witness)
    num_ops: uint256 = (_job >> 64) * _ops_per_step
    at: uint256[MAX_SLOTS + 1] = empty(uint256[MAX_SLOTS + 1])
    slots: uint256 = 0
    for i: uint256 in range(MAX_SLOTS):
        if op[3 + 4 * i] != 0:
            slots = i + 1
    assert len(w.reads) == slots, "StepVerifier: wrong number of reads"
    for i: uint256 in range(MAX_SLOTS):
        if i >= slots:
            at[i + 1] = at[i]
            continue
        cols: uint256 = self._dim(op[5 + 4 * i], _job, step)
        at[i + 1] = at[i] + cols
        assert at[i + 1] <= len(w.values), "StepVerifier: witness too short"
        root: bytes32 = self._row_root(self._slice(w.values, at[i], cols), convert(op[6 + 4 * i], uint256))
        self._check_read(model, op, i, w.reads[i], root, _job, _op_index, _ops_per_step, num_ops, _state_root)
    assert at[MAX_SLOTS] == len(w.values), "StepVerifier: witness too long"

    code: uint256 = convert(op[0], uint256)
    p: int256[13] = empty(int256[13])
    for i: uint256 in range(13):
        p[i] = op[PARAMS_AT + i]
    rows: DynArray[uint256, MAX_SLOTS] = []
    for r: Read in w.reads:
        rows.append(r.row)
    if code == OP_DOT:
        self._want(rows, _row, _col, 0, 0)
        return staticcall self.rules.elem_dot(self._slice(w.values, 0, at[1]), self._slice(w.values, at[1], at[2] - at[1]), 0, p[0], convert(p[1], uint256), p[2], p[3])
    if code == OP_EMBED_SUM:
        token: uint256 = convert(w.values[(_job >> 32 & MASK32) + _row], uint256)
        self._want(rows, 0, token, _row, 0)
        return w.values[at[1] + _col] + w.values[at[2] + _col] + w.values[at[3] + _col]
    if code == OP_LAYER_NORM:
        self._want(rows, _row, _col, 0, 0)
        return staticcall self.rules.elem_layer_norm(self._slice(w.values, 0, at[1]), _col, w.values[at[1]], w.values[at[1] + 1], p[0], -128, 127)
    if code == OP_DENSE:
        self._want(rows, _row, _col, _col, 0)
        return staticcall self.rules.elem_dot(self._slice(w.values, 0, at[1]), self._slice(w.values, at[1], at[2] - at[1]), w.values[at[2]], w.values[at[2] + 1], convert(p[0], uint256), p[1], p[2])
    if code == OP_SCORES:
        rq: uint256 = self._dim(op[4], _job, step)
        d: uint256 = convert(p[0], uint256)
        h: uint256 = _row // rq
        self._want(rows, _row % rq, _col, 0, 0)
        return staticcall self.rules.elem_dot(self._slice(w.values, h * d, d), self._slice(w.values, at[1] + (h // convert(p[1], uint256)) * d, d), 0, 1, 0, MIN_INT, MAX_INT)
    if code == OP_SOFTMAX:
        self._want(rows, _row, 0, 0, 0)
        return staticcall self.rules.elem_softmax(self._slice(w.values, 0, at[1]), _col, p[0], convert(p[1], uint256), p[2])
    if code == OP_TRANSPOSE:
        self._want(rows, _col, 0, 0, 0)
        return w.values[_row]
    if code == OP_CONTEXT:
        d: uint256 = convert(p[0], uint256)
        h: uint256 = _col // d
        self._want(rows, h * self._dim(op[1], _job, step) + _row, (h // convert(p[1], uint256)) * d + _col % d, 0, 0)
        return staticcall self.rules.elem_dot(self._slice(w.values, 0, at[1]), self._slice(w.values, at[1], at[2] - at[1]), 0, p[2], convert(p[3], uint256), p[4], p[5])
    if code == OP_RESIDUAL:
        self._want(rows, _row, _row, _col, 0)
        return w.values[_col] + staticcall self.rules.elem_requant(w.values[at[1] + _col], w.values[at[2]], convert(p[0], uint256), p[1], p[2])
    if code == OP_LOOKUP:
        idx: int256 = w.values[_col] + p[0]
        assert idx >= 0, "StepVerifier: lookup index out of range"
        self._want(rows, _row, convert(idx, uint256) // TABLE_WIDTH, 0, 0)
        return w.values[at[1] + convert(idx, uint256) % TABLE_WIDTH]
    if code == OP_POOL:
        self._want(rows, _col, _col, 0, 0)
        total: int256 = 0
        for i: uint256 in range(MAX_VALUES):
            if i >= at[1]:
                break
            total += w.values[i]
        return total * w.values[at[1]]
    if code == OP_L2NORM:
        self._want(rows, _row, 0, 0, 0)
        return staticcall self.rules.elem_l2_normalise(self._slice(w.values, 0, at[1]), _col, convert(p[0], uint256))
    raise "StepVerifier: unknown opcode"


# ---------------------------------------------------------------- internal: ops

@internal
@pure
def _want(_rows: DynArray[uint256, MAX_SLOTS], _r0: uint256, _r1: uint256, _r2: uint256, _r3: uint256):
    """
    @dev The rows each slot's read must be (the element's rule reads those).
    """
    want: uint256[MAX_SLOTS] = [_r0, _r1, _r2, _r3]
    for i: uint256 in range(MAX_SLOTS):
        if i >= len(_rows):
            break
        assert _rows[i] == want[i], "StepVerifier: witness reads the wrong row"


@internal
@pure
def _slice(_values: DynArray[int256, MAX_VALUES], _at: uint256, _n: uint256) -> DynArray[int256, MAX_ROW]:
    assert _at + _n <= len(_values) and _n <= MAX_ROW, "StepVerifier: row beyond witness"
    out: DynArray[int256, MAX_ROW] = []
    for i: uint256 in range(MAX_ROW):
        if i >= _n:
            break
        out.append(_values[_at + i])
    return out


# ---------------------------------------------------------------- internal: commitments

@internal
@pure
def _model_root(_model: Model, _ops_per_step: uint256) -> bytes32:
    return keccak256(abi_encode(_model.program_root, _model.weights_root, _ops_per_step, _model.num_weights, _model.steps_mode))


@internal
@pure
def _proven_op(_model_root: bytes32, _ops_per_step: uint256, _job: uint256, _op_index: uint256, _header: Bytes[MAX_HEADER]) -> (Model, int256[DESC_WORDS]):
    """
    @dev Decode the header, check it against the model root and return
         (model, op words) of template op _op_index % P.
    """
    model: Model = empty(Model)
    op_desc: Bytes[MAX_OP_DESC] = b""
    op_proof: DynArray[bytes32, MAX_PROOF] = []
    model.program_root, model.weights_root, model.num_weights, model.steps_mode, op_desc, op_proof = abi_decode(
        _header, (bytes32, bytes32, uint256, uint256, Bytes[MAX_OP_DESC], DynArray[bytes32, MAX_PROOF])
    )
    assert self._model_root(model, _ops_per_step) == _model_root, "StepVerifier: header does not match model root"
    assert _ops_per_step > 0 and _op_index < (_job >> 64) * _ops_per_step, "StepVerifier: op index out of range"
    j: uint256 = _op_index % _ops_per_step
    assert len(op_proof) == self._ceil_log2(_ops_per_step), "StepVerifier: bad op proof length"
    assert self._fold(j, keccak256(op_desc), op_proof) == model.program_root, "StepVerifier: op not in program"
    assert len(op_desc) == 32 * DESC_WORDS, "StepVerifier: bad op descriptor"
    return model, abi_decode(op_desc, int256[DESC_WORDS])


@internal
@pure
def _check_read(_model: Model, _op: int256[DESC_WORDS], _slot: uint256, _read: Read, _row_root: bytes32, _job: uint256, _op_index: uint256, _ops_per_step: uint256, _num_ops: uint256, _state_root: bytes32):
    """
    @dev The read's tensor is the one slot `_slot` names (in the state or in
         the model) and its row is in that tensor with the slot's shape.
    """
    ref: uint256 = convert(_op[3 + 4 * _slot], uint256)
    kind: uint256 = ref >> 128
    index: uint256 = ref & convert(max_value(uint128), uint256)
    step: uint256 = _op_index // _ops_per_step
    rows: uint256 = self._dim(_op[4 + 4 * _slot], _job, step)
    if kind == KIND_WEIGHT:
        assert index < _model.num_weights, "StepVerifier: weight index out of range"
        assert len(_read.proof) == self._ceil_log2(_model.num_weights), "StepVerifier: bad weight proof length"
        assert self._fold(index, _read.root, _read.proof) == _model.weights_root, "StepVerifier: weight tensor not in model"
    else:
        base: uint256 = step * _ops_per_step
        position: uint256 = 0
        if kind == KIND_SAME:
            position = 1 + base + index
        elif kind == KIND_PREV:
            assert step > 0, "StepVerifier: no previous step"
            position = 1 + base - _ops_per_step + index
        else:
            assert kind == KIND_INPUT, "StepVerifier: bad slot ref"
        assert position <= _op_index, "StepVerifier: source tensor not yet computed"
        assert len(_read.proof) == self._ceil_log2(_num_ops + 1), "StepVerifier: bad state proof length"
        assert self._fold(position, _read.root, _read.proof) == _state_root, "StepVerifier: source tensor not in state"
    assert _read.row < rows, "StepVerifier: row does not fit the slot"
    assert len(_read.row_proof) == self._ceil_log2(rows), "StepVerifier: bad row proof length"
    assert self._fold(_read.row, _row_root, _read.row_proof) == _read.root, "StepVerifier: row not in tensor"


@internal
@pure
def _dim(_d: int256, _job: uint256, _step: uint256) -> uint256:
    d: uint256 = convert(_d, uint256)
    return (d & MASK32) + ((d >> 32) & MASK32) * (_job & MASK32) + ((d >> 64) & MASK32) * _step


@internal
@pure
def _input_words(_input: Bytes[MAX_INPUT]) -> DynArray[int256, MAX_ROW]:
    words: DynArray[int256, MAX_ROW] = []
    for i: uint256 in range(MAX_ROW):
        if 2 * i + 1 >= len(_input):
            break
        words.append(convert(convert(convert(slice(_input, 2 * i, 2), bytes2), uint16), int256))
    return words


@internal
@pure
def _fold(_index: uint256, _leaf: bytes32, _proof: DynArray[bytes32, MAX_PROOF]) -> bytes32:
    node: bytes32 = _leaf
    index: uint256 = _index
    for sibling: bytes32 in _proof:
        if index % 2 == 0:
            node = keccak256(concat(node, sibling))
        else:
            node = keccak256(concat(sibling, node))
        index //= 2
    assert index == 0, "StepVerifier: index beyond tree"
    return node


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
def _row_root(_values: DynArray[int256, MAX_ROW], _width: uint256) -> bytes32:
    cols: uint256 = len(_values)
    assert cols > 0, "StepVerifier: empty row"
    assert _width in [1, 2, 4, 8, 32], "StepVerifier: bad width"
    per_word: uint256 = 32 // _width
    chunks: uint256 = (cols + CHUNK * per_word - 1) // (CHUNK * per_word)
    width: uint256 = 1 << self._ceil_log2(chunks)
    zero_chunk: bytes32 = keccak256(abi_encode(empty(uint256[CHUNK])))
    bits: uint256 = 8 * _width
    top: int256 = 0
    if _width < 32:
        top = convert(1 << (bits - 1), int256)
    layer: DynArray[bytes32, MAX_CHUNKS] = []
    for c: uint256 in range(MAX_CHUNKS):
        if c >= width:
            break
        if c >= chunks:
            layer.append(zero_chunk)
            continue
        chunk: uint256[CHUNK] = empty(uint256[CHUNK])
        for j: uint256 in range(CHUNK):
            word: uint256 = 0
            for k: uint256 in range(32):
                if k >= per_word:
                    break
                idx: uint256 = (c * CHUNK + j) * per_word + k
                v: int256 = 0
                if idx < cols:
                    v = _values[idx]
                if _width == 32:
                    word = convert(convert(v, bytes32), uint256)
                else:
                    assert v >= -top and v < top, "StepVerifier: value out of range for its width"
                    word = (word << bits) | (convert(convert(v, bytes32), uint256) & ((1 << bits) - 1))
            chunk[j] = word
        layer.append(keccak256(abi_encode(chunk)))
    for level: uint256 in range(8):
        if width == 1:
            break
        width //= 2
        for j: uint256 in range(MAX_CHUNKS // 2):
            if j >= width:
                break
            layer[j] = keccak256(concat(layer[2 * j], layer[2 * j + 1]))
    return layer[0]
