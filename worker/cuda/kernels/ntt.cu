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
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >> logn) return;
    uint32_t j = bit_reverse(i, logn);
    if (i < j) {
        Fr t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
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
        uint32_t l0 = ntt_butterfly_low(tid, u);
        uint32_t i0 = ntt_tile_index(blockIdx.x, l0, s, t);
        Fr w = twiddles[ntt_twiddle_index(i0, s + u, logn)];
        ntt_butterfly(tile[l0], tile[l0 + (1u << u)], w);
        __syncthreads();
    }
    a[ntt_tile_index(blockIdx.x, tid, s, t)] = tile[tid];
    a[ntt_tile_index(blockIdx.x, tid + half, s, t)] = tile[tid + half];
}

// out[i] = base^i for i < count.
extern "C" __global__ void fr_powers(Fr* out, const Fr* base, uint32_t count) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = base->pow_u32(i);
}

extern "C" __global__ void fr_mul_table(Fr* a, const Fr* table, uint32_t n) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = a[i] * table[i];
}

extern "C" __global__ void fr_scale(Fr* a, const Fr* c, uint32_t n) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = a[i] * *c;
}

// out[i] = a[i] * b[i] - c[i]: the quotient's numerator on the coset, where Z is constant.
extern "C" __global__ void fr_ab_minus_c(const Fr* a, const Fr* b, const Fr* c, Fr* out,
                                         uint32_t n) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] * b[i] - c[i];
}

// Standard form <-> Montgomery form (witness values in, MSM scalars out).
extern "C" __global__ void fr_to_mont(Fr* a, uint32_t n) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = a[i].to_mont();
}

extern "C" __global__ void fr_from_mont(Fr* a, uint32_t n) {
    uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) a[i] = a[i].from_mont();
}
