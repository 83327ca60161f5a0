// Points of BLS12-381's G1 (over Fp) and G2 (over Fp2): y^2 = x^3 + b, a = 0.
//
// At rest (uploaded key material, results) a point is affine: x then y, Montgomery limbs as in
// field.cuh (G1: 96 bytes, G2: 192 bytes), and the point at infinity is x = y = 0, as snarkjs
// stores it ((0, 0) is on neither curve, since b != 0).
//
// Sums are kept in XYZZ coordinates (x = X/ZZ, y = Y/ZZZ, ZZ^3 = ZZZ^2), infinity as ZZ = 0:
// adding an affine point costs 8M + 2S, two XYZZ points 12M + 2S, a doubling 6M + 3S, with no
// inversion; formulas madd-2008-s, add-2008-s and dbl-2008-s-1 of the Explicit-Formulas Database.
#pragma once

#include "fp2.cuh"

namespace gp {

template <class F>
struct Affine {
    F x, y;

    GP_HD static Affine identity() { return Affine{F::zero(), F::zero()}; }
    GP_HD bool is_identity() const { return x.is_zero() && y.is_zero(); }
    GP_HD Affine operator-() const { return is_identity() ? *this : Affine{x, -y}; }
    GP_HD bool operator==(const Affine& o) const { return x == o.x && y == o.y; }
};

template <class F>
struct Xyzz {
    F x, y, zz, zzz;

    GP_HD static Xyzz identity() { return Xyzz{F::zero(), F::zero(), F::zero(), F::zero()}; }
    GP_HD bool is_identity() const { return zz.is_zero(); }

    GP_HD static Xyzz from_affine(const Affine<F>& a) {
        if (a.is_identity()) return identity();
        return Xyzz{a.x, a.y, F::one(), F::one()};
    }

    GP_HD Xyzz operator-() const { return Xyzz{x, -y, zz, zzz}; }

    // One inversion: I = 1/(ZZ*ZZZ), so 1/ZZ = I*ZZZ and 1/ZZZ = I*ZZ.
    GP_HD_NOINLINE Affine<F> to_affine() const {
        if (is_identity()) return Affine<F>::identity();
        F inv = (zz * zzz).inverse();
        return Affine<F>{x * (inv * zzz), y * (inv * zz)};
    }

    // dbl-2008-s-1.
    GP_HD_NOINLINE Xyzz dbl() const {
        if (is_identity()) return *this;
        F u = y.dbl();
        F v = u.sqr();
        F w = u * v;
        F s = x * v;
        F x2 = x.sqr();
        F m = x2.dbl() + x2;
        F x3 = m.sqr() - s.dbl();
        F y3 = m * (s - x3) - w * y;
        return Xyzz{x3, y3, zz * v, zzz * w};
    }

    // mdbl-2008-s-1: doubling an affine point (ZZ = ZZZ = 1).
    GP_HD_NOINLINE static Xyzz dbl_affine(const Affine<F>& a) {
        if (a.is_identity()) return identity();
        F u = a.y.dbl();
        F v = u.sqr();
        F w = u * v;
        F s = a.x * v;
        F x2 = a.x.sqr();
        F m = x2.dbl() + x2;
        F x3 = m.sqr() - s.dbl();
        F y3 = m * (s - x3) - w * a.y;
        return Xyzz{x3, y3, v, w};
    }

    // madd-2008-s: this + a, a affine.
    GP_HD_NOINLINE Xyzz add_affine(const Affine<F>& a) const {
        if (a.is_identity()) return *this;
        if (is_identity()) return from_affine(a);
        F p = a.x * zz - x;
        F r = a.y * zzz - y;
        if (p.is_zero()) return r.is_zero() ? dbl_affine(a) : identity();
        F pp = p.sqr();
        F ppp = p * pp;
        F q = x * pp;
        F x3 = r.sqr() - ppp - q.dbl();
        F y3 = r * (q - x3) - y * ppp;
        return Xyzz{x3, y3, zz * pp, zzz * ppp};
    }

    // add-2008-s: this + o.
    GP_HD_NOINLINE Xyzz operator+(const Xyzz& o) const {
        if (o.is_identity()) return *this;
        if (is_identity()) return o;
        F u1 = x * o.zz;
        F u2 = o.x * zz;
        F s1 = y * o.zzz;
        F s2 = o.y * zzz;
        F p = u2 - u1;
        F r = s2 - s1;
        if (p.is_zero()) return r.is_zero() ? dbl() : identity();
        F pp = p.sqr();
        F ppp = p * pp;
        F q = u1 * pp;
        F x3 = r.sqr() - ppp - q.dbl();
        F y3 = r * (q - x3) - s1 * ppp;
        return Xyzz{x3, y3, zz * o.zz * pp, zzz * o.zzz * ppp};
    }

    // Same point, compared across representations: X1 ZZ2 = X2 ZZ1 and Y1 ZZZ2 = Y2 ZZZ1.
    GP_HD bool equals(const Xyzz& o) const {
        if (is_identity() || o.is_identity()) return is_identity() && o.is_identity();
        return x * o.zz == o.x * zz && y * o.zzz == o.y * zzz;
    }

    // k * this by double-and-add over the `limbs` 32-bit limbs of k (little-endian).
    GP_HD_NOINLINE Xyzz mul(const uint32_t* k, int limbs) const {
        Xyzz acc = identity();
        for (int i = limbs - 1; i >= 0; i--) {
            for (int b = 31; b >= 0; b--) {
                acc = acc.dbl();
                if ((k[i] >> b) & 1) acc = acc + *this;
            }
        }
        return acc;
    }

    // k * this for a small k, skipping the leading zero bits.
    GP_HD_NOINLINE Xyzz mul_u32(uint32_t k) const {
        Xyzz acc = identity();
        for (int b = 31; b >= 0; b--) {
            if (!acc.is_identity()) acc = acc.dbl();
            if ((k >> b) & 1) acc = acc + *this;
        }
        return acc;
    }
};

using G1Affine = Affine<Fp>;
using G1Xyzz = Xyzz<Fp>;
using G2Affine = Affine<Fp2>;
using G2Xyzz = Xyzz<Fp2>;

}  // namespace gp
