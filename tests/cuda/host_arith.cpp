// The CUDA arithmetic headers compiled by a plain C++ compiler, behind a C ABI for ctypes
// (tests/unit/test_cuda_arith.py). Buffers are the device layouts of worker/cuda/kernels: field
// elements as Montgomery little-endian bytes, affine points x || y with (0, 0) for infinity,
// scalars as 32 little-endian bytes in standard form.
//
// Projective inputs are made from affine points and a factor z (X = x z^2, Y = y z^3, ZZ = z^2,
// ZZZ = z^3), so the formulas are exercised with ZZ != 1. Results come back affine.
//
// The kernels themselves (msm.cu, ntt.cu) are compiled beside this file by hostlib.py, with the
// thread model of kernel_threads.h.
#include <string.h>

#include "curve.cuh"
#include "msm.cuh"
#include "ntt.cuh"

using namespace gp;

namespace {

template <class T>
T load(const uint8_t* p) {
    T v;
    memcpy(&v, p, sizeof v);
    return v;
}

template <class T>
void store(uint8_t* p, const T& v) {
    memcpy(p, &v, sizeof v);
}

enum FieldOp { ADD, SUB, MUL, SQR, NEG, INV, TO_MONT, FROM_MONT };

template <class F>
int field_op(int op, const uint8_t* a_bytes, const uint8_t* b_bytes, uint8_t* out) {
    F a = load<F>(a_bytes), b = load<F>(b_bytes), r;
    switch (op) {
        case ADD: r = a + b; break;
        case SUB: r = a - b; break;
        case MUL: r = a * b; break;
        case SQR: r = a.sqr(); break;
        case NEG: r = -a; break;
        case INV: r = a.inverse(); break;
        case TO_MONT: r = a.to_mont(); break;
        case FROM_MONT: r = a.from_mont(); break;
        default: return -1;
    }
    store(out, r);
    return 0;
}

template <class F>
Xyzz<F> scaled(const uint8_t* aff, const uint8_t* z_bytes) {
    Affine<F> a = load<Affine<F>>(aff);
    if (a.is_identity()) return Xyzz<F>::identity();
    F z = load<F>(z_bytes);
    F zz = z.sqr();
    F zzz = zz * z;
    return Xyzz<F>{a.x * zz, a.y * zzz, zz, zzz};
}

enum PointOp { P_ADD, P_ADD_AFFINE, P_DBL, P_DBL_AFFINE, P_NEG, P_EQUALS };

template <class F>
int point_op(int op, const uint8_t* a, const uint8_t* za, const uint8_t* b, const uint8_t* zb,
             uint8_t* out) {
    Xyzz<F> p = scaled<F>(a, za);
    Xyzz<F> r;
    switch (op) {
        case P_ADD: r = p + scaled<F>(b, zb); break;
        case P_ADD_AFFINE: r = p.add_affine(load<Affine<F>>(b)); break;
        case P_DBL: r = p.dbl(); break;
        case P_DBL_AFFINE: r = Xyzz<F>::dbl_affine(load<Affine<F>>(a)); break;
        case P_NEG: r = -p; break;
        case P_EQUALS: return p.equals(scaled<F>(b, zb)) ? 1 : 0;
        default: return -1;
    }
    store(out, r.to_affine());
    return 0;
}

template <class F>
void point_mul(const uint8_t* a, const uint8_t* scalar, uint8_t* out) {
    uint32_t k[SCALAR_LIMBS];
    memcpy(k, scalar, sizeof k);
    store(out, Xyzz<F>::from_affine(load<Affine<F>>(a)).mul(k, SCALAR_LIMBS).to_affine());
}

}  // namespace

extern "C" {

int gp_fp_op(int op, const uint8_t* a, const uint8_t* b, uint8_t* out) {
    return field_op<Fp>(op, a, b, out);
}
int gp_fr_op(int op, const uint8_t* a, const uint8_t* b, uint8_t* out) {
    return field_op<Fr>(op, a, b, out);
}

int gp_fp2_op(int op, const uint8_t* a, const uint8_t* b, uint8_t* out) {
    return field_op<Fp2>(op, a, b, out);
}

int gp_g1_op(int op, const uint8_t* a, const uint8_t* za, const uint8_t* b, const uint8_t* zb,
             uint8_t* out) {
    return point_op<Fp>(op, a, za, b, zb, out);
}
int gp_g2_op(int op, const uint8_t* a, const uint8_t* za, const uint8_t* b, const uint8_t* zb,
             uint8_t* out) {
    return point_op<Fp2>(op, a, za, b, zb, out);
}

void gp_g1_mul(const uint8_t* a, const uint8_t* k, uint8_t* out) { point_mul<Fp>(a, k, out); }
void gp_g2_mul(const uint8_t* a, const uint8_t* k, uint8_t* out) { point_mul<Fp2>(a, k, out); }

// Signed digits of one scalar, for checking the decomposition itself.
void gp_signed_digits(const uint8_t* scalar, int c, uint32_t* out) {
    uint32_t k[SCALAR_LIMBS];
    memcpy(k, scalar, sizeof k);
    signed_digits(k, c, msm_windows(c), out, 1);
}

}  // extern "C"
