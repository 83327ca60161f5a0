// NTT, inverse NTT and the prover's element-wise steps over Fr (ntt.cuh: layout and stages).
//
// The host (worker/cuda/ntt.py) runs a forward transform as fr_bit_reverse, then ntt_pass for
// stages [0, 10), [10, 20), ... The inverse transform is the same with the inverse root's
// twiddles, followed by fr_mul_table with (1/n) g^-i (coset) or fr_scale with 1/n. A coset
// transform first multiplies coefficient i by g^i (fr_mul_table). Power tables (twiddles, coset
// shifts) are made once per size by fr_powers and kept on the device.
#include "ntt.cuh"

using namespace gp;

extern "C" __global__ void fr_bit_reverse(Fr* a, int logn) {
    GP_THREAD_INDEX(i, 1u << logn)
    bit_reverse_step((uint32_t)i, a, logn);
}

// One block per tile of 2^t values, 2^(t-1) threads, one butterfly each per stage.
extern "C" __global__ void ntt_pass(Fr* a, const Fr* twiddles, int logn, int s, int t) {
    __shared__ Fr tile[1 << NTT_TILE_LOG];
    const uint32_t tid = threadIdx.x;
    const uint32_t half = 1u << (t - 1);
    tile[tid] = a[ntt_tile_index(blockIdx.x, tid, s, t)];
    tile[tid + half] = a[ntt_tile_index(blockIdx.x, tid + half, s, t)];
    __syncthreads();
    for (int u = 0; u < t; u++) {
        ntt_tile_step(tile, twiddles, blockIdx.x, tid, u, s, t, logn);
        __syncthreads();
    }
    a[ntt_tile_index(blockIdx.x, tid, s, t)] = tile[tid];
    a[ntt_tile_index(blockIdx.x, tid + half, s, t)] = tile[tid + half];
}

// out[i] = base^i for i < count.
extern "C" __global__ void fr_powers(Fr* out, const Fr* base, uint32_t count) {
    GP_THREAD_INDEX(i, count)
    powers_step((uint32_t)i, out, base);
}

extern "C" __global__ void fr_mul_table(Fr* a, const Fr* table, uint32_t n) {
    GP_THREAD_INDEX(i, n)
    mul_table_step((uint32_t)i, a, table);
}

extern "C" __global__ void fr_scale(Fr* a, const Fr* c, uint32_t n) {
    GP_THREAD_INDEX(i, n)
    scale_step((uint32_t)i, a, c);
}

// out[i] = a[i] * b[i] - c[i]: the quotient's numerator on the coset, where Z is constant.
extern "C" __global__ void fr_ab_minus_c(const Fr* a, const Fr* b, const Fr* c, Fr* out,
                                         uint32_t n) {
    GP_THREAD_INDEX(i, n)
    ab_minus_c_step((uint32_t)i, a, b, c, out);
}

// A.w and B.w on the domain (rows constraints each), Montgomery form, from the witness in normal
// form: one thread per constraint of A, then of B.
extern "C" __global__ void fr_constraints(const uint32_t* row_starts, const uint32_t* signals,
                                          const Fr* coefs, const Fr* witness, uint32_t rows,
                                          Fr* a, Fr* b) {
    GP_THREAD_INDEX(i, 2 * (uint64_t)rows)
    constraint_step((uint32_t)i, row_starts, signals, coefs, witness, rows, a, b);
}

// Standard form <-> Montgomery form (witness values in, MSM scalars out).
extern "C" __global__ void fr_to_mont(Fr* a, uint32_t n) {
    GP_THREAD_INDEX(i, n)
    to_mont_step((uint32_t)i, a);
}

extern "C" __global__ void fr_from_mont(Fr* a, uint32_t n) {
    GP_THREAD_INDEX(i, n)
    from_mont_step((uint32_t)i, a);
}
