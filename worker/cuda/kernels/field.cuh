// Prime fields in Montgomery form: Fp (BLS12-381 base field, 381 bits) and Fr (its scalar field,
// 255 bits).
//
// Layout, on the device and in every buffer the Python side uploads: an element is N 32-bit limbs,
// least significant first, holding a*R mod m with R = 2^(32N) (Fp: N = 12, R = 2^384, 48 bytes;
// Fr: N = 8, R = 2^256, 32 bytes). On a little-endian host these bytes are the element's
// Montgomery value as one little-endian integer, the same bytes as 64-bit limbs would give and the
// same as snarkjs stores in a .zkey. Values are kept fully reduced (< m), so equality is limb
// equality and zero is all limbs zero.
//
// Why 32-bit limbs: a GPU multiplies 32 x 32 -> 64 bits in one instruction (IMAD.WIDE.U32); a
// 64-bit limb product costs four of them plus carries, so 64-bit limbs save nothing there.
#pragma once

#include "common.cuh"

namespace gp {

// BLS12-381 base field modulus p.
struct FpParams {
    static constexpr int N = 12;
    static constexpr uint32_t INV = 0xfffcfffdu;  // -p^-1 mod 2^32
    GP_HD static constexpr uint32_t mod(int i) {
        constexpr uint32_t m[N] = {0xffffaaab, 0xb9feffff, 0xb153ffff, 0x1eabfffe,
                                   0xf6b0f624, 0x6730d2a0, 0xf38512bf, 0x64774b84,
                                   0x434bacd7, 0x4b1ba7b6, 0x397fe69a, 0x1a0111ea};
        return m[i];
    }
    GP_HD static constexpr uint32_t one(int i) {  // R mod p
        constexpr uint32_t m[N] = {0x0002fffd, 0x76090000, 0xc40c0002, 0xebf4000b,
                                   0x53c758ba, 0x5f489857, 0x70525745, 0x77ce5853,
                                   0xa256ec6d, 0x5c071a97, 0xfa80e493, 0x15f65ec3};
        return m[i];
    }
    GP_HD static constexpr uint32_t r2(int i) {  // R^2 mod p
        constexpr uint32_t m[N] = {0x1c341746, 0xf4df1f34, 0x09d104f1, 0x0a76e6a6,
                                   0x4c95b6d5, 0x8de5476c, 0x939d83c0, 0x67eb88a9,
                                   0xb519952d, 0x9a793e85, 0x92cae3aa, 0x11988fe5};
        return m[i];
    }
};

// BLS12-381 scalar field modulus r (the group order).
struct FrParams {
    static constexpr int N = 8;
    static constexpr uint32_t INV = 0xffffffffu;  // -r^-1 mod 2^32
    GP_HD static constexpr uint32_t mod(int i) {
        constexpr uint32_t m[N] = {0x00000001, 0xffffffff, 0xfffe5bfe, 0x53bda402,
                                   0x09a1d805, 0x3339d808, 0x299d7d48, 0x73eda753};
        return m[i];
    }
    GP_HD static constexpr uint32_t one(int i) {
        constexpr uint32_t m[N] = {0xfffffffe, 0x00000001, 0x00034802, 0x5884b7fa,
                                   0xecbc4ff5, 0x998c4fef, 0xacc5056f, 0x1824b159};
        return m[i];
    }
    GP_HD static constexpr uint32_t r2(int i) {
        constexpr uint32_t m[N] = {0xf3f29c6d, 0xc999e990, 0x87925c23, 0x2b6cedcb,
                                   0x7254398f, 0x05d31496, 0x9f59ff11, 0x0748d9d9};
        return m[i];
    }
};

// An element of the prime field described by P. Both moduli leave the top bit of the top limb
// clear (m < R/2), so a + b never carries out of N limbs.
template <class P>
struct Field {
    static constexpr int N = P::N;
    uint32_t v[N];

    GP_HD static Field zero() {
        Field r;
        GP_UNROLL for (int i = 0; i < N; i++) r.v[i] = 0;
        return r;
    }
    GP_HD static Field one() {  // 1 in Montgomery form
        Field r;
        GP_UNROLL for (int i = 0; i < N; i++) r.v[i] = P::one(i);
        return r;
    }
    GP_HD bool is_zero() const {
        uint32_t acc = 0;
        GP_UNROLL for (int i = 0; i < N; i++) acc |= v[i];
        return acc == 0;
    }
    GP_HD bool operator==(const Field& o) const {
        uint32_t acc = 0;
        GP_UNROLL for (int i = 0; i < N; i++) acc |= v[i] ^ o.v[i];
        return acc == 0;
    }
    GP_HD bool operator!=(const Field& o) const { return !(*this == o); }

#if defined(GP_PORTABLE_CARRIES)
    // The same algorithms with 64-bit sums: what a compiler makes of plain C.
    // r = t - m if t >= m, else t (t < 2m).
    GP_HD static Field reduce_once(const Field& t) {
        Field d;
        uint32_t borrow = 0;
        GP_UNROLL for (int i = 0; i < N; i++) {
            uint64_t x = (uint64_t)t.v[i] - P::mod(i) - borrow;
            d.v[i] = (uint32_t)x;
            borrow = (uint32_t)(x >> 32) & 1;
        }
        return borrow ? t : d;
    }

    GP_HD Field operator+(const Field& o) const {
        Field t;
        uint32_t carry = 0;
        GP_UNROLL for (int i = 0; i < N; i++) {
            uint64_t x = (uint64_t)v[i] + o.v[i] + carry;
            t.v[i] = (uint32_t)x;
            carry = (uint32_t)(x >> 32);
        }
        return reduce_once(t);
    }

    GP_HD Field operator-(const Field& o) const {
        Field t;
        uint32_t borrow = 0;
        GP_UNROLL for (int i = 0; i < N; i++) {
            uint64_t x = (uint64_t)v[i] - o.v[i] - borrow;
            t.v[i] = (uint32_t)x;
            borrow = (uint32_t)(x >> 32) & 1;
        }
        if (borrow) {  // went below zero: add m back
            uint32_t carry = 0;
            GP_UNROLL for (int i = 0; i < N; i++) {
                uint64_t x = (uint64_t)t.v[i] + P::mod(i) + carry;
                t.v[i] = (uint32_t)x;
                carry = (uint32_t)(x >> 32);
            }
        }
        return t;
    }

    // Montgomery product a*b*R^-1 mod m, CIOS with 32-bit limbs and 64-bit accumulators. Taken
    // by value so that, when not inlined (see GP_HD_MUL), the operands travel in registers.
    GP_HD_MUL static Field mont_mul(const Field a, const Field b) {
        uint32_t t[N + 2];
        GP_UNROLL for (int i = 0; i < N + 2; i++) t[i] = 0;
        GP_UNROLL for (int i = 0; i < N; i++) {
            uint32_t c = 0;
            GP_UNROLL for (int j = 0; j < N; j++) {
                uint64_t x = mad_wide(a.v[j], b.v[i], t[j], c);
                t[j] = (uint32_t)x;
                c = (uint32_t)(x >> 32);
            }
            uint64_t s = (uint64_t)t[N] + c;
            t[N] = (uint32_t)s;
            t[N + 1] = (uint32_t)(s >> 32);
            uint32_t m = t[0] * P::INV;
            uint64_t x = mad_wide(m, P::mod(0), t[0], 0);
            c = (uint32_t)(x >> 32);
            GP_UNROLL for (int j = 1; j < N; j++) {
                x = mad_wide(m, P::mod(j), t[j], c);
                t[j - 1] = (uint32_t)x;
                c = (uint32_t)(x >> 32);
            }
            s = (uint64_t)t[N] + c;
            t[N - 1] = (uint32_t)s;
            t[N] = t[N + 1] + (uint32_t)(s >> 32);
        }
        // CIOS leaves t < 2m for inputs below m; one conditional subtraction reduces it.
        Field r;
        GP_UNROLL for (int i = 0; i < N; i++) r.v[i] = t[i];
        return reduce_once(r);
    }
#else
    // The carry-chain arithmetic (common.cuh): on the device every limb of an addition or of a
    // row of products is one instruction passing its carry in the flag. GP_PORTABLE_CARRIES
    // selects the same algorithms written with 64-bit sums instead (see below), to compare.

    // r = t - m if t >= m, else t (t < 2m).
    GP_HD static Field reduce_once(const Field& t) {
        Field d;
        Carry c;
        d.v[0] = sub_cc(t.v[0], P::mod(0), c);
        GP_UNROLL for (int i = 1; i < N; i++) d.v[i] = subc_cc(t.v[i], P::mod(i), c);
        const uint32_t borrow = subc(0, 0, c);  // all ones when t < m
        return borrow ? t : d;
    }

    GP_HD Field operator+(const Field& o) const {
        Field t;
        Carry c;
        t.v[0] = add_cc(v[0], o.v[0], c);
        GP_UNROLL for (int i = 1; i < N; i++) t.v[i] = addc_cc(v[i], o.v[i], c);
        return reduce_once(t);  // no carry out of the top limb: m < R/2
    }

    GP_HD Field operator-(const Field& o) const {
        Field t;
        Carry c;
        t.v[0] = sub_cc(v[0], o.v[0], c);
        GP_UNROLL for (int i = 1; i < N; i++) t.v[i] = subc_cc(v[i], o.v[i], c);
        const uint32_t below = subc(0, 0, c);  // all ones when it went below zero: add m back
        t.v[0] = add_cc(t.v[0], P::mod(0) & below, c);
        GP_UNROLL for (int i = 1; i < N; i++) t.v[i] = addc_cc(t.v[i], P::mod(i) & below, c);
        return t;
    }

    // Montgomery product a*b*R^-1 mod m (CIOS). For each limb b[i]: t += a*b[i], then
    // t += q*m with q chosen to clear t[0], then t /= 2^32. Each `+=` of a row of products is
    // two carry chains: the low halves into t[0..N-1], then the high halves one limb up. With
    // m < R/2 and t < 2m, t + a*b[i] + q*m < 2^33 m < 2^(32(N+1)): N+1 limbs hold it, and
    // nothing carries out of t[N]. Inputs below m leave t < 2m.
    GP_HD_MUL static Field mont_mul(const Field a, const Field b) {
        uint32_t t[N + 1];
        GP_UNROLL for (int i = 0; i < N + 1; i++) t[i] = 0;
        Carry c;
        GP_UNROLL for (int i = 0; i < N; i++) {
            const uint32_t bi = b.v[i];
            t[0] = mad_lo_cc(a.v[0], bi, t[0], c);
            GP_UNROLL for (int j = 1; j < N; j++) t[j] = madc_lo_cc(a.v[j], bi, t[j], c);
            t[N] = addc(t[N], 0, c);
            t[1] = mad_hi_cc(a.v[0], bi, t[1], c);
            GP_UNROLL for (int j = 1; j < N; j++) t[j + 1] = madc_hi_cc(a.v[j], bi, t[j + 1], c);

            const uint32_t q = t[0] * P::INV;
            t[0] = mad_lo_cc(q, P::mod(0), t[0], c);  // 0 by the choice of q; its carry counts
            GP_UNROLL for (int j = 1; j < N; j++) t[j] = madc_lo_cc(q, P::mod(j), t[j], c);
            t[N] = addc(t[N], 0, c);
            t[1] = mad_hi_cc(q, P::mod(0), t[1], c);
            GP_UNROLL for (int j = 1; j < N; j++) t[j + 1] = madc_hi_cc(q, P::mod(j), t[j + 1], c);

            GP_UNROLL for (int j = 0; j < N; j++) t[j] = t[j + 1];
            t[N] = 0;
        }
        Field r;
        GP_UNROLL for (int i = 0; i < N; i++) r.v[i] = t[i];
        return reduce_once(r);
    }
#endif  // GP_PORTABLE_CARRIES

    GP_HD Field operator-() const { return zero() - *this; }
    GP_HD Field dbl() const { return *this + *this; }

    GP_HD Field operator*(const Field& b) const { return mont_mul(*this, b); }

    GP_HD Field sqr() const { return *this * *this; }

    GP_HD Field to_mont() const {  // a -> a*R
        Field r2;
        GP_UNROLL for (int i = 0; i < N; i++) r2.v[i] = P::r2(i);
        return *this * r2;
    }
    GP_HD Field from_mont() const {  // a*R -> a
        Field one_raw = zero();
        one_raw.v[0] = 1;
        return *this * one_raw;
    }

    // this^e for an exponent of `limbs` 32-bit limbs, least significant first.
    GP_HD_NOINLINE Field pow(const uint32_t* e, int limbs) const {
        Field r = one();
        for (int i = limbs - 1; i >= 0; i--) {
            for (int b = 31; b >= 0; b--) {
                r = r.sqr();
                if ((e[i] >> b) & 1) r = r * *this;
            }
        }
        return r;
    }
    GP_HD Field pow_u32(uint32_t e) const { return pow(&e, 1); }

    // Inverse by Fermat (a^(m-2)); 0 maps to 0. Used off the hot path (final affine conversion,
    // twiddle set-up, tests).
    GP_HD_NOINLINE Field inverse() const {
        uint32_t e[N];
        GP_UNROLL for (int i = 0; i < N; i++) e[i] = P::mod(i);
        uint32_t borrow = 2;
        GP_UNROLL for (int i = 0; i < N; i++) {  // e = m - 2
            uint64_t x = (uint64_t)e[i] - borrow;
            e[i] = (uint32_t)x;
            borrow = (uint32_t)(x >> 32) & 1;
        }
        return pow(e, N);
    }
};

using Fp = Field<FpParams>;
using Fr = Field<FrParams>;

}  // namespace gp
