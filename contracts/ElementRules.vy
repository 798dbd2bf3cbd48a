# pragma version 0.4.3
"""
@title ElementRules
@custom:contract-name ElementRules
@license MIT
@author opinfer
@notice One element of every op of opinfer's integer programs, from plain
        values: the rules a fraud proof re-executes. Stateless and pure;
        `StepVerifier` proves the inputs against the committed state and
        calls these functions for the value.
@dev    Each `elem_*` function is bit-identical to the function of the same
        name (without `elem_`) in opinfer/semantics/elements.py; docs/ops.md
        ("Element rules") gives each formula and its reason, and
        tests/contracts/test_shared_vectors.py checks both on shared vectors.
        Conventions: rounding is half up (floor(x + 1/2)) with flooring
        (arithmetic) shifts and a flooring division (Vyper's `//` and `%`
        truncate towards zero, hence `_floor_div`); saturation clamps.
        Rows are at most MAX_ROW entries, sampling and table chunks at most
        CHUNK_WIDTH, lists of chunk results at most MAX_CHUNKS (a vocabulary
        below 2^17 = 512 chunks of 256).
"""

# ---------------------------------------------------------------- constants

MAX_ROW: constant(uint256) = 2048
CHUNK_WIDTH: constant(uint256) = 256
MAX_CHUNKS: constant(uint256) = 512
BLOCK: constant(uint256) = 32
MAX_BLOCKS: constant(uint256) = 64           # MAX_ROW / BLOCK
BLOCK_ROW_BITS: constant(uint256) = 15
BLOCK_ACT_MAX: constant(int256) = 127

LN_BITS: constant(uint256) = 8
EXP_INPUT_MAX: constant(int256) = 1 << 20
INV_LN2_Q8: constant(int256) = 94548
SQUARE_BITS: constant(uint256) = 26
NORM_BITS: constant(uint256) = 8
ROPE_BITS: constant(uint256) = 14
INDEX_BITS: constant(uint256) = 17
INDEX_MASK: constant(int256) = (1 << 17) - 1
TOP_P_ONE: constant(uint256) = 1 << 16
TEMPERATURE_MILLI_MAX: constant(uint256) = 2000
PENALTY_SCALE: constant(int256) = 16         # penalties at 2^-12 to the logits' 2^-16
BIAS_SCALE: constant(int256) = 256           # logit bias at 2^-8 to the logits' 2^-16
LOGIT_MIN: constant(int256) = -(1 << 31)
LOGIT_MAX: constant(int256) = (1 << 31) - 1

# ---------------------------------------------------------------- MiniLM rules

@external
@pure
def elem_requant(_acc: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256:
    """
    @notice clamp((_acc * _mult + 2^(_shift-1)) >> _shift, _lo, _hi); no rounding term when _shift is 0.
    """
    return self._requantise(_acc, _mult, _shift, _lo, _hi)


@external
@pure
def elem_dot(_a: DynArray[int256, MAX_ROW], _w: DynArray[int256, MAX_ROW], _bias: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256:
    """
    @notice A dense layer's element: requant(_a . _w + _bias).
    """
    assert len(_a) == len(_w), "ElementRules: row lengths differ"
    acc: int256 = _bias
    for i: uint256 in range(MAX_ROW):
        if i >= len(_a):
            break
        acc += _a[i] * _w[i]
    return self._requantise(acc, _mult, _shift, _lo, _hi)


@external
@pure
def elem_layer_norm(_row: DynArray[int256, MAX_ROW], _col: uint256, _gain: int256, _beta: int256, _eps: int256, _lo: int256, _hi: int256) -> int256:
    """
    @notice LayerNorm: mean = round_div(sum x, n), var = round_div(sum (x - mean)^2, n) + eps,
            y = clamp(round_div((x[col] - mean) * gain, max(isqrt(var), 1) << 8) + beta).
    """
    n: int256 = convert(len(_row), int256)
    assert n > 0 and _col < len(_row), "ElementRules: bad layer norm row"
    total: int256 = 0
    for x: int256 in _row:
        total += x
    mean: int256 = self._round_div(total, n)
    sq: int256 = 0
    for x: int256 in _row:
        sq += (x - mean) * (x - mean)
    var: int256 = self._round_div(sq, n) + _eps
    assert var >= 0, "ElementRules: negative variance"
    std: int256 = max(convert(isqrt(convert(var, uint256)), int256), 1)
    y: int256 = self._round_div((_row[_col] - mean) * _gain, std << LN_BITS) + _beta
    return min(max(y, _lo), _hi)


@external
@pure
def elem_exp_neg(_u: int256) -> int256:
    """
    @notice 2^16 * exp(-_u / 2^8) for _u >= 0.
    """
    return self._exp_neg(_u)


@external
@pure
def elem_softmax(_row: DynArray[int256, MAX_ROW], _col: uint256, _mult: int256, _shift: uint256, _one: int256) -> int256:
    """
    @notice Probability _col of a scores row: e_i = exp_neg(requant(max - s_i, _mult, _shift, 0, 2^20)),
            p = round_div(e_col * _one, sum e).
    """
    assert len(_row) > 0 and _col < len(_row), "ElementRules: bad softmax row"
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


@external
@pure
def elem_exp_sum(_values: DynArray[int256, CHUNK_WIDTH], _top: int256, _mult: int256, _shift: uint256) -> int256:
    """
    @notice One chunk's share of a long row's softmax denominator:
            sum of exp_neg(requant(_top - v, _mult, _shift, 0, 2^20)), _top the row's maximum.
    """
    total: int256 = 0
    for v: int256 in _values:
        assert v <= _top, "ElementRules: value above the row's maximum"
        total += self._exp_neg(self._requantise(_top - v, _mult, _shift, 0, EXP_INPUT_MAX))
    return total


@external
@pure
def elem_softmax_prob(_value: int256, _top: int256, _total: int256, _mult: int256, _shift: uint256, _one: int256) -> int256:
    """
    @notice A softmax element from its row's maximum and exact sum of exps:
            round_div(exp_neg(requant(_top - _value, _mult, _shift, 0, 2^20)) * _one, _total).
    """
    assert _value <= _top and _total > 0, "ElementRules: bad softmax element"
    return self._round_div(self._exp_neg(self._requantise(_top - _value, _mult, _shift, 0, EXP_INPUT_MAX)) * _one, _total)


@external
@pure
def elem_residual(_a: int256, _x: int256, _mult_a: int256, _shift_a: uint256, _mult_x: int256, _shift_x: uint256, _lo: int256, _hi: int256) -> int256:
    """
    @notice Two branches brought to one scale and added.
    """
    return self._requantise(_a, _mult_a, _shift_a, _lo, _hi) + self._requantise(_x, _mult_x, _shift_x, _lo, _hi)


@external
@pure
def elem_l2_normalise(_row: DynArray[int256, MAX_ROW], _col: uint256, _out_bits: uint256) -> int256:
    """
    @notice round_div(x[col] << _out_bits, max(isqrt(sum x^2), 1)).
    """
    assert _col < len(_row), "ElementRules: column out of range"
    sq: int256 = 0
    for x: int256 in _row:
        sq += x * x
    norm: int256 = max(convert(isqrt(convert(sq, uint256)), int256), 1)
    return self._round_div(_row[_col] << _out_bits, norm)


# ---------------------------------------------------------------- SmolLM2 rules

@external
@pure
def elem_block_dense(_a: DynArray[int256, MAX_ROW], _codes: DynArray[int256, MAX_ROW], _dscale: DynArray[int256, MAX_BLOCKS], _mscale: DynArray[int256, MAX_BLOCKS], _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256:
    """
    @notice One output of a GGUF block matrix (Q4_1: codes 0..15 with a scale D and a
            minimum M per block of 32; Q8_0: signed codes, _mscale empty) times an
            activation row, in exact integers (D, M: the fp16 numbers times 2^24).
            d = max(bit_length(max |a|) - 15, 0), xs = (a + 2^(d-1)) >> d; per block
            s = max |xs|, xq = round_div(127 xs, s) (0 when s = 0),
            acc += s (D sum q xq + M sum xq); requant(acc << d, _mult, _shift, _lo, _hi).
    """
    n: uint256 = len(_a)
    blocks: uint256 = n // BLOCK
    assert n > 0 and n % BLOCK == 0 and len(_codes) == n and len(_dscale) == blocks, "ElementRules: bad block rows"
    assert len(_mscale) == 0 or len(_mscale) == blocks, "ElementRules: bad block minimums"
    d: uint256 = self._excess_bits(_a, BLOCK_ROW_BITS)
    half: int256 = 0
    if d > 0:
        half = 1 << (d - 1)
    acc: int256 = 0
    for b: uint256 in range(MAX_BLOCKS):
        if b >= blocks:
            break
        s: int256 = 0
        for i: uint256 in range(BLOCK):
            s = max(s, abs((_a[b * BLOCK + i] + half) >> d))
        if s == 0:
            continue
        s1: int256 = 0
        s2: int256 = 0
        for i: uint256 in range(BLOCK):
            xq: int256 = self._round_div(BLOCK_ACT_MAX * ((_a[b * BLOCK + i] + half) >> d), s)
            s1 += _codes[b * BLOCK + i] * xq
            s2 += xq
        acc += _dscale[b] * s1 * s
        if len(_mscale) > 0:
            acc += _mscale[b] * s2 * s
    return self._requantise(acc << d, _mult, _shift, _lo, _hi)


@external
@pure
def elem_rms_norm(_row: DynArray[int256, MAX_ROW], _col: uint256, _gain: int256, _eps: int256, _lo: int256, _hi: int256) -> int256:
    """
    @notice RMSNorm: d = max(bit_length(max |x|) - 26, 0), xs = x >> d,
            ms = round_div(sum xs^2, n) + (eps >> 2d), rms = max(isqrt(ms), 1),
            y = clamp(round_div(x[col] * gain, rms << (8 + d)), _lo, _hi).
    """
    n: int256 = convert(len(_row), int256)
    assert n > 0 and _col < len(_row), "ElementRules: bad rms norm row"
    d: uint256 = self._excess_bits(_row, SQUARE_BITS)
    sq: int256 = 0
    for x: int256 in _row:
        sq += (x >> d) * (x >> d)
    ms: int256 = self._round_div(sq, n) + (_eps >> (2 * d))
    assert ms >= 0, "ElementRules: negative mean square"
    rms: int256 = max(convert(isqrt(convert(ms, uint256)), int256), 1)
    y: int256 = self._round_div(_row[_col] * _gain, rms << (NORM_BITS + d))
    return min(max(y, _lo), _hi)


@external
@pure
def elem_rope_pair(_col: uint256, _head_dim: uint256) -> uint256:
    """
    @notice The cos/sin table column that rotates element _col of a row of heads.
    """
    assert _head_dim > 0, "ElementRules: bad head_dim"
    return (_col % _head_dim) // 2


@external
@pure
def elem_rope(_row: DynArray[int256, MAX_ROW], _col: uint256, _head_dim: uint256, _cos: int256, _sin: int256) -> int256:
    """
    @notice Rotary embedding of element _col: (a, b) = the pair holding it; even col:
            (a cos - b sin + 2^13) >> 14, odd col: (a sin + b cos + 2^13) >> 14.
    @param _cos The table value for this position and pair elem_rope_pair(_col, _head_dim),
           scaled by 2^14 (the caller proves it from the table).
    @param _sin Likewise.
    """
    n: uint256 = len(_row)
    assert _head_dim > 0 and _head_dim % 2 == 0 and n % _head_dim == 0 and _col < n, "ElementRules: bad rope row"
    base: uint256 = _col - _col % 2
    a: int256 = _row[base]
    b: int256 = _row[base + 1]
    half: int256 = 1 << (ROPE_BITS - 1)
    if _col % 2 == 0:
        return (a * _cos - b * _sin + half) >> ROPE_BITS
    return (a * _sin + b * _cos + half) >> ROPE_BITS


@external
@pure
def elem_silu_gate(_table_value: int256, _up: int256) -> int256:
    """
    @notice SwiGLU's product: silu(gate) read from the table, times up.
    """
    return _table_value * _up


@external
@pure
def elem_lookup(_table: DynArray[int256, CHUNK_WIDTH], _index: int256, _offset: int256) -> int256:
    """
    @notice _table[_index + _offset]; reverts outside the table.
    """
    pos: int256 = _index + _offset
    assert pos >= 0 and pos < convert(len(_table), int256), "ElementRules: table index out of range"
    return _table[convert(pos, uint256)]


@external
@pure
def elem_lookup_2d(_row_values: DynArray[int256, CHUNK_WIDTH], _index: int256, _offset: int256, _width: uint256) -> int256:
    """
    @notice A lookup into a table stored as rows of _width (<= 256) entries, e.g. a
            4,096-entry table as a [16, 256] tensor.
    @dev    The caller proves and passes row (_index + _offset) // _width of the table;
            this returns entry (_index + _offset) % _width of that row.
    """
    pos: int256 = _index + _offset
    assert _width > 0 and _width <= CHUNK_WIDTH and pos >= 0, "ElementRules: table index out of range"
    col: uint256 = convert(pos, uint256) % _width
    assert col < len(_row_values), "ElementRules: table index out of range"
    return _row_values[col]


# ---------------------------------------------------------------- argmax and sampling

@external
@pure
def elem_chunk_argmax(_values: DynArray[int256, CHUNK_WIDTH], _base: uint256) -> int256:
    """
    @notice max over i of (v_i << 17) + (2^17 - 1 - (_base + i)): the value and index of the
            chunk's maximum, ties to the lowest index; packs of chunks combine by max.
    """
    n: uint256 = len(_values)
    assert n > 0 and _base + n <= 1 << INDEX_BITS, "ElementRules: bad argmax chunk"
    best: int256 = min_value(int256)
    for i: uint256 in range(CHUNK_WIDTH):
        if i >= n:
            break
        packed: int256 = (_values[i] << INDEX_BITS) + INDEX_MASK - convert(_base + i, int256)
        best = max(best, packed)
    return best


@external
@pure
def elem_argmax_token(_packed: int256) -> uint256:
    """
    @notice The token index of a packed argmax.
    """
    return convert(INDEX_MASK - (_packed & INDEX_MASK), uint256)


@external
@pure
def elem_packed_value(_packed: int256) -> int256:
    """
    @notice The value of a packed argmax (floor shift).
    """
    return _packed >> INDEX_BITS


@external
@pure
def elem_sample_weight(_logit: int256, _top: int256, _temperature_milli: uint256) -> int256:
    """
    @notice exp_neg(min(round_div((_top - _logit) * 1000, _temperature_milli << 8), 2^20)):
            2^16 exp(-(top - logit) / T) for logits at 2^-16, T = _temperature_milli / 1000.
    """
    assert _logit <= _top, "ElementRules: logit above top"
    assert _temperature_milli > 0 and _temperature_milli <= TEMPERATURE_MILLI_MAX, "ElementRules: bad temperature"
    u: int256 = self._round_div((_top - _logit) * 1000, convert(_temperature_milli << 8, int256))
    return self._exp_neg(min(u, EXP_INPUT_MAX))


@external
@pure
def elem_masked_sum(_weights: DynArray[int256, CHUNK_WIDTH], _tau: int256) -> int256:
    """
    @notice Sum of the weights at least _tau.
    """
    return self._masked_sum(_weights, _tau)


@external
@pure
def elem_bisect_step(_lo: int256, _hi: int256, _chunk_sums: DynArray[int256, MAX_CHUNKS], _total: int256, _top_p_q: uint256) -> (int256, int256):
    """
    @notice One step of the top-p threshold bisection over [1, 2^16] (17 steps from
            (1, 2^16) end at tau = the largest t with (sum_{w >= t} w) << 16 >= top_p_q * total).
    @param _chunk_sums The masked sums of every chunk at mid = (_lo + _hi + 1) >> 1.
    @return (mid, _hi) if (sum _chunk_sums) << 16 >= _top_p_q * _total else (_lo, mid - 1);
            (_lo, _hi) unchanged when _lo >= _hi.
    """
    assert _top_p_q > 0 and _top_p_q <= TOP_P_ONE, "ElementRules: bad top_p"
    if _lo >= _hi:
        return _lo, _hi
    mid: int256 = (_lo + _hi + 1) >> 1
    kept: int256 = 0
    for s: int256 in _chunk_sums:
        kept += s
    if (kept << 16) >= convert(_top_p_q, int256) * _total:
        return mid, _hi
    return _lo, mid - 1


@external
@pure
def elem_draw(_seed: uint256, _step: uint256, _total: int256) -> int256:
    """
    @notice uint256(keccak256(abi_encode(_seed, _step))) % _total.
    """
    assert _total > 0, "ElementRules: draw from an empty total"
    return convert(convert(keccak256(abi_encode(_seed, _step)), uint256) % convert(_total, uint256), int256)


@external
@pure
def elem_pick_chunk(_chunk_sums: DynArray[int256, MAX_CHUNKS], _r: int256) -> (uint256, int256):
    """
    @notice (j, _r - prefix(0..j-1)) for the first chunk j with prefix(0..j) > _r.
    """
    assert _r >= 0, "ElementRules: negative draw"
    prefix: int256 = 0
    for j: uint256 in range(MAX_CHUNKS):
        if j >= len(_chunk_sums):
            break
        if prefix + _chunk_sums[j] > _r:
            return j, _r - prefix
        prefix += _chunk_sums[j]
    raise "ElementRules: draw beyond the total"


@external
@pure
def elem_pick_in_chunk(_weights: DynArray[int256, CHUNK_WIDTH], _tau: int256, _r_rest: int256) -> uint256:
    """
    @notice The first i with sum_{k <= i, w_k >= _tau} w_k > _r_rest.
    """
    prefix: int256 = 0
    for i: uint256 in range(CHUNK_WIDTH):
        if i >= len(_weights):
            break
        if _weights[i] >= _tau:
            prefix += _weights[i]
            if prefix > _r_rest:
                return i
    raise "ElementRules: draw beyond the chunk"


@external
@pure
def elem_penalty(_logit: int256, _count: uint256, _presence: int256, _frequency: int256, _bias: int256) -> int256:
    """
    @notice OpenAI's presence/frequency penalties and logit bias in integers:
            clamp(_logit - (_presence [_count > 0] + _frequency _count) 16 + _bias 256, int32),
            penalties at 2^-12 and the bias at 2^-8 of the logits' 2^-16.
    @param _count How often the token was generated before this step.
    """
    present: int256 = 0
    if _count > 0:
        present = 1
    value: int256 = _logit - (_presence * present + _frequency * convert(_count, int256)) * PENALTY_SCALE + _bias * BIAS_SCALE
    return min(max(value, LOGIT_MIN), LOGIT_MAX)


# ---------------------------------------------------------------- internal

@internal
@pure
def _requantise(_acc: int256, _multiplier: int256, _shift_bits: uint256, _qmin: int256, _qmax: int256) -> int256:
    scaled: int256 = _acc * _multiplier
    if _shift_bits > 0:
        scaled = (scaled + convert(1 << (_shift_bits - 1), int256)) >> _shift_bits
    return min(max(scaled, _qmin), _qmax)


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
def _exp_neg(_u: int256) -> int256:
    """
    @dev 2^16 * exp(-u / 2^8) for 0 <= u: exp(-x) = 2^-(x / ln 2), the
         fractional power of two by a degree-6 polynomial at 2^30 (Horner,
         flooring shifts), then shifted down by the integer part.
    """
    assert _u >= 0, "ElementRules: negative exp input"
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
def _masked_sum(_weights: DynArray[int256, CHUNK_WIDTH], _tau: int256) -> int256:
    total: int256 = 0
    for w: int256 in _weights:
        if w >= _tau:
            total += w
    return total


@internal
@pure
def _excess_bits(_row: DynArray[int256, MAX_ROW], _bits: uint256) -> uint256:
    """
    @dev max(bit_length(max |x|) - _bits, 0).
    """
    top: uint256 = 0
    for x: int256 in _row:
        top = max(top, convert(abs(x), uint256))
    length: uint256 = 0
    for s: uint256 in [128, 64, 32, 16, 8, 4, 2, 1]:
        if top >> s > 0:
            top >>= s
            length += s
    if top > 0:
        length += 1
    if length > _bits:
        return length - _bits
    return 0
