# pragma version 0.4.3
"""
@title DecoderOps
@custom:contract-name DecoderOps
@license MIT
@author opinfer
@notice One element of the decoder's op classes (opcodes 13..27 and the
        attention softmax in chunks, 30 EXP_SUMS and 31 PROBS, and 32 PENALTY: SmolLM2's
        decode step, docs/ops.md "Decoder ops", "Long context"), from rows that
        `StepVerifier` has already proven. It returns the element's value and
        the row each slot must have been read at (NOT_READ for a slot the
        rule leaves unread; data-dependent rows such as the token's
        embedding row, the SiLU table row or the picked chunk are computed
        from the proven values), and StepVerifier checks those rows against
        the witness. The Python twin is opinfer/semantics/decoder_ops.py.
@dev    Stateless. The arithmetic is ElementRules' (`elem_*`, pinned to
        opinfer/semantics/elements.py by shared vectors), except DENSE_BLOCK's
        product, taken in place over the witness exactly as
        elements.block_dense (ElementRules.elem_block_dense's rule). Value j of slot s is the enc[s]-byte big-endian
        two's complement number at witness offset pos[s] + j * enc[s], read
        in place and only below lens[s] (an unread slot has lens 0).
        Notation: L = prompt tokens, ta = tokens_at, s = step,
        g = s + 1 - L (the generated token the step produces, negative in
        the prompt), T_0[k] = word k of the job input.
"""

# ---------------------------------------------------------------- interfaces

# Row arguments are declared at MAX_ROW: a dynamic array's ABI encoding does
# not depend on its bound, and ElementRules enforces its own (256 or 512).
interface IElementRules:
    def elem_requant(_acc: int256, _mult: int256, _shift: uint256, _lo: int256, _hi: int256) -> int256: pure
    def elem_rms_norm(_row: DynArray[int256, MAX_ROW], _col: uint256, _gain: int256, _eps: int256, _lo: int256, _hi: int256) -> int256: pure
    def elem_rope_pair(_col: uint256, _head_dim: uint256) -> uint256: pure
    def elem_rope(_row: DynArray[int256, MAX_ROW], _col: uint256, _head_dim: uint256, _cos: int256, _sin: int256) -> int256: pure
    def elem_lookup_2d(_row_values: DynArray[int256, MAX_ROW], _index: int256, _offset: int256, _width: uint256) -> int256: pure
    def elem_chunk_argmax(_values: DynArray[int256, MAX_ROW], _base: uint256) -> int256: pure
    def elem_argmax_token(_packed: int256) -> uint256: pure
    def elem_packed_value(_packed: int256) -> int256: pure
    def elem_sample_weight(_logit: int256, _top: int256, _temperature_milli: uint256) -> int256: pure
    def elem_masked_sum(_weights: DynArray[int256, MAX_ROW], _tau: int256) -> int256: pure
    def elem_bisect_step(_lo: int256, _hi: int256, _chunk_sums: DynArray[int256, MAX_ROW], _total: int256, _top_p_q: uint256) -> (int256, int256): pure
    def elem_draw(_seed: uint256, _step: uint256, _total: int256) -> int256: pure
    def elem_pick_chunk(_chunk_sums: DynArray[int256, MAX_ROW], _r: int256) -> (uint256, int256): pure
    def elem_pick_in_chunk(_weights: DynArray[int256, MAX_ROW], _tau: int256, _r_rest: int256) -> uint256: pure
    def elem_exp_sum(_values: DynArray[int256, MAX_ROW], _top: int256, _mult: int256, _shift: uint256) -> int256: pure
    def elem_softmax_prob(_value: int256, _top: int256, _total: int256, _mult: int256, _shift: uint256, _one: int256) -> int256: pure
    def elem_penalty(_logit: int256, _count: uint256, _presence: int256, _frequency: int256, _bias: int256) -> int256: pure

# ---------------------------------------------------------------- constants

MAX_ROW: constant(uint256) = 2048
MAX_SLOTS: constant(uint256) = 4
MAX_PARAMS: constant(uint256) = 13
# StepVerifier passes witnesses of up to 120,000 bytes; a decoder op's is far
# shorter (SmolLM2's longest, DENSE_BLOCK over the 1,536-wide SwiGLU row, is about 17 KB), and
# a smaller bound keeps this contract's memory (quadratic in cost) small.
MAX_WITNESS: constant(uint256) = 65536
MASK32: constant(uint256) = 4294967295
NOT_READ: constant(uint256) = max_value(uint256)
TABLE_WIDTH: constant(uint256) = 256
CHUNK_WIDTH: constant(uint256) = 256
PAD: constant(int256) = -1
BLOCK: constant(uint256) = 32
MAX_BLOCKS: constant(uint256) = 64
BLOCK_ROW_BITS: constant(uint256) = 15
BLOCK_ACT_MAX: constant(int256) = 127

# words of T_0
TEMPERATURE: constant(uint256) = 3
TOP_P: constant(uint256) = 4
SEED_AT: constant(uint256) = 5
STOP_COUNT: constant(uint256) = 9
STOPS_AT: constant(uint256) = 10
SEPARATOR: constant(int256) = 65535
VERSION_PENALTIES: constant(int256) = 2
MAX_GEN: constant(uint256) = 4096       # a GEN row's values (StepVerifier's widest row)

OP_EMBED_TOKEN: constant(uint256) = 13
OP_RMS_NORM: constant(uint256) = 14
OP_DENSE_BLOCK: constant(uint256) = 15
OP_ROPE: constant(uint256) = 16
OP_APPEND: constant(uint256) = 17
OP_SWIGLU: constant(uint256) = 18
OP_CHUNK_ARGMAX: constant(uint256) = 19
OP_SAMPLE_WEIGHTS: constant(uint256) = 20
OP_MASKED_SUMS: constant(uint256) = 21
OP_BISECT: constant(uint256) = 22
OP_PICK: constant(uint256) = 23
OP_PICK_TOKEN: constant(uint256) = 24
OP_NEXT: constant(uint256) = 25
OP_MATCH: constant(uint256) = 26
OP_GEN: constant(uint256) = 27
# a long row's attention softmax in chunks (opinfer/trace/attention_ops.py)
OP_EXP_SUMS: constant(uint256) = 30
OP_PROBS: constant(uint256) = 31
# StepVerifier proves rows of up to MAX_COLS values; EXP_SUMS and PROBS read them in place
MAX_COLS: constant(uint256) = 4096
OP_PENALTY: constant(uint256) = 32

# ---------------------------------------------------------------- storage

# @dev The element rules (shared with the Python engine by test vectors).
rules: public(immutable(IElementRules))


@deploy
def __init__(_rules: IElementRules):
    """
    @param _rules The ElementRules contract.
    """
    rules = _rules


# ---------------------------------------------------------------- external

@external
@view
def element(
    _code: uint256,
    _params: int256[MAX_PARAMS],
    _cols: uint256,
    _job: uint256,
    _step: uint256,
    _row: uint256,
    _col: uint256,
    _witness: Bytes[MAX_WITNESS],
    _pos: uint256[MAX_SLOTS],
    _enc: uint256[MAX_SLOTS],
    _lens: uint256[MAX_SLOTS],
) -> (int256, uint256[MAX_SLOTS]):
    """
    @notice Element (_row, _col) of a decoder op at step _step of the job,
            and the row each slot must have been read at.
    @param _code The opcode (13..27, 32).
    @param _params The op descriptor's 13 params.
    @param _cols The op's output columns at this step.
    @param _job L | tokens_at << 32 | steps << 64 (StepVerifier.job_shape).
    @param _witness The one-step witness; slot s's values lie at _pos[s]
           (_enc[s] bytes each, _lens[s] of them; 0 for an unread slot).
    @return (value, rows wanted per slot; NOT_READ for an unread slot).
    """
    tokens: uint256 = _job & MASK32
    tokens_at: uint256 = (_job >> 32) & MASK32
    g: int256 = convert(_step + 1, int256) - convert(tokens, int256)
    want: uint256[MAX_SLOTS] = empty(uint256[MAX_SLOTS])

    # The ops that read single values (their call buffers sit below the row's memory).
    if _code == OP_EMBED_TOKEN:
        # slots T_0, previous NEXT, W: the prompt's token s, else the token picked at step s - 1
        token: int256 = 0
        if _step < tokens:
            token = self._value(extract32(_witness, _pos[0] + (tokens_at + _step) * _enc[0]), _enc[0], tokens_at + _step < _lens[0])
            want = [0, NOT_READ, 0, 0]
        else:
            token = self._value(extract32(_witness, _pos[1]), _enc[1], 0 < _lens[1])
            want = [NOT_READ, 0, 0, 0]
        assert token >= 0, "DecoderOps: negative token"
        # slots 2, 3: the token's row of Q8_0 codes and its block scales D (2^-24);
        # params shift, lo, hi: requant(D q, 1, shift, lo, hi) (elements.block_embed)
        want[2] = convert(token, uint256)
        want[3] = want[2]
        code: int256 = self._value(extract32(_witness, _pos[2] + _col * _enc[2]), _enc[2], _col < _lens[2])
        dscale: int256 = self._value(extract32(_witness, _pos[3] + (_col // BLOCK) * _enc[3]), _enc[3], _col // BLOCK < _lens[3])
        return staticcall rules.elem_requant(dscale * code, 1, convert(_params[0], uint256), _params[1], _params[2]), want

    elif _code == OP_DENSE_BLOCK:
        # slots x, codes, D, M (M only for Q4_1); params fmt (0 Q4_1, 1 Q8_0), F, mult,
        # split, (shift, lo, hi) of columns below split (all when split is 0), then of the rest.
        # elements.block_dense taken in place over the witness: d = max(bit_length(max |a|) - 15, 0),
        # xs = (a + 2^(d-1)) >> d; per block of 32 s = max |xs|, xq = round_div(127 xs, s),
        # acc += s (D sum q xq + M sum xq); requant(acc << d, mult, shift, lo, hi).
        # F = 0: output (r, c) is row r of x times weight row n = c; F > 0 (folded logits): row 0, n = r F + c.
        fold: uint256 = convert(_params[1], uint256)
        n: uint256 = _col
        i0: uint256 = _row
        if fold > 0:
            n = _row * fold + _col
            i0 = 0
        q4: bool = _params[0] == 0
        want = [i0, n, n, 0]
        if q4:
            want[3] = n
        cols: uint256 = _lens[0]
        blocks: uint256 = cols // BLOCK
        assert cols > 0 and cols <= MAX_ROW and cols % BLOCK == 0 and cols == _lens[1], "DecoderOps: bad block rows"
        assert _lens[2] == blocks and (not q4 or _lens[3] == blocks), "DecoderOps: bad block scales"
        e0: uint256 = _enc[0]
        sh0: uint256 = 256 - 8 * e0
        e1: uint256 = _enc[1]
        sh1: uint256 = 256 - 8 * e1
        # bit length of max |a|
        amax: uint256 = 0
        o0: uint256 = _pos[0]
        for j: uint256 in range(MAX_ROW):
            if j >= cols:
                break
            amax = max(amax, convert(abs(convert(extract32(_witness, o0), int256) >> sh0), uint256))
            o0 = unsafe_add(o0, e0)
        length: uint256 = 0
        for b: uint256 in [128, 64, 32, 16, 8, 4, 2, 1]:
            if amax >> b > 0:
                amax >>= b
                length += b
        if amax > 0:
            length += 1
        d: uint256 = 0
        if length > BLOCK_ROW_BITS:
            d = length - BLOCK_ROW_BITS
        half: int256 = 0
        if d > 0:
            half = 1 << (d - 1)
        acc: int256 = 0
        xs: int256[BLOCK] = empty(int256[BLOCK])
        for b: uint256 in range(MAX_BLOCKS):
            if b >= blocks:
                break
            s: int256 = 0
            o0 = _pos[0] + b * BLOCK * e0
            for j: uint256 in range(BLOCK):
                xs[j] = ((convert(extract32(_witness, o0), int256) >> sh0) + half) >> d
                s = max(s, abs(xs[j]))
                o0 = unsafe_add(o0, e0)
            if s == 0:
                continue
            s1: int256 = 0
            s2: int256 = 0
            o1: uint256 = _pos[1] + b * BLOCK * e1
            for j: uint256 in range(BLOCK):
                # round_div(127 xs, s) = floor((254 xs + s) / 2s), a flooring division
                num: int256 = 2 * BLOCK_ACT_MAX * xs[j] + s
                xq: int256 = num // (2 * s)
                if num < 0 and xq * 2 * s != num:
                    xq -= 1
                s1 += (convert(extract32(_witness, o1), int256) >> sh1) * xq
                s2 += xq
                o1 = unsafe_add(o1, e1)
            acc += s * s1 * self._value(extract32(_witness, _pos[2] + b * _enc[2]), _enc[2], True)
            if q4:
                acc += s * s2 * self._value(extract32(_witness, _pos[3] + b * _enc[3]), _enc[3], True)
        shifted: int256 = acc << d
        assert shifted >> d == acc, "DecoderOps: accumulator overflow"
        grp: uint256 = 4
        if _params[3] != 0 and convert(n, int256) >= _params[3]:
            grp = 7
        return staticcall rules.elem_requant(shifted, _params[2], convert(_params[grp], uint256), _params[grp + 1], _params[grp + 2]), want

    elif _code == OP_APPEND:
        # slots previous APPEND, src; params T (transposed), offset
        transposed: bool = _params[0] != 0
        offset: uint256 = convert(_params[1], uint256)
        if (transposed and _col < _step) or (not transposed and _row < _step):
            return self._value(extract32(_witness, _pos[0] + _col * _enc[0]), _enc[0], _col < _lens[0]), [_row, NOT_READ, 0, 0]
        j: uint256 = offset + _col
        if transposed:
            j = offset + _row
        return self._value(extract32(_witness, _pos[1] + j * _enc[1]), _enc[1], j < _lens[1]), [NOT_READ, 0, 0, 0]

    elif _code == OP_PENALTY:
        # slots logits [NC, 256], T_0, previous GEN (not read at step 0); token t = 256 r + c.
        # Version 2 inputs carry, after the stop words (at = 10 + S), presence_q,
        # frequency_q, B and B (id, bias_q) pairs as int16 words; version 1: no change.
        want = [_row, 0, 0, 0]
        if _step == 0:
            want[2] = NOT_READ
        logit: int256 = self._value(extract32(_witness, _pos[0] + _col * _enc[0]), _enc[0], _col < _lens[0])
        if self._value(extract32(_witness, _pos[1]), _enc[1], 0 < _lens[1]) != VERSION_PENALTIES:
            return logit, want
        at: uint256 = STOPS_AT + convert(self._value(extract32(_witness, _pos[1] + STOP_COUNT * _enc[1]), _enc[1], STOP_COUNT < _lens[1]), uint256)
        presence: int256 = self._int16(self._value(extract32(_witness, _pos[1] + at * _enc[1]), _enc[1], at < _lens[1]))
        frequency: int256 = self._int16(self._value(extract32(_witness, _pos[1] + (at + 1) * _enc[1]), _enc[1], at + 1 < _lens[1]))
        entries: uint256 = convert(self._value(extract32(_witness, _pos[1] + (at + 2) * _enc[1]), _enc[1], at + 2 < _lens[1]), uint256)
        token: int256 = convert(_row * CHUNK_WIDTH + _col, int256)
        # how often t was generated before this step: the previous GEN row's [0, g)
        count: uint256 = 0
        if g > 0:
            for j: uint256 in range(MAX_GEN):
                if j >= convert(g, uint256):
                    break
                if self._value(extract32(_witness, _pos[2] + j * _enc[2]), _enc[2], j < _lens[2]) == token:
                    count += 1
        # the bias entries naming t (summed: the rule is total)
        bias: int256 = 0
        for k: uint256 in range(MAX_ROW):
            if k >= entries:
                break
            j: uint256 = at + 3 + 2 * k
            if self._value(extract32(_witness, _pos[1] + j * _enc[1]), _enc[1], j < _lens[1]) == token:
                bias += self._int16(self._value(extract32(_witness, _pos[1] + (j + 1) * _enc[1]), _enc[1], j + 1 < _lens[1]))
        return staticcall rules.elem_penalty(logit, count, presence, frequency, bias), want

    elif _code == OP_GEN:
        # slots previous GEN (not read at step 0), next, match; the row is the
        # generated ids (PAD beyond) then the done flag
        want = [0, 0, 0, 0]
        if _step == 0:
            want[0] = NOT_READ
        m: uint256 = _cols - 1
        if g < 0:
            if _col < m:
                return PAD, want
            return 0, want
        done: int256 = 0
        if _step > 0:
            done = self._value(extract32(_witness, _pos[0] + m * _enc[0]), _enc[0], m < _lens[0])
        if _col == m:
            if done != 0 or self._value(extract32(_witness, _pos[2]), _enc[2], 0 < _lens[2]) != 0:
                return 1, want
            return 0, want
        last: uint256 = convert(g, uint256)
        if _col < last:
            return self._value(extract32(_witness, _pos[0] + _col * _enc[0]), _enc[0], _col < _lens[0]), want
        if _col == last and done == 0:
            return self._value(extract32(_witness, _pos[1]), _enc[1], 0 < _lens[1]), want
        return PAD, want

    elif _code == OP_EXP_SUMS or _code == OP_PROBS:
        # slot 0 the scores row (up to MAX_COLS: the context), read in place for its maximum.
        # EXP_SUMS: element (r, j) = elem_exp_sum(x[r, 256 j : 256 j + 256], max x[r]); params mult, shift.
        # PROBS: slot 1 the row's chunk sums; elem_softmax_prob(x[r, c], max x[r], sum sums[r]); params mult, shift, one.
        # (inline: an internal function would copy the witness in memory)
        n: uint256 = _lens[0]
        assert n > 0 and n <= MAX_COLS, "DecoderOps: bad scores row"
        e: uint256 = _enc[0]
        sh: uint256 = 256 - 8 * e
        top: int256 = min_value(int256)
        at: uint256 = _pos[0]
        for j: uint256 in range(MAX_COLS):
            if j >= n:
                break
            top = max(top, convert(extract32(_witness, at), int256) >> sh)
            at = unsafe_add(at, e)
        if _code == OP_EXP_SUMS:
            chunk: DynArray[int256, CHUNK_WIDTH] = []
            start: uint256 = _col * CHUNK_WIDTH
            at = _pos[0] + start * e
            for j: uint256 in range(CHUNK_WIDTH):
                if start + j >= n:
                    break
                chunk.append(convert(extract32(_witness, at), int256) >> sh)
                at = unsafe_add(at, e)
            return staticcall rules.elem_exp_sum(chunk, top, _params[0], convert(_params[1], uint256)), [_row, 0, 0, 0]
        total: int256 = 0
        for j: uint256 in range(MAX_COLS):
            if j >= _lens[1]:
                break
            total += convert(extract32(_witness, _pos[1] + j * _enc[1]), int256) >> (256 - 8 * _enc[1])
        value: int256 = self._value(extract32(_witness, _pos[0] + _col * e), e, _col < n)
        return staticcall rules.elem_softmax_prob(value, top, total, _params[0], convert(_params[1], uint256), _params[2]), [_row, _row, 0, 0]

    # The rules that take a whole row get it here: slot k's first n values.
    k: uint256 = 0
    n: uint256 = 0
    if _code in [OP_RMS_NORM, OP_CHUNK_ARGMAX, OP_MASKED_SUMS, OP_BISECT, OP_PICK, OP_MATCH]:
        n = _lens[0]
    elif _code == OP_ROPE:
        # the op's output columns of x: x may hold more (q | k | v)
        n = _cols
        assert n <= _lens[0], "DecoderOps: rope row beyond its slot"
    elif _code in [OP_SWIGLU, OP_SAMPLE_WEIGHTS, OP_PICK_TOKEN, OP_NEXT]:
        k = 1
        n = _lens[1]
    assert n <= MAX_ROW, "DecoderOps: row too wide"
    row: DynArray[int256, MAX_ROW] = []
    top: int256 = min_value(int256)  # the row's largest value (packs of chunk argmaxes combine by max)
    at: uint256 = _pos[k]
    e: uint256 = _enc[k]
    sh: uint256 = 256 - 8 * e
    for j: uint256 in range(MAX_ROW):
        if j >= n:
            break
        v: int256 = convert(extract32(_witness, at), int256) >> sh
        row.append(v)
        top = max(top, v)
        at = unsafe_add(at, e)

    if _code == OP_RMS_NORM:
        # slots x, gains [C, 1]; params eps, lo, hi
        gain: int256 = self._value(extract32(_witness, _pos[1]), _enc[1], 0 < _lens[1])
        return staticcall rules.elem_rms_norm(row, _col, gain, _params[0], _params[1], _params[2]), [_row, _col, 0, 0]

    elif _code == OP_ROPE:
        # slots x, table [positions, D] (cos then sin); param D
        head_dim: uint256 = convert(_params[0], uint256)
        pair: uint256 = staticcall rules.elem_rope_pair(_col, head_dim)
        cos: int256 = self._value(extract32(_witness, _pos[1] + pair * _enc[1]), _enc[1], pair < _lens[1])
        sin: int256 = self._value(extract32(_witness, _pos[1] + (head_dim // 2 + pair) * _enc[1]), _enc[1], head_dim // 2 + pair < _lens[1])
        return staticcall rules.elem_rope(row, _col, head_dim, cos, sin), [0, _step, 0, 0]

    elif _code == OP_SWIGLU:
        # slots x = [gate | up], SiLU table [n / 256, 256]; param offset
        gate: int256 = self._value(extract32(_witness, _pos[0] + _col * _enc[0]), _enc[0], _col < _lens[0])
        up: int256 = self._value(extract32(_witness, _pos[0] + (_cols + _col) * _enc[0]), _enc[0], _cols + _col < _lens[0])
        index: int256 = gate + _params[0]
        assert index >= 0, "DecoderOps: table index out of range"
        value: int256 = staticcall rules.elem_lookup_2d(row, gate, _params[0], TABLE_WIDTH)
        return value * up, [0, convert(index, uint256) // TABLE_WIDTH, 0, 0]

    elif _code == OP_CHUNK_ARGMAX:
        # slot logits [NC, 256]
        return staticcall rules.elem_chunk_argmax(row, CHUNK_WIDTH * _col), [_col, 0, 0, 0]

    elif _code == OP_SAMPLE_WEIGHTS:
        # slots logits, packs [1, NC], T_0
        temperature: int256 = self._value(extract32(_witness, _pos[2] + TEMPERATURE * _enc[2]), _enc[2], TEMPERATURE < _lens[2])
        if temperature == 0:
            return 0, [_row, 0, 0, 0]
        top_value: int256 = staticcall rules.elem_packed_value(top)
        logit: int256 = self._value(extract32(_witness, _pos[0] + _col * _enc[0]), _enc[0], _col < _lens[0])
        return staticcall rules.elem_sample_weight(logit, top_value, convert(temperature, uint256)), [_row, 0, 0, 0]

    elif _code == OP_MASKED_SUMS:
        # slots weights [NC, 256], bounds [1, 2]; param mode
        tau: int256 = self._value(extract32(_witness, _pos[1]), _enc[1], 0 < _lens[1])
        if _params[0] == 0:
            tau = (tau + self._value(extract32(_witness, _pos[1] + _enc[1]), _enc[1], 1 < _lens[1]) + 1) >> 1
        return staticcall rules.elem_masked_sum(row, tau), [_col, 0, 0, 0]

    elif _code == OP_BISECT:
        # slots sums, bounds, totals, T_0
        total: int256 = 0
        assert _lens[2] <= MAX_ROW, "DecoderOps: row too wide"
        for j: uint256 in range(MAX_ROW):
            if j >= _lens[2]:
                break
            total += convert(extract32(_witness, _pos[2] + j * _enc[2]), int256) >> (256 - 8 * _enc[2])
        top_p: int256 = self._value(extract32(_witness, _pos[3] + TOP_P * _enc[3]), _enc[3], TOP_P < _lens[3])
        lo: int256 = self._value(extract32(_witness, _pos[1]), _enc[1], 0 < _lens[1])
        hi: int256 = self._value(extract32(_witness, _pos[1] + _enc[1]), _enc[1], 1 < _lens[1])
        lo, hi = staticcall rules.elem_bisect_step(lo, hi, row, total, convert(top_p + 1, uint256))
        if _col == 0:
            return lo, [0, 0, 0, 0]
        return hi, [0, 0, 0, 0]

    elif _code == OP_PICK:
        # slots kept sums [1, NC], T_0
        total: int256 = 0
        for v: int256 in row:
            total += v
        temperature: int256 = self._value(extract32(_witness, _pos[1] + TEMPERATURE * _enc[1]), _enc[1], TEMPERATURE < _lens[1])
        if temperature == 0 or total == 0:
            return 0, [0, 0, 0, 0]
        seed: uint256 = 0
        for i: uint256 in range(4):
            word: int256 = self._value(extract32(_witness, _pos[1] + (SEED_AT + i) * _enc[1]), _enc[1], SEED_AT + i < _lens[1])
            seed = (seed << 16) | convert(word, uint256)
        r: int256 = staticcall rules.elem_draw(seed, convert(max(g, 0), uint256), total)
        chunk: uint256 = 0
        rest: int256 = 0
        chunk, rest = staticcall rules.elem_pick_chunk(row, r)
        if _col == 0:
            return convert(chunk, int256), [0, 0, 0, 0]
        return rest, [0, 0, 0, 0]

    elif _code == OP_PICK_TOKEN:
        # slots pick (chunk, rest), weights [NC, 256], bounds, T_0
        chunk: int256 = self._value(extract32(_witness, _pos[0]), _enc[0], 0 < _lens[0])
        assert chunk >= 0, "DecoderOps: negative chunk"
        want = [0, convert(chunk, uint256), 0, 0]
        temperature: int256 = self._value(extract32(_witness, _pos[3] + TEMPERATURE * _enc[3]), _enc[3], TEMPERATURE < _lens[3])
        if temperature == 0:
            return 0, want
        rest: int256 = self._value(extract32(_witness, _pos[0] + _enc[0]), _enc[0], 1 < _lens[0])
        tau: int256 = self._value(extract32(_witness, _pos[2]), _enc[2], 0 < _lens[2])
        i: uint256 = staticcall rules.elem_pick_in_chunk(row, tau, rest)
        return convert(CHUNK_WIDTH, int256) * chunk + convert(i, int256), want

    elif _code == OP_NEXT:
        # slots T_0, packs, picked: the prompt's next token, else the argmax or the pick
        if _step + 1 < tokens:
            j: uint256 = tokens_at + _step + 1
            return self._value(extract32(_witness, _pos[0] + j * _enc[0]), _enc[0], j < _lens[0]), [0, 0, 0, 0]
        temperature: int256 = self._value(extract32(_witness, _pos[0] + TEMPERATURE * _enc[0]), _enc[0], TEMPERATURE < _lens[0])
        if temperature == 0:
            return convert(staticcall rules.elem_argmax_token(top), int256), [0, 0, 0, 0]
        return self._value(extract32(_witness, _pos[2]), _enc[2], 0 < _lens[2]), [0, 0, 0, 0]

    elif _code == OP_MATCH:
        # slots T_0, previous GEN (not read at step 0), next
        want = [0, 0, 0, 0]
        if _step == 0:
            want[1] = NOT_READ
        if g < 0:
            return 0, want
        last: uint256 = convert(g, uint256)
        token: int256 = self._value(extract32(_witness, _pos[2]), _enc[2], 0 < _lens[2])
        # the stop sequences are the non-empty runs of T_0[10..10 + S) between separators
        stops_end: uint256 = STOPS_AT + convert(row[STOP_COUNT], uint256)
        start: uint256 = STOPS_AT
        for i: uint256 in range(STOPS_AT, MAX_ROW + STOPS_AT):
            if i > stops_end:
                break
            if i < stops_end and row[i] != SEPARATOR:
                continue
            size: uint256 = i - start
            if size > 0 and size <= last + 1:
                # does sequence[0..last] (prev_gen[0..last-1] + [token]) end with T_0[start..i)?
                hit: bool = True
                for q: uint256 in range(MAX_ROW):
                    if q >= size:
                        break
                    at = last + 1 - size + q
                    v: int256 = token
                    if at < last:
                        v = self._value(extract32(_witness, _pos[1] + at * _enc[1]), _enc[1], at < _lens[1])
                    if v != row[start + q]:
                        hit = False
                        break
                if hit:
                    return 1, want
            start = i + 1
        return 0, want

    raise "DecoderOps: unknown opcode"


# ---------------------------------------------------------------- internal

@internal
@pure
def _int16(_word: int256) -> int256:
    """
    @dev A uint16 job input word read as int16 (two's complement).
    """
    if _word >= 32768:
        return _word - 65536
    return _word


@internal
@pure
def _value(_word: bytes32, _enc: uint256, _in_row: bool) -> int256:
    """
    @dev The _enc-byte signed value at the start of `_word`; it must lie in
         its slot's row (an unread slot has no values).
    """
    assert _in_row, "DecoderOps: value beyond its row"
    return convert(_word, int256) >> (256 - 8 * _enc)
