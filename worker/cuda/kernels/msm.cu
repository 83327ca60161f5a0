// Multi-scalar multiplication on BLS12-381 G1 and G2, Pippenger's bucket method on the GPU.
//
// The host (worker/cuda/msm.py) runs, for n points and c-bit windows (nwin windows, nb buckets
// per window, NB = nwin * nb buckets in all, bucket b = w * nb + |digit|):
//   1. msm_digits: signed digits of every scalar, and a count per bucket (atomics).
//   2. scan_*: exclusive prefix sum of the counts -> each bucket's offset in `entries`.
//   3. msm_scatter: a counting sort; entries[] lists every bucket's points (index | sign bit).
//   4. rounds of msm_chunk_counts, scan_*, msm_sum_entries_* (first round: affine points) or
//      msm_sum_xyzz_* (later rounds: the previous round's chunk sums): each thread sums one chunk
//      of at most `chunk` entries of one bucket, until the largest bucket has one chunk. A bucket
//      holding half the points (scalars 1, common in witnesses) is summed by n/chunk threads.
//   5. msm_gather_*: the dense bucket array, infinity for empty buckets.
//   6. msm_weigh_*: each thread weighs a run of buckets of one window (sum j * S_j).
//   7. the chunked rounds of step 4 over those runs -> one XYZZ sum per window, downloaded;
//      the host adds them up, sum 2^(c w) W_w (255 doublings in a row: no work for a GPU).
// Layouts are those of field.cuh, fp2.cuh, curve.cuh and msm.cuh. XYZZ intermediates are four
// field elements x, y, zz, zzz.
#include "msm.cuh"

using namespace gp;

// ---------------------------------------------------------------------------------------------
// Exclusive prefix sum of uint32 values, 2048 per block; the host scans the block totals and adds
// them back (scan_add) until one block remains.

constexpr int SCAN_THREADS = 1024;
constexpr int SCAN_PER_BLOCK = 2 * SCAN_THREADS;

extern "C" __global__ void scan_blocks(const uint32_t* in, uint32_t* out, uint32_t m,
                                       uint32_t* block_sums) {
    __shared__ uint32_t sums[SCAN_THREADS];
    const uint32_t tid = threadIdx.x;
    const uint64_t base = (uint64_t)blockIdx.x * SCAN_PER_BLOCK + 2 * tid;
    uint32_t a = base < m ? in[base] : 0;
    uint32_t b = base + 1 < m ? in[base + 1] : 0;
    sums[tid] = a + b;
    __syncthreads();
    for (uint32_t off = 1; off < SCAN_THREADS; off <<= 1) {
        uint32_t v = tid >= off ? sums[tid - off] : 0;
        __syncthreads();
        sums[tid] += v;
        __syncthreads();
    }
    uint32_t before = tid ? sums[tid - 1] : 0;
    if (base < m) out[base] = before;
    if (base + 1 < m) out[base + 1] = before + a;
    if (tid == SCAN_THREADS - 1) block_sums[blockIdx.x] = sums[tid];
}

extern "C" __global__ void scan_add(uint32_t* out, uint32_t m, const uint32_t* block_offsets) {
    uint64_t k = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k < m) out[k] += block_offsets[k / SCAN_PER_BLOCK];
}

// ---------------------------------------------------------------------------------------------
// The MSM steps (msm.cuh has each thread's work, shared with the host tests).

extern "C" __global__ void msm_digits(const uint32_t* scalars, uint32_t n, int c, int nwin,
                                      uint32_t* digits, uint32_t* counts) {
    GP_THREAD_INDEX(i, n)
    digits_step((uint32_t)i, scalars, n, c, nwin, digits, counts);
}

extern "C" __global__ void msm_scatter(const uint32_t* digits, uint32_t n, int c, int nwin,
                                       uint32_t* cursor, uint32_t* entries) {
    GP_THREAD_INDEX(k, (uint64_t)nwin * n)
    scatter_step(k, digits, n, c, cursor, entries);
}

// *max_chunks (zeroed by the host) ends as the largest count above 1, or stays 0.
extern "C" __global__ void msm_chunk_counts(const uint32_t* counts, uint32_t nbuckets,
                                            uint32_t chunk, uint32_t* chunks,
                                            uint32_t* max_chunks) {
    GP_THREAD_INDEX(b, nbuckets)
    chunk_counts_step((uint32_t)b, counts, chunk, chunks, max_chunks);
}

#define GP_MSM_KERNELS(G, F)                                                                    \
    extern "C" __global__ void msm_sum_entries_##G(                                           \
        const Affine<F>* points, const uint32_t* entries, const uint32_t* offsets,            \
        const uint32_t* counts, const uint32_t* chunk_starts, uint32_t nbuckets,              \
        uint32_t chunk, uint32_t nchunks, Xyzz<F>* out) {                                     \
        GP_THREAD_INDEX(j, nchunks)                                                           \
        sum_entries_step<F>((uint32_t)j, points, entries, offsets, counts, chunk_starts,      \
                            nbuckets, chunk, out);                                            \
    }                                                                                         \
    extern "C" __global__ void msm_sum_xyzz_##G(                                              \
        const Xyzz<F>* in, const uint32_t* offsets, const uint32_t* counts,                   \
        const uint32_t* chunk_starts, uint32_t nbuckets, uint32_t chunk, uint32_t nchunks,    \
        Xyzz<F>* out) {                                                                       \
        GP_THREAD_INDEX(j, nchunks)                                                           \
        sum_xyzz_step<F>((uint32_t)j, in, offsets, counts, chunk_starts, nbuckets, chunk,     \
                         out);                                                                \
    }                                                                                         \
    extern "C" __global__ void msm_gather_##G(const Xyzz<F>* sums, const uint32_t* chunks,    \
                                              const uint32_t* chunk_starts,                   \
                                              uint32_t nbuckets, Xyzz<F>* buckets) {          \
        GP_THREAD_INDEX(b, nbuckets)                                                          \
        gather_step<F>((uint32_t)b, sums, chunks, chunk_starts, buckets);                     \
    }                                                                                         \
    extern "C" __global__ void msm_weigh_##G(const Xyzz<F>* buckets, int c, int nwin,         \
                                             uint32_t runs, Xyzz<F>* out) {                   \
        GP_THREAD_INDEX(k, (uint64_t)nwin * runs)                                             \
        weigh_step<F>((uint32_t)k, buckets, c, runs, out);                                    \
    }

GP_MSM_KERNELS(g1, Fp)
GP_MSM_KERNELS(g2, Fp2)
