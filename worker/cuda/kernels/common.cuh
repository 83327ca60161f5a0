// Qualifiers and integer helpers shared by the arithmetic headers.
//
// Every arithmetic routine is `GP_HD`: __host__ __device__ under nvcc, plain `inline` under a
// host C++ compiler, so the same source is unit-tested on a machine without a GPU
// (tests/cuda/host_arith.cpp, compiled by g++) and run in the kernels (msm.cu, ntt.cu).
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#endif

#if defined(__CUDACC__)
#define GP_HD __host__ __device__ __forceinline__
#define GP_HD_NOINLINE __host__ __device__ __noinline__
#define GP_UNROLL _Pragma("unroll")
// The global index of this thread as `i`; threads past `limit` return.
#define GP_THREAD_INDEX(i, limit)                                          \
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; \
    if (i >= (uint64_t)(limit)) return;
// The Montgomery product is a call on the device unless GP_INLINE_MUL is defined: inlining it
// in every point formula makes ptxas take minutes per kernel file, for a speed-up to be measured.
#if defined(GP_INLINE_MUL)
#define GP_HD_MUL GP_HD
#else
#define GP_HD_MUL GP_HD_NOINLINE
#endif
#else
#define GP_HD_MUL inline
#define GP_HD inline
#define GP_HD_NOINLINE inline
#define GP_UNROLL
#endif

namespace gp {

// 32 x 32 -> 64 bit product plus two 32-bit addends; never overflows 64 bits.
// nvcc turns this into one IMAD.WIDE.U32 and adds: the GPU's integer multiplier is 32 bits
// wide, which is why the fields use 32-bit limbs (a 64 x 64 product costs four of these).
GP_HD uint64_t mad_wide(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return (uint64_t)a * b + c + d;
}

// counters[key]++, returning the old value. On the device the threads of a warp that hit the
// same counter at once make one atomic between them (witness scalars put most points in the
// same few buckets: without this, a million atomics queue on one address).
GP_HD uint32_t counter_claim(uint32_t* counters, uint32_t key) {
#if defined(__CUDA_ARCH__)
    namespace cg = cooperative_groups;
    cg::coalesced_group same = cg::labeled_partition(cg::coalesced_threads(), key);
    uint32_t base = 0;
    if (same.thread_rank() == 0) base = atomicAdd(&counters[key], same.size());
    return same.shfl(base, 0) + same.thread_rank();
#else
    return counters[key]++;
#endif
}

// *p = max(*p, v), atomically on the device.
GP_HD void atomic_max(uint32_t* p, uint32_t v) {
#if defined(__CUDA_ARCH__)
    atomicMax(p, v);
#else
    if (v > *p) *p = v;
#endif
}

}  // namespace gp
