// Radix-2 NTT over Fr, per-thread steps shared by ntt.cu and the host reference.
//
// Values: Fr elements in Montgomery form (field.cuh), natural order in and out. A transform of
// n = 2^logn values permutes them to bit-reversed order, then runs the logn decimation-in-time
// stages in passes of up to TILE_LOG stages: a pass over stages [s, s + t) splits the array into
// tiles of 2^t values that differ only in index bits s..s+t-1 (only those meet in these stages),
// one thread block per tile working in shared memory. Stage q (half-size 2^q) combines i and
// i + 2^q with twiddle w^(k n / 2^(q+1)), k = i mod 2^q, w the n-th root of unity: twiddles[]
// holds w^j for j < n/2 (or the inverse root's powers for the inverse transform).
#pragma once

#include "field.cuh"

namespace gp {

constexpr int NTT_TILE_LOG = 10;  // 1024 values = 32 KiB of shared memory per block

GP_HD uint32_t bit_reverse(uint32_t x, int bits) {
    uint32_t r = 0;
    for (int b = 0; b < bits; b++) r |= ((x >> b) & 1u) << (bits - 1 - b);
    return r;
}

// Global index of local value l of tile `tile` in the pass over stages [s, s + t).
GP_HD uint32_t ntt_tile_index(uint32_t tile, uint32_t l, int s, int t) {
    uint32_t low = tile & ((1u << s) - 1);
    uint32_t high = tile >> s;
    return low | (l << s) | (high << (s + t));
}

// Local indices of butterfly b (of 2^(t-1)) at local stage u: bit u of l0 is 0, l1 = l0 + 2^u.
GP_HD uint32_t ntt_butterfly_low(uint32_t b, int u) {
    return ((b >> u) << (u + 1)) | (b & ((1u << u) - 1));
}

// Index into twiddles[] for the butterfly whose lower global index is i, at stage q.
GP_HD uint32_t ntt_twiddle_index(uint32_t i, int q, int logn) {
    return (i & ((1u << q) - 1)) << (logn - q - 1);
}

GP_HD void ntt_butterfly(Fr& x, Fr& y, const Fr& w) {
    Fr v = y * w;
    y = x - v;
    x = x + v;
}

// ---------------------------------------------------------------------------------------------
// One thread of each ntt.cu kernel, shared with the host tests; `i` is the global thread index.

GP_HD void bit_reverse_step(uint32_t i, Fr* a, int logn) {
    uint32_t j = bit_reverse(i, logn);
    if (i < j) {
        Fr t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

// Butterfly b of local stage u in the tile (2^t values, already loaded) of block `tile_id`.
GP_HD void ntt_tile_step(Fr* tile, const Fr* twiddles, uint32_t tile_id, uint32_t b, int u, int s,
                         int t, int logn) {
    uint32_t l0 = ntt_butterfly_low(b, u);
    uint32_t i0 = ntt_tile_index(tile_id, l0, s, t);
    ntt_butterfly(tile[l0], tile[l0 + (1u << u)], twiddles[ntt_twiddle_index(i0, s + u, logn)]);
}

GP_HD void powers_step(uint32_t i, Fr* out, const Fr* base) { out[i] = base->pow_u32(i); }
GP_HD void mul_table_step(uint32_t i, Fr* a, const Fr* table) { a[i] = a[i] * table[i]; }
GP_HD void scale_step(uint32_t i, Fr* a, const Fr* c) { a[i] = a[i] * *c; }
GP_HD void ab_minus_c_step(uint32_t i, const Fr* a, const Fr* b, const Fr* c, Fr* out) {
    out[i] = a[i] * b[i] - c[i];
}
GP_HD void to_mont_step(uint32_t i, Fr* a) { a[i] = a[i].to_mont(); }

// A.w and B.w at constraint i of 2 * rows (A's constraints, then B's), from the key's
// coefficients sorted by matrix and constraint: row_starts[i] .. row_starts[i + 1] are its
// records. Coefficients keep the .zkey's encoding (coef * R^2) and the witness is in normal
// form, so one Montgomery product is coef * w in Montgomery form.
GP_HD void constraint_step(uint32_t i, const uint32_t* row_starts, const uint32_t* signals,
                           const Fr* coefs, const Fr* witness, uint32_t rows, Fr* a, Fr* b) {
    Fr acc = Fr::zero();
    for (uint32_t k = row_starts[i]; k < row_starts[i + 1]; k++)
        acc = acc + coefs[k] * witness[signals[k]];
    if (i < rows) a[i] = acc;
    else b[i - rows] = acc;
}
GP_HD void from_mont_step(uint32_t i, Fr* a) { a[i] = a[i].from_mont(); }

}  // namespace gp
