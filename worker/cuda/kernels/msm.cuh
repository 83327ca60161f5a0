// Pippenger's bucket method, per-thread steps: what one GPU thread does in msm.cu (also tested
// one step at a time on the host, through tests/cuda/host_arith.cpp).
//
// Scalars: 8 32-bit limbs, least significant first, in standard form (not Montgomery), < 2^255.
// Each is cut into nwin = ceil(256 / c) signed c-bit digits d_w in [-2^(c-1), 2^(c-1)] with
// sum d_w 2^(cw) = s (the top window holds bit 255, which is 0, so its digit never carries out).
// Digit d of point i lands in bucket |d| of its window with the sign kept beside the point index:
// an entry is i | (d < 0) << 31. Bucket 0 (digit 0) is never summed.
#pragma once

#include "curve.cuh"

namespace gp {

constexpr int SCALAR_LIMBS = 8;
constexpr uint32_t ENTRY_NEG = 0x80000000u;

GP_HD int msm_windows(int c) { return (256 + c - 1) / c; }
GP_HD uint32_t msm_buckets(int c) { return (1u << (c - 1)) + 1; }  // per window, with bucket 0

// Bits [bit, bit + c) of a scalar (c <= 31); bits past 255 read as 0.
GP_HD uint32_t scalar_window(const uint32_t* s, int bit, int c) {
    int limb = bit >> 5, off = bit & 31;
    if (limb >= SCALAR_LIMBS) return 0;
    uint64_t x = s[limb];
    if (limb + 1 < SCALAR_LIMBS) x |= (uint64_t)s[limb + 1] << 32;
    return (uint32_t)(x >> off) & ((1u << c) - 1);
}

// Signed digit of every window: out[w * stride] = |d_w| | (d_w < 0) << 31.
GP_HD void signed_digits(const uint32_t* s, int c, int nwin, uint32_t* out, uint32_t stride) {
    const uint32_t half = 1u << (c - 1);
    uint32_t carry = 0;
    for (int w = 0; w < nwin; w++) {
        uint32_t d = scalar_window(s, w * c, c) + carry;
        if (d > half) {  // d - 2^c, negative
            out[(uint64_t)w * stride] = ((1u << c) - d) | ENTRY_NEG;
            carry = 1;
        } else {
            out[(uint64_t)w * stride] = d;
            carry = 0;
        }
    }
}

// Sum of the points named by entries[begin, end) (affine, signed by the entry's top bit).
template <class F>
GP_HD Xyzz<F> sum_entries(const Affine<F>* points, const uint32_t* entries, uint32_t begin,
                          uint32_t end) {
    Xyzz<F> acc = Xyzz<F>::identity();
    for (uint32_t k = begin; k < end; k++) {
        uint32_t e = entries[k];
        Affine<F> p = points[e & ~ENTRY_NEG];
        acc = acc.add_affine((e & ENTRY_NEG) ? -p : p);
    }
    return acc;
}

template <class F>
GP_HD Xyzz<F> sum_xyzz(const Xyzz<F>* in, uint32_t begin, uint32_t end) {
    Xyzz<F> acc = Xyzz<F>::identity();
    for (uint32_t k = begin; k < end; k++) acc = acc + in[k];
    return acc;
}

// Long buckets are cut into chunks of at most `chunk` entries, one thread each; the chunk sums
// become the next round's entries until every bucket has one. chunk_starts is the exclusive
// prefix sum of the per-bucket chunk counts; the bucket of chunk j is the last one starting at or
// before j (empty buckets start where their successor does, so they are never chosen).
GP_HD uint32_t chunks_of(uint32_t count, uint32_t chunk) { return (count + chunk - 1) / chunk; }

GP_HD uint32_t bucket_of_chunk(const uint32_t* chunk_starts, uint32_t nbuckets, uint32_t j) {
    uint32_t lo = 0, hi = nbuckets;  // first index with chunk_starts > j, minus one
    while (lo < hi) {
        uint32_t mid = (lo + hi) >> 1;
        if (chunk_starts[mid] <= j) lo = mid + 1;
        else hi = mid;
    }
    return lo - 1;
}

struct ChunkRange {
    uint32_t begin, end;
};

GP_HD ChunkRange chunk_range(const uint32_t* offsets, const uint32_t* counts,
                             const uint32_t* chunk_starts, uint32_t bucket, uint32_t j,
                             uint32_t chunk) {
    uint32_t begin = offsets[bucket] + (j - chunk_starts[bucket]) * chunk;
    uint32_t end = offsets[bucket] + counts[bucket];
    return ChunkRange{begin, begin + chunk < end ? begin + chunk : end};
}

// Buckets [lo, hi) of one window, weighted by their index: sum_j j * S_j. A running sum from the
// top gives sum (j - lo + 1) S_j; the remaining (lo - 1) * sum S_j is a short multiplication.
template <class F>
GP_HD Xyzz<F> weigh_buckets(const Xyzz<F>* buckets, uint32_t lo, uint32_t hi) {
    Xyzz<F> running = Xyzz<F>::identity();
    Xyzz<F> total = Xyzz<F>::identity();
    for (uint32_t j = hi; j-- > lo;) {
        running = running + buckets[j];
        total = total + running;
    }
    return lo > 1 ? total + running.mul_u32(lo - 1) : total;
}

// ---------------------------------------------------------------------------------------------
// One thread of each msm.cu kernel; `i`, `k`, `j`, `b` are the global thread index, in range.

GP_HD void digits_step(uint32_t i, const uint32_t* scalars, uint32_t n, int c, int nwin,
                       uint32_t* digits, uint32_t* counts) {
    uint32_t s[SCALAR_LIMBS];
    for (int k = 0; k < SCALAR_LIMBS; k++) s[k] = scalars[(uint64_t)i * SCALAR_LIMBS + k];
    signed_digits(s, c, nwin, digits + i, n);
    const uint32_t nb = msm_buckets(c);
    for (int w = 0; w < nwin; w++) {
        uint32_t d = digits[(uint64_t)w * n + i] & ~ENTRY_NEG;
        if (d) counter_claim(counts, w * nb + d);
    }
}

// k = w * n + i; cursor starts as a copy of the bucket offsets.
GP_HD void scatter_step(uint64_t k, const uint32_t* digits, uint32_t n, int c, uint32_t* cursor,
                        uint32_t* entries) {
    uint32_t w = (uint32_t)(k / n), i = (uint32_t)(k % n);
    uint32_t e = digits[k];
    uint32_t d = e & ~ENTRY_NEG;
    if (!d) return;
    uint32_t pos = counter_claim(cursor, w * msm_buckets(c) + d);
    entries[pos] = i | (e & ENTRY_NEG);
}

GP_HD void chunk_counts_step(uint32_t b, const uint32_t* counts, uint32_t chunk, uint32_t* chunks,
                             uint32_t* max_chunks) {
    uint32_t k = chunks_of(counts[b], chunk);
    chunks[b] = k;
    if (k > 1) atomic_max(max_chunks, k);
}

template <class F>
GP_HD void sum_entries_step(uint32_t j, const Affine<F>* points, const uint32_t* entries,
                            const uint32_t* offsets, const uint32_t* counts,
                            const uint32_t* chunk_starts, uint32_t nbuckets, uint32_t chunk,
                            Xyzz<F>* out) {
    uint32_t b = bucket_of_chunk(chunk_starts, nbuckets, j);
    ChunkRange r = chunk_range(offsets, counts, chunk_starts, b, j, chunk);
    out[j] = sum_entries(points, entries, r.begin, r.end);
}

template <class F>
GP_HD void sum_xyzz_step(uint32_t j, const Xyzz<F>* in, const uint32_t* offsets,
                         const uint32_t* counts, const uint32_t* chunk_starts, uint32_t nbuckets,
                         uint32_t chunk, Xyzz<F>* out) {
    uint32_t b = bucket_of_chunk(chunk_starts, nbuckets, j);
    ChunkRange r = chunk_range(offsets, counts, chunk_starts, b, j, chunk);
    out[j] = sum_xyzz(in, r.begin, r.end);
}

// buckets[b] = the one chunk sum of bucket b, or infinity.
template <class F>
GP_HD void gather_step(uint32_t b, const Xyzz<F>* sums, const uint32_t* chunks,
                       const uint32_t* chunk_starts, Xyzz<F>* buckets) {
    buckets[b] = chunks[b] ? sums[chunk_starts[b]] : Xyzz<F>::identity();
}

// k = w * runs + s: run s of window w, (2^(c-1) / runs) buckets from bucket 1 + s * run.
template <class F>
GP_HD void weigh_step(uint32_t k, const Xyzz<F>* buckets, int c, uint32_t runs, Xyzz<F>* out) {
    uint32_t w = k / runs, s = k % runs;
    uint32_t run = (msm_buckets(c) - 1) / runs;
    uint32_t lo = 1 + s * run;
    out[k] = weigh_buckets(buckets + (uint64_t)w * msm_buckets(c), lo, lo + run);
}

}  // namespace gp
