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
