// The CUDA arithmetic headers compiled by a plain C++ compiler, behind a C ABI for ctypes
// (tests/unit/test_cuda_arith.py). Buffers are the device layouts of worker/cuda/kernels: field
// elements as Montgomery little-endian bytes, affine points x || y with (0, 0) for infinity,
// scalars as 32 little-endian bytes in standard form.
//
// Projective inputs are made from affine points and a factor z (X = x z^2, Y = y z^3, ZZ = z^2,
// ZZZ = z^3), so the formulas are exercised with ZZ != 1. Results come back affine.
//
// The emu_* functions run each kernel of msm.cu and ntt.cu on the host: the same per-thread
// steps (msm.cuh, ntt.cuh) in a loop over the thread index, so the Python drivers
// (worker/cuda/msm.py, ntt.py) and worker/cuda/device.py run unchanged on tests/cuda/fakedriver.py.
// Each takes the launch's grid and block sizes, then the kernel's arguments in its order, every one
// as a 64-bit integer: a buffer's address or a value.
#include <string.h>

#include <vector>

#include "curve.cuh"
#include "msm.cuh"
#include "ntt.cuh"

using namespace gp;

namespace {

template <class T>
T load(const uint8_t* p) {
    T v;
    memcpy(&v, p, sizeof v);
    return v;
}

template <class T>
void store(uint8_t* p, const T& v) {
    memcpy(p, &v, sizeof v);
}

enum FieldOp { ADD, SUB, MUL, SQR, NEG, INV, TO_MONT, FROM_MONT };

template <class F>
int field_op(int op, const uint8_t* a_bytes, const uint8_t* b_bytes, uint8_t* out) {
    F a = load<F>(a_bytes), b = load<F>(b_bytes), r;
    switch (op) {
        case ADD: r = a + b; break;
        case SUB: r = a - b; break;
        case MUL: r = a * b; break;
        case SQR: r = a.sqr(); break;
        case NEG: r = -a; break;
        case INV: r = a.inverse(); break;
        case TO_MONT: r = a.to_mont(); break;
        case FROM_MONT: r = a.from_mont(); break;
        default: return -1;
    }
    store(out, r);
    return 0;
}

template <class F>
Xyzz<F> scaled(const uint8_t* aff, const uint8_t* z_bytes) {
    Affine<F> a = load<Affine<F>>(aff);
    if (a.is_identity()) return Xyzz<F>::identity();
    F z = load<F>(z_bytes);
    F zz = z.sqr();
    F zzz = zz * z;
    return Xyzz<F>{a.x * zz, a.y * zzz, zz, zzz};
}

enum PointOp { P_ADD, P_ADD_AFFINE, P_DBL, P_DBL_AFFINE, P_NEG, P_EQUALS };

template <class F>
int point_op(int op, const uint8_t* a, const uint8_t* za, const uint8_t* b, const uint8_t* zb,
             uint8_t* out) {
    Xyzz<F> p = scaled<F>(a, za);
    Xyzz<F> r;
    switch (op) {
        case P_ADD: r = p + scaled<F>(b, zb); break;
        case P_ADD_AFFINE: r = p.add_affine(load<Affine<F>>(b)); break;
        case P_DBL: r = p.dbl(); break;
        case P_DBL_AFFINE: r = Xyzz<F>::dbl_affine(load<Affine<F>>(a)); break;
        case P_NEG: r = -p; break;
        case P_EQUALS: return p.equals(scaled<F>(b, zb)) ? 1 : 0;
        default: return -1;
    }
    store(out, r.to_affine());
    return 0;
}

template <class F>
void point_mul(const uint8_t* a, const uint8_t* scalar, uint8_t* out) {
    uint32_t k[SCALAR_LIMBS];
    memcpy(k, scalar, sizeof k);
    store(out, Xyzz<F>::from_affine(load<Affine<F>>(a)).mul(k, SCALAR_LIMBS).to_affine());
}

}  // namespace

extern "C" {

int gp_fp_op(int op, const uint8_t* a, const uint8_t* b, uint8_t* out) {
    return field_op<Fp>(op, a, b, out);
}
int gp_fr_op(int op, const uint8_t* a, const uint8_t* b, uint8_t* out) {
    return field_op<Fr>(op, a, b, out);
}

int gp_fp2_op(int op, const uint8_t* a, const uint8_t* b, uint8_t* out) {
    return field_op<Fp2>(op, a, b, out);
}

int gp_g1_op(int op, const uint8_t* a, const uint8_t* za, const uint8_t* b, const uint8_t* zb,
             uint8_t* out) {
    return point_op<Fp>(op, a, za, b, zb, out);
}
int gp_g2_op(int op, const uint8_t* a, const uint8_t* za, const uint8_t* b, const uint8_t* zb,
             uint8_t* out) {
    return point_op<Fp2>(op, a, za, b, zb, out);
}

void gp_g1_mul(const uint8_t* a, const uint8_t* k, uint8_t* out) { point_mul<Fp>(a, k, out); }
void gp_g2_mul(const uint8_t* a, const uint8_t* k, uint8_t* out) { point_mul<Fp2>(a, k, out); }

// Signed digits of one scalar, for checking the decomposition itself.
void gp_signed_digits(const uint8_t* scalar, int c, uint32_t* out) {
    uint32_t k[SCALAR_LIMBS];
    memcpy(k, scalar, sizeof k);
    signed_digits(k, c, msm_windows(c), out, 1);
}

}  // extern "C"

// --- the kernels, one host loop each ---------------------------------------------------------

#define A(T, x) ((T)(uintptr_t)(x))
// A launch's grid and block sizes come first in every emu_ function; a kernel's threads past its
// limit return at once, as GP_THREAD_INDEX makes them.
#define LAUNCH uint64_t grid, uint64_t block
#define FOR_THREADS(i, limit) \
    for (uint64_t i = 0; i < grid * block && i < (uint64_t)(limit); i++)

extern "C" {

// scan_blocks: grid blocks of 2 * block values each.
void emu_scan_blocks(LAUNCH, uint64_t in_, uint64_t out_, uint64_t m,
                     uint64_t block_sums_) {
    const uint32_t* in = A(const uint32_t*, in_);
    uint32_t* out = A(uint32_t*, out_);
    for (uint64_t g = 0; g < grid; g++) {
        uint32_t run = 0;
        for (uint64_t k = g * 2 * block; k < (g + 1) * 2 * block; k++) {
            uint32_t v = k < m ? in[k] : 0;
            if (k < m) out[k] = run;
            run += v;
        }
        A(uint32_t*, block_sums_)[g] = run;
    }
}

void emu_scan_add(LAUNCH, uint64_t out, uint64_t m, uint64_t block_offsets) {
    FOR_THREADS(k, m) A(uint32_t*, out)[k] += A(const uint32_t*, block_offsets)[k / 2048];
}

void emu_msm_digits(LAUNCH, uint64_t scalars, uint64_t n, uint64_t c, uint64_t nwin,
                    uint64_t digits, uint64_t counts) {
    FOR_THREADS(i, n)
    digits_step((uint32_t)i, A(const uint32_t*, scalars), (uint32_t)n, (int)c, (int)nwin,
                A(uint32_t*, digits), A(uint32_t*, counts));
}

void emu_msm_scatter(LAUNCH, uint64_t digits, uint64_t n, uint64_t c, uint64_t nwin,
                     uint64_t cursor, uint64_t entries) {
    FOR_THREADS(k, nwin * n)
    scatter_step(k, A(const uint32_t*, digits), (uint32_t)n, (int)c, A(uint32_t*, cursor),
                 A(uint32_t*, entries));
}

void emu_msm_chunk_counts(LAUNCH, uint64_t counts, uint64_t nbuckets, uint64_t chunk,
                          uint64_t chunks, uint64_t max_chunks) {
    FOR_THREADS(b, nbuckets)
    chunk_counts_step((uint32_t)b, A(const uint32_t*, counts), (uint32_t)chunk,
                      A(uint32_t*, chunks), A(uint32_t*, max_chunks));
}

#define EMU_MSM(G, F)                                                                              \
    void emu_msm_sum_entries_##G(LAUNCH, uint64_t points, uint64_t entries,                        \
                                 uint64_t offsets, uint64_t counts, uint64_t starts,               \
                                 uint64_t nbuckets, uint64_t chunk, uint64_t nchunks,              \
                                 uint64_t out) {                                                   \
        FOR_THREADS(j, nchunks)                                                                    \
        sum_entries_step<F>((uint32_t)j, A(const Affine<F>*, points),                              \
                            A(const uint32_t*, entries), A(const uint32_t*, offsets),              \
                            A(const uint32_t*, counts), A(const uint32_t*, starts),                \
                            (uint32_t)nbuckets, (uint32_t)chunk, A(Xyzz<F>*, out));                \
    }                                                                                              \
    void emu_msm_sum_xyzz_##G(LAUNCH, uint64_t in, uint64_t offsets, uint64_t counts,              \
                              uint64_t starts, uint64_t nbuckets, uint64_t chunk,                  \
                              uint64_t nchunks, uint64_t out) {                                    \
        FOR_THREADS(j, nchunks)                                                                    \
        sum_xyzz_step<F>((uint32_t)j, A(const Xyzz<F>*, in), A(const uint32_t*, offsets),          \
                         A(const uint32_t*, counts), A(const uint32_t*, starts),                   \
                         (uint32_t)nbuckets, (uint32_t)chunk, A(Xyzz<F>*, out));                   \
    }                                                                                              \
    void emu_msm_gather_##G(LAUNCH, uint64_t sums, uint64_t chunks, uint64_t starts,               \
                            uint64_t nbuckets, uint64_t buckets) {                                 \
        FOR_THREADS(b, nbuckets)                                                                   \
        gather_step<F>((uint32_t)b, A(const Xyzz<F>*, sums), A(const uint32_t*, chunks),           \
                       A(const uint32_t*, starts), A(Xyzz<F>*, buckets));                          \
    }                                                                                              \
    void emu_msm_weigh_##G(LAUNCH, uint64_t buckets, uint64_t c, uint64_t nwin,                    \
                           uint64_t runs, uint64_t out) {                                          \
        FOR_THREADS(k, nwin * runs)                                                                \
        weigh_step<F>((uint32_t)k, A(const Xyzz<F>*, buckets), (int)c, (uint32_t)runs,             \
                      A(Xyzz<F>*, out));                                                           \
    }

EMU_MSM(g1, Fp)
EMU_MSM(g2, Fp2)

void emu_fr_bit_reverse(LAUNCH, uint64_t a, uint64_t logn) {
    FOR_THREADS(i, 1ull << logn) bit_reverse_step((uint32_t)i, A(Fr*, a), (int)logn);
}

// ntt_pass: block b loads its tile, runs the stages (each a loop over the threads), stores it.
void emu_ntt_pass(LAUNCH, uint64_t a_, uint64_t twiddles, uint64_t logn,
                  uint64_t s, uint64_t t) {
    Fr* a = A(Fr*, a_);
    std::vector<Fr> tile(2 * block);
    for (uint32_t g = 0; g < grid; g++) {
        for (uint32_t l = 0; l < 2 * block; l++) tile[l] = a[ntt_tile_index(g, l, (int)s, (int)t)];
        for (int u = 0; u < (int)t; u++)
            for (uint32_t b = 0; b < block; b++)
                ntt_tile_step(tile.data(), A(const Fr*, twiddles), g, b, u, (int)s, (int)t,
                              (int)logn);
        for (uint32_t l = 0; l < 2 * block; l++) a[ntt_tile_index(g, l, (int)s, (int)t)] = tile[l];
    }
}

void emu_fr_powers(LAUNCH, uint64_t out, uint64_t base, uint64_t count) {
    FOR_THREADS(i, count) powers_step((uint32_t)i, A(Fr*, out), A(const Fr*, base));
}

void emu_fr_mul_table(LAUNCH, uint64_t a, uint64_t table, uint64_t n) {
    FOR_THREADS(i, n) mul_table_step((uint32_t)i, A(Fr*, a), A(const Fr*, table));
}

void emu_fr_scale(LAUNCH, uint64_t a, uint64_t c, uint64_t n) {
    FOR_THREADS(i, n) scale_step((uint32_t)i, A(Fr*, a), A(const Fr*, c));
}

void emu_fr_ab_minus_c(LAUNCH, uint64_t a, uint64_t b, uint64_t c, uint64_t out,
                       uint64_t n) {
    FOR_THREADS(i, n)
    ab_minus_c_step((uint32_t)i, A(const Fr*, a), A(const Fr*, b), A(const Fr*, c), A(Fr*, out));
}

void emu_fr_to_mont(LAUNCH, uint64_t a, uint64_t n) {
    FOR_THREADS(i, n) to_mont_step((uint32_t)i, A(Fr*, a));
}

void emu_fr_from_mont(LAUNCH, uint64_t a, uint64_t n) {
    FOR_THREADS(i, n) from_mont_step((uint32_t)i, A(Fr*, a));
}

}  // extern "C"
