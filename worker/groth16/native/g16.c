/*
 * The hot arithmetic of the Groth16 prover over BLS12-381, for the CPU backend.
 *
 * Field elements are little-endian 64-bit limbs. Base-field coordinates of points are in
 * Montgomery form (x * 2^384 mod q), exactly as snarkjs stores them in a .zkey ("LEM"), so the
 * key's point sections are used in place. Scalars (Fr) cross this interface in normal form, as
 * the .wtns stores them; Fr work is done in Montgomery form (x * 2^256 mod r) inside.
 *
 * Built by worker/groth16/native.py with the machine's C compiler on first use. No mutable
 * global state (one flag, set when the library loads, picks the field arithmetic): every
 * function is safe to call from several Python threads at once.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef unsigned __int128 u128;
#define INLINE static inline __attribute__((always_inline))
#define NOINLINE static __attribute__((noinline))

/* -- threads ---------------------------------------------------------------------------- */

#define MAX_THREADS 64

typedef void (*thread_fn)(void *ctx, int t);
typedef struct {
    thread_fn fn;
    void *ctx;
    int t;
} thread_arg;

static void *thread_main(void *arg) {
    thread_arg *a = arg;
    a->fn(a->ctx, a->t);
    return NULL;
}

/* fn(ctx, t) for t in [0, nthreads) (at most MAX_THREADS), t = 0 on the calling thread; a
 * thread that cannot be started has its part run on the calling thread. Returns when all end. */
static void run_threads(thread_fn fn, void *ctx, int nthreads) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    thread_arg args[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 0; t < nthreads; t++) args[t] = (thread_arg){fn, ctx, t};
    for (int t = 1; t < nthreads; t++)
        started[t] = pthread_create(&threads[t], NULL, thread_main, &args[t]) == 0;
    fn(ctx, 0);
    for (int t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(threads[t], NULL);
        else fn(ctx, t);
    }
}

/* The threads to start for `work` items: nthreads within [1, MAX_THREADS], and no more than
 * there are items (a count below 1 is 1, before the rest: a negative one must not pass as a
 * huge unsigned one). */
static int thread_count(int nthreads, uint64_t work) {
    if (nthreads < 1) nthreads = 1;
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if ((uint64_t)nthreads > work) nthreads = work ? (int)work : 1;
    return nthreads;
}

/* Where part t of `count` items cut evenly into `parts` begins (part `parts` ends them). */
static uint64_t share(uint64_t count, uint64_t t, uint64_t parts) { return count * t / parts; }

/* -- Montgomery arithmetic, N limbs -------------------------------------------------------- */

/* Schoolbook product, then Montgomery reduction one limb at a time. */
INLINE void mont_mul(uint64_t *r, const uint64_t *a, const uint64_t *b, const uint64_t *p,
                     uint64_t inv, int n) {
    uint64_t t[12] = {0}, c, top = 0;
    u128 acc;
    for (int i = 0; i < n; i++) {
        c = 0;
        for (int j = 0; j < n; j++) {
            acc = (u128)a[j] * b[i] + t[i + j] + c;
            t[i + j] = (uint64_t)acc;
            c = (uint64_t)(acc >> 64);
        }
        t[i + n] = c;
    }
    for (int i = 0; i < n; i++) {
        uint64_t m = t[i] * inv;
        c = 0;
        for (int j = 0; j < n; j++) {
            acc = (u128)m * p[j] + t[i + j] + c;
            t[i + j] = (uint64_t)acc;
            c = (uint64_t)(acc >> 64);
        }
        acc = (u128)t[i + n] + c + top;
        t[i + n] = (uint64_t)acc;
        top = (uint64_t)(acc >> 64);
    }
    uint64_t s[6], borrow = 0;
    for (int j = 0; j < n; j++) {
        u128 d = (u128)t[n + j] - p[j] - borrow;
        s[j] = (uint64_t)d;
        borrow = (uint64_t)(d >> 64) & 1;
    }
    for (int j = 0; j < n; j++) r[j] = borrow ? t[n + j] : s[j];
}

INLINE void mod_add(uint64_t *r, const uint64_t *a, const uint64_t *b, const uint64_t *p, int n) {
    uint64_t t[6], s[6], carry = 0, borrow = 0;
    for (int j = 0; j < n; j++) {
        u128 x = (u128)a[j] + b[j] + carry;
        t[j] = (uint64_t)x;
        carry = (uint64_t)(x >> 64);
    }
    for (int j = 0; j < n; j++) {
        u128 d = (u128)t[j] - p[j] - borrow;
        s[j] = (uint64_t)d;
        borrow = (uint64_t)(d >> 64) & 1;
    }
    for (int j = 0; j < n; j++) r[j] = borrow ? t[j] : s[j];
}

INLINE void mod_sub(uint64_t *r, const uint64_t *a, const uint64_t *b, const uint64_t *p, int n) {
    uint64_t t[6], borrow = 0, carry = 0;
    for (int j = 0; j < n; j++) {
        u128 d = (u128)a[j] - b[j] - borrow;
        t[j] = (uint64_t)d;
        borrow = (uint64_t)(d >> 64) & 1;
    }
    uint64_t mask = 0 - borrow;
    for (int j = 0; j < n; j++) {
        u128 x = (u128)t[j] + (p[j] & mask) + carry;
        r[j] = (uint64_t)x;
        carry = (uint64_t)(x >> 64);
    }
}

INLINE int limbs_zero(const uint64_t *a, int n) {
    uint64_t acc = 0;
    for (int j = 0; j < n; j++) acc |= a[j];
    return acc == 0;
}

/* -- Fp (base field) and Fp2 = Fp[u]/(u^2 + 1) --------------------------------------------- */

typedef struct { uint64_t v[6]; } fp;
typedef struct { fp c0, c1; } fp2;
typedef struct { uint64_t v[4]; } fr;

static const fp FP_P = {{0xb9feffffffffaaabULL, 0x1eabfffeb153ffffULL, 0x6730d2a0f6b0f624ULL,
                         0x64774b84f38512bfULL, 0x4b1ba7b6434bacd7ULL, 0x1a0111ea397fe69aULL}};
#define FP_ONE_LIMBS {0x760900000002fffdULL, 0xebf4000bc40c0002ULL, 0x5f48985753c758baULL, \
                      0x77ce585370525745ULL, 0x5c071a97a256ec6dULL, 0x15f65ec3fa80e493ULL}
static const fp FP_ONE = {FP_ONE_LIMBS};
static const fp2 FP2_ONE = {{FP_ONE_LIMBS}, {{0}}};
#define FP_INV 0x89f3fffcfffcfffdULL

/* x86-64 with 64-bit pointers (not x32): field_x86.h holds pointers in 64-bit registers */
#if defined(__x86_64__) && !defined(__ILP32__)
#define FIELD_X86 1
#else
#define FIELD_X86 0
#endif

#if FIELD_X86
#include <cpuid.h>
#include "field_x86.h"

/* Set once when the library loads, read-only after: whether field_x86.h's assembly runs here (the
 * processor has BMI2 and ADX, and GPUPROXY_NATIVE_PORTABLE is unset or 0: set, it keeps the C
 * arithmetic, to compare). */
static int field_use_x86;

__attribute__((constructor)) static void field_pick_arithmetic(void) {
    unsigned a, b, c, d;
    const char *portable = getenv("GPUPROXY_NATIVE_PORTABLE");
    if (portable && *portable && strcmp(portable, "0") != 0) return;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) field_use_x86 = (b >> 8 & 1) && (b >> 19 & 1);
}

/* The assembly's call where it runs, else the C one */
#define FIELD_PICK(x86_call, c_call)                                                             \
    do {                                                                                         \
        if (field_use_x86) x86_call;                                                            \
        else c_call;                                                                             \
    } while (0)
#else
#define FIELD_PICK(x86_call, c_call) c_call
#endif

/* out[i] = a[i] op b[i] in field F (op 0: product, 1: sum, 2: difference), for the tests */
#define FIELD_VECTOR(F)                                                                          \
    void F##_vector(int op, const F *a, const F *b, F *out, size_t n) {                         \
        for (size_t i = 0; i < n; i++) {                                                         \
            if (op == 0) F##_mul(&out[i], &a[i], &b[i]);                                        \
            else if (op == 1) F##_add(&out[i], &a[i], &b[i]);                                   \
            else F##_sub(&out[i], &a[i], &b[i]);                                                \
        }                                                                                        \
    }

NOINLINE void fp_mul(fp *r, const fp *a, const fp *b) {
    FIELD_PICK(fp_mul_adx(r, a, b), mont_mul(r->v, a->v, b->v, FP_P.v, FP_INV, 6));
}

/* Which field arithmetic runs (1: field_x86.h's assembly, 0: the C mont_mul, mod_add and
 * mod_sub), and out[i] = a[i] op b[i] with it (op 0: the Montgomery product a b / 2^384 mod q,
 * 1: a + b, 2: a - b; fr_vector likewise in Fr, a b / 2^256 mod r): for the tests, which check
 * both against Python integers. */
int field_arithmetic(void) {
#if FIELD_X86
    return field_use_x86;
#else
    return 0;
#endif
}

INLINE void fp_sqr(fp *r, const fp *a) { fp_mul(r, a, a); }
INLINE void fp_add(fp *r, const fp *a, const fp *b) {
    FIELD_PICK(fp_add_x86(r, a, b), mod_add(r->v, a->v, b->v, FP_P.v, 6));
}
INLINE void fp_sub(fp *r, const fp *a, const fp *b) {
    FIELD_PICK(fp_sub_x86(r, a, b), mod_sub(r->v, a->v, b->v, FP_P.v, 6));
}
FIELD_VECTOR(fp)
INLINE int fp_is_zero(const fp *a) { return limbs_zero(a->v, 6); }
INLINE void fp_neg(fp *r, const fp *a) {
    fp z = {{0}};
    fp_sub(r, &z, a);
}

static void fp_inv(fp *r, const fp *a) {
    /* a^(q-2) by square-and-multiply over the bits of q - 2 */
    fp e = FP_P, acc = FP_ONE;
    e.v[0] -= 2;
    for (int i = 380; i >= 0; i--) {
        fp_sqr(&acc, &acc);
        if ((e.v[i / 64] >> (i % 64)) & 1) fp_mul(&acc, &acc, a);
    }
    *r = acc;
}

INLINE void fp2_add(fp2 *r, const fp2 *a, const fp2 *b) {
    fp_add(&r->c0, &a->c0, &b->c0);
    fp_add(&r->c1, &a->c1, &b->c1);
}
INLINE void fp2_sub(fp2 *r, const fp2 *a, const fp2 *b) {
    fp_sub(&r->c0, &a->c0, &b->c0);
    fp_sub(&r->c1, &a->c1, &b->c1);
}
INLINE void fp2_mul(fp2 *r, const fp2 *a, const fp2 *b) {
    fp t0, t1, s0, s1;
    fp_mul(&t0, &a->c0, &b->c0);
    fp_mul(&t1, &a->c1, &b->c1);
    fp_add(&s0, &a->c0, &a->c1);
    fp_add(&s1, &b->c0, &b->c1);
    fp_mul(&s0, &s0, &s1);
    fp_sub(&r->c0, &t0, &t1);
    fp_sub(&s0, &s0, &t0);
    fp_sub(&r->c1, &s0, &t1);
}
INLINE void fp2_sqr(fp2 *r, const fp2 *a) {
    fp s, d, m;
    fp_add(&s, &a->c0, &a->c1);
    fp_sub(&d, &a->c0, &a->c1);
    fp_mul(&m, &a->c0, &a->c1);
    fp_mul(&r->c0, &s, &d);
    fp_add(&r->c1, &m, &m);
}
INLINE int fp2_is_zero(const fp2 *a) { return fp_is_zero(&a->c0) && fp_is_zero(&a->c1); }
INLINE void fp2_neg(fp2 *r, const fp2 *a) {
    fp_neg(&r->c0, &a->c0);
    fp_neg(&r->c1, &a->c1);
}
static void fp2_inv(fp2 *r, const fp2 *a) {
    fp t0, t1;
    fp_sqr(&t0, &a->c0);
    fp_sqr(&t1, &a->c1);
    fp_add(&t0, &t0, &t1);
    fp_inv(&t0, &t0);
    fp_mul(&r->c0, &a->c0, &t0);
    fp_mul(&t1, &a->c1, &t0);
    fp_neg(&r->c1, &t1);
}

/* -- the two groups: one template, instantiated over Fp (G1) and Fp2 (G2) ----------------- */

#define FE fp
#define FE_ONE FP_ONE
#define G(name) g1_##name
#define fe_add fp_add
#define fe_sub fp_sub
#define fe_mul fp_mul
#define fe_sqr fp_sqr
#define fe_neg fp_neg
#define fe_inv fp_inv
#define fe_is_zero fp_is_zero
#include "curve.h"
#undef FE
#undef FE_ONE
#undef G
#undef fe_add
#undef fe_sub
#undef fe_mul
#undef fe_sqr
#undef fe_neg
#undef fe_inv
#undef fe_is_zero

#define FE fp2
#define FE_ONE FP2_ONE
#define G(name) g2_##name
#define fe_add fp2_add
#define fe_sub fp2_sub
#define fe_mul fp2_mul
#define fe_sqr fp2_sqr
#define fe_neg fp2_neg
#define fe_inv fp2_inv
#define fe_is_zero fp2_is_zero
#include "curve.h"

/* -- Fr (scalar field) --------------------------------------------------------------------- */

static const fr FR_P = {{0xffffffff00000001ULL, 0x53bda402fffe5bfeULL, 0x3339d80809a1d805ULL,
                         0x73eda753299d7d48ULL}};
static const fr FR_R2 = {{0xc999e990f3f29c6dULL, 0x2b6cedcb87925c23ULL, 0x05d314967254398fULL,
                          0x0748d9d99f59ff11ULL}};
static const fr FR_ONE = {{1, 0, 0, 0}}; /* normal-form 1: mont_mul by it leaves Montgomery */
#define FR_INV 0xfffffffeffffffffULL

NOINLINE void fr_mul(fr *r, const fr *a, const fr *b) {
    FIELD_PICK(fr_mul_adx(r, a, b), mont_mul(r->v, a->v, b->v, FR_P.v, FR_INV, 4));
}
INLINE void fr_add(fr *r, const fr *a, const fr *b) {
    FIELD_PICK(fr_add_x86(r, a, b), mod_add(r->v, a->v, b->v, FR_P.v, 4));
}
INLINE void fr_sub(fr *r, const fr *a, const fr *b) {
    FIELD_PICK(fr_sub_x86(r, a, b), mod_sub(r->v, a->v, b->v, FR_P.v, 4));
}
FIELD_VECTOR(fr)
INLINE void fr_to_mont(fr *r, const fr *a) { fr_mul(r, a, &FR_R2); }
INLINE void fr_from_mont(fr *r, const fr *a) { fr_mul(r, a, &FR_ONE); }

/* A.w, B.w and C.w = (A.w)(B.w) on the domain, from the .zkey's coefficient section (4): records
 * of (u32 matrix, u32 constraint, u32 signal, 32-byte coefficient stored as coef * R^2 mod r, so
 * that one Montgomery product with a normal-form witness value lands in Montgomery form). Each
 * thread owns a range of constraints and reads every record, keeping its own: the products are
 * shared out without locks, at the cost of each thread reading the records (44 bytes each).
 * Returns 0, or -1 for a record out of range (the caller validated them; this is a last guard). */
typedef struct {
    const uint8_t *coefs;
    uint32_t ncoefs, nvars, domain;
    const fr *witness;
    fr *a, *b, *c;
    int nthreads;
    int failed; /* atomic */
} qap_ctx;

static void qap_part(void *arg, int t) {
    qap_ctx *ctx = arg;
    uint32_t lo = (uint32_t)share(ctx->domain, (uint64_t)t, (uint64_t)ctx->nthreads);
    uint32_t hi = (uint32_t)share(ctx->domain, (uint64_t)t + 1, (uint64_t)ctx->nthreads);
    memset(ctx->a + lo, 0, (size_t)(hi - lo) * sizeof(fr));
    memset(ctx->b + lo, 0, (size_t)(hi - lo) * sizeof(fr));
    for (uint32_t i = 0; i < ctx->ncoefs; i++) {
        const uint8_t *rec = ctx->coefs + (size_t)i * 44;
        uint32_t m, row, sig;
        memcpy(&m, rec, 4);
        memcpy(&row, rec + 4, 4);
        memcpy(&sig, rec + 8, 4);
        if (m > 1 || row >= ctx->domain || sig >= ctx->nvars) {
            __atomic_store_n(&ctx->failed, 1, __ATOMIC_RELAXED);
            return;
        }
        if (row < lo || row >= hi) continue;
        fr coef, t;
        memcpy(coef.v, rec + 12, 32);
        fr_mul(&t, &coef, &ctx->witness[sig]);
        fr *out = m == 0 ? &ctx->a[row] : &ctx->b[row];
        fr_add(out, out, &t);
    }
    for (uint32_t i = lo; i < hi; i++) {
        fr_mul(&ctx->c[i], &ctx->a[i], &ctx->b[i]);
        fr_from_mont(&ctx->c[i], &ctx->c[i]);
        fr_from_mont(&ctx->a[i], &ctx->a[i]);
        fr_from_mont(&ctx->b[i], &ctx->b[i]);
    }
}

int fr_qap_evaluations(const uint8_t *coefs, uint32_t ncoefs, const fr *witness, uint32_t nvars,
                        uint32_t domain, fr *a, fr *b, fr *c, int nthreads) {
    nthreads = thread_count(nthreads, domain);
    qap_ctx ctx = {coefs, ncoefs, nvars, domain, witness, a, b, c, nthreads, 0};
    run_threads(qap_part, &ctx, nthreads);
    return ctx.failed ? -1 : 0;
}

/* out = a*b - c, element-wise, all in normal form. */
void fr_mul_sub(const fr *a, const fr *b, const fr *c, fr *out, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) {
        fr x, y;
        fr_to_mont(&x, &a[i]);
        fr_mul(&y, &x, &b[i]); /* Montgomery times normal: normal */
        fr_sub(&out[i], &y, &c[i]);
    }
}

/* -- the NTT, on several threads ----------------------------------------------------------
 * Each phase is a loop over an index range, cut into one range per thread (a thread that
 * cannot be started runs its range on the calling thread). After the bit reversal, the first
 * stages (butterflies of at most `block` values) stay inside blocks: a thread takes whole
 * blocks through all of them, in its cache. Each later stage spans blocks: its n/2 butterflies
 * are cut evenly, a join between stages. */

#define NTT_MIN_PARALLEL (1u << 12) /* smaller transforms: one thread (start-up costs more) */

typedef struct ntt_job ntt_job;
typedef void (*ntt_range)(const ntt_job *job, uint64_t lo, uint64_t hi);
struct ntt_job {
    ntt_range fn;
    fr *v, *tw;
    uint32_t log_n;
    uint64_t len; /* the stage's butterfly span, or the block size of the in-block stages */
    fr k;         /* Montgomery: the root (twiddles), the coset shift, or the scale */
    int has_k;
    uint64_t count; /* the index range [0, count), cut evenly over nthreads */
    int nthreads;
};

static void ntt_part(void *arg, int t) {
    const ntt_job *job = arg;
    job->fn(job, share(job->count, (uint64_t)t, (uint64_t)job->nthreads),
            share(job->count, (uint64_t)t + 1, (uint64_t)job->nthreads));
}

static void parallel_for(ntt_job job, uint64_t count, int nthreads) {
    nthreads = thread_count(nthreads, count);
    job.count = count;
    job.nthreads = nthreads;
    run_threads(ntt_part, &job, nthreads);
}

/* base^e, all Montgomery */
static void fr_pow(fr *r, const fr *base, uint64_t e) {
    fr acc;
    fr_to_mont(&acc, &FR_ONE);
    for (int b = 63; b >= 0; b--) {
        fr_mul(&acc, &acc, &acc);
        if ((e >> b) & 1) fr_mul(&acc, &acc, base);
    }
    *r = acc;
}

static uint64_t reverse_bits(uint64_t x, uint32_t bits) {
    uint64_t r = 0;
    for (uint32_t b = 0; b < bits; b++, x >>= 1) r = (r << 1) | (x & 1);
    return r;
}

/* v[i] -> Montgomery, times k^i (the coset shift) */
static void ntt_enter(const ntt_job *job, uint64_t lo, uint64_t hi) {
    fr p;
    if (job->has_k) fr_pow(&p, &job->k, lo);
    for (uint64_t i = lo; i < hi; i++) {
        fr_to_mont(&job->v[i], &job->v[i]);
        if (job->has_k) {
            fr_mul(&job->v[i], &job->v[i], &p);
            fr_mul(&p, &p, &job->k);
        }
    }
}

/* each pair is swapped by the owner of its lower index */
static void ntt_bit_reverse(const ntt_job *job, uint64_t lo, uint64_t hi) {
    for (uint64_t i = lo; i < hi; i++) {
        uint64_t j = reverse_bits(i, job->log_n);
        if (i < j) {
            fr t = job->v[i];
            job->v[i] = job->v[j];
            job->v[j] = t;
        }
    }
}

static void ntt_twiddles(const ntt_job *job, uint64_t lo, uint64_t hi) {
    fr p;
    fr_pow(&p, &job->k, lo);
    for (uint64_t i = lo; i < hi; i++) {
        job->tw[i] = p;
        fr_mul(&p, &p, &job->k);
    }
}

INLINE void butterfly(fr *v, const fr *tw, uint64_t n, uint64_t len, uint64_t start,
                      uint64_t j) {
    fr *x = &v[start + j], *y = &v[start + j + len / 2], t;
    fr_mul(&t, y, &tw[j * (n / len)]);
    fr_sub(y, x, &t);
    fr_add(x, x, &t);
}

/* blocks [lo, hi) of job->len values through the stages that stay inside a block */
static void ntt_in_blocks(const ntt_job *job, uint64_t lo, uint64_t hi) {
    uint64_t n = (uint64_t)1 << job->log_n, block = job->len;
    for (uint64_t b = lo; b < hi; b++)
        for (uint64_t len = 2; len <= block; len <<= 1)
            for (uint64_t start = b * block; start < (b + 1) * block; start += len)
                for (uint64_t j = 0; j < len / 2; j++) butterfly(job->v, job->tw, n, len, start, j);
}

/* butterflies [lo, hi) of the stage of span job->len */
static void ntt_stage(const ntt_job *job, uint64_t lo, uint64_t hi) {
    uint64_t n = (uint64_t)1 << job->log_n, half = job->len / 2;
    for (uint64_t b = lo; b < hi; b++)
        butterfly(job->v, job->tw, n, job->len, (b / half) * job->len, b % half);
}

/* v[i] times k (the scale), out of Montgomery form */
static void ntt_leave(const ntt_job *job, uint64_t lo, uint64_t hi) {
    for (uint64_t i = lo; i < hi; i++) {
        if (job->has_k) fr_mul(&job->v[i], &job->v[i], &job->k);
        fr_from_mont(&job->v[i], &job->v[i]);
    }
}

/* In-place radix-2 NTT of 2^log_n normal-form values: v[i] <- sum_j v[j] * shift^j * root^(ij),
 * then times `scale`, on up to nthreads threads. `root` must have order 2^log_n; `shift` and
 * `scale` may be NULL (one). The inverse transform is root^-1 with scale n^-1; a coset transform
 * is shift = the coset generator. Returns 0, or -1 when out of memory. */
int fr_ntt(fr *v, uint32_t log_n, const fr *root, const fr *shift, const fr *scale,
           int nthreads) {
    uint64_t n = (uint64_t)1 << log_n;
    fr *tw = malloc((size_t)(n / 2 + 1) * sizeof(fr));
    if (!tw) return -1;
    if (n < NTT_MIN_PARALLEL) nthreads = 1;
    ntt_job job = {.v = v, .tw = tw, .log_n = log_n};
    job.has_k = shift != NULL;
    if (shift) fr_to_mont(&job.k, shift);
    job.fn = ntt_enter;
    parallel_for(job, n, nthreads);
    job.fn = ntt_bit_reverse;
    parallel_for(job, n, nthreads);
    fr_to_mont(&job.k, root);
    job.fn = ntt_twiddles;
    parallel_for(job, n / 2, nthreads);
    /* about 8 blocks per thread, at least 2 values each: the rest of the stages span blocks */
    uint64_t blocks = 1;
    while (blocks < 8 * (uint64_t)nthreads && blocks < n / 2) blocks <<= 1;
    job.len = n / blocks;
    job.fn = ntt_in_blocks;
    parallel_for(job, blocks, nthreads);
    job.fn = ntt_stage;
    for (uint64_t len = 2 * (n / blocks); len <= n; len <<= 1) {
        job.len = len;
        parallel_for(job, n / 2, nthreads);
    }
    job.has_k = scale != NULL;
    if (scale) fr_to_mont(&job.k, scale);
    job.fn = ntt_leave;
    parallel_for(job, n, nthreads);
    free(tw);
    return 0;
}
