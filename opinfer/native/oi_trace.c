/*
 * The trace builder's native helpers: Keccak-256 for its commitments (opinfer/semantics/tensor.py,
 * merkle.py) in batches, and the attention softmax in chunks over ragged rows (at the end).
 *
 * A dispute trace hashes every tensor of a job: at 4,096 positions SmolLM2's trace is about
 * 6.5 billion activations, each a 32-byte word, so the hash is the trace's cost. Python calls
 * keccak once per 512-byte chunk; here chunks and tree nodes are hashed eight at a time in the
 * lanes of AVX-512 registers (a scalar path gives the same bits where the CPU has no AVX-512),
 * and an activation's 32-byte word (sign fill, then the value big-endian) is formed in the
 * registers instead of in memory. Only the speed differs from merkle.keccak: the tests compare
 * every function here with the Python commitments (tests/unit/test_native_keccak.py).
 *
 * Layouts (tensor.py): a chunk is CHUNK = 16 words, zero padded; a row's root is the Merkle
 * root of its chunk hashes padded with zero chunks to a power of two; a tensor's root is the
 * Merkle root of its row roots padded with zero rows. So a tensor is one binary tree over
 * row * 2^col_bits + chunk whose missing leaves are zero chunks, and every subtree of missing
 * leaves is a zero subtree z_k (z_0 = keccak(zero chunk), z_{k+1} = keccak(z_k z_k)): never hashed.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define RATE_LANES 17          /* 136-byte rate of Keccak-256 */
#define CHUNK 16
#define LANES 8

static const uint64_t RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL, 0x8000000080008000ULL,
    0x000000000000808bULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008aULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800aULL, 0x800000008000000aULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL};

/* One round, straight-line over named lanes (generated: theta, rho and pi, chi; iota after it),
   for any lane type given XOR, XOR5, ROL and CHI(a, b, c) = a ^ (~b & c). */
#define KECCAK_ROUND \
        c0 = XOR5(a0, a5, a10, a15, a20);    \
        c1 = XOR5(a1, a6, a11, a16, a21);    \
        c2 = XOR5(a2, a7, a12, a17, a22);    \
        c3 = XOR5(a3, a8, a13, a18, a23);    \
        c4 = XOR5(a4, a9, a14, a19, a24);    \
        d0 = XOR(c4, ROL(c1, 1));    \
        d1 = XOR(c0, ROL(c2, 1));    \
        d2 = XOR(c1, ROL(c3, 1));    \
        d3 = XOR(c2, ROL(c4, 1));    \
        d4 = XOR(c3, ROL(c0, 1));    \
        b0 = ROL(XOR(a0, d0), 0);    \
        b10 = ROL(XOR(a1, d1), 1);    \
        b20 = ROL(XOR(a2, d2), 62);    \
        b5 = ROL(XOR(a3, d3), 28);    \
        b15 = ROL(XOR(a4, d4), 27);    \
        b16 = ROL(XOR(a5, d0), 36);    \
        b1 = ROL(XOR(a6, d1), 44);    \
        b11 = ROL(XOR(a7, d2), 6);    \
        b21 = ROL(XOR(a8, d3), 55);    \
        b6 = ROL(XOR(a9, d4), 20);    \
        b7 = ROL(XOR(a10, d0), 3);    \
        b17 = ROL(XOR(a11, d1), 10);    \
        b2 = ROL(XOR(a12, d2), 43);    \
        b12 = ROL(XOR(a13, d3), 25);    \
        b22 = ROL(XOR(a14, d4), 39);    \
        b23 = ROL(XOR(a15, d0), 41);    \
        b8 = ROL(XOR(a16, d1), 45);    \
        b18 = ROL(XOR(a17, d2), 15);    \
        b3 = ROL(XOR(a18, d3), 21);    \
        b13 = ROL(XOR(a19, d4), 8);    \
        b14 = ROL(XOR(a20, d0), 18);    \
        b24 = ROL(XOR(a21, d1), 2);    \
        b9 = ROL(XOR(a22, d2), 61);    \
        b19 = ROL(XOR(a23, d3), 56);    \
        b4 = ROL(XOR(a24, d4), 14);    \
        a0 = CHI(b0, b1, b2);    \
        a1 = CHI(b1, b2, b3);    \
        a2 = CHI(b2, b3, b4);    \
        a3 = CHI(b3, b4, b0);    \
        a4 = CHI(b4, b0, b1);    \
        a5 = CHI(b5, b6, b7);    \
        a6 = CHI(b6, b7, b8);    \
        a7 = CHI(b7, b8, b9);    \
        a8 = CHI(b8, b9, b5);    \
        a9 = CHI(b9, b5, b6);    \
        a10 = CHI(b10, b11, b12);    \
        a11 = CHI(b11, b12, b13);    \
        a12 = CHI(b12, b13, b14);    \
        a13 = CHI(b13, b14, b10);    \
        a14 = CHI(b14, b10, b11);    \
        a15 = CHI(b15, b16, b17);    \
        a16 = CHI(b16, b17, b18);    \
        a17 = CHI(b17, b18, b19);    \
        a18 = CHI(b18, b19, b15);    \
        a19 = CHI(b19, b15, b16);    \
        a20 = CHI(b20, b21, b22);    \
        a21 = CHI(b21, b22, b23);    \
        a22 = CHI(b22, b23, b24);    \
        a23 = CHI(b23, b24, b20);    \
        a24 = CHI(b24, b20, b21);

#define LANE_VARS(T) T a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15, a16, a17, a18, a19, \
    a20, a21, a22, a23, a24, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, b16, b17, \
    b18, b19, b20, b21, b22, b23, b24, c0, c1, c2, c3, c4, d0, d1, d2, d3, d4
#define LOAD_LANES(A) a0 = A[0]; a1 = A[1]; a2 = A[2]; a3 = A[3]; a4 = A[4]; a5 = A[5]; a6 = A[6]; a7 = A[7]; \
    a8 = A[8]; a9 = A[9]; a10 = A[10]; a11 = A[11]; a12 = A[12]; a13 = A[13]; a14 = A[14]; a15 = A[15]; \
    a16 = A[16]; a17 = A[17]; a18 = A[18]; a19 = A[19]; a20 = A[20]; a21 = A[21]; a22 = A[22]; a23 = A[23]; a24 = A[24]
#define STORE_LANES(A) A[0] = a0; A[1] = a1; A[2] = a2; A[3] = a3; A[4] = a4; A[5] = a5; A[6] = a6; A[7] = a7; \
    A[8] = a8; A[9] = a9; A[10] = a10; A[11] = a11; A[12] = a12; A[13] = a13; A[14] = a14; A[15] = a15; \
    A[16] = a16; A[17] = a17; A[18] = a18; A[19] = a19; A[20] = a20; A[21] = a21; A[22] = a22; A[23] = a23; A[24] = a24

static void keccak_f(uint64_t *A) {
#define XOR(x, y) ((x) ^ (y))
#define XOR5(p, q, r, s, t) ((p) ^ (q) ^ (r) ^ (s) ^ (t))
#define ROL(x, n) ((n) ? ((x) << (n)) | ((x) >> ((64 - (n)) & 63)) : (x))
#define CHI(x, y, z) ((x) ^ (~(y) & (z)))
    LANE_VARS(uint64_t);
    LOAD_LANES(A);
    for (int round = 0; round < 24; round++) {
        KECCAK_ROUND
        a0 ^= RC[round];
    }
    STORE_LANES(A);
#undef XOR
#undef XOR5
#undef ROL
#undef CHI
}

/* The same permutation on eight states at once: lane l of A[i] is state l's word i. */
__attribute__((target("avx512f"))) static void keccak_f8(__m512i *A) {
#define XOR(x, y) _mm512_xor_si512(x, y)
#define XOR5(p, q, r, s, t) _mm512_ternarylogic_epi64(_mm512_ternarylogic_epi64(p, q, r, 0x96), s, t, 0x96)
#define ROL(x, n) _mm512_rol_epi64(x, n)
#define CHI(x, y, z) _mm512_ternarylogic_epi64(x, y, z, 0xD2)
    LANE_VARS(__m512i);
    LOAD_LANES(A);
    for (int round = 0; round < 24; round++) {
        KECCAK_ROUND
        a0 = _mm512_xor_si512(a0, _mm512_set1_epi64((long long)RC[round]));
    }
    STORE_LANES(A);
#undef XOR
#undef XOR5
#undef ROL
#undef CHI
}

static int simd = -1;   /* -1: not chosen yet; 0 scalar; 1 AVX-512 */

int oi_keccak_set_simd(int level) {
    __builtin_cpu_init();
    int have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    simd = level > 0 && have ? 1 : 0;
    return simd;
}

static inline int use_simd(void) {
    if (simd < 0) oi_keccak_set_simd(1);
    return simd;
}

/* ------------------------------------------------------------------ message lanes
 * A batch of at most 8 messages of `blocks` rate blocks each, as lanes: M[w * 8 + l] is word w
 * (little-endian, padding included) of message l. */

static void absorb_scalar(const uint64_t *M, int n, int blocks, uint8_t *const *out) {
    for (int l = 0; l < n; l++) {
        uint64_t A[25] = {0};
        for (int b = 0; b < blocks; b++) {
            for (int w = 0; w < RATE_LANES; w++) A[w] ^= M[(b * RATE_LANES + w) * LANES + l];
            keccak_f(A);
        }
        memcpy(out[l], A, 32);
    }
}

__attribute__((target("avx512f"))) static void absorb_simd(const uint64_t *M, int n, int blocks, uint8_t *const *out) {
    __m512i A[25];
    for (int i = 0; i < 25; i++) A[i] = _mm512_setzero_si512();
    for (int b = 0; b < blocks; b++) {
        for (int w = 0; w < RATE_LANES; w++)
            A[w] = _mm512_xor_si512(A[w], _mm512_loadu_si512((const void *)(M + (b * RATE_LANES + w) * LANES)));
        keccak_f8(A);
    }
    uint64_t d[4][LANES];
    for (int i = 0; i < 4; i++) _mm512_storeu_si512((void *)d[i], A[i]);
    for (int l = 0; l < n; l++)
        for (int i = 0; i < 4; i++) memcpy(out[l] + 8 * i, &d[i][l], 8);
}

static inline void absorb(const uint64_t *M, int n, int blocks, uint8_t *const *out) {
    if (use_simd()) absorb_simd(M, n, blocks, out);
    else absorb_scalar(M, n, blocks, out);
}

static inline void pad_lanes(uint64_t *M, int words, int blocks) {
    /* keccak's pad10*1 after `words` message words (the message is whole words) */
    memset(M + words * LANES, 0, (size_t)(blocks * RATE_LANES - words) * LANES * 8);
    for (int l = 0; l < LANES; l++) {
        M[words * LANES + l] ^= 0x01;
        M[(blocks * RATE_LANES - 1) * LANES + l] ^= 0x8000000000000000ULL;
    }
}

/* AVX-512: the message words of eight hashes are formed in registers (gathered from the eight
   sources) and absorbed from there: no scalar stores read back as vectors. */
__attribute__((target("avx512f"))) static void absorb_vec(const __m512i *msg, int blocks, int m, uint8_t *const *out) {
    __m512i A[25];
    for (int i = 0; i < 25; i++) A[i] = _mm512_setzero_si512();
    for (int b = 0; b < blocks; b++) {
        for (int w = 0; w < RATE_LANES; w++) A[w] = _mm512_xor_si512(A[w], msg[b * RATE_LANES + w]);
        keccak_f8(A);
    }
    uint64_t d[4][LANES];
    for (int i = 0; i < 4; i++) _mm512_storeu_si512((void *)d[i], A[i]);
    for (int l = 0; l < m; l++)
        for (int i = 0; i < 4; i++) memcpy(out[l] + 8 * i, &d[i][l], 8);
}

__attribute__((target("avx512f"))) static __m512i addresses(const void *const *p, int m) {
    int64_t a[LANES];
    for (int l = 0; l < LANES; l++) a[l] = (int64_t)(intptr_t)p[l < m ? l : 0];
    return _mm512_loadu_si512((const void *)a);
}

__attribute__((target("avx512f"))) static void pad_vec(__m512i *msg, int words, int blocks) {
    for (int w = words; w < blocks * RATE_LANES; w++) msg[w] = _mm512_setzero_si512();
    msg[words] = _mm512_set1_epi64(1);
    msg[blocks * RATE_LANES - 1] = _mm512_xor_si512(msg[blocks * RATE_LANES - 1],
                                                    _mm512_set1_epi64((long long)0x8000000000000000ULL));
}

__attribute__((target("avx512f"))) static void pairs_simd(int m, const uint8_t *const *left, const uint8_t *const *right,
                                                          uint8_t *const *out) {
    __m512i msg[RATE_LANES];
    __m512i la = addresses((const void *const *)left, m), ra = addresses((const void *const *)right, m);
    for (int i = 0; i < 4; i++) {
        msg[i] = _mm512_i64gather_epi64(_mm512_add_epi64(la, _mm512_set1_epi64(8 * i)), (const void *)0, 1);
        msg[4 + i] = _mm512_i64gather_epi64(_mm512_add_epi64(ra, _mm512_set1_epi64(8 * i)), (const void *)0, 1);
    }
    pad_vec(msg, 8, 1);
    absorb_vec(msg, 1, m, out);
}

__attribute__((target("avx512f,avx512bw"))) static void chunks_simd(int m, const int64_t *const *src, const int64_t *len,
                                                                    uint8_t *const *out) {
    __m512i msg[4 * RATE_LANES];
    __m512i at = addresses((const void *const *)src, m);
    int64_t lens[LANES];
    for (int l = 0; l < LANES; l++) lens[l] = l < m ? len[l] : 0;
    __m512i lv = _mm512_loadu_si512((const void *)lens);
    const __m512i bswap = _mm512_set_epi8(56, 57, 58, 59, 60, 61, 62, 63, 48, 49, 50, 51, 52, 53, 54, 55,
                                          40, 41, 42, 43, 44, 45, 46, 47, 32, 33, 34, 35, 36, 37, 38, 39,
                                          24, 25, 26, 27, 28, 29, 30, 31, 16, 17, 18, 19, 20, 21, 22, 23,
                                          8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    for (int e = 0; e < CHUNK; e++) {
        __mmask8 k = _mm512_cmpgt_epi64_mask(lv, _mm512_set1_epi64(e));
        __m512i v = _mm512_mask_i64gather_epi64(_mm512_setzero_si512(), k,
                                                _mm512_add_epi64(at, _mm512_set1_epi64(8 * e)), (const void *)0, 1);
        __m512i sgn = _mm512_srai_epi64(v, 63);
        msg[4 * e] = sgn;
        msg[4 * e + 1] = sgn;
        msg[4 * e + 2] = sgn;
        msg[4 * e + 3] = _mm512_shuffle_epi8(v, bswap);
    }
    pad_vec(msg, 4 * CHUNK, 4);
    absorb_vec(msg, 4, m, out);
}

/* keccak(left[i] ++ right[i]) for i < n (32-byte inputs; out may alias an input). */
static void hash_pairs(int64_t n, const uint8_t *const *left, const uint8_t *const *right, uint8_t *const *out) {
    if (use_simd()) {
        for (int64_t g = 0; g < n; g += LANES) pairs_simd(n - g < LANES ? (int)(n - g) : LANES, left + g, right + g, out + g);
        return;
    }
    uint64_t M[RATE_LANES * LANES];
    for (int64_t g = 0; g < n; g += LANES) {
        int m = n - g < LANES ? (int)(n - g) : LANES;
        pad_lanes(M, 8, 1);
        for (int l = 0; l < m; l++) {
            uint64_t w[8];
            memcpy(w, left[g + l], 32);
            memcpy(w + 4, right[g + l], 32);
            for (int i = 0; i < 8; i++) M[i * LANES + l] = w[i];
        }
        absorb(M, m, 1, out + g);
    }
}

/* Chunk hashes: keccak of 16 activation words, src[i][0..len[i]) then zeros. */
static void hash_chunks(int64_t n, const int64_t *const *src, const int64_t *len, uint8_t *const *out) {
    if (use_simd()) {
        for (int64_t g = 0; g < n; g += LANES) chunks_simd(n - g < LANES ? (int)(n - g) : LANES, src + g, len + g, out + g);
        return;
    }
    uint64_t M[4 * RATE_LANES * LANES];
    for (int64_t g = 0; g < n; g += LANES) {
        int m = n - g < LANES ? (int)(n - g) : LANES;
        pad_lanes(M, 4 * CHUNK, 4);
        for (int l = 0; l < m; l++) {
            const int64_t *v = src[g + l];
            int64_t k = len[g + l];
            for (int e = 0; e < CHUNK; e++) {
                int64_t x = e < k ? v[e] : 0;
                uint64_t s = x < 0 ? ~0ULL : 0;
                M[(4 * e) * LANES + l] = s;
                M[(4 * e + 1) * LANES + l] = s;
                M[(4 * e + 2) * LANES + l] = s;
                M[(4 * e + 3) * LANES + l] = __builtin_bswap64((uint64_t)x);
            }
        }
        absorb(M, m, 4, out + g);
    }
}

/* keccak of n messages of len bytes each (contiguous): the general function the tests compare. */
void oi_keccak(const uint8_t *data, int64_t n, int64_t len, uint8_t *out) {
    int blocks = (int)(len / 136 + 1);
    uint64_t *M = malloc((size_t)blocks * RATE_LANES * LANES * 8);
    for (int64_t g = 0; g < n; g += LANES) {
        int m = n - g < LANES ? (int)(n - g) : LANES;
        memset(M, 0, (size_t)blocks * RATE_LANES * LANES * 8);
        uint8_t *outs[LANES];
        for (int l = 0; l < m; l++) {
            uint8_t buf[8];
            const uint8_t *msg = data + (g + l) * len;
            for (int w = 0; w < blocks * RATE_LANES; w++) {
                memset(buf, 0, 8);
                for (int b = 0; b < 8; b++) {
                    int64_t at = 8 * w + b;
                    buf[b] = at < len ? msg[at] : 0;
                    if (at == len) buf[b] ^= 0x01;
                    if (at == (int64_t)blocks * 136 - 1) buf[b] ^= 0x80;
                }
                memcpy(&M[w * LANES + l], buf, 8);
            }
            outs[l] = out + (g + l) * 32;
        }
        absorb(M, m, blocks, outs);
    }
    free(M);
}

/* ------------------------------------------------------------------ trees */

static uint8_t zero_sub[64][32];   /* z_k over zero chunks */
static int zero_ready;

static void zero_init(void) {
    if (zero_ready) return;
    uint8_t msg[CHUNK * 32] = {0};
    oi_keccak(msg, 1, sizeof msg, zero_sub[0]);
    for (int k = 1; k < 64; k++) {
        const uint8_t *l = zero_sub[k - 1];
        uint8_t *o = zero_sub[k];
        hash_pairs(1, &l, &l, &o);
    }
    zero_ready = 1;
}

static inline int ceil_log2(int64_t n) { return n > 1 ? 64 - __builtin_clzll((uint64_t)(n - 1)) : 0; }

/* One level up over `rows` groups of `w` nodes each (group r at nodes + r * stride), in place:
   node i = keccak(node 2i, node 2i+1 or pad). */
static void level_up(uint8_t *nodes, int64_t rows, int64_t stride, int64_t w, const uint8_t *pad, int64_t cap,
                     const uint8_t **L, const uint8_t **R, uint8_t **O) {
    int64_t w2 = (w + 1) / 2, k = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < w2; i++) {
            uint8_t *base = nodes + r * stride * 32;
            L[k] = base + 64 * i;
            R[k] = 2 * i + 1 < w ? base + 64 * i + 32 : pad;
            O[k] = base + 32 * i;
            if (++k == cap) {   /* a batch reads its inputs before it writes (absorb), and writes stay behind reads */
                hash_pairs(k, L, R, O);
                k = 0;
            }
        }
    if (k) hash_pairs(k, L, R, O);
}

#define PTRS 4096

/* Roots of n tensors of `rows` rows, tensor t having cols[t] columns, values at
   vals + t * ld_t + r * ld_r + c (activations: one value per word). out: 32 bytes each. */
int oi_tensor_roots(const int64_t *vals, int64_t n, int64_t rows, const int64_t *cols, int64_t ld_t, int64_t ld_r,
                    uint8_t *out) {
    zero_init();
    const uint8_t **L = malloc(PTRS * sizeof *L), **R = malloc(PTRS * sizeof *R);
    uint8_t **O = malloc(PTRS * sizeof *O);
    const int64_t **src = malloc(PTRS * sizeof *src);
    int64_t *len = malloc(PTRS * sizeof *len);
    int64_t cap_nodes = 0;
    uint8_t *nodes = NULL;
    for (int64_t t = 0; t < n; t++) {
        int64_t C = cols[t], nch = (C + CHUNK - 1) / CHUNK;
        if (C < 1 || rows < 1) {
            free(L); free(R); free(O); free(src); free(len); free(nodes);
            return -1;
        }
        if (rows * nch > cap_nodes) {
            free(nodes);
            cap_nodes = rows * nch;
            nodes = malloc((size_t)cap_nodes * 32);
        }
        const int64_t *base = vals + t * ld_t;
        int64_t k = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < nch; c++) {
                src[k] = base + r * ld_r + c * CHUNK;
                len[k] = C - c * CHUNK < CHUNK ? C - c * CHUNK : CHUNK;
                O[k] = nodes + (r * nch + c) * 32;
                if (++k == PTRS) {
                    hash_chunks(k, src, len, O);
                    k = 0;
                }
            }
        if (k) hash_chunks(k, src, len, O);
        int d = ceil_log2(nch);
        int64_t w = nch;
        for (int lev = 0; lev < d; lev++, w = (w + 1) / 2) level_up(nodes, rows, nch, w, zero_sub[lev], PTRS, L, R, O);
        for (int64_t r = 1; r < rows; r++) memmove(nodes + r * 32, nodes + r * nch * 32, 32);
        int rb = ceil_log2(rows);
        w = rows;
        for (int lev = 0; lev < rb; lev++, w = (w + 1) / 2) level_up(nodes, 1, 0, w, zero_sub[d + lev], PTRS, L, R, O);
        memcpy(out + t * 32, nodes, 32);
    }
    free(L); free(R); free(O); free(src); free(len); free(nodes);
    return 0;
}

/* All levels of a Merkle tree over n leaves (32 bytes each) whose missing nodes at level k are
   pads[k]: out holds level 0 (the leaves, copied), level 1 (ceil(n/2) nodes), ... up to one node;
   returns the number of nodes written. */
int64_t oi_merkle_levels(const uint8_t *leaves, int64_t n, const uint8_t *pads, uint8_t *out) {
    const uint8_t **L = malloc(PTRS * sizeof *L), **R = malloc(PTRS * sizeof *R);
    uint8_t **O = malloc(PTRS * sizeof *O);
    memcpy(out, leaves, (size_t)n * 32);
    int64_t at = 0, w = n, lev = 0;
    while (w > 1) {
        int64_t w2 = (w + 1) / 2, k = 0;
        for (int64_t i = 0; i < w2; i++) {
            L[k] = out + (at + 2 * i) * 32;
            R[k] = 2 * i + 1 < w ? out + (at + 2 * i + 1) * 32 : pads + lev * 32;
            O[k] = out + (at + w + i) * 32;
            if (++k == PTRS) {
                hash_pairs(k, L, R, O);
                k = 0;
            }
        }
        if (k) hash_pairs(k, L, R, O);
        at += w;
        w = w2;
        lev++;
    }
    free(L); free(R); free(O);
    return at + 1;
}

/* Roots of the V^T cache [W, S] (int64, row stride ld) cut to its first m columns, for each m
   in ms[0..nm): the tensor roots of the trace's APPEND (transposed) outputs, step by step.
   Completed chunks never change, so their row trees are built once; per m only the open
   chunk and the path above it are hashed (as decoder_trace._ColsCache). */
int oi_vt_roots(const int64_t *vals, int64_t W, int64_t S, int64_t ld, const int64_t *ms, int64_t nm, uint8_t *out) {
    zero_init();
    int64_t full = S / CHUNK;                       /* completed chunks of the longest prefix */
    int64_t off[64], per = 0;                        /* offset of level k inside a row's block; nodes per row */
    for (int64_t k = 0, w = full; k < 64; k++) {
        off[k] = per;
        if (w > 0) per += w;
        w = w > 1 ? (w + 1) / 2 : 0;
    }
    int64_t stride = per > 0 ? per : 1;
    uint8_t *lev = malloc((size_t)(W * stride) * 32);
    const int64_t **src = malloc(PTRS * sizeof *src);
    int64_t *len = malloc(PTRS * sizeof *len);
    const uint8_t **L = malloc(PTRS * sizeof *L), **R = malloc(PTRS * sizeof *R);
    uint8_t **O = malloc(PTRS * sizeof *O);
    /* level 0 of every row: its completed chunks */
    int64_t k = 0;
    for (int64_t r = 0; r < W; r++)
        for (int64_t c = 0; c < full; c++) {
            src[k] = vals + r * ld + c * CHUNK;
            len[k] = CHUNK;
            O[k] = lev + (r * stride + off[0] + c) * 32;
            if (++k == PTRS) {
                hash_chunks(k, src, len, O);
                k = 0;
            }
        }
    if (k) hash_chunks(k, src, len, O);
    for (int64_t w = full, lv = 0; w > 1; w = (w + 1) / 2, lv++) {
        k = 0;
        for (int64_t r = 0; r < W; r++)
            for (int64_t i = 0; i < (w + 1) / 2; i++) {
                uint8_t *b = lev + r * stride * 32;
                L[k] = b + (off[lv] + 2 * i) * 32;
                R[k] = 2 * i + 1 < w ? b + (off[lv] + 2 * i + 1) * 32 : zero_sub[lv];
                O[k] = b + (off[lv + 1] + i) * 32;
                if (++k == PTRS) {
                    hash_pairs(k, L, R, O);
                    k = 0;
                }
            }
        if (k) hash_pairs(k, L, R, O);
    }
    uint8_t *cur = malloc((size_t)W * 32);
    uint8_t **curp = malloc(W * sizeof *curp);
    const uint8_t **left = malloc(W * sizeof *left), **right = malloc(W * sizeof *right);
    for (int64_t r = 0; r < W; r++) curp[r] = cur + r * 32;
    int rc = 0;
    for (int64_t q = 0; q < nm; q++) {
        int64_t m = ms[q];
        if (m < 1 || m > S) {
            rc = -1;
            break;
        }
        int64_t nch = (m + CHUNK - 1) / CHUNK, tail = nch - 1;
        for (int64_t r = 0; r < W; r++) {
            src[r % PTRS] = vals + r * ld + tail * CHUNK;   /* W <= PTRS for any real cache */
            len[r % PTRS] = m - tail * CHUNK;
        }
        hash_chunks(W, src, len, curp);
        int64_t idx = tail;
        int d = ceil_log2(nch);
        for (int lv = 0; lv < d; lv++, idx >>= 1) {
            for (int64_t r = 0; r < W; r++) {
                if (idx & 1) {
                    left[r] = lev + (r * stride + off[lv] + idx - 1) * 32;
                    right[r] = curp[r];
                } else {
                    left[r] = curp[r];
                    right[r] = zero_sub[lv];
                }
            }
            hash_pairs(W, left, right, curp);
        }
        int rb = ceil_log2(W);
        int64_t w = W;
        for (int lv = 0; lv < rb; lv++, w = (w + 1) / 2) {
            int64_t w2 = (w + 1) / 2;
            for (int64_t i = 0; i < w2; i++) {
                left[i] = curp[2 * i];
                right[i] = 2 * i + 1 < w ? curp[2 * i + 1] : zero_sub[d + lv];
            }
            hash_pairs(w2, left, right, curp);
        }
        memcpy(out + q * 32, cur, 32);
    }
    free(cur); free(curp); free(left); free(right);
    free(lev); free(src); free(len); free(L); free(R); free(O);
    return rc;
}

/* ------------------------------------------------------------------ attention softmax in chunks
 * EXP_SUMS and PROBS (opinfer/semantics/attention_ops.py) of `rows` score rows of ragged length:
 * row r holds cols[r] scores at x + r * ld. e_c = exp_table[requant(max - x_c, mult, shift, 0,
 * EXP_INPUT_MAX)] (the table is quant.exp_neg over [0, EXP_INPUT_MAX], given by the caller, so
 * the rule has one definition); sums[r, j] = the e_c of chunk j (chunk_width columns),
 * probs[r, c] = round_div(e_c * one, sum of the row's e) and 0 beyond the row (probs has
 * stride ld). */
int oi_softmax_chunks(const int64_t *x, int64_t rows, int64_t ld, const int64_t *cols, int64_t mult, int64_t shift,
                      int64_t one, const int64_t *exp_table, int64_t table_max, int64_t chunk_width, int64_t chunks,
                      int64_t *sums, int64_t *probs) {
    for (int64_t r = 0; r < rows; r++) {
        const int64_t *row = x + r * ld;
        int64_t n = cols[r], top = row[0], total = 0;
        int64_t *p = probs + r * ld, *s = sums + r * chunks;
        if (n < 1 || n > ld || n > chunk_width * chunks) return -1;
        for (int64_t c = 1; c < n; c++) top = row[c] > top ? row[c] : top;
        for (int64_t j = 0; j < chunks; j++) s[j] = 0;
        for (int64_t c = 0; c < n; c++) {
            int64_t z = (top - row[c]) * mult;
            if (shift > 0) z = (z + ((int64_t)1 << (shift - 1))) >> shift;
            z = z < 0 ? 0 : (z > table_max ? table_max : z);
            int64_t e = exp_table[z];
            p[c] = e;
            s[c / chunk_width] += e;
            total += e;
        }
        if (total <= 0) return -1;
        for (int64_t c = 0; c < n; c++) p[c] = (2 * p[c] * one + total) / (2 * total);
        for (int64_t c = n; c < ld; c++) p[c] = 0;
    }
    return 0;
}

/* Roots of the first ms[q] leaves of a tree (levels as oi_merkle_levels writes them: level k at
   offsets[k], nlevels of them), padded with the pad subtrees pads[k]: as AppendTree.root, the
   nodes left of leaf m-1's path are the full tree's and those right of it pads. The roots of
   all ms are folded together, one level at a time, eight hashes at once. */
int oi_prefix_roots(const uint8_t *levels, const int64_t *offsets, int64_t nlevels, const uint8_t *pads,
                    const int64_t *ms, int64_t nm, uint8_t *out) {
    const uint8_t **L = malloc(PTRS * sizeof *L), **R = malloc(PTRS * sizeof *R);
    uint8_t **O = malloc(PTRS * sizeof *O);
    for (int64_t q = 0; q < nm; q++) {
        if (ms[q] < 1 || ceil_log2(ms[q]) >= nlevels) {
            free(L); free(R); free(O);
            return -1;
        }
        memcpy(out + q * 32, levels + (offsets[0] + ms[q] - 1) * 32, 32);
    }
    for (int k = 0; k < 63; k++) {
        int64_t n = 0, any = 0;
        for (int64_t q = 0; q < nm; q++) {
            int64_t m = ms[q];
            if (k >= ceil_log2(m)) continue;
            any = 1;
            int64_t idx = (m - 1) >> k;
            uint8_t *cur = out + q * 32;
            if (idx & 1) {
                L[n] = levels + (offsets[k] + idx - 1) * 32;
                R[n] = cur;
            } else {
                L[n] = cur;
                R[n] = pads + k * 32;
            }
            O[n] = cur;
            if (++n == PTRS) {
                hash_pairs(n, L, R, O);
                n = 0;
            }
        }
        if (n) hash_pairs(n, L, R, O);
        if (!any) break;
    }
    free(L); free(R); free(O);
    return 0;
}
