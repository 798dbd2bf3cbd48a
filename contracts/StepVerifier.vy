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
          is template op i % P at step i // P. The steps_mode word also
          carries the model's job limits (bit 8 set: limited; positions at
          16, vocab at 32 (32 bits), max temperature at 64, min new tokens
          at 80, max new tokens at 96, max stop words at 112; 16 bits
          each), the ones its engine enforces off-chain, so job_shape
          refuses what an honest node would never sign.
        - job input: big-endian uint16 words [version, L, M, temperature,
          top_p - 1, seed x 4, S, stop words x S, tokens x L] (version 1) or
          [2, L, M, temperature, top_p - 1, seed x 4, S, stop words x S,
          presence, frequency, B, (id, bias) x B, tokens x L] (version 2:
          the sampler's penalties and logit bias, int16 words); T_0 is one
          row holding the words.
        - op_desc = abi_encode(int256[32]): opcode, rows, cols, then four
          slots (ref, rows, cols, width), then 13 params. dim = c + a*L +
          b*s + t*ta + m*M packed as c | a << 32 | b << 64 | t << 96 |
          m << 128 (L tokens, step s, ta = tokens_at, M = steps + 1 - L
          tokens to generate). ref = kind << 128 | index with kind 1 = T_0,
          2 = op of this step, 3 = op of the previous step, 4 = weight
          tensor.
        - ops 1..12 are computed here; the decoder's ops 13..27 and 32 by
          `DecoderOps`, which returns the value and the rows it read.
"""

# ---------------------------------------------------------------- constants

CHUNK: constant(uint256) = 16
MAX_ROW: constant(uint256) = 2048
MAX_COLS: constant(uint256) = 4096
MAX_CHUNKS: constant(uint256) = MAX_COLS // CHUNK
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
VERSION: constant(int256) = 1
VERSION_PENALTIES: constant(int256) = 2
PENALTY_WORDS: constant(uint256) = 3
SEPARATOR: constant(int256) = 65535
LIMITED: constant(uint256) = 256
MASK16: constant(uint256) = 65535
TABLE_WIDTH: constant(uint256) = 256
MASK32: constant(uint256) = 4294967295
NOT_READ: constant(uint256) = max_value(uint256)

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
OP_DECODER_FIRST: constant(uint256) = 13


struct Read:
    root: bytes32
    proof: DynArray[bytes32, MAX_PROOF]
    row: uint256
    row_proof: DynArray[bytes32, MAX_PROOF]

interface IElementRules:
    def elem_requant(_acc: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256: pure
    def elem_dot(_a: DynArray[int256, MAX_ROW], _w: DynArray[int256, MAX_ROW], _bias: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256: pure
    def elem_layer_norm(_row: DynArray[int256, MAX_ROW], _col: uint256, _gain: int256, _beta: int256, _eps: int256, _lo: int256, _hi: int256) -> int256: pure
    def elem_softmax(_row: DynArray[int256, MAX_ROW], _col: uint256, _mult: int256, _shift: uint256, _one: int256) -> int256: pure
    def elem_l2_normalise(_row: DynArray[int256, MAX_ROW], _col: uint256, _out_bits: uint256) -> int256: pure

interface IDecoderOps:
    def element(_code: uint256, _params: int256[13], _cols: uint256, _job: uint256, _step: uint256, _row: uint256, _col: uint256, _witness: Bytes[MAX_OP_WITNESS], _pos: uint256[MAX_SLOTS], _enc: uint256[MAX_SLOTS], _lens: uint256[MAX_SLOTS]) -> (int256, uint256[MAX_SLOTS]): view

struct Model:
    program_root: bytes32
    weights_root: bytes32
    num_weights: uint256
    steps_mode: uint256

# ---------------------------------------------------------------- storage

# @dev The element rules (shared with the Python engine by test vectors).
rules: public(IElementRules)
# @dev The decoder's op classes (opcodes 13..27).
decoder: public(IDecoderOps)


@deploy
def __init__(_rules: IElementRules, _decoder: IDecoderOps):
    """
    @param _rules The ElementRules contract.
    @param _decoder The DecoderOps contract (built on the same ElementRules).
    """
    self.rules = _rules
    self.decoder = _decoder


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
            Well formed: the job input layout (version 1 or 2, lengths that add
            up, prompt tokens below 0xFFFF, stop sequences non-empty and
            terminated by 0xFFFF) and, for a limited model, its job limits:
            positions (L, or L + max(M, 1) - 1 per position), prompt tokens
            below the vocabulary, temperature, new tokens, stop words.
            The Python twin is opinfer.semantics.program.job_shape.
    @param _model_header abi_encode(program_root, weights_root, num_weights, steps_mode)
    """
    model: Model = abi_decode(_model_header, Model)
    assert self._model_root(model, _ops_per_step) == _model_root, "StepVerifier: header does not match model root"
    if len(_input) < 2 * HEADER_WORDS or len(_input) % 2 != 0:
        return False, 0, 0, empty(bytes32)
    words: DynArray[int256, MAX_ROW] = self._input_words(_input)
    tokens: uint256 = convert(words[1], uint256)
    stops: uint256 = convert(words[9], uint256)
    # tokens_at: after the stop words and, in version 2, the penalty words
    # (presence, frequency, B, then B (id, bias) pairs)
    at: uint256 = HEADER_WORDS + stops
    if words[0] == VERSION_PENALTIES:
        if len(words) < at + PENALTY_WORDS:
            return False, 0, 0, empty(bytes32)
        at += PENALTY_WORDS + 2 * convert(words[at + 2], uint256)
    if (words[0] != VERSION and words[0] != VERSION_PENALTIES) or tokens == 0 or len(words) != at + tokens:
        return False, 0, 0, empty(bytes32)
    mode: uint256 = model.steps_mode
    limited: bool = mode & LIMITED != 0
    vocab: int256 = SEPARATOR
    if limited:
        vocab = min(convert((mode >> 32) & MASK32, int256), SEPARATOR)
    # Stop words: non-empty sequences, each ended by the separator.
    previous: int256 = SEPARATOR
    for i: uint256 in range(MAX_ROW):
        if i >= stops:
            break
        previous = words[HEADER_WORDS + i]
        if previous == SEPARATOR and (i == 0 or words[HEADER_WORDS + i - 1] == SEPARATOR):
            return False, 0, 0, empty(bytes32)
    if previous != SEPARATOR:
        return False, 0, 0, empty(bytes32)
    # Prompt tokens: below the separator and the vocabulary.
    for i: uint256 in range(MAX_ROW):
        if i >= tokens:
            break
        if words[at + i] >= vocab:
            return False, 0, 0, empty(bytes32)
    new_tokens: uint256 = convert(words[2], uint256)
    steps: uint256 = 1
    positions: uint256 = tokens
    if mode & 255 == 1:
        steps = tokens + max(new_tokens, 1) - 1
        positions = steps
    if limited:
        temperature: uint256 = convert(words[3], uint256)
        if positions > (mode >> 16) & MASK16 or temperature > (mode >> 64) & MASK16:
            return False, 0, 0, empty(bytes32)
        if new_tokens < (mode >> 80) & MASK16 or new_tokens > (mode >> 96) & MASK16 or stops > (mode >> 112) & MASK16:
            return False, 0, 0, empty(bytes32)
    job: uint256 = tokens | at << 32 | steps << 64
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
    @dev Reverts when a proof does not hold. The witness holds, for each
         slot in order: its tensor root, row index, the lengths of the two
         proofs, the tensor proof, the row proof (32-byte words each), the
         encoding width e of the row and the row:
         - a packed slot (width < 32) gives its row's chunks as committed
           (16 words each, e = width);
         - an unpacked slot (width 32) gives its values as e-byte big-endian
           two's complement (e in 1, 2, 4, 8, 32, the witness picks), which
           the verifier widens to words to hash them;
         then one zero word. Value j of slot s is the e-byte number at
         pos[s] + j * e (read in place, never copied out). A slot the
         element does not read is the two words (0, NOT_READ) instead, and
         its row is recorded as NOT_READ: each op states the rows it wants,
         NOT_READ included.
    """
    model: Model = empty(Model)
    op: int256[DESC_WORDS] = empty(int256[DESC_WORDS])
    model, op = self._proven_op(_model_root, _ops_per_step, _job, _op_index, _header)
    step: uint256 = _op_index // _ops_per_step
    if _row >= self._dim(op[1], _job, step) or _col >= self._dim(op[2], _job, step):
        return 0
    num_ops: uint256 = (_job >> 64) * _ops_per_step
    slots: uint256 = 0
    for i: uint256 in range(MAX_SLOTS):
        if op[3 + 4 * i] != 0:
            slots = i + 1
    # Prove each slot's row; pos/enc/sh locate its values in the witness:
    # value j of slot s = convert(extract32(_witness, pos[s] + j * enc[s]), int256) >> sh[s].
    pos: uint256[MAX_SLOTS] = empty(uint256[MAX_SLOTS])
    enc: uint256[MAX_SLOTS] = empty(uint256[MAX_SLOTS])
    sh: uint256[MAX_SLOTS] = empty(uint256[MAX_SLOTS])
    lens: uint256[MAX_SLOTS] = empty(uint256[MAX_SLOTS])
    rows: DynArray[uint256, MAX_SLOTS] = []
    at: uint256 = 0
    for i: uint256 in range(MAX_SLOTS):
        if i >= slots:
            break
        read: Read = empty(Read)
        read.root = extract32(_witness, at)
        read.row = convert(extract32(_witness, at + 32), uint256)
        if read.row == NOT_READ:
            # an unread slot: nothing to prove, no values (lens 0)
            assert read.root == empty(bytes32), "StepVerifier: unread slot with a root"
            rows.append(NOT_READ)
            at += 64
            continue
        n_proof: uint256 = convert(extract32(_witness, at + 64), uint256)
        n_row_proof: uint256 = convert(extract32(_witness, at + 96), uint256)
        assert n_proof <= MAX_PROOF and n_row_proof <= MAX_PROOF, "StepVerifier: proof too long"
        at += 128
        for j: uint256 in range(MAX_PROOF):
            if j >= n_proof:
                break
            read.proof.append(extract32(_witness, at + 32 * j))
        at += 32 * n_proof
        for j: uint256 in range(MAX_PROOF):
            if j >= n_row_proof:
                break
            read.row_proof.append(extract32(_witness, at + 32 * j))
        at += 32 * n_row_proof
        cols: uint256 = self._dim(op[5 + 4 * i], _job, step)
        width: uint256 = convert(op[6 + 4 * i], uint256)
        e: uint256 = convert(extract32(_witness, at), uint256)
        at += 32
        assert cols > 0 and cols <= MAX_COLS, "StepVerifier: bad row width"
        assert e in [1, 2, 4, 8, 32] and (width == 32 or e == width), "StepVerifier: bad width"
        pos[i] = at
        enc[i] = e
        sh[i] = 256 - 8 * e
        lens[i] = cols
        hashes: DynArray[bytes32, MAX_CHUNKS] = []
        if width < 32:
            # the committed chunks as they are; what follows the last value is zero
            chunks: uint256 = (cols * width + 32 * CHUNK - 1) // (32 * CHUNK)
            for c: uint256 in range(MAX_CHUNKS):
                if c >= chunks:
                    break
                hashes.append(keccak256(slice(_witness, at + 32 * CHUNK * c, 32 * CHUNK)))
            end: uint256 = at + cols * width
            at += 32 * CHUNK * chunks
            for j: uint256 in range(CHUNK):
                if end >= at:
                    break
                tail: uint256 = convert(extract32(_witness, end), uint256)
                if at - end < 32:
                    tail >>= 8 * (32 - (at - end))
                assert tail == 0, "StepVerifier: padding not zero"
                end += 32
        else:
            # widen the values to words, 16 per chunk (zero padded); a full
            # chunk given as words (e = 32) is hashed as it is
            chunks: uint256 = (cols + CHUNK - 1) // CHUNK
            si: uint256 = sh[i]
            o: uint256 = at
            for c: uint256 in range(MAX_CHUNKS):
                if c >= chunks:
                    break
                left: uint256 = cols - c * CHUNK
                if e == 32 and left >= CHUNK:
                    hashes.append(keccak256(slice(_witness, o, 32 * CHUNK)))
                    o = unsafe_add(o, 32 * CHUNK)
                    continue
                chunk: int256[CHUNK] = empty(int256[CHUNK])
                for j: uint256 in range(CHUNK):
                    if j >= left:
                        break
                    chunk[j] = convert(extract32(_witness, o), int256) >> si
                    o = unsafe_add(o, e)
                hashes.append(keccak256(abi_encode(chunk)))
            at = o
        self._check_read(model, op, i, read, self._merkle_root(hashes), _job, _op_index, _ops_per_step, num_ops, _state_root)
        rows.append(read.row)
    assert at + 32 == len(_witness) and extract32(_witness, at) == empty(bytes32), "StepVerifier: bad witness length"

    code: uint256 = convert(op[0], uint256)
    p: int256[13] = empty(int256[13])
    for i: uint256 in range(13):
        p[i] = op[PARAMS_AT + i]
    if code >= OP_DECODER_FIRST:
        value: int256 = 0
        want: uint256[MAX_SLOTS] = empty(uint256[MAX_SLOTS])
        value, want = staticcall self.decoder.element(code, p, self._dim(op[2], _job, step), _job, step, _row, _col, _witness, pos, enc, lens)
        self._want(rows, want[0], want[1], want[2], want[3])
        return value
    # Rows wider than MAX_ROW (up to MAX_COLS) are for the decoder's single-value
    # reads and for CONTEXT, whose product is taken in place (a decoder's
    # probabilities and V^T rows span the context: up to 4,096 positions).
    for i: uint256 in range(MAX_SLOTS):
        assert lens[i] <= MAX_ROW or code == OP_CONTEXT, "StepVerifier: bad row width"
    # The ops whose rule reads a whole row get slot 0's values.
    row: DynArray[int256, MAX_ROW] = []
    if code in [OP_LAYER_NORM, OP_SOFTMAX, OP_L2NORM, OP_POOL]:
        for j: uint256 in range(MAX_ROW):
            if j >= lens[0]:
                break
            row.append(convert(extract32(_witness, pos[0] + j * enc[0]), int256) >> sh[0])
    # The dot-product ops only set what to multiply (n values of slot 0 from
    # a, of slot 1 from b, plus bias) and how to requantise it (q = mult,
    # shift, lo, hi); the product is taken in place after the dispatch.
    a: uint256 = 0
    b: uint256 = 0
    n: uint256 = 0
    bias: int256 = 0
    q: int256[4] = empty(int256[4])
    if code == OP_DOT:
        self._want(rows, _row, _col, 0, 0)
        n = lens[0]
        q = [p[0], p[1], p[2], p[3]]
    elif code == OP_EMBED_SUM:
        at = (_job >> 32 & MASK32) + _row
        token: uint256 = convert(self._value(extract32(_witness, pos[0] + at * enc[0]), sh[0], at < lens[0]), uint256)
        self._want(rows, 0, token, _row, 0)
        word: int256 = self._value(extract32(_witness, pos[1] + _col * enc[1]), sh[1], _col < lens[1])
        position: int256 = self._value(extract32(_witness, pos[2] + _col * enc[2]), sh[2], _col < lens[2])
        return word + position + self._value(extract32(_witness, pos[3] + _col * enc[3]), sh[3], _col < lens[3])
    elif code == OP_LAYER_NORM:
        self._want(rows, _row, _col, 0, 0)
        gain: int256 = self._value(extract32(_witness, pos[1]), sh[1], True)
        beta: int256 = self._value(extract32(_witness, pos[1] + enc[1]), sh[1], 1 < lens[1])
        return staticcall self.rules.elem_layer_norm(row, _col, gain, beta, p[0], -128, 127)
    elif code == OP_DENSE:
        self._want(rows, _row, _col, _col, 0)
        n = lens[0]
        bias = self._value(extract32(_witness, pos[2]), sh[2], True)
        q = [self._value(extract32(_witness, pos[2] + enc[2]), sh[2], 1 < lens[2]), p[0], p[1], p[2]]
    elif code == OP_SCORES:
        rq: uint256 = self._dim(op[4], _job, step)
        d: uint256 = convert(p[0], uint256)
        h: uint256 = _row // rq
        self._want(rows, _row % rq, _col, 0, 0)
        a = h * d
        b = (h // convert(p[1], uint256)) * d
        n = d
        q = [1, 0, MIN_INT, MAX_INT]
    elif code == OP_SOFTMAX:
        self._want(rows, _row, 0, 0, 0)
        return staticcall self.rules.elem_softmax(row, _col, p[0], convert(p[1], uint256), p[2])
    elif code == OP_TRANSPOSE:
        self._want(rows, _col, 0, 0, 0)
        return self._value(extract32(_witness, pos[0] + _row * enc[0]), sh[0], _row < lens[0])
    elif code == OP_CONTEXT:
        d: uint256 = convert(p[0], uint256)
        h: uint256 = _col // d
        self._want(rows, h * self._dim(op[1], _job, step) + _row, (h // convert(p[1], uint256)) * d + _col % d, 0, 0)
        n = lens[0]
        q = [p[2], p[3], p[4], p[5]]
    elif code == OP_RESIDUAL:
        self._want(rows, _row, _row, _col, 0)
        x: int256 = self._value(extract32(_witness, pos[1] + _col * enc[1]), sh[1], _col < lens[1])
        mult: int256 = self._value(extract32(_witness, pos[2]), sh[2], True)
        return self._value(extract32(_witness, pos[0] + _col * enc[0]), sh[0], _col < lens[0]) + staticcall self.rules.elem_requant(x, mult, convert(p[0], uint256), p[1], p[2])
    elif code == OP_LOOKUP:
        idx: int256 = self._value(extract32(_witness, pos[0] + _col * enc[0]), sh[0], _col < lens[0]) + p[0]
        assert idx >= 0, "StepVerifier: lookup index out of range"
        self._want(rows, _row, convert(idx, uint256) // TABLE_WIDTH, 0, 0)
        return self._value(extract32(_witness, pos[1] + (convert(idx, uint256) % TABLE_WIDTH) * enc[1]), sh[1], convert(idx, uint256) % TABLE_WIDTH < lens[1])
    elif code == OP_POOL:
        self._want(rows, _col, _col, 0, 0)
        total: int256 = 0
        for v: int256 in row:
            total += v
        return total * self._value(extract32(_witness, pos[1]), sh[1], True)
    elif code == OP_L2NORM:
        self._want(rows, _row, 0, 0, 0)
        return staticcall self.rules.elem_l2_normalise(row, _col, convert(p[0], uint256))
    else:
        raise "StepVerifier: unknown opcode"
    # Dot product (elem_dot's rule): both rows lie in their slots and are as long.
    assert a + n <= lens[0] and b + n <= lens[1], "StepVerifier: row beyond witness"
    assert code == OP_SCORES or lens[0] == lens[1], "StepVerifier: row lengths differ"
    o0: uint256 = pos[0] + a * enc[0]
    o1: uint256 = pos[1] + b * enc[1]
    e0: uint256 = enc[0]
    e1: uint256 = enc[1]
    s0: uint256 = sh[0]
    s1: uint256 = sh[1]
    acc: int256 = bias
    if e0 <= 8 and e1 <= 8 and bias > -(1 << 200) and bias < (1 << 200):
        # |products| < 2^126, at most MAX_COLS of them: no partial sum overflows,
        # so unchecked arithmetic gives the checked result
        for i: uint256 in range(MAX_COLS):
            if i >= n:
                break
            acc = unsafe_add(acc, unsafe_mul(convert(extract32(_witness, o0), int256) >> s0, convert(extract32(_witness, o1), int256) >> s1))
            o0 = unsafe_add(o0, e0)
            o1 = unsafe_add(o1, e1)
    else:
        for i: uint256 in range(MAX_COLS):
            if i >= n:
                break
            acc += (convert(extract32(_witness, o0), int256) >> s0) * (convert(extract32(_witness, o1), int256) >> s1)
            o0 = unsafe_add(o0, e0)
            o1 = unsafe_add(o1, e1)
    return staticcall self.rules.elem_requant(acc, q[0], convert(q[1], uint256), q[2], q[3])


# ---------------------------------------------------------------- internal: ops

@internal
@pure
def _value(_word: bytes32, _shift: uint256, _in_row: bool) -> int256:
    """
    @dev The value at the start of `_word` (its top 256 - _shift bits, signed);
         it must lie in its slot's row.
    """
    assert _in_row, "StepVerifier: value beyond its row"
    return convert(_word, int256) >> _shift



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
    """
    @dev c + a*L + b*s + t*ta + m*M for _d = c | a << 32 | b << 64 | t << 96 | m << 128,
         with L = tokens, ta = tokens_at, M = steps + 1 - L (0 if negative).
    """
    d: uint256 = convert(_d, uint256)
    tokens: uint256 = _job & MASK32
    steps: uint256 = _job >> 64
    gen: uint256 = 0
    if steps + 1 > tokens:
        gen = steps + 1 - tokens
    return (d & MASK32) + ((d >> 32) & MASK32) * tokens + ((d >> 64) & MASK32) * _step + ((d >> 96) & MASK32) * ((_job >> 32) & MASK32) + ((d >> 128) & MASK32) * gen


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
def _merkle_root(_hashes: DynArray[bytes32, MAX_CHUNKS]) -> bytes32:
    """
    @dev Root of a row from its chunk hashes, padded with zero-chunk hashes.
    """
    layer: DynArray[bytes32, MAX_CHUNKS] = _hashes
    width: uint256 = 1 << self._ceil_log2(len(layer))
    zero_chunk: bytes32 = keccak256(abi_encode(empty(uint256[CHUNK])))
    for c: uint256 in range(MAX_CHUNKS):
        if c >= width:
            break
        if c >= len(_hashes):
            layer.append(zero_chunk)
    for level: uint256 in range(8):
        if width == 1:
            break
        width //= 2
        for j: uint256 in range(MAX_CHUNKS // 2):
            if j >= width:
                break
            layer[j] = keccak256(concat(layer[2 * j], layer[2 * j + 1]))
    return layer[0]


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
