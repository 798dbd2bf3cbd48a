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
 * Built by `make deps` (opinfer/native/__init__.py): gcc -O2 with no
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
    const oi_qmat *head;                              /* the LM head (the token embeddings when tied) */
    const int64_t *silu, *cos, *sin;                  /* [silu_len], [rope_rows, D/2] x 2 */
    const oi_qmat *embed;                             /* the Q8_0 token embeddings */
    const int64_t *qkv_bias;                          /* [L, (nh + 2 nkv) D] added after the q|k|v clamp, or NULL */
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
    /* The dense layers' case (mult = MULT_127 ~ 2^23, 32 <= e <= 62, any int64 acc) in int64, without
       128-bit products: acc = A 2^32 + B (B the unsigned low word), so
       floor((acc mult + 2^(e-1)) / 2^e) = floor((A mult + floor((B mult + 2^(e-1)) / 2^32)) / 2^(e-32)),
       floor divisions nesting exactly; |A mult| < 2^61 and B mult + 2^(e-1) < 2^62 + 2^61 for mult < 2^30.
       It was the 128-bit path below for every output element (~15% of a decode step's time). */
    if (e >= 32 && e <= 62 && (uint64_t)mult < (1ULL << 30)) {
        int64_t a_hi = acc >> 32;                         /* arithmetic: floor(acc / 2^32) */
        uint64_t b_lo = (uint64_t)acc & 0xFFFFFFFFULL;
        uint64_t low = b_lo * (uint64_t)mult + (1ULL << (e - 1));
        int64_t p = (a_hi * mult + (int64_t)(low >> 32)) >> (e - 32);
        return p < lo ? lo : (p > hi ? hi : p);
    }
    /* in int64 when the product cannot overflow (|acc| < 2^40, 0 <= mult < 2^22, 1 <= e <= 62): the same value */
    if (e >= 1 && e <= 62 && (uint64_t)(acc + (1LL << 40)) < (1ULL << 41) && (uint64_t)mult < (1ULL << 22)) {
        int64_t p = (acc * mult + (1LL << (e - 1))) >> e;
        return p < lo ? lo : (p > hi ? hi : p);
    }
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
    /* the common case in int64: |acc|, |mult| < 2^31 and 1 <= shift <= 62 (the same value) */
    if (shift >= 1 && shift <= 62 && (uint64_t)(acc + (1LL << 31)) < (1ULL << 32) &&
        (uint64_t)(mult + (1LL << 31)) < (1ULL << 32)) {
        int64_t p = (acc * mult + (1LL << (shift - 1))) >> shift;
        return p < lo ? lo : (p > hi ? hi : p);
    }
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

/* exp_neg(u) is 0 once q = y >> 16 >= 32, i.e. for u >= EXP_TAB_N: below that, a table of its
   values (built from exp_neg itself, so the same integers) replaces the polynomial */
#define EXP_TAB_N 5679
static int32_t exp_tab[EXP_TAB_N];
static pthread_once_t exp_once = PTHREAD_ONCE_INIT;
static void exp_tab_init(void) {
    for (int64_t u = 0; u < EXP_TAB_N; u++) exp_tab[u] = (int32_t)exp_neg(u);
}
static inline int64_t exp_neg_tab(int64_t u) { return u < EXP_TAB_N ? exp_tab[u] : 0; }

/* round_div(n, d) for 0 <= n < 2^50, 0 < d < 2^50 with a double reciprocal of 2d, corrected by
   integer comparisons: the exact floor((2n + d) / 2d) */
static inline int64_t round_div_inv(int64_t n, int64_t d, double inv2d) {
    int64_t num = 2 * n + d, den = 2 * d;
    int64_t q = (int64_t)((double)num * inv2d);
    if (q * den > num) q--;
    else if ((q + 1) * den <= num) q++;
    return q;
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
    _Atomic uint64_t work;    /* the task's chunks: gen (32 bits) | next chunk (16) | chunks (16) */
    _Atomic int64_t done;     /* chunks of the current task finished */
    task_fn fn;
    void *arg;
    int64_t total, parts;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

static int n_threads = 1;

static int64_t start_gen[MAX_THREADS];   /* the task counter when worker i was created */

/* Claim and run chunks of task g until none is left. A chunk is claimed by a compare-and-swap
   on `work`, which names the task: a thread that wakes late finds another task's word and
   claims nothing. fn, arg and total are read after the claim: task g cannot end (and its
   caller post another) while a claimed chunk is unfinished. */
static void run_chunks(uint32_t g) {
    for (;;) {
        uint64_t v = atomic_load_explicit(&pool.work, memory_order_acquire);
        if ((uint32_t)(v >> 32) != g) return;
        uint64_t idx = (v >> 16) & 0xFFFF, n = v & 0xFFFF;
        if (idx >= n) return;
        if (!atomic_compare_exchange_weak_explicit(&pool.work, &v, v + (1u << 16), memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        int64_t s = pool.total * (int64_t)idx / (int64_t)n, e = pool.total * (int64_t)(idx + 1) / (int64_t)n;
        if (s < e) pool.fn(pool.arg, s, e);
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
}

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
        seen = atomic_load_explicit(&pool.gen, memory_order_acquire);
        if (id < pool.parts) run_chunks((uint32_t)seen);   /* workers beyond the thread count stay idle */
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

#define CHUNKS_PER_THREAD 4

/* fn over [0, total), in CHUNKS_PER_THREAD chunks per thread that the caller and the workers
   claim as they come free: on a shared machine a worker the scheduler has parked leaves its
   chunks to the others instead of holding up the step (the caller waits only for chunks
   claimed and running, never for a worker to wake). fn(s, e) computes rows [s, e) whoever
   runs it, so the split changes no bit. The pool serves one caller at a time: a second thread
   calling in meanwhile (a node runs requests on several threads) computes its whole range
   itself, with the same result. */
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
    int64_t chunks = parts * CHUNKS_PER_THREAD;
    if (min_per_thread > 0 && total / min_per_thread < chunks) chunks = total / min_per_thread;
    if (chunks > total) chunks = total;
    if (chunks > 0xFFFF) chunks = 0xFFFF;
    if (chunks < parts) chunks = parts;
    pool.fn = fn;
    pool.arg = arg;
    pool.total = total;
    pool.parts = parts;
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    int64_t g = atomic_load(&pool.gen) + 1;
    atomic_store_explicit(&pool.work, ((uint64_t)(uint32_t)g << 32) | (uint64_t)chunks, memory_order_release);
    pthread_mutex_lock(&pool.mu);
    atomic_store_explicit(&pool.gen, g, memory_order_release);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    run_chunks((uint32_t)g);
    for (int spins = 0; atomic_load_explicit(&pool.done, memory_order_acquire) < chunks; spins++) {
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
               small integers is within 2^-40 of the exact one (|quotient| < 128); shifted by 256
               and truncated (a conversion: floor for positive values, where gcc without
               -msse4.1 calls libm's floor) it is the floor but for quotients within rounding of
               an integer, and the integer checks make it exact whatever it was */
            int64_t den = 2 * (int64_t)amax;
            double inv = 1.0 / (double)den;
            for (int i = 0; i < BLOCK; i++) {
                int64_t num = 254 * (int64_t)xs[i] + amax;
                int64_t q = (int64_t)((double)num * inv + 256.0) - 256;
                while (q * den > num) q--;
                while ((q + 1) * den <= num) q++;
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

/* Eight weight rows against up to TMAX activation rows, AVX-VNNI, where each int32 lane is one
   weight row (no horizontal sums): a block's 8 x 16 bytes of nibbles are transposed in registers
   to four vectors of [row r: 4 bytes], whose low and high nibbles are the codes of k = 4j..4j+3
   and 16 + 4j..; dpbusd of each with the activation's 4 bytes broadcast adds those products to
   the row's lane. Then, as in dot4xt, a S1 (int32, < 2^31) times D and M times a S2 on int64
   lanes (even rows and odd rows). acc[8 t + r] is dot_q4_1_scalar of row r and activation row t. */
__attribute__((target("avx2,fma,avxvnni"))) static void dot8xt_q4_1_vnni(const blk_q4_1 *w, int64_t nb, int64_t T,
                                                                       const int8_t *xq, const int32_t *a,
                                                                       const int32_t *as2, int64_t k, int64_t *acc) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256i se[TMAX], so[TMAX];
    for (int64_t t = 0; t < T; t++) se[t] = so[t] = _mm256_setzero_si256();
    for (int64_t b = 0; b < nb; b++) {
        const blk_q4_1 *r0 = w + b, *r4 = w + 4 * nb + b;
        __m256i y0 = _mm256_loadu2_m128i((const __m128i *)r4->qs, (const __m128i *)r0->qs);
        __m256i y1 = _mm256_loadu2_m128i((const __m128i *)r4[nb].qs, (const __m128i *)r0[nb].qs);
        __m256i y2 = _mm256_loadu2_m128i((const __m128i *)r4[2 * nb].qs, (const __m128i *)r0[2 * nb].qs);
        __m256i y3 = _mm256_loadu2_m128i((const __m128i *)r4[3 * nb].qs, (const __m128i *)r0[3 * nb].qs);
        __m256i t0 = _mm256_unpacklo_epi32(y0, y1), t1 = _mm256_unpackhi_epi32(y0, y1);
        __m256i t2 = _mm256_unpacklo_epi32(y2, y3), t3 = _mm256_unpackhi_epi32(y2, y3);
        __m256i l0 = _mm256_unpacklo_epi64(t0, t2), l1 = _mm256_unpackhi_epi64(t0, t2);
        __m256i l2 = _mm256_unpacklo_epi64(t1, t3), l3 = _mm256_unpackhi_epi64(t1, t3);
        /* rows in lanes 0..7: (r0, r1, r2, r3 | r4, r5, r6, r7) */
        const __m256i c0 = _mm256_and_si256(l0, m4), c4 = _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4);
        const __m256i c1 = _mm256_and_si256(l1, m4), c5 = _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4);
        const __m256i c2 = _mm256_and_si256(l2, m4), c6 = _mm256_and_si256(_mm256_srli_epi16(l2, 4), m4);
        const __m256i c3 = _mm256_and_si256(l3, m4), c7 = _mm256_and_si256(_mm256_srli_epi16(l3, 4), m4);
        const __m256i dv = _mm256_setr_epi32(r0->D, r0[nb].D, r0[2 * nb].D, r0[3 * nb].D, r4->D, r4[nb].D,
                                             r4[2 * nb].D, r4[3 * nb].D);
        const __m256i mv = _mm256_setr_epi32(r0->M, r0[nb].M, r0[2 * nb].M, r0[3 * nb].M, r4->M, r4[nb].M,
                                             r4[2 * nb].M, r4[3 * nb].M);
        const __m256i dodd = _mm256_srli_epi64(dv, 32), modd = _mm256_srli_epi64(mv, 32);
        for (int64_t t = 0; t < T; t++) {
            const int32_t *x = (const int32_t *)(xq + t * k + b * BLOCK);
            __m256i s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), c0, _mm256_set1_epi32(x[0]));
            s = _mm256_dpbusd_avx_epi32(s, c1, _mm256_set1_epi32(x[1]));
            s = _mm256_dpbusd_avx_epi32(s, c2, _mm256_set1_epi32(x[2]));
            s = _mm256_dpbusd_avx_epi32(s, c3, _mm256_set1_epi32(x[3]));
            s = _mm256_dpbusd_avx_epi32(s, c4, _mm256_set1_epi32(x[4]));
            s = _mm256_dpbusd_avx_epi32(s, c5, _mm256_set1_epi32(x[5]));
            s = _mm256_dpbusd_avx_epi32(s, c6, _mm256_set1_epi32(x[6]));
            s = _mm256_dpbusd_avx_epi32(s, c7, _mm256_set1_epi32(x[7]));
            s = _mm256_mullo_epi32(s, _mm256_set1_epi32(a[t * nb + b]));   /* |a S1| < 2^31 */
            const __m256i s2 = _mm256_set1_epi64x(as2[t * nb + b]);
            se[t] = _mm256_add_epi64(se[t], _mm256_add_epi64(_mm256_mul_epi32(s, dv), _mm256_mul_epi32(mv, s2)));
            so[t] = _mm256_add_epi64(so[t], _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(s, 32), dodd),
                                                             _mm256_mul_epi32(modd, s2)));
        }
    }
    for (int64_t t = 0; t < T; t++) {
        int64_t e[4], o[4];
        _mm256_storeu_si256((__m256i *)e, se[t]);
        _mm256_storeu_si256((__m256i *)o, so[t]);
        /* lanes 0..3 of the int32 vector: rows 0..3; 4..7: rows 4..7; even lanes in se, odd in so */
        acc[8 * t + 0] = e[0]; acc[8 * t + 1] = o[0]; acc[8 * t + 2] = e[1]; acc[8 * t + 3] = o[1];
        acc[8 * t + 4] = e[2]; acc[8 * t + 5] = o[2]; acc[8 * t + 6] = e[3]; acc[8 * t + 7] = o[3];
    }
}

/* Q8_0, the same shape: the 8 rows' 32 code bytes transposed (8 x 8 dwords) so that lane r holds
   row r's 4 codes of k = 4j..4j+3; dpbusd takes the codes + 128 (unsigned) against x and the
   128 S2 is taken back; then p = S1 D on int64 lanes and p a as (p mod 2^32) a + ((p >> 32) a) 2^32
   (exact: the true value is below 2^62, the load-time bound), as in dot4xt_q8_0. */
__attribute__((target("avx2,fma,avxvnni"))) static void dot8xt_q8_0_vnni(const blk_q8_0 *w, int64_t nb, int64_t T,
                                                                       const int8_t *xq, const int32_t *a,
                                                                       const int32_t *s2, int64_t k, int64_t *acc) {
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    __m256i se[TMAX], so[TMAX];
    for (int64_t t = 0; t < T; t++) se[t] = so[t] = _mm256_setzero_si256();
    for (int64_t b = 0; b < nb; b++) {
        const blk_q8_0 *r = w + b;
        __m256i y0 = _mm256_loadu_si256((const __m256i *)r[0].qs), y1 = _mm256_loadu_si256((const __m256i *)r[nb].qs);
        __m256i y2 = _mm256_loadu_si256((const __m256i *)r[2 * nb].qs);
        __m256i y3 = _mm256_loadu_si256((const __m256i *)r[3 * nb].qs);
        __m256i y4 = _mm256_loadu_si256((const __m256i *)r[4 * nb].qs);
        __m256i y5 = _mm256_loadu_si256((const __m256i *)r[5 * nb].qs);
        __m256i y6 = _mm256_loadu_si256((const __m256i *)r[6 * nb].qs);
        __m256i y7 = _mm256_loadu_si256((const __m256i *)r[7 * nb].qs);
        /* 8 x 8 transpose of dwords: c_j lane r = row r's dword j */
        __m256i t0 = _mm256_unpacklo_epi32(y0, y1), t1 = _mm256_unpackhi_epi32(y0, y1);
        __m256i t2 = _mm256_unpacklo_epi32(y2, y3), t3 = _mm256_unpackhi_epi32(y2, y3);
        __m256i t4 = _mm256_unpacklo_epi32(y4, y5), t5 = _mm256_unpackhi_epi32(y4, y5);
        __m256i t6 = _mm256_unpacklo_epi32(y6, y7), t7 = _mm256_unpackhi_epi32(y6, y7);
        __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
        __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
        __m256i u4 = _mm256_unpacklo_epi64(t4, t6), u5 = _mm256_unpackhi_epi64(t4, t6);
        __m256i u6 = _mm256_unpacklo_epi64(t5, t7), u7 = _mm256_unpackhi_epi64(t5, t7);
        /* u0: rows 0-3 dword 0 | rows 0-3 dword 4; u4: rows 4-7 dword 0 | dword 4 */
        const __m256i c0 = _mm256_xor_si256(_mm256_permute2x128_si256(u0, u4, 0x20), flip);
        const __m256i c4 = _mm256_xor_si256(_mm256_permute2x128_si256(u0, u4, 0x31), flip);
        const __m256i c1 = _mm256_xor_si256(_mm256_permute2x128_si256(u1, u5, 0x20), flip);
        const __m256i c5 = _mm256_xor_si256(_mm256_permute2x128_si256(u1, u5, 0x31), flip);
        const __m256i c2 = _mm256_xor_si256(_mm256_permute2x128_si256(u2, u6, 0x20), flip);
        const __m256i c6 = _mm256_xor_si256(_mm256_permute2x128_si256(u2, u6, 0x31), flip);
        const __m256i c3 = _mm256_xor_si256(_mm256_permute2x128_si256(u3, u7, 0x20), flip);
        const __m256i c7 = _mm256_xor_si256(_mm256_permute2x128_si256(u3, u7, 0x31), flip);
        const __m256i dv = _mm256_setr_epi32(r[0].D, r[nb].D, r[2 * nb].D, r[3 * nb].D, r[4 * nb].D, r[5 * nb].D,
                                             r[6 * nb].D, r[7 * nb].D);
        const __m256i dodd = _mm256_srli_epi64(dv, 32);
        for (int64_t t = 0; t < T; t++) {
            const int32_t *x = (const int32_t *)(xq + t * k + b * BLOCK);
            __m256i s = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), c0, _mm256_set1_epi32(x[0]));
            s = _mm256_dpbusd_avx_epi32(s, c1, _mm256_set1_epi32(x[1]));
            s = _mm256_dpbusd_avx_epi32(s, c2, _mm256_set1_epi32(x[2]));
            s = _mm256_dpbusd_avx_epi32(s, c3, _mm256_set1_epi32(x[3]));
            s = _mm256_dpbusd_avx_epi32(s, c4, _mm256_set1_epi32(x[4]));
            s = _mm256_dpbusd_avx_epi32(s, c5, _mm256_set1_epi32(x[5]));
            s = _mm256_dpbusd_avx_epi32(s, c6, _mm256_set1_epi32(x[6]));
            s = _mm256_dpbusd_avx_epi32(s, c7, _mm256_set1_epi32(x[7]));
            s = _mm256_sub_epi32(s, _mm256_set1_epi32(s2[t * nb + b] * 128));
            const __m256i av = _mm256_set1_epi64x(a[t * nb + b]);
            __m256i pe = _mm256_mul_epi32(s, dv), po = _mm256_mul_epi32(_mm256_srli_epi64(s, 32), dodd);
            __m256i le = _mm256_mul_epu32(pe, av), he = _mm256_mul_epi32(_mm256_srli_epi64(pe, 32), av);
            __m256i lo = _mm256_mul_epu32(po, av), ho = _mm256_mul_epi32(_mm256_srli_epi64(po, 32), av);
            se[t] = _mm256_add_epi64(se[t], _mm256_add_epi64(le, _mm256_slli_epi64(he, 32)));
            so[t] = _mm256_add_epi64(so[t], _mm256_add_epi64(lo, _mm256_slli_epi64(ho, 32)));
        }
    }
    for (int64_t t = 0; t < T; t++) {
        int64_t e[4], o[4];
        _mm256_storeu_si256((__m256i *)e, se[t]);
        _mm256_storeu_si256((__m256i *)o, so[t]);
        acc[8 * t + 0] = e[0]; acc[8 * t + 1] = o[0]; acc[8 * t + 2] = e[1]; acc[8 * t + 3] = o[1];
        acc[8 * t + 4] = e[2]; acc[8 * t + 5] = o[2]; acc[8 * t + 6] = e[3]; acc[8 * t + 7] = o[3];
    }
}

/* Sixteen weight rows against up to TMAX activation rows, AVX-512 VNNI: dot8xt_q4_1_vnni with
   512-bit registers. Each 128-bit lane of y_j holds row j + 4L's 16 bytes (L = 0..3); the same
   in-lane unpacks give lane L the four rows 4L..4L+3, so int32 lane i is weight row i; one
   dpbusd adds 16 rows' products, and the scale products run on 8 + 8 int64 lanes (even and odd
   rows). The sums are dot_q4_1_scalar's, exactly. acc[16 t + r]: weight row r, activation row t.
   Why it is written so (perf on a decode pass): the blocks' (D, M) pairs come by two gathers of
   8 qwords (even rows, odd rows), whose low dwords are D and high dwords M, where 32 scalar stores
   read back as vectors stalled every block on store forwarding (a sixth of the kernel's time);
   and the body is inlined for T = TMAX, so the loop over t unrolls and the 16 accumulators stay in
   registers (for a variable T they lived on the stack, loaded and stored every block). */
#define AVX512_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq"
/* More activation rows than TMAX (a prefill chunk beside decoding rows) take several passes over
   a 16-row group; the first (PK_STORE) keeps each block's unpacked codes and scales (PK_STRIDE
   vectors, a few KiB per group that stay in L1/L2) and the later ones (PK_LOAD) read them back
   instead of unpacking the same blocks again: work per pass, not per row, that a 38-row pass paid
   five times. */
#define PK_NONE 0
#define PK_STORE 1
#define PK_LOAD 2
#define PK_STRIDE 12
#define ROWS16_EVEN _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0)
#define ROWS16_ODD _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 0, 0, 0, 0, 0, 0, 0, 0)

/* The 16-row kernels' shared layout steps (both inlined into their bodies, so the unrolled loops
   and register-held accumulators are as before). rows16 puts 16 bytes of weight rows j, j + 4,
   j + 8, j + 12 (at p, p + s, p + 2s, p + 3s) in lanes 0..3; transpose16 is the in-lane 4 x 4
   transposition of int32 words over four such vectors y_0..y_3 (y_j from rows16 of row j), so
   that int32 lane i of out[m] holds word m of weight row i. */
__attribute__((target(AVX512_TARGET), always_inline)) static inline __m512i rows16(const void *p, int64_t s) {
    const char *c = (const char *)p;
    return _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(
        _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)c)), _mm_loadu_si128((const __m128i *)(c + s)), 1),
        _mm_loadu_si128((const __m128i *)(c + 2 * s)), 2), _mm_loadu_si128((const __m128i *)(c + 3 * s)), 3);
}

__attribute__((target(AVX512_TARGET), always_inline)) static inline void transpose16(
        __m512i y0, __m512i y1, __m512i y2, __m512i y3, __m512i out[4]) {
    __m512i t0 = _mm512_unpacklo_epi32(y0, y1), t1 = _mm512_unpackhi_epi32(y0, y1);
    __m512i t2 = _mm512_unpacklo_epi32(y2, y3), t3 = _mm512_unpackhi_epi32(y2, y3);
    out[0] = _mm512_unpacklo_epi64(t0, t2); out[1] = _mm512_unpackhi_epi64(t0, t2);
    out[2] = _mm512_unpacklo_epi64(t1, t3); out[3] = _mm512_unpackhi_epi64(t1, t3);
}

/* Lanes back to rows: acc[16 t + 2i] = se[t] lane i, acc[16 t + 2i + 1] = so[t] lane i. */
__attribute__((target(AVX512_TARGET), always_inline)) static inline void store16xt(
        int64_t *acc, const __m512i *se, const __m512i *so, int64_t T) {
    const __m512i lo_idx = _mm512_setr_epi64(0, 8, 1, 9, 2, 10, 3, 11), hi_idx = _mm512_setr_epi64(4, 12, 5, 13, 6, 14, 7, 15);
#pragma GCC unroll 8
    for (int64_t t = 0; t < T; t++) {
        _mm512_storeu_si512(acc + 16 * t, _mm512_permutex2var_epi64(se[t], lo_idx, so[t]));
        _mm512_storeu_si512(acc + 16 * t + 8, _mm512_permutex2var_epi64(se[t], hi_idx, so[t]));
    }
}

__attribute__((target(AVX512_TARGET), always_inline)) static inline void dot16xt_q4_1_body(
        const blk_q4_1 *w, int64_t nb, int64_t T, const int8_t *xq, const int32_t *a, const int32_t *as2, int64_t k,
        int64_t *acc, __m512i *pk, int mode) {
    const __m512i m4 = _mm512_set1_epi8(15);
    /* byte offsets of rows 2i and 2i + 1 (int32: a 16-row group of one matrix is far below 2 GiB) */
    const __m256i stride = _mm256_set1_epi32((int32_t)(nb * (int64_t)sizeof(blk_q4_1)));
    const __m256i off_e = _mm256_mullo_epi32(_mm512_castsi512_si256(ROWS16_EVEN), stride);
    const __m256i off_o = _mm256_mullo_epi32(_mm512_castsi512_si256(ROWS16_ODD), stride);
    __m512i se[TMAX], so[TMAX];
#pragma GCC unroll 8
    for (int64_t t = 0; t < T; t++) se[t] = so[t] = _mm512_setzero_si512();
    const int64_t four_rows = 4 * nb * (int64_t)sizeof(blk_q4_1);
    for (int64_t b = 0; b < nb; b++) {
        __m512i c0, c1, c2, c3, c4, c5, c6, c7, dv, dodd, mv, modd;
        if (mode == PK_LOAD) {
            const __m512i *p = pk + PK_STRIDE * b;
            c0 = p[0]; c1 = p[1]; c2 = p[2]; c3 = p[3]; c4 = p[4]; c5 = p[5]; c6 = p[6]; c7 = p[7];
            dv = p[8]; dodd = p[9]; mv = p[10]; modd = p[11];
        } else {
            __m512i l[4];
            transpose16(rows16(w[b].qs, four_rows), rows16(w[nb + b].qs, four_rows),
                        rows16(w[2 * nb + b].qs, four_rows), rows16(w[3 * nb + b].qs, four_rows), l);
            c0 = _mm512_and_si512(l[0], m4); c4 = _mm512_and_si512(_mm512_srli_epi16(l[0], 4), m4);
            c1 = _mm512_and_si512(l[1], m4); c5 = _mm512_and_si512(_mm512_srli_epi16(l[1], 4), m4);
            c2 = _mm512_and_si512(l[2], m4); c6 = _mm512_and_si512(_mm512_srli_epi16(l[2], 4), m4);
            c3 = _mm512_and_si512(l[3], m4); c7 = _mm512_and_si512(_mm512_srli_epi16(l[3], 4), m4);
            /* qword lane i: (D, M) of row 2i (dv) and of row 2i + 1 (dodd); mul_epi32 reads the low dword */
            dv = _mm512_i32gather_epi64(off_e, (const void *)(w + b), 1);
            dodd = _mm512_i32gather_epi64(off_o, (const void *)(w + b), 1);
            mv = _mm512_srli_epi64(dv, 32); modd = _mm512_srli_epi64(dodd, 32);
            if (mode == PK_STORE) {
                __m512i *p = pk + PK_STRIDE * b;
                p[0] = c0; p[1] = c1; p[2] = c2; p[3] = c3; p[4] = c4; p[5] = c5; p[6] = c6; p[7] = c7;
                p[8] = dv; p[9] = dodd; p[10] = mv; p[11] = modd;
            }
        }
#pragma GCC unroll 8
        for (int64_t t = 0; t < T; t++) {
            const int32_t *x = (const int32_t *)(xq + t * k + b * BLOCK);
            __m512i v = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c0, _mm512_set1_epi32(x[0]));
            v = _mm512_dpbusd_epi32(v, c1, _mm512_set1_epi32(x[1]));
            v = _mm512_dpbusd_epi32(v, c2, _mm512_set1_epi32(x[2]));
            v = _mm512_dpbusd_epi32(v, c3, _mm512_set1_epi32(x[3]));
            v = _mm512_dpbusd_epi32(v, c4, _mm512_set1_epi32(x[4]));
            v = _mm512_dpbusd_epi32(v, c5, _mm512_set1_epi32(x[5]));
            v = _mm512_dpbusd_epi32(v, c6, _mm512_set1_epi32(x[6]));
            v = _mm512_dpbusd_epi32(v, c7, _mm512_set1_epi32(x[7]));
            v = _mm512_mullo_epi32(v, _mm512_set1_epi32(a[t * nb + b]));   /* |a S1| < 2^31 */
            const __m512i s2 = _mm512_set1_epi64(as2[t * nb + b]);
            /* the odd rows' a S1 to the low dwords by a shuffle (port 5), not a shift (port 0) */
            se[t] = _mm512_add_epi64(se[t], _mm512_add_epi64(_mm512_mul_epi32(v, dv), _mm512_mul_epi32(mv, s2)));
            so[t] = _mm512_add_epi64(so[t], _mm512_add_epi64(_mm512_mul_epi32(_mm512_shuffle_epi32(v, _MM_PERM_DDBB), dodd),
                                                             _mm512_mul_epi32(modd, s2)));
        }
    }
    store16xt(acc, se, so, T);
}

/* A 16-row kernel's entry: its body inlined once per (T == TMAX or not, mode), so that the
   constant T unrolls the loop over rows and keeps the accumulators in registers, and the
   constant mode drops the unpacking or the keeping it does not do. (A pass of more than TMAX
   rows stores on its first TMAX rows, so a short T never stores.) SCALES is the body's per-row
   scale array: as2 for Q4_1, s2 for Q8_0. */
#define DEF_DOT16XT(NAME, BODY, BLK)                                                                              \
    __attribute__((target(AVX512_TARGET))) static void NAME(const BLK *w, int64_t nb, int64_t T, const int8_t *xq,  \
                                                            const int32_t *a, const int32_t *scales, int64_t k,    \
                                                            int64_t *acc, __m512i *pk, int mode) {                 \
        if (T == TMAX) {                                                                                         \
            if (mode == PK_LOAD) BODY(w, nb, TMAX, xq, a, scales, k, acc, pk, PK_LOAD);                          \
            else if (mode == PK_STORE) BODY(w, nb, TMAX, xq, a, scales, k, acc, pk, PK_STORE);                   \
            else BODY(w, nb, TMAX, xq, a, scales, k, acc, pk, PK_NONE);                                          \
        } else {                                                                                                 \
            if (mode == PK_LOAD) BODY(w, nb, T, xq, a, scales, k, acc, pk, PK_LOAD);                             \
            else BODY(w, nb, T, xq, a, scales, k, acc, pk, PK_NONE);                                             \
        }                                                                                                        \
    }

DEF_DOT16XT(dot16xt_q4_1_avx512, dot16xt_q4_1_body, blk_q4_1)

/* Q8_0, sixteen rows, AVX-512 VNNI: the LM head's kernel (every decoding row pays for the whole
   vocabulary; it was the 8-row AVX-VNNI kernel, at half the width). Each 128-bit lane L of y_j
   holds row j + 4L's code bytes 16h..16h+15 (h = 0, 1); the in-lane unpacks of dot16xt_q4_1 give
   c_{4h+m} whose int32 lane i is row i's codes 16h + 4m..+3. dpbusd takes the codes + 128
   (unsigned) against x from a start of -128 S2, so it ends at S1 exactly (|S1| < 2^19); then
   p = S1 D on int64 lanes (|p| < 2^50) and p a by vpmullq, the low 64 bits of the product: exact,
   the true value being below 2^62 (the load-time bound), as in dot8xt_q8_0_vnni's split product.
   The scales by one gather, the body inlined for T = TMAX, as dot16xt_q4_1.
   acc[16 t + r]: dot_q8_0_scalar of weight row r and activation row t. */
__attribute__((target(AVX512_TARGET), always_inline)) static inline void dot16xt_q8_0_body(
        const blk_q8_0 *w, int64_t nb, int64_t T, const int8_t *xq, const int32_t *a, const int32_t *s2, int64_t k,
        int64_t *acc, __m512i *pk, int mode) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const __m512i off = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int32_t)(nb * (int64_t)sizeof(blk_q8_0))));
    __m512i se[TMAX], so[TMAX];
#pragma GCC unroll 8
    for (int64_t t = 0; t < T; t++) se[t] = so[t] = _mm512_setzero_si512();
    const int64_t four_rows = 4 * nb * (int64_t)sizeof(blk_q8_0);
    for (int64_t b = 0; b < nb; b++) {
        __m512i c[8], dv, dodd;
        if (mode == PK_LOAD) {
            const __m512i *p = pk + PK_STRIDE * b;
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) c[i] = p[i];
            dv = p[8];
            dodd = p[9];
        } else {
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                transpose16(rows16(w[b].qs + 16 * h, four_rows), rows16(w[nb + b].qs + 16 * h, four_rows),
                            rows16(w[2 * nb + b].qs + 16 * h, four_rows), rows16(w[3 * nb + b].qs + 16 * h, four_rows),
                            c + 4 * h);
#pragma GCC unroll 4
                for (int m = 0; m < 4; m++) c[4 * h + m] = _mm512_xor_si512(c[4 * h + m], flip);
            }
            dv = _mm512_i32gather_epi32(off, (const void *)(w + b), 1);
            dodd = _mm512_srli_epi64(dv, 32);
            if (mode == PK_STORE) {
                __m512i *p = pk + PK_STRIDE * b;
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++) p[i] = c[i];
                p[8] = dv;
                p[9] = dodd;
            }
        }
#pragma GCC unroll 8
        for (int64_t t = 0; t < T; t++) {
            const int32_t *x = (const int32_t *)(xq + t * k + b * BLOCK);
            __m512i v = _mm512_dpbusd_epi32(_mm512_set1_epi32(-128 * s2[t * nb + b]), c[0], _mm512_set1_epi32(x[0]));
            v = _mm512_dpbusd_epi32(v, c[1], _mm512_set1_epi32(x[1]));
            v = _mm512_dpbusd_epi32(v, c[2], _mm512_set1_epi32(x[2]));
            v = _mm512_dpbusd_epi32(v, c[3], _mm512_set1_epi32(x[3]));
            v = _mm512_dpbusd_epi32(v, c[4], _mm512_set1_epi32(x[4]));
            v = _mm512_dpbusd_epi32(v, c[5], _mm512_set1_epi32(x[5]));
            v = _mm512_dpbusd_epi32(v, c[6], _mm512_set1_epi32(x[6]));
            v = _mm512_dpbusd_epi32(v, c[7], _mm512_set1_epi32(x[7]));
            const __m512i av = _mm512_set1_epi64(a[t * nb + b]);
            __m512i pe = _mm512_mul_epi32(v, dv), po = _mm512_mul_epi32(_mm512_shuffle_epi32(v, _MM_PERM_DDBB), dodd);
            se[t] = _mm512_add_epi64(se[t], _mm512_mullo_epi64(pe, av));
            so[t] = _mm512_add_epi64(so[t], _mm512_mullo_epi64(po, av));
        }
    }
    store16xt(acc, se, so, T);
}

DEF_DOT16XT(dot16xt_q8_0_avx512, dot16xt_q8_0_body, blk_q8_0)

typedef void (*dot4xt_q4_fn)(const blk_q4_1 *, int64_t, int64_t, const int8_t *, const int32_t *, const int32_t *,
                             const int32_t *, int64_t, int64_t *);
typedef void (*dot4xt_q8_fn)(const blk_q8_0 *, int64_t, int64_t, const int8_t *, const int32_t *, const int32_t *,
                             const int32_t *, int64_t, int64_t *);
static dot4xt_q4_fn dot4xt_q4_1 = dot4xt_q4_1_avx2;
static dot4xt_q8_fn dot4xt_q8_0 = dot4xt_q8_0_avx2;

static int use_avx2 = -1;

static int use_vnni = -1;

static int use_avx512 = -1;     /* the 16-row Q4_1 and Q8_0 kernels (AVX-512 VNNI, DQ) */

static inline int have_avx2(void) {
    if (use_avx2 < 0) {
        __builtin_cpu_init();
        use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        if (use_vnni < 0) use_vnni = use_avx2 && __builtin_cpu_supports("avxvnni");
        if (use_avx512 < 0)
            use_avx512 = use_vnni && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                         __builtin_cpu_supports("avx512dq");
        dot4xt_q4_1 = use_vnni ? dot4xt_q4_1_vnni : dot4xt_q4_1_avx2;
        dot4xt_q8_0 = use_vnni ? dot4xt_q8_0_vnni : dot4xt_q8_0_avx2;
    }
    return use_avx2;
}

/* Which kernels run: 0 scalar, 1 AVX2, 2 AVX2 + AVX-VNNI, 3 and AVX-512 VNNI, each where the CPU
   has it (tests compare all); returns the level in use. */
int oi_set_simd(int level) {
    use_avx2 = level >= 1 ? -1 : 0;
    use_vnni = level >= 2 ? -1 : 0;
    use_avx512 = level >= 3 ? -1 : 0;
    if (level == 0) return 0;
    have_avx2();
    return use_avx2 + (use_vnni > 0) + (use_avx512 > 0);
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

/* requant_shifted of 4 accumulators of one activation row (its d) for weight rows c..c+3, AVX2:
   requant_shifted's int64 split path lane by lane (e = shift - d in [32, 62], mult < 2^30), with
   the arithmetic shift by a lane's own count as a logical one between two complements
   (floor(x / 2^n) = ~(~x >> n) for x < 0). Returns 0, writing nothing, when a lane is outside
   that case (the caller takes the scalar rule). */
__attribute__((target("avx2,fma"))) static inline int requant4_avx2(const int64_t *acc, int64_t d, int64_t mult,
                                                                    const int64_t *shift, const int64_t *lo,
                                                                    const int64_t *hi, int64_t *out) {
    const __m256i e = _mm256_sub_epi64(_mm256_loadu_si256((const __m256i *)shift), _mm256_set1_epi64x(d));
    const __m256i bad = _mm256_or_si256(_mm256_cmpgt_epi64(_mm256_set1_epi64x(32), e),
                                        _mm256_cmpgt_epi64(e, _mm256_set1_epi64x(62)));
    if (!_mm256_testz_si256(bad, bad)) return 0;
    const __m256i a = _mm256_loadu_si256((const __m256i *)acc), mv = _mm256_set1_epi64x(mult);
    /* A mult: the high word, sign-extended by mul_epi32; B mult: the low word, unsigned */
    __m256i ahi = _mm256_mul_epi32(_mm256_srli_epi64(a, 32), mv);
    __m256i low = _mm256_add_epi64(_mm256_mul_epu32(a, mv),
                                   _mm256_sllv_epi64(_mm256_set1_epi64x(1), _mm256_sub_epi64(e, _mm256_set1_epi64x(1))));
    __m256i sum = _mm256_add_epi64(ahi, _mm256_srli_epi64(low, 32));
    __m256i neg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), sum);
    __m256i r = _mm256_xor_si256(_mm256_srlv_epi64(_mm256_xor_si256(sum, neg),
                                                   _mm256_sub_epi64(e, _mm256_set1_epi64x(32))), neg);
    const __m256i lov = _mm256_loadu_si256((const __m256i *)lo), hiv = _mm256_loadu_si256((const __m256i *)hi);
    r = _mm256_blendv_epi8(r, lov, _mm256_cmpgt_epi64(lov, r));
    r = _mm256_blendv_epi8(r, hiv, _mm256_cmpgt_epi64(r, hiv));
    _mm256_storeu_si256((__m256i *)out, r);
    return 1;
}

/* requant4_avx2 for 8 accumulators at once in AVX-512 (64-bit lanes: shifts by a lane's count,
   signed compares into masks, min/max for the clamp): the same int64 split path, the same bits.
   Returns 0, writing nothing, when a lane is outside e in [32, 62]. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static inline int requant8_avx512(
        const int64_t *acc, int64_t d, int64_t mult, const int64_t *shift, const int64_t *lo, const int64_t *hi,
        int64_t *out) {
    const __m512i e = _mm512_sub_epi64(_mm512_loadu_si512(shift), _mm512_set1_epi64(d));
    if (_mm512_cmplt_epi64_mask(e, _mm512_set1_epi64(32)) | _mm512_cmpgt_epi64_mask(e, _mm512_set1_epi64(62)))
        return 0;
    const __m512i a = _mm512_loadu_si512(acc), mv = _mm512_set1_epi64(mult);
    __m512i ahi = _mm512_mul_epi32(_mm512_srai_epi64(a, 32), mv);
    __m512i low = _mm512_add_epi64(_mm512_mul_epu32(a, mv),
                                   _mm512_sllv_epi64(_mm512_set1_epi64(1), _mm512_sub_epi64(e, _mm512_set1_epi64(1))));
    __m512i sum = _mm512_add_epi64(ahi, _mm512_srli_epi64(low, 32));
    __m512i r = _mm512_srav_epi64(sum, _mm512_sub_epi64(e, _mm512_set1_epi64(32)));
    r = _mm512_min_epi64(_mm512_max_epi64(r, _mm512_loadu_si512(lo)), _mm512_loadu_si512(hi));
    _mm512_storeu_si512(out, r);
    return 1;
}

/* out[t, n + r] for r < width of a tile's accumulators acc[width t + r] (t < tn rows from t0) */
static inline void dense_store(const dense_job *j, const int64_t *acc, int width, int64_t t0, int64_t tn, int64_t n) {
    const oi_qmat *w = j->w;
    int64_t c = j->col0 + n;
    const int64_t *shift = w->shift + c, *lo = w->lo + c, *hi = w->hi + c;
    int vec = use_avx2 > 0 && (uint64_t)w->mult < (1ULL << 30);
    for (int64_t t = 0; t < tn; t++) {
        int64_t *out = j->out + (t0 + t) * j->ldo + n;
        const int64_t *a = acc + width * t;
        if (j->fold_only_acc) {
            memcpy(out, a, sizeof(int64_t) * width);
            continue;
        }
        int64_t d = j->d[t0 + t];
        int r0 = 0;
        if (vec && use_avx512 > 0)
            for (; r0 + 8 <= width && requant8_avx512(a + r0, d, w->mult, shift + r0, lo + r0, hi + r0, out + r0);)
                r0 += 8;
        for (int r = r0; r < width; r += 4)
            if (!(vec && requant4_avx2(a + r, d, w->mult, shift + r, lo + r, hi + r, out + r)))
                for (int i = r; i < r + 4; i++) out[i] = requant_shifted(a[i], d, w->mult, shift[i], lo[i], hi[i]);
    }
}

static void dense_task(void *p, int64_t start, int64_t end) {
    dense_job *j = (dense_job *)p;
    const oi_qmat *w = j->w;
    int64_t nb = w->k / BLOCK;
    int64_t n = start;
    if (use_avx512 > 0 && n + 16 <= end) {
        /* the unpacked blocks of one 16-row group, kept between its passes when there are several */
        __m512i *pk = j->t > TMAX ? aligned_alloc(64, sizeof(__m512i) * PK_STRIDE * nb) : NULL;
        for (; n + 16 <= end; n += 16) {
            int64_t c = j->col0 + n, acc[16 * TMAX];
            for (int64_t t0 = 0; t0 < j->t; t0 += TMAX) {
                int64_t tn = j->t - t0 < TMAX ? j->t - t0 : TMAX;
                int mode = pk == NULL ? PK_NONE : (t0 == 0 ? PK_STORE : PK_LOAD);
                if (w->fmt == 0)
                    dot16xt_q4_1_avx512((const blk_q4_1 *)w->data + c * nb, nb, tn, j->xq + t0 * w->k,
                                        j->a + t0 * nb, j->as2 + t0 * nb, w->k, acc, pk, mode);
                else
                    dot16xt_q8_0_avx512((const blk_q8_0 *)w->data + c * nb, nb, tn, j->xq + t0 * w->k,
                                        j->a + t0 * nb, j->s2 + t0 * nb, w->k, acc, pk, mode);
                dense_store(j, acc, 16, t0, tn, n);
            }
        }
        free(pk);
    }
    if (use_vnni > 0)
        for (; n + 8 <= end; n += 8) {
            int64_t c = j->col0 + n, acc[8 * TMAX];
            for (int64_t t0 = 0; t0 < j->t; t0 += TMAX) {
                int64_t tn = j->t - t0 < TMAX ? j->t - t0 : TMAX;
                if (w->fmt == 0)
                    dot8xt_q4_1_vnni((const blk_q4_1 *)w->data + c * nb, nb, tn, j->xq + t0 * w->k, j->a + t0 * nb,
                                     j->as2 + t0 * nb, w->k, acc);
                else
                    dot8xt_q8_0_vnni((const blk_q8_0 *)w->data + c * nb, nb, tn, j->xq + t0 * w->k, j->a + t0 * nb,
                                     j->s2 + t0 * nb, w->k, acc);
                dense_store(j, acc, 8, t0, tn, n);
            }
        }
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
                dense_store(j, acc, 4, t0, tn, n);
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

/* quantize_row in AVX-512, 32 values (one block) at a time: xs by an arithmetic shift of int64
   lanes, narrowed to int32 (|xs| <= 2^15); q = floor((254 xs + a) / 2a) from a float32 product
   with the reciprocal of 2a (the numerator below 2^24, exact as a float; the product within 2^-15
   of the quotient, so its floor is the true one or one off either way) and two integer checks
   (q 2a > num: q - 1; (q + 1) 2a <= num: q + 1). The same bytes and sums as quantize_row. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static int quantize_row_avx512(
        const int64_t *x, int64_t k, int8_t *xq, int32_t *a, int32_t *as2, int32_t *s2out) {
    /* max |x| in unsigned lanes (|INT64_MIN| = 2^63 fits), 8 at a time */
    __m512i mx = _mm512_setzero_si512();
    int64_t i0 = 0;
    for (; i0 + 8 <= k; i0 += 8) mx = _mm512_max_epu64(mx, _mm512_abs_epi64(_mm512_loadu_si512(x + i0)));
    uint64_t m = _mm512_reduce_max_epu64(mx);
    for (; i0 < k; i0++) {
        uint64_t v = x[i0] < 0 ? (uint64_t)(-x[i0]) : (uint64_t)x[i0];
        if (v > m) m = v;
    }
    int d = bit_length(m) - ROW_BITS;
    if (d < 0) d = 0;
    const __m512i half = _mm512_set1_epi64(d > 0 ? (1LL << (d - 1)) : 0);
    const __m128i cnt = _mm_cvtsi64_si128(d);
    for (int64_t b = 0; b < k / BLOCK; b++) {
        const int64_t *xb = x + b * BLOCK;
        __m256i p0 = _mm512_cvtepi64_epi32(_mm512_sra_epi64(_mm512_add_epi64(_mm512_loadu_si512(xb), half), cnt));
        __m256i p1 = _mm512_cvtepi64_epi32(_mm512_sra_epi64(_mm512_add_epi64(_mm512_loadu_si512(xb + 8), half), cnt));
        __m256i p2 = _mm512_cvtepi64_epi32(_mm512_sra_epi64(_mm512_add_epi64(_mm512_loadu_si512(xb + 16), half), cnt));
        __m256i p3 = _mm512_cvtepi64_epi32(_mm512_sra_epi64(_mm512_add_epi64(_mm512_loadu_si512(xb + 24), half), cnt));
        __m512i lo = _mm512_inserti64x4(_mm512_castsi256_si512(p0), p1, 1);
        __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(p2), p3, 1);
        int32_t amax = _mm512_reduce_max_epi32(_mm512_max_epi32(_mm512_abs_epi32(lo), _mm512_abs_epi32(hi)));
        a[b] = amax;
        if (amax == 0) {
            memset(xq + b * BLOCK, 0, BLOCK);
            as2[b] = 0;
            s2out[b] = 0;
            continue;
        }
        const __m512i av = _mm512_set1_epi32(amax), den = _mm512_set1_epi32(2 * amax), c254 = _mm512_set1_epi32(254);
        /* times a float reciprocal, not a vector division (two per block were a third of this
           function): the product is within a few ulps of the quotient (|q| < 128, so within 2^-15),
           its floor the true one or one off either way, and both checks below correct it */
        const __m512 rcp = _mm512_set1_ps(1.0f / (float)(2 * amax));
        __m512i q2[2];
        for (int h = 0; h < 2; h++) {
            __m512i num = _mm512_add_epi32(_mm512_mullo_epi32(h ? hi : lo, c254), av);
            __m512 f = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(num), rcp),
                                            _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
            __m512i q = _mm512_cvtps_epi32(f);
            __mmask16 over = _mm512_cmpgt_epi32_mask(_mm512_mullo_epi32(q, den), num);
            q = _mm512_mask_sub_epi32(q, over, q, _mm512_set1_epi32(1));
            __mmask16 under = _mm512_cmple_epi32_mask(_mm512_mullo_epi32(_mm512_add_epi32(q, _mm512_set1_epi32(1)), den), num);
            q2[h] = _mm512_mask_add_epi32(q, under, q, _mm512_set1_epi32(1));
        }
        _mm_storeu_si128((__m128i *)(xq + b * BLOCK), _mm512_cvtepi32_epi8(q2[0]));
        _mm_storeu_si128((__m128i *)(xq + b * BLOCK + 16), _mm512_cvtepi32_epi8(q2[1]));
        int32_t s2 = _mm512_reduce_add_epi32(_mm512_add_epi32(q2[0], q2[1]));
        as2[b] = amax * s2;
        s2out[b] = s2;
    }
    return d;
}

static void quant_task(void *p, int64_t start, int64_t end) {
    quant_job *j = (quant_job *)p;
    int64_t k = j->k, nb = k / BLOCK;
    act_buf *b = j->buf;
    for (int64_t r = start; r < end; r++)
        b->d[r] = use_avx512 > 0 ? quantize_row_avx512(j->x + r * k, k, b->xq + r * k, b->a + r * nb, b->as2 + r * nb,
                                                       b->s2 + r * nb)
                                 : quantize_row(j->x + r * k, k, b->xq + r * k, b->a + r * nb, b->as2 + r * nb,
                                                b->s2 + r * nb);
}

/* dense_task over groups of 8 output rows (the 8-row kernels' unit; ldo is the row count) */
static void dense_group_task(void *p, int64_t start, int64_t end) {
    dense_job *j = (dense_job *)p;
    int64_t e = 8 * end < j->ldo ? 8 * end : j->ldo;
    dense_task(p, 8 * start, e);
}

static void dense_rows(const oi_qmat *w, const int64_t *x, int64_t t, int64_t *out, int64_t rows, int64_t col0,
                       act_buf *buf, int raw) {
    act_reserve(buf, t, w->k);
    quant_job q = {x, w->k, buf};
    parallel_for(quant_task, &q, t, 2);                 /* rows of activations, quantised in parallel */
    dense_job j = {w, t, buf->xq, buf->a, buf->as2, buf->s2, buf->d, out, rows, col0, raw};
    parallel_for(dense_group_task, &j, (rows + 7) / 8, 2);
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
    /* round_div(x g, den) = floor((2 x g + den) / 2 den) from a double quotient, truncated and then
       corrected by integer comparisons (exact for any value whose numerator fits int64, as the
       division it replaces: an integer division per element was most of this function's time) */
    int64_t den2 = 2 * den;
    double inv = 1.0 / (double)den2;
    for (int64_t i = 0; i < n; i++) {
        int64_t num = 2 * x[i] * gain[i] + den;
        int64_t q = (int64_t)((double)num * inv);
        q -= q * den2 > num;              /* truncation toward zero: one too high for a negative quotient */
        q += (q + 1) * den2 <= num;       /* branch-free: which way it went is a coin toss per element */
        while (q * den2 > num) q--;       /* far quotients (|num| beyond 2^53) only */
        while ((q + 1) * den2 <= num) q++;
        y[i] = clamp(q, lo, hi);
    }
}

/* rms_norm_row in AVX-512, 8 elements at a time, the same integers: |x >> d| < 2^26, so its square
   is one mul_epi32; y = floor((2 x g + den) / 2 den) from a double quotient floored, then one check
   each way, when every numerator of the row is below 2^52 in magnitude (exact as a double, the
   quotient then within one of the floor); a row with a larger one takes rms_norm_row. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void rms_norm_row_avx512(
        const int64_t *x, int64_t n, const int64_t *gain, int64_t eps, int64_t lo, int64_t hi, int64_t *y) {
    if (n % 8) {
        rms_norm_row(x, n, gain, eps, lo, hi, y);
        return;
    }
    __m512i mx = _mm512_setzero_si512();
    for (int64_t i = 0; i < n; i += 8) mx = _mm512_max_epu64(mx, _mm512_abs_epi64(_mm512_loadu_si512(x + i)));
    int d = bit_length(_mm512_reduce_max_epu64(mx)) - SQUARE_BITS;
    if (d < 0) d = 0;
    const __m128i cnt = _mm_cvtsi64_si128(d);
    __m512i acc = _mm512_setzero_si512();
    for (int64_t i = 0; i < n; i += 8) {
        __m512i v = _mm512_sra_epi64(_mm512_loadu_si512(x + i), cnt);
        acc = _mm512_add_epi64(acc, _mm512_mul_epi32(v, v));
    }
    int64_t ss = _mm512_reduce_add_epi64(acc);
    int64_t ms = round_div(ss, n) + (eps >> (2 * d));
    int64_t rms = isqrt64(ms);
    if (rms < 1) rms = 1;
    int64_t den = rms << (NORM_BITS + d), den2 = 2 * den;
    const __m512i dv = _mm512_set1_epi64(den), d2 = _mm512_set1_epi64(den2), one = _mm512_set1_epi64(1);
    const __m512i big = _mm512_set1_epi64(1LL << 52), lov = _mm512_set1_epi64(lo), hiv = _mm512_set1_epi64(hi);
    const __m512d inv = _mm512_set1_pd(1.0 / (double)den2);
    for (int64_t i = 0; i < n; i += 8) {
        __m512i num = _mm512_add_epi64(_mm512_slli_epi64(_mm512_mullo_epi64(_mm512_loadu_si512(x + i),
                                                                           _mm512_loadu_si512(gain + i)), 1), dv);
        if (_mm512_cmpge_epu64_mask(_mm512_abs_epi64(num), big)) {
            rms_norm_row(x, n, gain, eps, lo, hi, y);
            return;
        }
        __m512d f = _mm512_roundscale_pd(_mm512_mul_pd(_mm512_cvtepi64_pd(num), inv),
                                         _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        __m512i q = _mm512_cvtpd_epi64(f);
        q = _mm512_mask_sub_epi64(q, _mm512_cmpgt_epi64_mask(_mm512_mullo_epi64(q, d2), num), q, one);
        q = _mm512_mask_add_epi64(q, _mm512_cmple_epi64_mask(_mm512_mullo_epi64(_mm512_add_epi64(q, one), d2), num),
                                  q, one);
        _mm512_storeu_si512(y + i, _mm512_min_epi64(_mm512_max_epi64(q, lov), hiv));
    }
}

static inline void rms_norm_any(const int64_t *x, int64_t n, const int64_t *gain, int64_t eps, int64_t lo, int64_t hi,
                                int64_t *y) {
    if (use_avx512 > 0) rms_norm_row_avx512(x, n, gain, eps, lo, hi, y);
    else rms_norm_row(x, n, gain, eps, lo, hi, y);
}

int oi_rms_norm(const int64_t *x, int64_t t, int64_t n, const int64_t *gain, int64_t eps, int64_t lo, int64_t hi,
                int64_t *y) {
    have_avx2();
    for (int64_t r = 0; r < t; r++) rms_norm_any(x + r * n, n, gain, eps, lo, hi, y + r * n);
    return 0;
}

int64_t oi_exp_neg(int64_t u) { return exp_neg(u); }

int64_t oi_exp_neg_tab(int64_t u) {   /* the table path (tests compare it with exp_neg over [0, 2^20]) */
    pthread_once(&exp_once, exp_tab_init);
    return exp_neg_tab(u);
}

/* ------------------------------------------------------------------ the llama-family forward step */

typedef struct {
    const oi_model *m;
    oi_seq *seqs;
    const int64_t *row_seq, *row_pos;   /* per row: its sequence and position */
    const int64_t *qkv;                 /* [T, (nh + 2 nkv) D] after RoPE */
    int64_t *ctx;                       /* [T, nh D] */
    int64_t layer;
    int64_t width;                      /* qkv row width */
} attn_job;

/* AVX2 attention pieces, exact:
   - scores: q and k are int16 (|q| <= 32767, checked per head; k is the int16 cache): madd's pair
     sums are exact int32, widened to int64 before they are added (64 products reach 2^36);
   - p . v: probabilities p_t in [0, 32767] and v int16, two positions per madd (their products
     interleaved), summed in int32 lanes. int32 sums wrap modulo 2^32, which is exact for a total
     within int32: |sum_t p_t v_t| <= (sum_t p_t) 2^15 <= (32767 + n / 2) 2^15 < 2^31 for
     n < 65,534 positions (each p_t is a rounded e_t 32767 / sum e, so sum_t p_t <= 32767 + n / 2);
     longer rows take the scalar loop. */
__attribute__((target("avx2,fma"))) static void attn_scores_avx2(const int16_t *q, const int16_t *kc, int64_t n,
                                                                 int64_t D, int64_t *s) {
    for (int64_t t = 0; t < n; t++) {
        const int16_t *kt = kc + t * D;
        __m256i acc = _mm256_setzero_si256();
        for (int64_t i = 0; i < D; i += 16) {
            __m256i p = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)(q + i)),
                                          _mm256_loadu_si256((const __m256i *)(kt + i)));
            acc = _mm256_add_epi64(acc, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(p)));
            acc = _mm256_add_epi64(acc, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(p, 1)));
        }
        s[t] = hsum64(acc);
    }
}

#define ATTN_DMAX 256
__attribute__((target("avx2,fma"))) static void attn_pv_avx2(const int32_t *pr, const int16_t *vc, int64_t n,
                                                             int64_t D, int64_t *out) {
    __m256i lo[ATTN_DMAX / 16], hi[ATTN_DMAX / 16];
    int64_t chunks = D / 16;
    for (int64_t c = 0; c < chunks; c++) lo[c] = hi[c] = _mm256_setzero_si256();
    int64_t t = 0;
    for (; t + 2 <= n; t += 2) {
        if (!(pr[t] | pr[t + 1])) continue;
        /* lanes (p_t, p_t+1) against (v_t[i], v_t+1[i]): one int32 product sum per dimension i */
        const __m256i pp = _mm256_set1_epi32((int32_t)((uint32_t)pr[t] | ((uint32_t)pr[t + 1] << 16)));
        const int16_t *v0 = vc + t * D, *v1 = v0 + D;
        for (int64_t c = 0; c < chunks; c++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(v0 + 16 * c));
            __m256i b = _mm256_loadu_si256((const __m256i *)(v1 + 16 * c));
            lo[c] = _mm256_add_epi32(lo[c], _mm256_madd_epi16(_mm256_unpacklo_epi16(a, b), pp));
            hi[c] = _mm256_add_epi32(hi[c], _mm256_madd_epi16(_mm256_unpackhi_epi16(a, b), pp));
        }
    }
    if (t < n && pr[t]) {
        const __m256i pp = _mm256_set1_epi32(pr[t]);
        const int16_t *v0 = vc + t * D;
        for (int64_t c = 0; c < chunks; c++) {
            __m256i a = _mm256_loadu_si256((const __m256i *)(v0 + 16 * c)), z = _mm256_setzero_si256();
            lo[c] = _mm256_add_epi32(lo[c], _mm256_madd_epi16(_mm256_unpacklo_epi16(a, z), pp));
            hi[c] = _mm256_add_epi32(hi[c], _mm256_madd_epi16(_mm256_unpackhi_epi16(a, z), pp));
        }
    }
    /* unpacklo/hi work within 128-bit halves: lo holds dimensions 0-3 and 8-11 of a chunk, hi 4-7, 12-15 */
    for (int64_t c = 0; c < chunks; c++) {
        int32_t l[8], h[8];
        _mm256_storeu_si256((__m256i *)l, lo[c]);
        _mm256_storeu_si256((__m256i *)h, hi[c]);
        int64_t *o = out + 16 * c;
        for (int i = 0; i < 4; i++) {
            o[i] = l[i]; o[8 + i] = l[4 + i]; o[4 + i] = h[i]; o[12 + i] = h[4 + i];
        }
    }
}

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
    int32_t *pr = malloc(sizeof(int32_t) * (cap_max + 2));
    /* the SIMD path's conditions (otherwise the scalar loops below, the rules as written) */
    int simd = use_avx2 > 0 && D % 16 == 0 && D <= ATTN_DMAX && m->prob_one >= 0 && m->prob_one <= 32767;
    int fast_exp = m->score_mult == 1 && m->score_shift >= 1 && m->score_shift <= 40;
    for (int64_t it = start; it < end; it++) {
        int64_t r = it / nh, h = it % nh, g = h / group;
        const oi_seq *sq = &j->seqs[j->row_seq[r]];
        int64_t pos = j->row_pos[r], n = pos + 1;
        const int64_t *q = j->qkv + r * j->width + h * D;
        const int16_t *kc = sq->k + ((j->layer * nkv + g) * sq->cap) * D;
        const int16_t *vc = sq->v + ((j->layer * nkv + g) * sq->cap) * D;
        int16_t q16[ATTN_DMAX];
        int row_simd = simd && n < 65534;
        for (int64_t i = 0; row_simd && i < D; i++) {
            if (q[i] < -32767 || q[i] > 32767) row_simd = 0;
            else q16[i] = (int16_t)q[i];
        }
        int64_t top = INT64_MIN;
        if (row_simd) {
            attn_scores_avx2(q16, kc, n, D, s);
            for (int64_t t = 0; t < n; t++)
                if (s[t] > top) top = s[t];
        } else {
            for (int64_t t = 0; t < n; t++) {
                int64_t acc = 0;
                const int16_t *kt = kc + t * D;
                for (int64_t i = 0; i < D; i++) acc += q[i] * kt[i];
                s[t] = acc;
                if (acc > top) top = acc;
            }
        }
        int64_t sum = 0;
        if (fast_exp) {
            /* requant(top - s, 1, shift, 0, 2^20) with top - s in [0, 2^38): one shift and a clamp;
               exp_neg from its table (the same integers) */
            int64_t sh = m->score_shift, half = 1LL << (sh - 1);
            for (int64_t t = 0; t < n; t++) {
                int64_t diff = top - s[t];
                int64_t u = diff >= (1LL << 61) ? EXP_INPUT_MAX : (diff + half) >> sh;
                e[t] = exp_neg_tab(u > EXP_INPUT_MAX ? EXP_INPUT_MAX : u);
                sum += e[t];
            }
        } else {
            for (int64_t t = 0; t < n; t++) {
                e[t] = exp_neg(requant(top - s[t], m->score_mult, m->score_shift, 0, EXP_INPUT_MAX));
                sum += e[t];
            }
        }
        int64_t out[ATTN_DMAX];
        if (row_simd) {
            double inv = 1.0 / (2.0 * (double)sum);
            for (int64_t t = 0; t < n; t++) pr[t] = (int32_t)round_div_inv(e[t] * m->prob_one, sum, inv);
            attn_pv_avx2(pr, vc, n, D, out);
        } else {
            for (int64_t i = 0; i < D; i++) out[i] = 0;
            for (int64_t t = 0; t < n; t++) {
                int64_t pt = round_div(e[t] * m->prob_one, sum);
                if (!pt) continue;
                const int16_t *vt = vc + t * D;
                for (int64_t i = 0; i < D; i++) out[i] += pt * vt[i];
            }
        }
        int64_t *c = j->ctx + r * nh * D + h * D;
        for (int64_t i = 0; i < D; i++) c[i] = requant(out[i], m->ctx_mult, m->ctx_shift, m->ctx_lo, m->ctx_hi);
    }
    free(s);
    free(e);
    free(pr);
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
        rms_norm_any(j->x + r * j->n, j->n, j->gain, j->m->eps, j->m->norm_lo, j->m->norm_hi, j->y + r * j->n);
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
    pthread_once(&exp_once, exp_tab_init);
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
    const oi_qmat *E = m->embed;
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
            if (m->qkv_bias)   /* the clamp left room for it: |q| stays <= 23000 */
                for (int64_t i = 0; i < width; i++) row[i] += m->qkv_bias[l * width + i];
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
                    rms_norm_any(x + r * H, H, m->out_gain, m->eps, m->norm_lo, m->norm_hi, h + k * H);
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

/* ------------------------------------------------------------------ the committed sampler */

/* sampling.next_token's integer rules (opinfer/engine/sampling.py) for rows of int64 logits:
     w_i  = exp_neg(min(round_div((top - l_i) 1000, T << 8), 2^20))     (T = temperature_milli)
     tau  = the largest integer in [1, 2^16] with (sum_{w >= tau} w) << 16 >= top_p_q total
     kept = sum_{w >= tau} w
   oi_sample_rows writes each row's weights (int32), tau and kept; the caller draws
   r = keccak256(seed, step) mod kept (elements.draw) and oi_sample_pick_rows returns the first
   index whose running sum of the weights >= tau exceeds r. A logit with u >= EXP_TAB_N has weight
   exactly 0: (top - l) 1000 >= d EXP_TAB_N - d / 2 (d = T << 8, even) says so without the division. */
typedef struct {
    const int64_t *logits;
    int64_t v;
    const int64_t *temp, *top_p;
    int32_t *w;
    int64_t *tau, *kept;
} sample_job;

static __thread int32_t *sample_hist;   /* counts of each weight value in [0, 2^16], zero between rows */

static void sample_task(void *p, int64_t start, int64_t end) {
    sample_job *j = (sample_job *)p;
    int64_t V = j->v;
    for (int64_t r = start; r < end; r++) {
        const int64_t *l = j->logits + r * V;
        int32_t *w = j->w + r * V;
        int64_t T = j->temp[r], top_p = j->top_p[r];
        int64_t top = INT64_MIN;
        for (int64_t i = 0; i < V; i++)
            if (l[i] > top) top = l[i];
        int64_t d = T << 8, zero_from = d * EXP_TAB_N - d / 2;
        double inv = 1.0 / (2.0 * (double)d);
        int64_t total = 0, wmin = 1LL << 16;
        for (int64_t i = 0; i < V; i++) {
            int64_t diff = top - l[i];
            if (diff >= (1LL << 40) || diff * 1000 >= zero_from) {   /* zero_from < 2^32 */
                w[i] = 0;
                continue;
            }
            int64_t n = diff * 1000;
            int64_t u = round_div_inv(n, d, inv);
            int64_t wi = exp_neg_tab(u > EXP_INPUT_MAX ? EXP_INPUT_MAX : u);
            w[i] = (int32_t)wi;
            total += wi;
            if (wi > 0 && wi < wmin) wmin = wi;
        }
        int64_t tau = wmin;     /* top_p_q = 2^16 keeps every weight: tau is the smallest one */
        if (top_p < (1LL << 16)) {
            if (!sample_hist) sample_hist = calloc((1 << 16) + 1, sizeof(int32_t));
            for (int64_t i = 0; i < V; i++) sample_hist[w[i]]++;
            int64_t acc = 0;
            for (int64_t v = 1LL << 16; v >= 1; v--) {
                if (!sample_hist[v]) continue;
                acc += v * sample_hist[v];
                if ((acc << 16) >= top_p * total) {
                    tau = v;
                    break;
                }
            }
            for (int64_t i = 0; i < V; i++) sample_hist[w[i]] = 0;
        }
        int64_t kept = 0;
        for (int64_t i = 0; i < V; i++)
            if (w[i] >= tau) kept += w[i];
        j->tau[r] = tau;
        j->kept[r] = kept;
    }
}

/* rows [b, V] of logits (top - l < 2^40 or weight 0; 1 <= T <= 2000; 1 <= top_p <= 2^16) */
int oi_sample_rows(int64_t b, const int64_t *logits, int64_t V, const int64_t *temp, const int64_t *top_p,
                   int32_t *w, int64_t *tau, int64_t *kept) {
    pthread_once(&exp_once, exp_tab_init);
    for (int64_t r = 0; r < b; r++)
        if (temp[r] < 1 || temp[r] > 2000 || top_p[r] < 1 || top_p[r] > (1LL << 16)) return -1;
    sample_job j = {logits, V, temp, top_p, w, tau, kept};
    parallel_for(sample_task, &j, b, 1);
    return 0;
}

int oi_sample_pick_rows(int64_t b, const int32_t *w, int64_t V, const int64_t *tau, const int64_t *draw,
                        int64_t *out) {
    for (int64_t r = 0; r < b; r++) {
        const int32_t *wr = w + r * V;
        int64_t run = 0, pick = -1;
        for (int64_t i = 0; i < V; i++) {
            if (wr[i] < tau[r]) continue;
            run += wr[i];
            if (run > draw[r]) {
                pick = i;
                break;
            }
        }
        if (pick < 0) return -1;    /* draw >= kept */
        out[r] = pick;
    }
    return 0;
}

/* ------------------------------------------------------------------ int8 GEMM (MiniLM) */

/*
 * MiniLM's dense layers and attention are int8 x int8 (or int16 x int8) products with
 * exact int32/int64 sums (opinfer/engine/minilm.py states the rules in numpy). One kernel
 * does them all: out[t, n] = sum_k u[t, k] s[n, k] with u unsigned bytes (activations,
 * offset by +128 when signed: the offset is taken back as 128 colsum[n]) and s signed
 * bytes (weights), int32 sums (|sum| <= K 255 128 < 2^31 for K < 65,000). A 16-bit
 * activation is two byte planes, x = 256 hi + lo, two products over the same weights.
 * Weights are packed in panels of 16 output rows, 4 consecutive k per row:
 * p[n / 16][k / 4][16][4], so that one 32-byte load feeds eight int32 lanes with
 * AVX-VNNI's dpbusd (or its exact AVX2 emulation with madd, or the scalar loop).
 */
#define GM_MR 6     /* activation rows per micro-tile (rows are padded to a multiple) */
#define GM_NR 16    /* weight rows per panel */

__attribute__((target("avx2,fma,avxvnni"))) static inline __m256i dp_vnni(__m256i acc, __m256i u, __m256i s) {
    return _mm256_dpbusd_avx_epi32(acc, u, s);
}

/* dpbusd in AVX2: even and odd bytes widened to 16 bits (u8 in [0, 255], s8 sign-extended),
   madd sums each pair into an int32 lane: the same four products per lane, exactly */
__attribute__((target("avx2,fma"))) static inline __m256i dp_avx2(__m256i acc, __m256i u, __m256i s) {
    const __m256i lo8 = _mm256_set1_epi16(0xFF);
    __m256i ue = _mm256_and_si256(u, lo8), uo = _mm256_srli_epi16(u, 8);
    __m256i se = _mm256_srai_epi16(_mm256_slli_epi16(s, 8), 8), so = _mm256_srai_epi16(s, 8);
    return _mm256_add_epi32(acc, _mm256_add_epi32(_mm256_madd_epi16(ue, se), _mm256_madd_epi16(uo, so)));
}

/* GM_MR rows of u (row stride ldx) times one panel (kq groups of 4 k): out[GM_MR][GM_NR] */
#define DEF_GEMM_TILE(NAME, TARGET, DP)                                                                          \
    __attribute__((target(TARGET))) static void NAME(const uint8_t *x, int64_t ldx, const int8_t *wp, int64_t kq, \
                                                     int32_t *out) {                                              \
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;              \
        __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;                                 \
        for (int64_t q = 0; q < kq; q++) {                                                                        \
            const __m256i w0 = _mm256_loadu_si256((const __m256i *)(wp + q * 64));                                \
            const __m256i w1 = _mm256_loadu_si256((const __m256i *)(wp + q * 64 + 32));                           \
            const uint8_t *xq = x + 4 * q;                                                                        \
            __m256i b;                                                                                            \
            int32_t v;                                                                                            \
            memcpy(&v, xq, 4); b = _mm256_set1_epi32(v); c00 = DP(c00, b, w0); c01 = DP(c01, b, w1);              \
            memcpy(&v, xq + ldx, 4); b = _mm256_set1_epi32(v); c10 = DP(c10, b, w0); c11 = DP(c11, b, w1);        \
            memcpy(&v, xq + 2 * ldx, 4); b = _mm256_set1_epi32(v); c20 = DP(c20, b, w0); c21 = DP(c21, b, w1);    \
            memcpy(&v, xq + 3 * ldx, 4); b = _mm256_set1_epi32(v); c30 = DP(c30, b, w0); c31 = DP(c31, b, w1);    \
            memcpy(&v, xq + 4 * ldx, 4); b = _mm256_set1_epi32(v); c40 = DP(c40, b, w0); c41 = DP(c41, b, w1);    \
            memcpy(&v, xq + 5 * ldx, 4); b = _mm256_set1_epi32(v); c50 = DP(c50, b, w0); c51 = DP(c51, b, w1);    \
        }                                                                                                         \
        _mm256_storeu_si256((__m256i *)(out + 0), c00); _mm256_storeu_si256((__m256i *)(out + 8), c01);           \
        _mm256_storeu_si256((__m256i *)(out + 16), c10); _mm256_storeu_si256((__m256i *)(out + 24), c11);         \
        _mm256_storeu_si256((__m256i *)(out + 32), c20); _mm256_storeu_si256((__m256i *)(out + 40), c21);         \
        _mm256_storeu_si256((__m256i *)(out + 48), c30); _mm256_storeu_si256((__m256i *)(out + 56), c31);         \
        _mm256_storeu_si256((__m256i *)(out + 64), c40); _mm256_storeu_si256((__m256i *)(out + 72), c41);         \
        _mm256_storeu_si256((__m256i *)(out + 80), c50); _mm256_storeu_si256((__m256i *)(out + 88), c51);         \
    }

DEF_GEMM_TILE(gemm_tile_vnni, "avx2,fma,avxvnni", dp_vnni)
DEF_GEMM_TILE(gemm_tile_avx2, "avx2,fma", dp_avx2)

static void gemm_tile_scalar(const uint8_t *x, int64_t ldx, const int8_t *wp, int64_t kq, int32_t *out) {
    for (int i = 0; i < GM_MR; i++)
        for (int n = 0; n < GM_NR; n++) {
            int32_t acc = 0;
            for (int64_t q = 0; q < kq; q++)
                for (int b = 0; b < 4; b++) acc += (int32_t)x[i * ldx + 4 * q + b] * wp[q * 64 + n * 4 + b];
            out[i * GM_NR + n] = acc;
        }
}

typedef void (*gemm_tile_fn)(const uint8_t *, int64_t, const int8_t *, int64_t, int32_t *);

static gemm_tile_fn gemm_tile(void) {
    have_avx2();
    return use_vnni > 0 ? gemm_tile_vnni : (use_avx2 > 0 ? gemm_tile_avx2 : gemm_tile_scalar);
}

/* out[t, n] (int32, row stride ldo) for t < tp (a multiple of GM_MR), n in panels [p0, p1) */
static void gemm_panels(gemm_tile_fn tile, const uint8_t *x, int64_t tp, int64_t ldx, const int8_t *wp, int64_t kq,
                        int64_t p0, int64_t p1, int32_t *out, int64_t ldo) {
    int32_t t[GM_MR * GM_NR];
    for (int64_t p = p0; p < p1; p++)
        for (int64_t r = 0; r < tp; r += GM_MR) {
            tile(x + r * ldx, ldx, wp + p * kq * 64, kq, t);
            for (int i = 0; i < GM_MR; i++) memcpy(out + (r + i) * ldo + p * GM_NR, t + i * GM_NR, sizeof(t[0]) * GM_NR);
        }
}

static inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

/* A MiniLM dense layer: int8 weights [n, k] packed (np = n rounded up to 16, kp = k to 4),
   colsum[n] = sum_k w, int64 bias and per-column multipliers, one shift, the output range;
   planes 1: the input is int8, 2: int16 (two byte planes). */
typedef struct {
    int64_t n, k, np, kp, planes, shift, lo, hi;
    const int8_t *wp;
    const int32_t *colsum;
    const int64_t *bias, *mult;
} oi_i8mat;

typedef struct {
    const oi_i8mat *w;
    gemm_tile_fn tile;
    const uint8_t *xu;      /* planes x [tp][kp] */
    int64_t t, tp;
    int32_t *acc;           /* planes x [tp][np] */
    int64_t *y;             /* [t][n] */
} i8dense_job;

static void i8dense_task(void *p, int64_t start, int64_t end) {
    i8dense_job *j = (i8dense_job *)p;
    const oi_i8mat *w = j->w;
    int64_t kq = w->kp / 4, np = w->np;
    for (int64_t pl = 0; pl < w->planes; pl++)
        gemm_panels(j->tile, j->xu + pl * j->tp * w->kp, j->tp, w->kp, w->wp, kq, start, end, j->acc + pl * j->tp * np, np);
    int64_t c0 = start * GM_NR, c1 = end * GM_NR < w->n ? end * GM_NR : w->n;
    /* the column's constant, bias - 128 colsum; then requant, in int64 where it cannot overflow
       (|a| < 2^40, |mult| < 2^22, 1 <= shift <= 62: the same value as the 128-bit rule) */
    int64_t off[GM_NR * 8];
    for (int64_t c0b = c0; c0b < c1; c0b += GM_NR * 8) {
        int64_t c1b = c0b + GM_NR * 8 < c1 ? c0b + GM_NR * 8 : c1;
        int fast = w->shift >= 1 && w->shift <= 62;
        for (int64_t c = c0b; c < c1b; c++) {
            off[c - c0b] = w->bias[c] - 128 * (int64_t)w->colsum[c] * (w->planes == 2 ? 256 : 1);
            if (w->mult[c] < -(1LL << 22) || w->mult[c] > (1LL << 22) || off[c - c0b] < -(1LL << 39) ||
                off[c - c0b] > (1LL << 39))
                fast = 0;
        }
        for (int64_t t = 0; t < j->t; t++) {
            const int32_t *a1 = j->acc + t * np, *a2 = j->acc + j->tp * np + t * np;
            int64_t *y = j->y + t * w->n;
            if (fast) {
                int64_t half = 1LL << (w->shift - 1);
                for (int64_t c = c0b; c < c1b; c++) {
                    int64_t a = w->planes == 2 ? (int64_t)a1[c] * 256 + a2[c] : (int64_t)a1[c];
                    int64_t p = ((a + off[c - c0b]) * w->mult[c] + half) >> w->shift;
                    y[c] = p < w->lo ? w->lo : (p > w->hi ? w->hi : p);
                }
            } else {
                for (int64_t c = c0b; c < c1b; c++) {
                    int64_t a = w->planes == 2 ? (int64_t)a1[c] * 256 + a2[c] : (int64_t)a1[c];
                    y[c] = requant(a + off[c - c0b], w->mult[c], w->shift, w->lo, w->hi);
                }
            }
        }
    }
}

typedef struct {
    const oi_i8mat *w;
    const int64_t *x;
    uint8_t *xu;
    int64_t tp;
    _Atomic int bad;
} i8planes_job;

/* rows of x into the byte planes: x + 128 (int8), or (x >> 8) + 128 and x & 255 (int16) */
static void i8planes_task(void *p, int64_t start, int64_t end) {
    i8planes_job *j = (i8planes_job *)p;
    const oi_i8mat *w = j->w;
    int64_t kp = w->kp;
    for (int64_t r = start; r < end; r++)
        for (int64_t i = 0; i < w->k; i++) {
            int64_t v = j->x[r * w->k + i];
            if (w->planes == 1) {
                if (v < -128 || v > 127) { atomic_store(&j->bad, 1); return; }
                j->xu[r * kp + i] = (uint8_t)(v + 128);
            } else {
                if (v < -32768 || v > 32767) { atomic_store(&j->bad, 1); return; }
                j->xu[r * kp + i] = (uint8_t)((v >> 8) + 128);
                j->xu[j->tp * kp + r * kp + i] = (uint8_t)(v & 255);
            }
        }
}

/* y = requant(x w^T + bias) for x int64 [t, k] within int8 (planes 1) or int16 (planes 2);
   -1 when an input is outside that range */
static int i8dense(const oi_i8mat *w, const int64_t *x, int64_t t, int64_t *y) {
    int64_t tp = round_up(t > 0 ? t : 1, GM_MR), kp = w->kp;
    uint8_t *xu = malloc(w->planes * tp * kp + 64);
    int32_t *acc = malloc(sizeof(int32_t) * w->planes * tp * w->np);
    /* padding: the offset zero (128) in the signed plane, 0 in the low plane */
    memset(xu, 128, tp * kp);
    if (w->planes == 2) memset(xu + tp * kp, 0, tp * kp);
    i8planes_job pj = {w, x, xu, tp, 0};
    parallel_for(i8planes_task, &pj, t, 16);
    int rc = pj.bad ? -1 : 0;
    if (!rc) {
        i8dense_job j = {w, gemm_tile(), xu, t, tp, acc, y};
        parallel_for(i8dense_task, &j, w->np / GM_NR, 1);
    }
    free(xu);
    free(acc);
    return rc;
}

int oi_i8_dense(const oi_i8mat *w, const int64_t *x, int64_t t, int64_t *y) { return i8dense(w, x, t, y); }

/* minilm.LayerNorm: mean = round_div(sum x, n), var = round_div(sum (x - mean)^2, n) + eps,
   std = max(isqrt(var), 1), y = clamp(round_div((x - mean) gain, std 2^8) + beta, -128, 127) */
static void mlm_ln_row(const int64_t *x, int64_t n, const int64_t *gain, const int64_t *beta, int64_t eps, int64_t *y) {
    int64_t s = 0;
    for (int64_t i = 0; i < n; i++) s += x[i];
    int64_t mean = round_div(s, n), ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (x[i] - mean) * (x[i] - mean);
    int64_t std = isqrt64(round_div(ss, n) + eps);
    if (std < 1) std = 1;
    int64_t den = std << 8;
    for (int64_t i = 0; i < n; i++) y[i] = clamp(round_div((x[i] - mean) * gain[i], den) + beta[i], -128, 127);
}

typedef struct {
    const int64_t *gain, *beta;
    int64_t eps;
} oi_ln;

typedef struct {
    const int64_t *x;
    int64_t *y;
    int64_t n;
    const oi_ln *ln;
} mlm_ln_job;

static void mlm_ln_task(void *p, int64_t start, int64_t end) {
    mlm_ln_job *j = (mlm_ln_job *)p;
    for (int64_t r = start; r < end; r++) mlm_ln_row(j->x + r * j->n, j->n, j->ln->gain, j->ln->beta, j->ln->eps, j->y + r * j->n);
}

static void mlm_ln(const oi_ln *ln, const int64_t *x, int64_t t, int64_t n, int64_t *y) {
    mlm_ln_job j = {x, y, n, ln};
    parallel_for(mlm_ln_task, &j, t, 8);
}

int oi_mlm_layer_norm(const oi_ln *ln, const int64_t *x, int64_t t, int64_t n, int64_t *y) {
    mlm_ln(ln, x, t, n, y);
    return 0;
}

/* MiniLM attention of one sequence's rows (q, k, v int8 [T, H D], row stride ld), per head:
   scores = q k^T (int32), the integer softmax (elements.softmax: z = max - s,
   e = exp_neg(requant(z, score_mult, score_shift, 0, 2^20)), p = round_div(e one, sum e)),
   ctx = requant(p v, ctx_mult, ctx_shift, -128, 127). Each score and context sum is a
   product of the byte kernel: q + 128 against packed k rows; p (0 <= p <= one < 2^15) as
   two unsigned byte planes against packed v columns. */
typedef struct {
    const int64_t *q, *k, *v;
    int64_t *ctx;
    int64_t ld, heads, hd, one;
    int64_t score_mult, score_shift, ctx_mult, ctx_shift;
    const int64_t *seq_start, *seq_len;   /* sequences of the batch */
    gemm_tile_fn tile;
    _Atomic int bad;
} mlm_attn_job;

static void mlm_attn_task(void *p, int64_t start, int64_t end) {
    mlm_attn_job *j = (mlm_attn_job *)p;
    int64_t D = j->hd, dp = round_up(D, 4), dq = dp / 4;
    for (int64_t it = start; it < end; it++) {
        int64_t s = it / j->heads, h = it % j->heads;
        int64_t T = j->seq_len[s], r0 = j->seq_start[s];
        if (T == 0) continue;
        int64_t tp = round_up(T, GM_MR), np = round_up(T, GM_NR), tk = round_up(T, 4), ndp = round_up(D, GM_NR);
        uint8_t *qu = malloc(tp * dp + 64);
        int8_t *kp = calloc(np * dp + 64, 1);
        int32_t *ksum = calloc(np, sizeof(int32_t));
        int32_t *sc = malloc(sizeof(int32_t) * tp * np);
        uint8_t *pu = malloc(2 * tp * tk + 64);
        int8_t *vp = calloc(ndp * tk + 64, 1);
        int32_t *cx = malloc(sizeof(int32_t) * 2 * tp * ndp);
        int64_t *e = malloc(sizeof(int64_t) * T);
        memset(qu, 128, tp * dp);
        memset(pu, 0, 2 * tp * tk);
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < D; d++) {
                int64_t qv = j->q[(r0 + t) * j->ld + h * D + d], kv = j->k[(r0 + t) * j->ld + h * D + d];
                int64_t vv = j->v[(r0 + t) * j->ld + h * D + d];
                if (qv < -128 || qv > 127 || kv < -128 || kv > 127 || vv < -128 || vv > 127) {
                    atomic_store(&j->bad, 1);
                    goto done;
                }
                qu[t * dp + d] = (uint8_t)(qv + 128);
                /* k row t is weight row t: panel t / 16, group d / 4 */
                kp[(t / GM_NR) * dq * 64 + (d / 4) * 64 + (t % GM_NR) * 4 + d % 4] = (int8_t)kv;
                ksum[t] += (int32_t)kv;
                /* v column d is weight row d over k = t */
                vp[(d / GM_NR) * (tk / 4) * 64 + (t / 4) * 64 + (d % GM_NR) * 4 + t % 4] = (int8_t)vv;
            }
        gemm_panels(j->tile, qu, tp, dp, kp, dq, 0, np / GM_NR, sc, np);
        for (int64_t i = 0; i < T; i++) {
            int64_t top = INT64_MIN, sum = 0;
            for (int64_t t = 0; t < T; t++) {
                int64_t v = (int64_t)sc[i * np + t] - 128 * (int64_t)ksum[t];
                e[t] = v;
                if (v > top) top = v;
            }
            for (int64_t t = 0; t < T; t++) {
                e[t] = exp_neg_tab(requant(top - e[t], j->score_mult, j->score_shift, 0, EXP_INPUT_MAX));
                sum += e[t];
            }
            double inv = 1.0 / (double)(2 * sum);
            for (int64_t t = 0; t < T; t++) {
                int64_t pr = round_div_inv(e[t] * j->one, sum, inv);
                pu[i * tk + t] = (uint8_t)(pr >> 8);
                pu[tp * tk + i * tk + t] = (uint8_t)(pr & 255);
            }
        }
        gemm_panels(j->tile, pu, tp, tk, vp, tk / 4, 0, ndp / GM_NR, cx, ndp);
        gemm_panels(j->tile, pu + tp * tk, tp, tk, vp, tk / 4, 0, ndp / GM_NR, cx + tp * ndp, ndp);
        for (int64_t i = 0; i < T; i++)
            for (int64_t d = 0; d < D; d++) {
                int64_t c = 256 * (int64_t)cx[i * ndp + d] + cx[tp * ndp + i * ndp + d];
                j->ctx[(r0 + i) * j->ld + h * D + d] = requant(c, j->ctx_mult, j->ctx_shift, -128, 127);
            }
    done:
        free(qu); free(kp); free(ksum); free(sc); free(pu); free(vp); free(cx); free(e);
    }
}

static int mlm_attention(const int64_t *q, const int64_t *k, const int64_t *v, int64_t *ctx, int64_t nseq,
                         const int64_t *seq_start, const int64_t *seq_len, int64_t heads, int64_t width, int64_t one,
                         int64_t score_mult, int64_t score_shift, int64_t ctx_mult, int64_t ctx_shift) {
    if (one < 0 || one >= 1 << 15) return -1;   /* probabilities must be two unsigned byte planes */
    pthread_once(&exp_once, exp_tab_init);
    mlm_attn_job j = {q, k, v, ctx, width, heads, width / heads, one, score_mult, score_shift, ctx_mult, ctx_shift,
                      seq_start, seq_len, gemm_tile(), 0};
    parallel_for(mlm_attn_task, &j, nseq * heads, 1);
    return j.bad ? -1 : 0;
}

int oi_mlm_attention(const int64_t *q, const int64_t *k, const int64_t *v, int64_t t, int64_t heads, int64_t width,
                     int64_t one, int64_t score_mult, int64_t score_shift, int64_t ctx_mult, int64_t ctx_shift,
                     int64_t *ctx) {
    int64_t start = 0;
    return mlm_attention(q, k, v, ctx, 1, &start, &t, heads, width, one, score_mult, score_shift, ctx_mult, ctx_shift);
}

typedef struct {
    oi_i8mat q, k, v, o, up, down;
    oi_ln ln1, ln2;
    int64_t score_mult, score_shift, ctx_mult, ctx_shift, x_shift, h_shift, gelu_half;
    const int64_t *x_mult, *h_mult, *gelu;
} oi_mlm_layer;

typedef struct {
    int64_t n_layers, hidden, heads, ffn, vocab, positions, prob_one;
    const int64_t *word, *pos, *typ;
    oi_ln ln0;
    const oi_mlm_layer *layers;
} oi_mlm;

/* MiniLM's forward (minilm.IntMiniLM.forward_batch without the pooling) over nseq sequences
   stacked: out = the last LayerNorm's int8 rows [sum len, hidden]. 0, or -1 on an id or
   position out of range. */
int oi_mlm_forward(const oi_mlm *m, int64_t nseq, const int64_t *ids, const int64_t *lens, int64_t *out) {
    int64_t H = m->hidden, F = m->ffn, T = 0;
    for (int64_t s = 0; s < nseq; s++) {
        if (lens[s] < 0 || lens[s] > m->positions) return -1;
        T += lens[s];
    }
    for (int64_t r = 0; r < T; r++)
        if (ids[r] < 0 || ids[r] >= m->vocab) return -1;
    if (T == 0) return 0;
    int64_t *start = malloc(sizeof(int64_t) * (nseq + 1));
    int64_t *x = out, *q = malloc(sizeof(int64_t) * T * H), *k = malloc(sizeof(int64_t) * T * H);
    int64_t *v = malloc(sizeof(int64_t) * T * H), *c = malloc(sizeof(int64_t) * T * H);
    int64_t *r = malloc(sizeof(int64_t) * T * H), *hb = malloc(sizeof(int64_t) * T * H);
    int64_t *u = malloc(sizeof(int64_t) * T * F);
    int rc = 0;
    start[0] = 0;
    for (int64_t s = 0; s < nseq; s++) start[s + 1] = start[s] + lens[s];
    for (int64_t s = 0, row = 0; s < nseq; s++)
        for (int64_t p = 0; p < lens[s]; p++, row++)
            for (int64_t i = 0; i < H; i++) r[row * H + i] = m->word[ids[row] * H + i] + m->pos[p * H + i] + m->typ[i];
    mlm_ln(&m->ln0, r, T, H, x);
    for (int64_t l = 0; l < m->n_layers && !rc; l++) {
        const oi_mlm_layer *L = &m->layers[l];
        rc |= i8dense(&L->q, x, T, q);
        rc |= i8dense(&L->k, x, T, k);
        rc |= i8dense(&L->v, x, T, v);
        if (rc) break;
        rc |= mlm_attention(q, k, v, c, nseq, start, lens, m->heads, H, m->prob_one, L->score_mult, L->score_shift,
                            L->ctx_mult, L->ctx_shift);
        rc |= i8dense(&L->o, c, T, r);
        if (rc) break;
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < H; i++)
                r[t * H + i] += requant(x[t * H + i], L->x_mult[i], L->x_shift, INT32_MIN, INT32_MAX);
        mlm_ln(&L->ln1, r, T, H, hb);
        rc |= i8dense(&L->up, hb, T, u);
        if (rc) break;
        for (int64_t i = 0; i < T * F; i++) {
            int64_t idx = u[i] + L->gelu_half;
            if (idx < 0 || idx >= 2 * L->gelu_half) { rc = -1; break; }
            u[i] = L->gelu[idx];
        }
        rc |= i8dense(&L->down, u, T, r);
        if (rc) break;
        for (int64_t t = 0; t < T; t++)
            for (int64_t i = 0; i < H; i++)
                r[t * H + i] += requant(hb[t * H + i], L->h_mult[i], L->h_shift, INT32_MIN, INT32_MAX);
        mlm_ln(&L->ln2, r, T, H, x);
    }
    free(start); free(q); free(k); free(v); free(c); free(r); free(hb); free(u);
    return rc;
}
