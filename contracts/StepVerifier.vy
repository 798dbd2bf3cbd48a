# pragma version 0.4.3
"""
@title StepVerifier
@notice Re-executes one element of one op of an integer program, reading
        only Merkle-proven inputs, so the dispute game can end with an
        objective answer. It is stateless: every fact it uses is proven
        against a model root or a state root in the call itself.
@dev    Commitments (the Python twin is opinfer/trace):
        - tensor [R, C] of signed ints: each row is cut into chunks of CHUNK
          elements (zero padded); chunk hash = keccak256(abi_encode(int256[CHUNK]));
          row root = binary Merkle root of the chunk hashes, padded with
          zero-chunk hashes to a power of two; tensor root = binary Merkle
          root of the row roots, padded with zero-row roots to a power of two.
          Padding elements are zero: their true value is 0.
        - state S_i: binary Merkle root over [t_0 .. t_N] (tensor roots,
          t_0 = job input, t_j = output of op j-1), padded with zero hashes
          to 2^ceil(log2(N+1)) leaves; positions not yet computed are zero.
        - model root = keccak256(abi_encode(program_root, weights_root,
          num_ops, num_weights)); program_root = Merkle root over
          keccak256(op_desc) of each op; weights_root = Merkle root over the
          weight tensors' roots.
        Ops (op_desc = abi_encode of the words listed):
        - OP_DOT = 1: (opcode, src, weight, rows, cols, k, multiplier, shift_bits,
          qmin, qmax). out[r, c] = clamp((sum_i T_src[r, i] * W[c, i]) *
          multiplier + 2^(shift_bits-1)) >> shift_bits, qmin, qmax), with an arithmetic
          (flooring) shift, i.e. ties round towards +infinity; no rounding
          term when shift_bits is 0.
"""

# ---------------------------------------------------------------- constants

CHUNK: constant(uint256) = 16
MAX_ROW: constant(uint256) = 2048
MAX_CHUNKS: constant(uint256) = MAX_ROW // CHUNK
MAX_PROOF: constant(uint256) = 32
MAX_OP_DESC: constant(uint256) = 1024
MAX_HEADER: constant(uint256) = 2560
MAX_OP_WITNESS: constant(uint256) = 140000

OP_DOT: constant(uint256) = 1

# Element rules shared with opinfer/engine/elements.py (see there).
LN_BITS: constant(uint256) = 8
EXP_INPUT_MAX: constant(int256) = 1 << 20
INV_LN2_Q8: constant(int256) = 94548

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
def row_root(_values: DynArray[int256, MAX_ROW]) -> bytes32:
    """
    @notice Root of one tensor row with len(_values) columns.
    """
    return self._row_root(_values)


@external
@view
def op_output_shape(_model_root: bytes32, _num_ops: uint256, _op_index: uint256, _header: Bytes[MAX_HEADER]) -> (uint256, uint256):
    """
    @notice Shape (rows, cols) of the tensor that op `_op_index` produces,
            after proving the op against the model root.
    @param _header abi_encode(program_root, weights_root, num_weights, op_desc, op_proof)
    """
    op_desc: Bytes[MAX_OP_DESC] = self._proven_op(_model_root, _num_ops, _op_index, _header)[0]
    opcode: uint256 = extract32(op_desc, 0, output_type=uint256)
    if opcode == OP_DOT:
        return extract32(op_desc, 96, output_type=uint256), extract32(op_desc, 128, output_type=uint256)
    raise "StepVerifier: unknown opcode"


@external
@view
def compute_element(
    _model_root: bytes32,
    _num_ops: uint256,
    _op_index: uint256,
    _state_root: bytes32,
    _row: uint256,
    _col: uint256,
    _header: Bytes[MAX_HEADER],
    _witness: Bytes[MAX_OP_WITNESS],
) -> int256:
    """
    @notice The true value of element (_row, _col) of the output of op
            `_op_index`, computed from inputs proven against `_state_root`
            (the agreed state before the op) and the model root.
    @dev Reverts when a proof does not hold.
    """
    proven: (Bytes[MAX_OP_DESC], bytes32, uint256) = self._proven_op(_model_root, _num_ops, _op_index, _header)
    op_desc: Bytes[MAX_OP_DESC] = proven[0]
    opcode: uint256 = extract32(op_desc, 0, output_type=uint256)
    if opcode == OP_DOT:
        return self._dot(op_desc, proven[1], proven[2], _num_ops, _op_index, _state_root, _row, _col, _witness)
    raise "StepVerifier: unknown opcode"


# ---------------------------------------------------------------- external: element rules
# One element of each op class from plain values (no proofs): the shared test
# vectors check these against the Python engine bit for bit; the proven op
# paths call the same internal functions.

@external
@pure
def elem_requant(_acc: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256:
    return self._requantise(_acc, _mult, _shift, _lo, _hi)


@external
@pure
def elem_dot(_a: DynArray[int256, MAX_ROW], _w: DynArray[int256, MAX_ROW], _bias: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256:
    assert len(_a) == len(_w), "StepVerifier: row lengths differ"
    acc: int256 = _bias
    for i: uint256 in range(MAX_ROW):
        if i >= len(_a):
            break
        acc += _a[i] * _w[i]
    return self._requantise(acc, _mult, _shift, _lo, _hi)


@external
@pure
def elem_layer_norm(_row: DynArray[int256, MAX_ROW], _col: uint256, _gain: int256, _beta: int256, _eps: int256, _lo: int256, _hi: int256) -> int256:
    return self._layer_norm(_row, _col, _gain, _beta, _eps, _lo, _hi)


@external
@pure
def elem_exp_neg(_u: int256) -> int256:
    return self._exp_neg(_u)


@external
@pure
def elem_softmax(_row: DynArray[int256, MAX_ROW], _col: uint256, _mult: int256, _shift: uint256, _one: int256) -> int256:
    return self._softmax(_row, _col, _mult, _shift, _one)


@external
@pure
def elem_residual(_a: int256, _x: int256, _mult_a: int256, _shift_a: uint256, _mult_x: int256, _shift_x: uint256, _lo: int256, _hi: int256) -> int256:
    return self._requantise(_a, _mult_a, _shift_a, _lo, _hi) + self._requantise(_x, _mult_x, _shift_x, _lo, _hi)


@external
@pure
def elem_l2_normalise(_row: DynArray[int256, MAX_ROW], _col: uint256, _out_bits: uint256) -> int256:
    return self._l2_normalise(_row, _col, _out_bits)


# ---------------------------------------------------------------- internal: element rules

@internal
@pure
def _floor_div(_num: int256, _den: int256) -> int256:
    """
    @dev Python's floor division for _den > 0 (Vyper's // truncates towards zero).
    """
    q: int256 = _num // _den
    if _num % _den != 0 and _num < 0:
        q -= 1
    return q


@internal
@pure
def _round_div(_num: int256, _den: int256) -> int256:
    return self._floor_div(2 * _num + _den, 2 * _den)


@internal
@pure
def _layer_norm(_row: DynArray[int256, MAX_ROW], _col: uint256, _gain: int256, _beta: int256, _eps: int256, _lo: int256, _hi: int256) -> int256:
    n: int256 = convert(len(_row), int256)
    assert n > 0 and _col < len(_row), "StepVerifier: bad layer norm row"
    total: int256 = 0
    for x: int256 in _row:
        total += x
    mean: int256 = self._round_div(total, n)
    sq: int256 = 0
    for x: int256 in _row:
        sq += (x - mean) * (x - mean)
    var: int256 = self._round_div(sq, n) + _eps
    assert var >= 0, "StepVerifier: negative variance"
    std: int256 = max(convert(isqrt(convert(var, uint256)), int256), 1)
    y: int256 = self._round_div((_row[_col] - mean) * _gain, std << LN_BITS) + _beta
    return min(max(y, _lo), _hi)


@internal
@pure
def _exp_neg(_u: int256) -> int256:
    """
    @dev 2^16 * exp(-u / 2^8) for 0 <= u: exp(-x) = 2^-(x / ln 2), the
         fractional power of two by a degree-6 polynomial at 2^30 (Horner,
         flooring shifts), then shifted down by the integer part.
    """
    assert _u >= 0, "StepVerifier: negative exp input"
    y: int256 = (_u * INV_LN2_Q8 + 128) >> 8
    q: int256 = y >> 16
    f: int256 = y & 65535
    if q >= 32:
        return 0
    p: int256 = 165394
    p = -1431680 + ((p * f) >> 16)
    p = 10327387 + ((p * f) >> 16)
    p = -59597083 + ((p * f) >> 16)
    p = 257941248 + ((p * f) >> 16)
    p = -744261118 + ((p * f) >> 16)
    p = 1073741824 + ((p * f) >> 16)
    s: uint256 = convert(q, uint256) + 14
    return (p + (1 << (s - 1))) >> s


@internal
@pure
def _softmax(_row: DynArray[int256, MAX_ROW], _col: uint256, _mult: int256, _shift: uint256, _one: int256) -> int256:
    assert len(_row) > 0 and _col < len(_row), "StepVerifier: bad softmax row"
    top: int256 = _row[0]
    for x: int256 in _row:
        top = max(top, x)
    total: int256 = 0
    mine: int256 = 0
    for i: uint256 in range(MAX_ROW):
        if i >= len(_row):
            break
        e: int256 = self._exp_neg(self._requantise(top - _row[i], _mult, _shift, 0, EXP_INPUT_MAX))
        total += e
        if i == _col:
            mine = e
    return self._round_div(mine * _one, total)


@internal
@pure
def _l2_normalise(_row: DynArray[int256, MAX_ROW], _col: uint256, _out_bits: uint256) -> int256:
    assert _col < len(_row), "StepVerifier: column out of range"
    sq: int256 = 0
    for x: int256 in _row:
        sq += x * x
    norm: int256 = max(convert(isqrt(convert(sq, uint256)), int256), 1)
    return self._round_div(_row[_col] << _out_bits, norm)


# ---------------------------------------------------------------- internal: ops

@internal
@view
def _dot(
    _op_desc: Bytes[MAX_OP_DESC],
    _weights_root: bytes32,
    _num_weights: uint256,
    _num_ops: uint256,
    _op_index: uint256,
    _state_root: bytes32,
    _row: uint256,
    _col: uint256,
    _witness: Bytes[MAX_OP_WITNESS],
) -> int256:
    opcode: uint256 = 0
    src: uint256 = 0
    weight: uint256 = 0
    rows: uint256 = 0
    cols: uint256 = 0
    k: uint256 = 0
    multiplier: int256 = 0
    shift_bits: uint256 = 0
    qmin: int256 = 0
    qmax: int256 = 0
    opcode, src, weight, rows, cols, k, multiplier, shift_bits, qmin, qmax = abi_decode(
        _op_desc, (uint256, uint256, uint256, uint256, uint256, uint256, int256, uint256, int256, int256)
    )
    if _row >= rows or _col >= cols:
        return 0
    assert src <= _op_index, "StepVerifier: source tensor not yet computed"
    assert weight < _num_weights, "StepVerifier: weight index out of range"
    assert shift_bits < 255, "StepVerifier: shift_bits too large"

    src_root: bytes32 = empty(bytes32)
    src_proof: DynArray[bytes32, MAX_PROOF] = []
    a_row: DynArray[int256, MAX_ROW] = []
    a_proof: DynArray[bytes32, MAX_PROOF] = []
    w_root: bytes32 = empty(bytes32)
    w_proof: DynArray[bytes32, MAX_PROOF] = []
    w_row: DynArray[int256, MAX_ROW] = []
    w_row_proof: DynArray[bytes32, MAX_PROOF] = []
    src_root, src_proof, a_row, a_proof, w_root, w_proof, w_row, w_row_proof = abi_decode(
        _witness,
        (
            bytes32, DynArray[bytes32, MAX_PROOF], DynArray[int256, MAX_ROW], DynArray[bytes32, MAX_PROOF],
            bytes32, DynArray[bytes32, MAX_PROOF], DynArray[int256, MAX_ROW], DynArray[bytes32, MAX_PROOF],
        ),
    )
    assert len(a_row) == k and len(w_row) == k, "StepVerifier: row length is not k"
    state_depth: uint256 = self._ceil_log2(_num_ops + 1)
    assert len(src_proof) == state_depth, "StepVerifier: bad state proof length"
    assert self._fold(src, src_root, src_proof) == _state_root, "StepVerifier: source tensor not in state"
    assert self._row_in_tensor(src_root, rows, _row, self._row_root(a_row), a_proof), "StepVerifier: activation row not in tensor"
    assert len(w_proof) == self._ceil_log2(_num_weights), "StepVerifier: bad weight proof length"
    assert self._fold(weight, w_root, w_proof) == _weights_root, "StepVerifier: weight tensor not in model"
    assert self._row_in_tensor(w_root, cols, _col, self._row_root(w_row), w_row_proof), "StepVerifier: weight row not in tensor"

    acc: int256 = 0
    for i: uint256 in range(MAX_ROW):
        if i >= k:
            break
        acc += a_row[i] * w_row[i]
    return self._requantise(acc, multiplier, shift_bits, qmin, qmax)


@internal
@pure
def _requantise(_acc: int256, _multiplier: int256, _shift_bits: uint256, _qmin: int256, _qmax: int256) -> int256:
    scaled: int256 = _acc * _multiplier
    if _shift_bits > 0:
        scaled = (scaled + convert(1 << (_shift_bits - 1), int256)) >> _shift_bits
    return min(max(scaled, _qmin), _qmax)


# ---------------------------------------------------------------- internal: commitments

@internal
@view
def _proven_op(_model_root: bytes32, _num_ops: uint256, _op_index: uint256, _header: Bytes[MAX_HEADER]) -> (Bytes[MAX_OP_DESC], bytes32, uint256):
    """
    @dev Decode the header, check it against the model root and return
         (op_desc, weights_root, num_weights).
    """
    program_root: bytes32 = empty(bytes32)
    weights_root: bytes32 = empty(bytes32)
    num_weights: uint256 = 0
    op_desc: Bytes[MAX_OP_DESC] = b""
    op_proof: DynArray[bytes32, MAX_PROOF] = []
    program_root, weights_root, num_weights, op_desc, op_proof = abi_decode(
        _header, (bytes32, bytes32, uint256, Bytes[MAX_OP_DESC], DynArray[bytes32, MAX_PROOF])
    )
    assert keccak256(abi_encode(program_root, weights_root, _num_ops, num_weights)) == _model_root, "StepVerifier: header does not match model root"
    assert _op_index < _num_ops, "StepVerifier: op index out of range"
    assert len(op_proof) == self._ceil_log2(_num_ops), "StepVerifier: bad op proof length"
    assert self._fold(_op_index, keccak256(op_desc), op_proof) == program_root, "StepVerifier: op not in program"
    assert len(op_desc) >= 32, "StepVerifier: empty op"
    return op_desc, weights_root, num_weights


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
def _row_in_tensor(_tensor_root: bytes32, _rows: uint256, _row: uint256, _row_root: bytes32, _proof: DynArray[bytes32, MAX_PROOF]) -> bool:
    if len(_proof) != self._ceil_log2(_rows):
        return False
    return self._fold(_row, _row_root, _proof) == _tensor_root


@internal
@pure
def _row_root(_values: DynArray[int256, MAX_ROW]) -> bytes32:
    cols: uint256 = len(_values)
    assert cols > 0, "StepVerifier: empty row"
    chunks: uint256 = (cols + CHUNK - 1) // CHUNK
    width: uint256 = 1 << self._ceil_log2(chunks)
    zero_chunk: bytes32 = keccak256(abi_encode(empty(int256[CHUNK])))
    layer: DynArray[bytes32, MAX_CHUNKS] = []
    for c: uint256 in range(MAX_CHUNKS):
        if c >= width:
            break
        if c >= chunks:
            layer.append(zero_chunk)
            continue
        chunk: int256[CHUNK] = empty(int256[CHUNK])
        for j: uint256 in range(CHUNK):
            idx: uint256 = c * CHUNK + j
            if idx < cols:
                chunk[j] = _values[idx]
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
