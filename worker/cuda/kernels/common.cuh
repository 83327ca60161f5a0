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

// The global index of this thread as `i`; threads past `limit` return. (In a kernel: the tests
// run the kernel files on the host with the thread model of tests/cuda/kernel_threads.h.)
#define GP_THREAD_INDEX(i, limit)                                          \
    const uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; \
    if (i >= (uint64_t)(limit)) return;

namespace gp {

// 32 x 32 -> 64 bit product plus two 32-bit addends; never overflows 64 bits.
// nvcc turns this into one IMAD.WIDE.U32 and adds: the GPU's integer multiplier is 32 bits
// wide, which is why the fields use 32-bit limbs (a 64 x 64 product costs four of these).
GP_HD uint64_t mad_wide(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return (uint64_t)a * b + c + d;
}

// Carry chains: the instructions that pass a carry (or borrow) from one 32-bit limb to the next
// in the GPU's carry flag, one instruction per limb (PTX add.cc/addc, sub.cc/subc, mad.lo.cc,
// madc.hi.cc, ...), where 64-bit sums would take two or three. On the host the flag is `c.cf`,
// so that g++ runs the same chains in the arithmetic tests; on the device `Carry` is empty and
// the flag is the hardware's. A chain starts with a non-`c` function (add_cc, sub_cc, mad_*_cc),
// which ignores the incoming flag, and nothing but these functions may run inside one (a call
// or other arithmetic could clobber the flag). Subtraction's flag is the borrow, as in PTX.
struct Carry {
#if !defined(__CUDA_ARCH__)
    uint32_t cf = 0;
#endif
};

#if defined(__CUDA_ARCH__)
#define GP_CHAIN2(name, insn)                                              \
    __device__ __forceinline__ uint32_t name(uint32_t a, uint32_t b, Carry&) { \
        uint32_t r;                                                        \
        asm volatile(insn " %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));     \
        return r;                                                          \
    }
#define GP_CHAIN3(name, insn)                                                          \
    __device__ __forceinline__ uint32_t name(uint32_t a, uint32_t b, uint32_t d, Carry&) { \
        uint32_t r;                                                                    \
        asm volatile(insn " %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(d));     \
        return r;                                                                      \
    }
GP_CHAIN2(add_cc, "add.cc.u32")
GP_CHAIN2(addc_cc, "addc.cc.u32")
GP_CHAIN2(addc, "addc.u32")
GP_CHAIN2(sub_cc, "sub.cc.u32")
GP_CHAIN2(subc_cc, "subc.cc.u32")
GP_CHAIN2(subc, "subc.u32")
GP_CHAIN3(mad_lo_cc, "mad.lo.cc.u32")
GP_CHAIN3(madc_lo_cc, "madc.lo.cc.u32")
GP_CHAIN3(mad_hi_cc, "mad.hi.cc.u32")
GP_CHAIN3(madc_hi_cc, "madc.hi.cc.u32")
#undef GP_CHAIN2
#undef GP_CHAIN3
#else
// The host's model of each instruction: the result, and the flag it leaves (or keeps).
inline uint32_t carry_out(uint64_t sum, Carry& c) {
    c.cf = (uint32_t)(sum >> 32);
    return (uint32_t)sum;
}
inline uint32_t borrow_out(uint64_t diff, Carry& c) {
    c.cf = (uint32_t)(diff >> 63);
    return (uint32_t)diff;
}
inline uint32_t add_cc(uint32_t a, uint32_t b, Carry& c) { return carry_out((uint64_t)a + b, c); }
inline uint32_t addc_cc(uint32_t a, uint32_t b, Carry& c) {
    return carry_out((uint64_t)a + b + c.cf, c);
}
inline uint32_t addc(uint32_t a, uint32_t b, Carry& c) { return a + b + c.cf; }
inline uint32_t sub_cc(uint32_t a, uint32_t b, Carry& c) { return borrow_out((uint64_t)a - b, c); }
inline uint32_t subc_cc(uint32_t a, uint32_t b, Carry& c) {
    return borrow_out((uint64_t)a - b - c.cf, c);
}
inline uint32_t subc(uint32_t a, uint32_t b, Carry& c) { return a - b - c.cf; }
inline uint32_t mad_lo_cc(uint32_t a, uint32_t b, uint32_t d, Carry& c) {
    return carry_out((uint64_t)(a * b) + d, c);
}
inline uint32_t madc_lo_cc(uint32_t a, uint32_t b, uint32_t d, Carry& c) {
    return carry_out((uint64_t)(a * b) + d + c.cf, c);
}
inline uint32_t mad_hi_cc(uint32_t a, uint32_t b, uint32_t d, Carry& c) {
    return carry_out((((uint64_t)a * b) >> 32) + d, c);
}
inline uint32_t madc_hi_cc(uint32_t a, uint32_t b, uint32_t d, Carry& c) {
    return carry_out((((uint64_t)a * b) >> 32) + d + c.cf, c);
}
#endif

// counters[key]++, returning the old value. On the device the threads of a warp that hit the
// same counter at once make one atomic between them (witness scalars put most points in the
// same few buckets: without this, a million atomics queue on one address).
GP_HD uint32_t counter_claim(uint32_t* counters, uint32_t key) {
#if defined(__CUDA_ARCH__) || defined(GP_HOST_WARPS)  // tests/cuda/kernel_threads.h
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
#if defined(__CUDA_ARCH__) || defined(GP_HOST_WARPS)
    atomicMax(p, v);
#else
    if (v > *p) *p = v;
#endif
}

}  // namespace gp
