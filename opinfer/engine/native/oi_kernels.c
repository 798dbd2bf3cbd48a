/*
 * opinfer's native integer kernels: the GGUF file's Q4_1 / Q8_0 blocks times
 * blockwise int8 activations, in exact integers, and SmolLM2's whole forward
 * step (embedding, RMSNorm, q|k|v, RoPE, KV cache, attention with the integer
 * softmax, o, SwiGLU, down, LM head) for a batch of sequences.
 *
 * Every rule is the one in opinfer/engine/elements.py (element by element)
 * and opinfer/engine/blocks.py / smollm2.py (numpy): integer sums are exact
 * and order-independent, so SIMD lanes and threads change no bit, and tests
 * compare this file with the numpy reference op by op and on whole sequences
 * (tests/unit/test_blocks.py, tests/unit/test_smollm2_engine.py).
 *
 * Built by `make deps` (opinfer/engine/native/__init__.py): gcc -O2 with no
 * -march flag; the AVX2 kernels carry their own target attribute and are
 * chosen at run time when the CPU has AVX2 (__builtin_cpu_supports), with a
 * scalar fallback. No AMX. Right shifts of negative int64/int128 are
 * arithmetic (floor) in gcc, which the rules rely on.
 */
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 32
#define ROW_BITS 15
#define ACT_MAX 127
#define SQUARE_BITS 26
#define NORM_BITS 8
#define ROPE_BITS 14
#define EXP_INPUT_MAX (1LL << 20)
#define MAX_THREADS 64

/* ------------------------------------------------------------------ data */

typedef struct {
    int64_t fmt;            /* 0: Q4_1 (24-byte blocks: int32 D, int32 M, 16 bytes of nibbles); 1: Q8_0 (36: int32 D, 32 int8) */
    int64_t n, k, mult;     /* [n, k] weights; the requantisation multiplier */
    const uint8_t *data;    /* n * k / 32 packed blocks, row by row */
    const int64_t *shift, *lo, *hi;   /* per output column */
} oi_qmat;

typedef struct {
    int64_t n_layers, hidden, n_heads, n_kv, head_dim, ffn, vocab, rope_rows;
    int64_t eps, norm_lo, norm_hi;
    int64_t score_mult, score_shift, prob_one;
    int64_t ctx_mult, ctx_shift, ctx_lo, ctx_hi;
    int64_t embed_shift, res_lo, res_hi;
    int64_t silu_off, silu_len;
    const int64_t *attn_gain, *ffn_gain, *out_gain;   /* [L, H], [L, H], [H] */
    const oi_qmat *qkv, *o, *gate_up, *down;          /* [L] each */
    const oi_qmat *head;                              /* the Q8_0 token embeddings (tied LM head) */
    const int64_t *silu, *cos, *sin;                  /* [silu_len], [rope_rows, D/2] x 2 */
} oi_model;

typedef struct {
    int16_t *k, *v;         /* [L][n_kv][cap][D] */
    int64_t cap, pos;
} oi_seq;

static inline int64_t floor_div(int64_t n, int64_t d) {   /* d > 0 */
    int64_t q = n / d;
    return (n % d != 0 && n < 0) ? q - 1 : q;
}
static inline int64_t round_div(int64_t n, int64_t d) { return floor_div(2 * n + d, 2 * d); }
static inline int bit_length(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

/* Largest |x[i]| of a row, as unsigned (|INT64_MIN| fits): what the row's shift is chosen from. */
static inline uint64_t max_abs(const int64_t *x, int64_t n) {
    uint64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t v = x[i] < 0 ? (uint64_t)(-x[i]) : (uint64_t)x[i];
        if (v > m) m = v;
    }
    return m;
}
static inline int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline int64_t isqrt64(int64_t x) {   /* floor(sqrt(x)), 0 <= x < 2^62 */
    if (x <= 0) return 0;
    uint64_t r = (uint64_t)__builtin_sqrt((double)x);
    while (r * r > (uint64_t)x) r--;
    while ((r + 1) * (r + 1) <= (uint64_t)x) r++;
    return (int64_t)r;
}

/* requant(acc << d, mult, shift, lo, hi) = clamp(floor((acc 2^d mult + 2^(shift-1)) / 2^shift)) */
static inline int64_t requant_shifted(int64_t acc, int d, int64_t mult, int64_t shift, int64_t lo, int64_t hi) {
    int64_t e = shift - d;
    __int128 p = (__int128)acc * mult;
    if (e >= 1) {
        p = (p + ((__int128)1 << (e - 1))) >> e;
        return p < lo ? lo : (p > hi ? hi : (int64_t)p);
    }
    /* an exact left shift: clamping first gives the clamp of the shifted value (lo <= 0 <= hi) */
    int64_t c = p < lo ? lo : (p > hi ? hi : (int64_t)p);
    __int128 s = (__int128)c << (-e);
    return s < lo ? lo : (s > hi ? hi : (int64_t)s);
}

static inline int64_t requant(int64_t acc, int64_t mult, int64_t shift, int64_t lo, int64_t hi) {
    return requant_shifted(acc, 0, mult, shift, lo, hi);
}

static const int64_t EXP2_COEFFS[7] = {1073741824, -744261118, 257941248, -59597083, 10327387, -1431680, 165394};

static inline int64_t exp_neg(int64_t u) {   /* elements.exp_neg */
    int64_t y = (u * 94548 + 128) >> 8;
    int64_t q = y >> 16, f = y & 0xFFFF;
    if (q >= 32) return 0;
    int64_t p = EXP2_COEFFS[6];
    for (int i = 5; i >= 0; i--) p = EXP2_COEFFS[i] + ((p * f) >> 16);
    return (p + (1LL << (q + 13))) >> (q + 14);
}

/* ------------------------------------------------------------------ thread pool */

typedef void (*task_fn)(void *arg, int64_t start, int64_t end);

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th[MAX_THREADS];
    int started;              /* workers running */
    pid_t pid;                /* the process that started them (a fork starts its own) */
    _Atomic int64_t gen;      /* bumped for every task */
    _Atomic int64_t pending;  /* workers still busy with the current task */
    task_fn fn;
    void *arg;
    int64_t total, parts;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static int n_threads = 1;

static int64_t start_gen[MAX_THREADS];   /* the task counter when worker i was created */

static void *worker(void *p) {
    int64_t id = (int64_t)(intptr_t)p;
    int64_t seen = start_gen[id];   /* not a fresh read: a task may be posted before this thread runs */
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.gen, memory_order_acquire) == seen) {
            if (++spins < 2000) {
                _mm_pause();
                continue;
            }
            if (spins < 4000) {   /* a shared machine: let other runnable threads go first */
                sched_yield();
                continue;
            }
            pthread_mutex_lock(&pool.mu);
            while (atomic_load(&pool.gen) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
            pthread_mutex_unlock(&pool.mu);
        }
        seen = atomic_load(&pool.gen);
        if (id < pool.parts) {
            int64_t s = pool.total * id / pool.parts, e = pool.total * (id + 1) / pool.parts;
            if (s < e) pool.fn(pool.arg, s, e);
        }
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
    }
    return NULL;
}

/* Start worker i (1 MiB stack) at the pool's current generation; counts it when it started. */
static void spawn_worker(int64_t i) {
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setstacksize(&at, 1 << 20);
    start_gen[i] = atomic_load(&pool.gen);
    if (pthread_create(&pool.th[i], &at, worker, (void *)(intptr_t)i) == 0) pool.started++;
    pthread_attr_destroy(&at);
}

static void pool_start(void) {
    if (pool.started && pool.pid == getpid()) return;
    pool.started = 0;   /* after a fork the parent's workers do not exist here */
    pool.pid = getpid();
    for (int64_t i = 1; i < MAX_THREADS && i < n_threads; i++) {
        spawn_worker(i);
    }
}

static pthread_mutex_t pool_busy = PTHREAD_MUTEX_INITIALIZER;

/* fn over [0, total) split into n_threads contiguous parts (the caller runs part 0). The
   pool serves one caller at a time: a second thread calling in meanwhile (a node runs
   requests on several threads) computes its whole range itself, with the same result. */
static void parallel_for(task_fn fn, void *arg, int64_t total, int64_t min_per_thread) {
    int64_t parts = n_threads;
    if (min_per_thread > 0 && total / min_per_thread < parts) parts = total / min_per_thread;
    if (parts < 1) parts = 1;
    if (parts <= 1 || pthread_mutex_trylock(&pool_busy) != 0) {
        fn(arg, 0, total);
        return;
    }
    pool_start();
    if (parts > pool.started + 1) parts = pool.started + 1;
    if (parts <= 1) {
        pthread_mutex_unlock(&pool_busy);
        fn(arg, 0, total);
        return;
    }
    pool.fn = fn;
    pool.arg = arg;
    pool.total = total;
    pool.parts = parts;
    atomic_store(&pool.pending, pool.started);
    pthread_mutex_lock(&pool.mu);
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    int64_t e0 = total / parts;
    if (e0 > 0) fn(arg, 0, e0);
    for (int spins = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0; spins++) {
        if (spins < 2000) _mm_pause();
        else sched_yield();
    }
    pthread_mutex_unlock(&pool_busy);
}

int oi_set_threads(int n) {   /* workers start on first use; a pool never shrinks (extra workers idle) */
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    pthread_mutex_lock(&pool_busy);
    n_threads = n;
    if (pool.started && pool.pid == getpid())
        for (int64_t i = pool.started + 1; i < n; i++) {
            spawn_worker(i);
        }
    pthread_mutex_unlock(&pool_busy);
    return n_threads;
}

int oi_get_threads(void) { return n_threads; }

/* ------------------------------------------------------------------ activations */

/* One row: d = max(bit_length(max |x|) - 15, 0), xs = (x + 2^(d-1)) >> d, per block
   a = max |xs|, xq = round_div(127 xs, a); as2 = a * sum xq. Returns d. */
static int quantize_row(const int64_t *x, int64_t k, int8_t *xq, int32_t *a, int32_t *as2, int32_t *s2out) {
    int d = bit_length(max_abs(x, k)) - ROW_BITS;
    if (d < 0) d = 0;
    int64_t half = d > 0 ? (1LL << (d - 1)) : 0;
    int32_t xs[BLOCK];
    for (int64_t b = 0; b < k / BLOCK; b++) {
        int32_t amax = 0;
        for (int i = 0; i < BLOCK; i++) {
            xs[i] = (int32_t)((x[b * BLOCK + i] + half) >> d);
            int32_t v = xs[i] < 0 ? -xs[i] : xs[i];
            if (v > amax) amax = v;
        }
        a[b] = amax;
        int32_t s2 = 0;
        if (amax == 0) {
            memset(xq + b * BLOCK, 0, BLOCK);
        } else {
            /* round_div(127 xs, a) = floor((254 xs + a) / 2a); a double quotient of these
               small integers is within 2^-40 of the exact one, and the integer check fixes
               the rare case of a result one off (exact quotients) */
            int64_t den = 2 * (int64_t)amax;
            double inv = 1.0 / (double)den;
            for (int i = 0; i < BLOCK; i++) {
                int64_t num = 254 * (int64_t)xs[i] + amax;
                int64_t q = (int64_t)__builtin_floor((double)num * inv);
                if (q * den > num) q--;
                else if ((q + 1) * den <= num) q++;
                xq[b * BLOCK + i] = (int8_t)q;
                s2 += (int32_t)q;
            }
        }
        as2[b] = amax * s2;
        s2out[b] = s2;
    }
    return d;
}

/* ------------------------------------------------------------------ block products */

typedef struct {
    int32_t D, M;
    uint8_t qs[16];
} blk_q4_1;

typedef struct {
    int32_t D;
    int8_t qs[32];
} __attribute__((packed)) blk_q8_0;

/* acc = sum_b a_b (D_b S1_b + M_b S2_b), S1 = sum q xq: scalar */
static int64_t dot_q4_1_scalar(const blk_q4_1 *w, const int8_t *xq, const int32_t *a, const int32_t *as2, int64_t nb) {
    int64_t acc = 0;
    for (int64_t b = 0; b < nb; b++) {
        int32_t s1 = 0;
        const int8_t *x = xq + b * BLOCK;
        for (int i = 0; i < 16; i++) s1 += (w[b].qs[i] & 15) * x[i] + (w[b].qs[i] >> 4) * x[i + 16];
        acc += (int64_t)(a[b] * s1) * w[b].D + (int64_t)w[b].M * as2[b];
    }
    return acc;
}

static int64_t dot_q8_0_scalar(const blk_q8_0 *w, const int8_t *xq, const int32_t *a, int64_t nb) {
    int64_t acc = 0;
    for (int64_t b = 0; b < nb; b++) {
        int32_t s1 = 0;
        const int8_t *x = xq + b * BLOCK;
        for (int i = 0; i < 32; i++) s1 += w[b].qs[i] * x[i];
        acc += (int64_t)a[b] * s1 * w[b].D;
    }
    return acc;
}

/* AVX2: per block, 8 int32 lanes of S1 (maddubs then madd), times a_b (|lane| * a_b < 2^31),
   times D into 4 + 4 int64 lanes; int64 sums are exact in any order. */
__attribute__((target("avx2,fma"))) static inline int64_t hsum64(__m256i v) {
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

__attribute__((target("avx2,fma"))) static int64_t dot_q4_1_avx2(const blk_q4_1 *w, const int8_t *xq, const int32_t *a,
                                                                 const int32_t *as2, int64_t nb) {
    const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    int64_t macc = 0;
    for (int64_t b = 0; b < nb; b++) {
        __m128i raw = _mm_loadu_si128((const __m128i *)w[b].qs);
        __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), m4);
        __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
        p = _mm256_mullo_epi32(p, _mm256_set1_epi32(a[b]));
        __m256i dv = _mm256_set1_epi32(w[b].D);
        acc0 = _mm256_add_epi64(acc0, _mm256_mul_epi32(p, dv));
        acc1 = _mm256_add_epi64(acc1, _mm256_mul_epi32(_mm256_srli_epi64(p, 32), dv));
        macc += (int64_t)w[b].M * as2[b];
    }
    return hsum64(_mm256_add_epi64(acc0, acc1)) + macc;
}

__attribute__((target("avx2,fma"))) static int64_t dot_q8_0_avx2(const blk_q8_0 *w, const int8_t *xq, const int32_t *a,
                                                                 int64_t nb) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
    for (int64_t b = 0; b < nb; b++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        /* |q| times x with q's sign: pairs sum to at most 2 * 128 * 127 < 2^15 */
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(x, q)), ones);
        p = _mm256_mullo_epi32(p, _mm256_set1_epi32(a[b]));   /* |lane| <= 4 * 128 * 127 * 2^15 < 2^31 */
        __m256i dv = _mm256_set1_epi32(w[b].D);
        acc0 = _mm256_add_epi64(acc0, _mm256_mul_epi32(p, dv));
        acc1 = _mm256_add_epi64(acc1, _mm256_mul_epi32(_mm256_srli_epi64(p, 32), dv));
    }
    return hsum64(_mm256_add_epi64(acc0, acc1));
}

/* Four weight rows against up to TMAX activation rows (decoding one or several
   sequences, prefill): each block's codes are unpacked and its scales gathered once,
   then used for every activation row; the four rows' S1 lanes are reduced together
   (hadd) and the scale products run on 4 x int64 lanes. acc[4 t + r] is
   dot_q4_1_scalar / dot_q8_0_scalar of weight row r and activation row t.
   Two builds of each: AVX2 (maddubs + madd) and AVX-VNNI (dpbusd, the same sums). */
#define TMAX 8
#define MAC_AVX2(q, x) _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones)
#define MAC_VNNI(q, x) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), q, x)

#define DEF_DOT4XT_Q4_1(NAME, TARGET, MAC)                                                                     \
    __attribute__((target(TARGET))) static void NAME(const blk_q4_1 *w, int64_t nb, int64_t T, const int8_t *xq, \
                                                     const int32_t *a, const int32_t *as2, const int32_t *s2,      \
                                                     int64_t k, int64_t *acc) {                                    \
        const __m256i m4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);                                    \
        (void)ones; (void)s2;                                                                                      \
        const blk_q4_1 *w0 = w, *w1 = w + nb, *w2 = w + 2 * nb, *w3 = w + 3 * nb;                                 \
        __m256i sum[TMAX];                                                                                         \
        for (int64_t t = 0; t < T; t++) sum[t] = _mm256_setzero_si256();                                           \
        for (int64_t b = 0; b < nb; b++) {                                                                         \
            __m128i r0 = _mm_loadu_si128((const __m128i *)w0[b].qs), r1 = _mm_loadu_si128((const __m128i *)w1[b].qs); \
            __m128i r2 = _mm_loadu_si128((const __m128i *)w2[b].qs), r3 = _mm_loadu_si128((const __m128i *)w3[b].qs); \
            const __m256i q0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r0, 4), r0), m4);                 \
            const __m256i q1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r1, 4), r1), m4);                 \
            const __m256i q2 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r2, 4), r2), m4);                 \
            const __m256i q3 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r3, 4), r3), m4);                 \
            const __m256i dv = _mm256_setr_epi64x(w0[b].D, w1[b].D, w2[b].D, w3[b].D);                             \
            const __m256i mv = _mm256_setr_epi64x(w0[b].M, w1[b].M, w2[b].M, w3[b].M);                             \
            for (int64_t t = 0; t < T; t++) {                                                                      \
                __m256i x = _mm256_loadu_si256((const __m256i *)(xq + t * k + b * BLOCK));                         \
                __m256i p0 = MAC(q0, x), p1 = MAC(q1, x), p2 = MAC(q2, x), p3 = MAC(q3, x);                        \
                __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));              \
                __m128i s1 = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));            \
                s1 = _mm_mullo_epi32(s1, _mm_set1_epi32(a[t * nb + b])); /* |a S1| < 2^31 */                     \
                __m256i st = _mm256_add_epi64(sum[t], _mm256_mul_epi32(_mm256_cvtepi32_epi64(s1), dv));           \
                sum[t] = _mm256_add_epi64(st, _mm256_mul_epi32(mv, _mm256_set1_epi64x(as2[t * nb + b])));        \
            }                                                                                                      \
        }                                                                                                          \
        for (int64_t t = 0; t < T; t++) _mm256_storeu_si256((__m256i *)(acc + 4 * t), sum[t]);                    \
    }

/* Q8_0: AVX2 multiplies |q| by x with q's sign (pairs below 2^15); VNNI multiplies the
   unsigned q + 128 by x and takes 128 S2 back off. Either way S1 is exact. */
#define Q8_PREP_AVX2(q) _mm256_sign_epi8(q, q)
#define Q8_MAC_AVX2(qa, q, x) _mm256_madd_epi16(_mm256_maddubs_epi16(qa, _mm256_sign_epi8(x, q)), ones)
#define Q8_FIX_AVX2(s1, s2v) (s1)
#define Q8_PREP_VNNI(q) _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80))
#define Q8_MAC_VNNI(qa, q, x) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), qa, x)
#define Q8_FIX_VNNI(s1, s2v) _mm_sub_epi32(s1, _mm_slli_epi32(s2v, 7))

#define DEF_DOT4XT_Q8_0(NAME, TARGET, PREP, QMAC, FIX)                                                          \
    __attribute__((target(TARGET))) static void NAME(const blk_q8_0 *w, int64_t nb, int64_t T, const int8_t *xq, \
                                                     const int32_t *a, const int32_t *as2, const int32_t *s2,      \
                                                     int64_t k, int64_t *acc) {                                    \
        const __m256i ones = _mm256_set1_epi16(1);                                                                 \
        (void)ones; (void)as2;                                                                                     \
        const blk_q8_0 *w0 = w, *w1 = w + nb, *w2 = w + 2 * nb, *w3 = w + 3 * nb;                                 \
        __m256i sum[TMAX];                                                                                         \
        for (int64_t t = 0; t < T; t++) sum[t] = _mm256_setzero_si256();                                           \
        for (int64_t b = 0; b < nb; b++) {                                                                         \
            const __m256i q0 = _mm256_loadu_si256((const __m256i *)w0[b].qs);                                      \
            const __m256i q1 = _mm256_loadu_si256((const __m256i *)w1[b].qs);                                      \
            const __m256i q2 = _mm256_loadu_si256((const __m256i *)w2[b].qs);                                      \
            const __m256i q3 = _mm256_loadu_si256((const __m256i *)w3[b].qs);                                      \
            const __m256i a0 = PREP(q0), a1 = PREP(q1), a2 = PREP(q2), a3 = PREP(q3);                              \
            const __m256i dv = _mm256_setr_epi64x(w0[b].D, w1[b].D, w2[b].D, w3[b].D);                             \
            for (int64_t t = 0; t < T; t++) {                                                                      \
                __m256i x = _mm256_loadu_si256((const __m256i *)(xq + t * k + b * BLOCK));                         \
                __m256i p0 = QMAC(a0, q0, x), p1 = QMAC(a1, q1, x), p2 = QMAC(a2, q2, x), p3 = QMAC(a3, q3, x);    \
                __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(p0, p1), _mm256_hadd_epi32(p2, p3));              \
                __m128i s1 = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));            \
                s1 = FIX(s1, _mm_set1_epi32(s2[t * nb + b]));                                                      \
                /* p = S1 D (|S1| < 2^19, 64-bit lanes), then p a as (p mod 2^32) a + ((p >> 32) a) 2^32:   \
                   exact, the true value being below 2^62 (the bound check) */                                    \
                __m256i pd = _mm256_mul_epi32(_mm256_cvtepi32_epi64(s1), dv);                                       \
                __m256i av = _mm256_set1_epi64x(a[t * nb + b]);                                                    \
                __m256i lo = _mm256_mul_epu32(pd, av);                                                             \
                __m256i hi = _mm256_mul_epi32(_mm256_srli_epi64(pd, 32), av);                                      \
                sum[t] = _mm256_add_epi64(sum[t], _mm256_add_epi64(lo, _mm256_slli_epi64(hi, 32)));               \
            }                                                                                                      \
        }                                                                                                          \
        for (int64_t t = 0; t < T; t++) _mm256_storeu_si256((__m256i *)(acc + 4 * t), sum[t]);                    \
    }

DEF_DOT4XT_Q4_1(dot4xt_q4_1_avx2, "avx2,fma", MAC_AVX2)
DEF_DOT4XT_Q4_1(dot4xt_q4_1_vnni, "avx2,fma,avxvnni", MAC_VNNI)
DEF_DOT4XT_Q8_0(dot4xt_q8_0_avx2, "avx2,fma", Q8_PREP_AVX2, Q8_MAC_AVX2, Q8_FIX_AVX2)
DEF_DOT4XT_Q8_0(dot4xt_q8_0_vnni, "avx2,fma,avxvnni", Q8_PREP_VNNI, Q8_MAC_VNNI, Q8_FIX_VNNI)

typedef void (*dot4xt_q4_fn)(const blk_q4_1 *, int64_t, int64_t, const int8_t *, const int32_t *, const int32_t *,
                             const int32_t *, int64_t, int64_t *);
typedef void (*dot4xt_q8_fn)(const blk_q8_0 *, int64_t, int64_t, const int8_t *, const int32_t *, const int32_t *,
                             const int32_t *, int64_t, int64_t *);
static dot4xt_q4_fn dot4xt_q4_1 = dot4xt_q4_1_avx2;
static dot4xt_q8_fn dot4xt_q8_0 = dot4xt_q8_0_avx2;

static int use_avx2 = -1;

static int use_vnni = -1;

static inline int have_avx2(void) {
    if (use_avx2 < 0) {
        __builtin_cpu_init();
        use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        if (use_vnni < 0) use_vnni = use_avx2 && __builtin_cpu_supports("avxvnni");
        dot4xt_q4_1 = use_vnni ? dot4xt_q4_1_vnni : dot4xt_q4_1_avx2;
        dot4xt_q8_0 = use_vnni ? dot4xt_q8_0_vnni : dot4xt_q8_0_avx2;
    }
    return use_avx2;
}

/* Which kernels run: 0 scalar, 1 AVX2, 2 AVX2 + AVX-VNNI where the CPU has them (tests compare all). */
int oi_set_simd(int level) {
    use_avx2 = level >= 1 ? -1 : 0;
    use_vnni = level >= 2 ? -1 : 0;
    if (level == 0) return 0;
    have_avx2();
    return use_avx2 + (use_vnni > 0);
}

static inline int64_t row_dot(const oi_qmat *w, int64_t n, const int8_t *xq, const int32_t *a, const int32_t *as2) {
    int64_t nb = w->k / BLOCK;
    if (w->fmt == 0) {
        const blk_q4_1 *row = (const blk_q4_1 *)w->data + n * nb;
        return use_avx2 ? dot_q4_1_avx2(row, xq, a, as2, nb) : dot_q4_1_scalar(row, xq, a, as2, nb);
    }
    const blk_q8_0 *row = (const blk_q8_0 *)w->data + n * nb;
    return use_avx2 ? dot_q8_0_avx2(row, xq, a, nb) : dot_q8_0_scalar(row, xq, a, nb);
}

typedef struct {
    const oi_qmat *w;
    int64_t t;                  /* rows of activations */
    const int8_t *xq;
    const int32_t *a, *as2, *s2;
    const int32_t *d;
    int64_t *out;               /* [t, ldo] */
    int64_t ldo, col0;          /* output row stride and the first weight row */
    int fold_only_acc;          /* 1: write raw accumulators */
} dense_job;

static void dense_task(void *p, int64_t start, int64_t end) {
    dense_job *j = (dense_job *)p;
    const oi_qmat *w = j->w;
    int64_t nb = w->k / BLOCK;
    int64_t n = start;
    if (use_avx2)
        for (; n + 4 <= end; n += 4) {
            int64_t c = j->col0 + n, acc[4 * TMAX];
            for (int64_t t0 = 0; t0 < j->t; t0 += TMAX) {
                int64_t tn = j->t - t0 < TMAX ? j->t - t0 : TMAX;
                if (w->fmt == 0)
                    dot4xt_q4_1((const blk_q4_1 *)w->data + c * nb, nb, tn, j->xq + t0 * w->k, j->a + t0 * nb,
                                j->as2 + t0 * nb, j->s2 + t0 * nb, w->k, acc);
                else
                    dot4xt_q8_0((const blk_q8_0 *)w->data + c * nb, nb, tn, j->xq + t0 * w->k, j->a + t0 * nb,
                                j->as2 + t0 * nb, j->s2 + t0 * nb, w->k, acc);
                for (int64_t t = 0; t < tn; t++)
                    for (int r = 0; r < 4; r++)
                        j->out[(t0 + t) * j->ldo + n + r] = j->fold_only_acc ? acc[4 * t + r]
                            : requant_shifted(acc[4 * t + r], j->d[t0 + t], w->mult, w->shift[c + r], w->lo[c + r],
                                              w->hi[c + r]);
            }
        }
    for (; n < end; n++) {
        int64_t c = j->col0 + n;
        for (int64_t t = 0; t < j->t; t++) {
            int64_t acc = row_dot(w, c, j->xq + t * w->k, j->a + t * nb, j->as2 + t * nb);
            j->out[t * j->ldo + n] = j->fold_only_acc ? acc
                                     : requant_shifted(acc, j->d[t], w->mult, w->shift[c], w->lo[c], w->hi[c]);
        }
    }
}

typedef struct {
    int8_t *xq;
    int32_t *a, *as2, *s2, *d;
    int64_t cap_x, cap_t;
} act_buf;

static void act_reserve(act_buf *b, int64_t t, int64_t k) {
    if (t * k > b->cap_x) {
        free(b->xq);
        free(b->a);
        free(b->as2);
        free(b->s2);
        b->cap_x = t * k;
        b->xq = malloc(b->cap_x + 64);
        b->a = malloc(sizeof(int32_t) * (b->cap_x / BLOCK + 1));
        b->as2 = malloc(sizeof(int32_t) * (b->cap_x / BLOCK + 1));
        b->s2 = malloc(sizeof(int32_t) * (b->cap_x / BLOCK + 1));
    }
    if (t > b->cap_t) {
        free(b->d);
        b->cap_t = t;
        b->d = malloc(sizeof(int32_t) * t);
    }
}

typedef struct {
    const int64_t *x;
    int64_t k;
    act_buf *buf;
} quant_job;

static void quant_task(void *p, int64_t start, int64_t end) {
    quant_job *j = (quant_job *)p;
    int64_t k = j->k, nb = k / BLOCK;
    act_buf *b = j->buf;
    for (int64_t r = start; r < end; r++)
        b->d[r] = quantize_row(j->x + r * k, k, b->xq + r * k, b->a + r * nb, b->as2 + r * nb, b->s2 + r * nb);
}

static void dense_rows(const oi_qmat *w, const int64_t *x, int64_t t, int64_t *out, int64_t rows, int64_t col0,
                       act_buf *buf, int raw) {
    act_reserve(buf, t, w->k);
    quant_job q = {x, w->k, buf};
    parallel_for(quant_task, &q, t, 2);                 /* rows of activations, quantised in parallel */
    dense_job j = {w, t, buf->xq, buf->a, buf->as2, buf->s2, buf->d, out, rows, col0, raw};
    parallel_for(dense_task, &j, rows, 16);
}

/* ------------------------------------------------------------------ exported ops (tests, trace) */

/* out[t, n] = requant(block product of x row t with weight row n) */
int oi_dense(const oi_qmat *w, const int64_t *x, int64_t t, int64_t *out) {
    have_avx2();
    act_buf buf = {0};
    dense_rows(w, x, t, out, w->n, 0, &buf, 0);
    free(buf.xq); free(buf.a); free(buf.as2); free(buf.s2); free(buf.d);
    return 0;
}

/* the raw accumulators, and the activation quantisation (xq, a, d) */
int oi_dense_acc(const oi_qmat *w, const int64_t *x, int64_t t, int64_t *acc, int8_t *xq, int32_t *a, int32_t *d) {
    have_avx2();
    act_buf buf = {0};
    dense_rows(w, x, t, acc, w->n, 0, &buf, 1);
    memcpy(xq, buf.xq, t * w->k);
    memcpy(a, buf.a, sizeof(int32_t) * t * (w->k / BLOCK));
    memcpy(d, buf.d, sizeof(int32_t) * t);
    free(buf.xq); free(buf.a); free(buf.as2); free(buf.s2); free(buf.d);
    return 0;
}

static void rms_norm_row(const int64_t *x, int64_t n, const int64_t *gain, int64_t eps, int64_t lo, int64_t hi,
                         int64_t *y) {
    int d = bit_length(max_abs(x, n)) - SQUARE_BITS;
    if (d < 0) d = 0;
    int64_t ss = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t v = x[i] >> d;
        ss += v * v;
    }
    int64_t ms = round_div(ss, n) + (eps >> (2 * d));
    int64_t rms = isqrt64(ms);
    if (rms < 1) rms = 1;
    int64_t den = rms << (NORM_BITS + d);
    for (int64_t i = 0; i < n; i++) y[i] = clamp(round_div(x[i] * gain[i], den), lo, hi);
}

int oi_rms_norm(const int64_t *x, int64_t t, int64_t n, const int64_t *gain, int64_t eps, int64_t lo, int64_t hi,
                int64_t *y) {
    for (int64_t r = 0; r < t; r++) rms_norm_row(x + r * n, n, gain, eps, lo, hi, y + r * n);
    return 0;
}

int64_t oi_exp_neg(int64_t u) { return exp_neg(u); }

/* ------------------------------------------------------------------ the SmolLM2 forward step */

typedef struct {
    const oi_model *m;
    oi_seq *seqs;
    const int64_t *row_seq, *row_pos;   /* per row: its sequence and position */
    const int64_t *qkv;                 /* [T, (nh + 2 nkv) D] after RoPE */
    int64_t *ctx;                       /* [T, nh D] */
    int64_t layer;
    int64_t width;                      /* qkv row width */
} attn_job;

/* one (row, head): scores over the row's sequence up to its position, integer softmax, p . v */
static void attn_task(void *p, int64_t start, int64_t end) {
    attn_job *j = (attn_job *)p;
    const oi_model *m = j->m;
    int64_t nh = m->n_heads, nkv = m->n_kv, D = m->head_dim, group = nh / nkv;
    int64_t cap_max = 0;
    for (int64_t it = start; it < end; it++) {
        int64_t pos = j->row_pos[it / nh];
        if (pos + 1 > cap_max) cap_max = pos + 1;
    }
    int64_t *s = malloc(sizeof(int64_t) * (cap_max + 1));
    int64_t *e = malloc(sizeof(int64_t) * (cap_max + 1));
    for (int64_t it = start; it < end; it++) {
        int64_t r = it / nh, h = it % nh, g = h / group;
        const oi_seq *sq = &j->seqs[j->row_seq[r]];
        int64_t pos = j->row_pos[r], n = pos + 1;
        const int64_t *q = j->qkv + r * j->width + h * D;
        const int16_t *kc = sq->k + ((j->layer * nkv + g) * sq->cap) * D;
        const int16_t *vc = sq->v + ((j->layer * nkv + g) * sq->cap) * D;
        int64_t top = INT64_MIN;
        for (int64_t t = 0; t < n; t++) {
            int64_t acc = 0;
            const int16_t *kt = kc + t * D;
            for (int64_t i = 0; i < D; i++) acc += q[i] * kt[i];
            s[t] = acc;
            if (acc > top) top = acc;
        }
        int64_t sum = 0;
        for (int64_t t = 0; t < n; t++) {
            e[t] = exp_neg(requant(top - s[t], m->score_mult, m->score_shift, 0, EXP_INPUT_MAX));
            sum += e[t];
        }
        int64_t out[256];
        for (int64_t i = 0; i < D; i++) out[i] = 0;
        for (int64_t t = 0; t < n; t++) {
            int64_t pr = round_div(e[t] * m->prob_one, sum);
            if (!pr) continue;
            const int16_t *vt = vc + t * D;
            for (int64_t i = 0; i < D; i++) out[i] += pr * vt[i];
        }
        int64_t *c = j->ctx + r * nh * D + h * D;
        for (int64_t i = 0; i < D; i++) c[i] = requant(out[i], m->ctx_mult, m->ctx_shift, m->ctx_lo, m->ctx_hi);
    }
    free(s);
    free(e);
}

static void rope_row(int64_t *x, int64_t heads, int64_t D, const int64_t *cos, const int64_t *sin) {
    const int64_t half = 1LL << (ROPE_BITS - 1);
    for (int64_t h = 0; h < heads; h++) {
        int64_t *v = x + h * D;
        for (int64_t i = 0; i < D / 2; i++) {
            int64_t a = v[2 * i], b = v[2 * i + 1];
            v[2 * i] = (a * cos[i] - b * sin[i] + half) >> ROPE_BITS;
            v[2 * i + 1] = (a * sin[i] + b * cos[i] + half) >> ROPE_BITS;
        }
    }
}

typedef struct {
    const int64_t *x;
    int64_t *y;
    int64_t n;
    const int64_t *gain;
    const oi_model *m;
} norm_job;

static void norm_task(void *p, int64_t start, int64_t end) {
    norm_job *j = (norm_job *)p;
    for (int64_t r = start; r < end; r++)
        rms_norm_row(j->x + r * j->n, j->n, j->gain, j->m->eps, j->m->norm_lo, j->m->norm_hi, j->y + r * j->n);
}

typedef struct {
    const int64_t *gu;      /* [T, 2F]: gate | up */
    int64_t *out;           /* [T, F] */
    int64_t f;
    const oi_model *m;
    _Atomic int bad;        /* a gate outside the SiLU table */
} swiglu_job;

static void swiglu_task(void *p, int64_t start, int64_t end) {
    swiglu_job *j = (swiglu_job *)p;
    int64_t F = j->f;
    for (int64_t r = start; r < end; r++)
        for (int64_t c = 0; c < F; c++) {
            int64_t idx = j->gu[r * 2 * F + c] + j->m->silu_off;
            if (idx < 0 || idx >= j->m->silu_len) {
                atomic_store(&j->bad, 1);
                return;
            }
            j->out[r * F + c] = j->m->silu[idx] * j->gu[r * 2 * F + F + c];
        }
}

/*
 * Append ntok[s] tokens to each sequence s (its rows stacked in `tokens`) and
 * compute logits: of every row (all_logits) or of each sequence's last row.
 * Returns 0, or -1 when a sequence lacks cache room or a token or gate is out of range.
 */
int oi_forward(const oi_model *m, int64_t nseq, oi_seq *seqs, const int64_t *tokens, const int64_t *ntok,
               int64_t all_logits, int64_t *logits) {
    have_avx2();
    int64_t H = m->hidden, nh = m->n_heads, nkv = m->n_kv, D = m->head_dim, F = m->ffn, V = m->vocab;
    int64_t width = (nh + 2 * nkv) * D;
    int64_t T = 0;
    for (int64_t s = 0; s < nseq; s++) {
        if (ntok[s] < 0 || seqs[s].pos + ntok[s] > seqs[s].cap || seqs[s].pos + ntok[s] > m->rope_rows) return -1;
        T += ntok[s];
    }
    if (T == 0) return 0;
    int64_t *row_seq = malloc(sizeof(int64_t) * T), *row_pos = malloc(sizeof(int64_t) * T);
    for (int64_t s = 0, r = 0; s < nseq; s++)
        for (int64_t i = 0; i < ntok[s]; i++, r++) {
            row_seq[r] = s;
            row_pos[r] = seqs[s].pos + i;
            if (tokens[r] < 0 || tokens[r] >= V) {
                free(row_seq);
                free(row_pos);
                return -1;
            }
        }
    int64_t *x = malloc(sizeof(int64_t) * T * H);
    int64_t *h = malloc(sizeof(int64_t) * T * (H > F ? H : F));
    int64_t *qkv = malloc(sizeof(int64_t) * T * width);
    int64_t *ctx = malloc(sizeof(int64_t) * T * nh * D);
    int64_t *gu = malloc(sizeof(int64_t) * T * 2 * F);
    int64_t *o = malloc(sizeof(int64_t) * T * H);
    act_buf buf = {0};
    int rc = 0;

    /* token embeddings: requant(D q, 1, embed_shift) of the Q8_0 row */
    const oi_qmat *E = m->head;
    for (int64_t r = 0; r < T; r++) {
        const blk_q8_0 *row = (const blk_q8_0 *)E->data + tokens[r] * (H / BLOCK);
        for (int64_t c = 0; c < H; c++)
            x[r * H + c] = requant((int64_t)row[c / BLOCK].D * row[c / BLOCK].qs[c % BLOCK], 1, m->embed_shift,
                                   m->res_lo, m->res_hi);
    }
    for (int64_t l = 0; l < m->n_layers && rc == 0; l++) {
        norm_job nj = {x, h, H, m->attn_gain + l * H, m};
        parallel_for(norm_task, &nj, T, 2);
        dense_rows(&m->qkv[l], h, T, qkv, width, 0, &buf, 0);
        for (int64_t r = 0; r < T; r++) {
            int64_t *row = qkv + r * width;
            const int64_t *cs = m->cos + row_pos[r] * (D / 2), *sn = m->sin + row_pos[r] * (D / 2);
            rope_row(row, nh + nkv, D, cs, sn);
            oi_seq *sq = &seqs[row_seq[r]];
            for (int64_t g = 0; g < nkv; g++) {
                int16_t *kd = sq->k + ((l * nkv + g) * sq->cap + row_pos[r]) * D;
                int16_t *vd = sq->v + ((l * nkv + g) * sq->cap + row_pos[r]) * D;
                for (int64_t i = 0; i < D; i++) {
                    kd[i] = (int16_t)row[(nh + g) * D + i];   /* |k| <= 23000 before RoPE: below 2^15 after */
                    vd[i] = (int16_t)row[(nh + nkv + g) * D + i];
                }
            }
        }
        attn_job aj = {m, seqs, row_seq, row_pos, qkv, ctx, l, width};
        parallel_for(attn_task, &aj, T * nh, 1);
        dense_rows(&m->o[l], ctx, T, o, H, 0, &buf, 0);
        for (int64_t i = 0; i < T * H; i++) x[i] += o[i];
        norm_job fj = {x, h, H, m->ffn_gain + l * H, m};
        parallel_for(norm_task, &fj, T, 2);
        dense_rows(&m->gate_up[l], h, T, gu, 2 * F, 0, &buf, 0);
        swiglu_job sj = {gu, h, F, m, 0};
        parallel_for(swiglu_task, &sj, T, 2);
        if (sj.bad) {
            rc = -1;
            break;
        }
        dense_rows(&m->down[l], h, T, o, H, 0, &buf, 0);
        for (int64_t i = 0; i < T * H; i++) x[i] += o[i];
    }
    if (rc == 0) {
        int64_t out_rows = all_logits ? T : nseq;
        for (int64_t s = 0, r = 0, k = 0; s < nseq; s++) {
            for (int64_t i = 0; i < ntok[s]; i++, r++) {
                if (all_logits || i == ntok[s] - 1) {
                    rms_norm_row(x + r * H, H, m->out_gain, m->eps, m->norm_lo, m->norm_hi, h + k * H);
                    k++;
                }
            }
            if (!all_logits && ntok[s] == 0) {   /* no new row: no logits (zeros) */
                memset(h + k * H, 0, sizeof(int64_t) * H);
                k++;
            }
        }
        dense_rows(m->head, h, out_rows, logits, V, 0, &buf, 0);
        for (int64_t s = 0; s < nseq; s++) seqs[s].pos += ntok[s];
    }
    free(row_seq); free(row_pos); free(x); free(h); free(qkv); free(ctx); free(gu); free(o);
    free(buf.xq); free(buf.a); free(buf.as2); free(buf.s2); free(buf.d);
    return rc;
}
