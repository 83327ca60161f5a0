// Fp2 = Fp[u] / (u^2 + 1), the field of G2's coordinates.
//
// Layout: c0 then c1, each an Fp element (48 bytes, Montgomery, little-endian), 96 bytes in all;
// the order of snarkjs's .zkey and of py-arkworks's xy bytes.
#pragma once

#include "field.cuh"

namespace gp {

struct Fp2 {
    Fp c0, c1;

    GP_HD static Fp2 zero() { return Fp2{Fp::zero(), Fp::zero()}; }
    GP_HD static Fp2 one() { return Fp2{Fp::one(), Fp::zero()}; }
    GP_HD bool is_zero() const { return c0.is_zero() && c1.is_zero(); }
    GP_HD bool operator==(const Fp2& o) const { return c0 == o.c0 && c1 == o.c1; }
    GP_HD bool operator!=(const Fp2& o) const { return !(*this == o); }
    GP_HD Fp2 operator+(const Fp2& o) const { return Fp2{c0 + o.c0, c1 + o.c1}; }
    GP_HD Fp2 operator-(const Fp2& o) const { return Fp2{c0 - o.c0, c1 - o.c1}; }
    GP_HD Fp2 operator-() const { return Fp2{-c0, -c1}; }
    GP_HD Fp2 dbl() const { return *this + *this; }

    // Karatsuba: three Fp products instead of four.
    GP_HD Fp2 operator*(const Fp2& b) const {
        Fp t0 = c0 * b.c0;
        Fp t1 = c1 * b.c1;
        Fp t2 = (c0 + c1) * (b.c0 + b.c1);
        return Fp2{t0 - t1, t2 - t0 - t1};
    }

    // (c0 + c1 u)^2 = (c0 + c1)(c0 - c1) + 2 c0 c1 u: two Fp products.
    GP_HD Fp2 sqr() const {
        Fp t = c0 * c1;
        return Fp2{(c0 + c1) * (c0 - c1), t.dbl()};
    }

    GP_HD Fp2 to_mont() const { return Fp2{c0.to_mont(), c1.to_mont()}; }
    GP_HD Fp2 from_mont() const { return Fp2{c0.from_mont(), c1.from_mont()}; }

    // 1 / (c0 + c1 u) = (c0 - c1 u) / (c0^2 + c1^2); 0 maps to 0.
    GP_HD Fp2 inverse() const {
        Fp t = (c0.sqr() + c1.sqr()).inverse();
        return Fp2{c0 * t, -(c1 * t)};
    }
};

}  // namespace gp
