// The CUDA arithmetic headers compiled by a plain C++ compiler, behind a C ABI for ctypes
// (tests/unit/test_cuda_arith.py). Buffers are the device layouts of worker/cuda/kernels: field
// elements as Montgomery little-endian bytes, affine points x || y with (0, 0) for infinity,
// scalars as 32 little-endian bytes in standard form.
//
// Projective inputs are made from affine points and a factor z (X = x z^2, Y = y z^3, ZZ = z^2,
// ZZZ = z^3), so the formulas are exercised with ZZ != 1. Results come back affine.
//
// The MSM and NTT here run the kernels' pipelines step by step on the host, calling the same
// per-thread routines (msm.cuh, ntt.cuh) in loops where the GPU runs threads.
#include <string.h>

#include <utility>
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

// --- MSM: the kernel pipeline of msm.cu, one loop per launch -------------------------------

std::vector<uint32_t> exclusive_scan(const std::vector<uint32_t>& in) {
    std::vector<uint32_t> out(in.size());
    uint32_t run = 0;
    for (size_t k = 0; k < in.size(); k++) {
        out[k] = run;
        run += in[k];
    }
    return out;
}

// Rounds of chunk sums until every bucket has at most one; returns the dense bucket sums.
template <class F, class SumRound>
std::vector<Xyzz<F>> chunk_rounds(std::vector<uint32_t> counts, std::vector<uint32_t> offsets,
                                  uint32_t chunk, SumRound first_round) {
    const uint32_t nbuckets = (uint32_t)counts.size();
    std::vector<Xyzz<F>> sums;
    bool first = true;
    for (;;) {
        std::vector<uint32_t> chunks(nbuckets);
        uint32_t max_chunks = 0;
        for (uint32_t b = 0; b < nbuckets; b++) {
            chunks[b] = chunks_of(counts[b], chunk);
            if (chunks[b] > max_chunks) max_chunks = chunks[b];
        }
        std::vector<uint32_t> starts = exclusive_scan(chunks);
        uint32_t nchunks = nbuckets ? starts.back() + chunks.back() : 0;
        std::vector<Xyzz<F>> next(nchunks);
        for (uint32_t j = 0; j < nchunks; j++) {
            uint32_t b = bucket_of_chunk(starts.data(), nbuckets, j);
            ChunkRange r = chunk_range(offsets.data(), counts.data(), starts.data(), b, j, chunk);
            next[j] = first ? first_round(r) : sum_xyzz(sums.data(), r.begin, r.end);
        }
        first = false;
        sums.swap(next);
        if (max_chunks <= 1) {
            std::vector<Xyzz<F>> dense(nbuckets);
            for (uint32_t b = 0; b < nbuckets; b++)
                dense[b] = chunks[b] ? sums[starts[b]] : Xyzz<F>::identity();
            return dense;
        }
        counts.swap(chunks);
        offsets.swap(starts);
    }
}

template <class F>
void host_msm(const uint8_t* points_bytes, const uint8_t* scalars_bytes, uint32_t n, int c,
              uint32_t chunk, uint32_t runs, uint8_t* out) {
    std::vector<Affine<F>> points(n);
    memcpy(points.data(), points_bytes, sizeof(Affine<F>) * n);
    std::vector<uint32_t> scalars(SCALAR_LIMBS * (size_t)n);
    memcpy(scalars.data(), scalars_bytes, 4 * scalars.size());
    const int nwin = msm_windows(c);
    const uint32_t nb = msm_buckets(c);
    // msm_digits
    std::vector<uint32_t> digits((size_t)nwin * n), counts(nwin * nb, 0);
    for (uint32_t i = 0; i < n; i++) {
        signed_digits(&scalars[SCALAR_LIMBS * (size_t)i], c, nwin, &digits[i], n);
        for (int w = 0; w < nwin; w++) {
            uint32_t d = digits[(size_t)w * n + i] & ~ENTRY_NEG;
            if (d) counts[w * nb + d]++;
        }
    }
    // scan, msm_scatter
    std::vector<uint32_t> offsets = exclusive_scan(counts), cursor = offsets;
    std::vector<uint32_t> entries(offsets.back() + counts.back());
    for (size_t k = 0; k < digits.size(); k++) {
        uint32_t d = digits[k] & ~ENTRY_NEG;
        if (d) entries[cursor[(k / n) * nb + d]++] = (uint32_t)(k % n) | (digits[k] & ENTRY_NEG);
    }
    // bucket sums
    std::vector<Xyzz<F>> buckets = chunk_rounds<F>(counts, offsets, chunk, [&](ChunkRange r) {
        return sum_entries(points.data(), entries.data(), r.begin, r.end);
    });
    // msm_weigh, then the window sums by the same chunked rounds
    std::vector<Xyzz<F>> weighed((size_t)nwin * runs);
    const uint32_t run = (nb - 1) / runs;
    for (uint32_t k = 0; k < weighed.size(); k++) {
        uint32_t w = k / runs, lo = 1 + (k % runs) * run;
        weighed[k] = weigh_buckets(&buckets[(size_t)w * nb], lo, lo + run);
    }
    std::vector<uint32_t> win_counts(nwin, runs), win_offsets(nwin);
    for (int w = 0; w < nwin; w++) win_offsets[w] = w * runs;
    std::vector<Xyzz<F>> windows = chunk_rounds<F>(win_counts, win_offsets, chunk, [&](ChunkRange r) {
        return sum_xyzz(weighed.data(), r.begin, r.end);
    });
    // msm_combine
    store(out, combine_windows(windows.data(), nwin, c).to_affine());
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

void gp_g1_msm(const uint8_t* points, const uint8_t* scalars, uint32_t n, int c, uint32_t chunk,
               uint32_t runs, uint8_t* out) {
    host_msm<Fp>(points, scalars, n, c, chunk, runs, out);
}
void gp_g2_msm(const uint8_t* points, const uint8_t* scalars, uint32_t n, int c, uint32_t chunk,
               uint32_t runs, uint8_t* out) {
    host_msm<Fp2>(points, scalars, n, c, chunk, runs, out);
}

// Signed digits of one scalar, for checking the decomposition itself.
void gp_signed_digits(const uint8_t* scalar, int c, uint32_t* out) {
    uint32_t k[SCALAR_LIMBS];
    memcpy(k, scalar, sizeof k);
    signed_digits(k, c, msm_windows(c), out, 1);
}

// In-place forward NTT of 2^logn Montgomery values with the n-th root `root` (Montgomery), as
// ntt.cu runs it: fr_powers, fr_bit_reverse, then ntt_pass over tiles of 2^tile_log values.
void gp_fr_ntt(uint8_t* values, int logn, const uint8_t* root, int tile_log) {
    const uint32_t n = 1u << logn;
    std::vector<Fr> a(n), tw(n / 2 ? n / 2 : 1);
    memcpy(a.data(), values, sizeof(Fr) * n);
    Fr w = load<Fr>(root);
    for (uint32_t i = 0; i < n / 2; i++) tw[i] = w.pow_u32(i);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t j = bit_reverse(i, logn);
        if (i < j) std::swap(a[i], a[j]);
    }
    for (int s = 0; s < logn; s += tile_log) {
        int t = logn - s < tile_log ? logn - s : tile_log;
        std::vector<Fr> tile(1u << t);
        for (uint32_t blk = 0; blk < (n >> t); blk++) {
            for (uint32_t l = 0; l < (1u << t); l++) tile[l] = a[ntt_tile_index(blk, l, s, t)];
            for (int u = 0; u < t; u++) {
                for (uint32_t b = 0; b < (1u << (t - 1)); b++) {
                    uint32_t l0 = ntt_butterfly_low(b, u);
                    uint32_t i0 = ntt_tile_index(blk, l0, s, t);
                    ntt_butterfly(tile[l0], tile[l0 + (1u << u)],
                                  tw[ntt_twiddle_index(i0, s + u, logn)]);
                }
            }
            for (uint32_t l = 0; l < (1u << t); l++) a[ntt_tile_index(blk, l, s, t)] = tile[l];
        }
    }
    memcpy(values, a.data(), sizeof(Fr) * n);
}

}  // extern "C"
