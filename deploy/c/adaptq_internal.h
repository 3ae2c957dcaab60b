/*
 * What the kernel files share: the IR's roundings, packed-code access, TFLite's fixed-point
 * primitives and the dual 16-bit MAC instructions. Only C99 with exact-width integers; no libm, no
 * rounding mode.
 */
#ifndef ADAPTQ_INTERNAL_H
#define ADAPTQ_INTERNAL_H

#include <float.h>
#include <string.h>

#include "adaptq.h"

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "adaptq needs float expressions evaluated in float (FLT_EVAL_METHOD == 0), e.g. SSE2 or an FPU"
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "adaptq stores half and float elements little endian, as the IR and the reference do"
#endif
/* rdbpot and the DSP paths shift negative int32 values right; C leaves that to the implementation,
 * and every compiler these kernels target shifts arithmetically. This stops a build where it does not. */
typedef char adaptq_needs_arithmetic_shift[(-8 >> 1) == -4 ? 1 : -1];

#if defined(__ARM_FEATURE_DSP) && __ARM_FEATURE_DSP
#include <arm_acle.h>
#define ADAPTQ_DSP 1
#endif

/* -- dual 16-bit lanes: the Armv7E-M instructions, or C that gives the same bits ------------------------ */
#define ROR8(x) ((int32_t)(((uint32_t)(x) >> 8) | ((uint32_t)(x) << 24)))
#ifdef ADAPTQ_DSP
#define SXTB16(x) ((int32_t)__sxtb16((uint32_t)(x)))
#define UXTB16(x) ((int32_t)__uxtb16((uint32_t)(x)))
#define SMLAD(a, b, acc) ((int32_t)__smlad((uint32_t)(a), (uint32_t)(b), (uint32_t)(acc)))
#define SMLABB(a, b, acc) ((int32_t)__smlabb((int32_t)(a), (int32_t)(b), (int32_t)(acc)))
#define SMLATT(a, b, acc) ((int32_t)__smlatt((int32_t)(a), (int32_t)(b), (int32_t)(acc)))
/* The rotation folded into the extension, and SMMULR, which arm_acle.h does not offer. */
static inline int32_t SXTB16_ROR8(int32_t x)
{
    int32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline int32_t UXTB16_ROR8(int32_t x)
{
    int32_t r;
    __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}
static inline int32_t SMMULR(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
#else
static inline int32_t lanes(int32_t lo, int32_t hi) { return (int32_t)(((uint32_t)hi << 16) | ((uint32_t)lo & 0xffffu)); }
static inline int32_t lane_lo(int32_t x) { return (int16_t)(uint16_t)((uint32_t)x & 0xffffu); }
static inline int32_t lane_hi(int32_t x) { return (int16_t)(uint16_t)((uint32_t)x >> 16); }
#define SXTB16(x) lanes((int8_t)(uint8_t)((uint32_t)(x) & 0xffu), (int8_t)(uint8_t)(((uint32_t)(x) >> 16) & 0xffu))
#define UXTB16(x) ((int32_t)((uint32_t)(x) & 0x00ff00ffu))
#define SXTB16_ROR8(x) SXTB16(ROR8(x))
#define UXTB16_ROR8(x) UXTB16(ROR8(x))
#define SMLAD(a, b, acc) ((acc) + lane_lo(a) * lane_lo(b) + lane_hi(a) * lane_hi(b))
#define SMLABB(a, b, acc) ((acc) + lane_lo(a) * lane_lo(b))
#define SMLATT(a, b, acc) ((acc) + lane_hi(a) * lane_hi(b))
/* (a·b + 2^31) >> 32, rounded high word of the product */
static inline int32_t SMMULR(int32_t a, int32_t b) { return (int32_t)(((int64_t)a * b + INT64_C(0x80000000)) >> 32); }
#endif

#if defined(__GNUC__)
#define ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define ALWAYS_INLINE inline
#endif

static inline int32_t load_word(const void *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v); /* one LDR on cores with unaligned access, byte loads elsewhere */
    return v;
}

static inline void store_word(void *p, int32_t v) { memcpy(p, &v, sizeof v); }

/* The dual-lane words of a packed word of 8/bits codes per byte, `slot` selecting which code of each
 * byte: lanes (byte 0, byte 2) and, after ROR8, (byte 1, byte 3), scaled by 2^(8 - bits) so that the
 * code's sign bit is the byte's (the exact factor is shifted out of the accumulator afterwards). */
static inline int32_t slot_bytes(int32_t word, unsigned bits, unsigned slot)
{
    if (bits == 8)
        return word;
    if (bits == 4)
        return (int32_t)(((uint32_t)word << (4u - 4u * slot)) & 0xf0f0f0f0u);
    return (int32_t)(((uint32_t)word << (6u - 2u * slot)) & 0xc0c0c0c0u);
}

/* -- roundings -------------------------------------------------------------------------------------------- */
static inline uint16_t float_to_half(float value)
{
    uint32_t x, sign, mag;
    memcpy(&x, &value, sizeof x);
    sign = (x >> 16) & 0x8000u;
    mag = x & 0x7fffffffu;
    if (mag > 0x7f800000u) /* NaN: one canonical pattern whatever the CPU produced */
        return 0x7e00u;
    if (mag >= 0x477ff000u) /* >= 65520 (half of the last ulp above 65504) rounds to inf */
        return (uint16_t)(sign | 0x7c00u);
    if (mag >= 0x38800000u) { /* normal half: re-bias 127 -> 15, round 13 bits to nearest even */
        uint32_t m = mag - 0x38000000u;
        return (uint16_t)(sign | ((m + 0xfffu + ((m >> 13) & 1u)) >> 13));
    }
    if (mag < 0x33000000u) /* below 2^-25: rounds to zero (2^-25 itself ties to the even zero) */
        return (uint16_t)sign;
    {   /* half subnormal: in units of 2^-24 the value is mant * 2^(e - 126) */
        uint32_t shift = 126u - (mag >> 23);
        uint32_t mant = (mag & 0x7fffffu) | 0x800000u;
        uint32_t q = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u)))
            q += 1u;
        return (uint16_t)(sign | q);
    }
}

/* Half to float is exact, so the M7's conversion instruction gives the same bits as the C. */
static inline float half_to_float(uint16_t bits)
{
#if defined(__ARM_FP) && (__ARM_FP & 2) && defined(__GNUC__)
    float f;
    uint32_t u = bits;
    __asm__("vmov %0, %1\n\tvcvtb.f32.f16 %0, %0" : "=t"(f) : "r"(u));
    return f;
#else
    uint32_t sign = ((uint32_t)bits & 0x8000u) << 16;
    uint32_t e = ((uint32_t)bits >> 10) & 0x1fu;
    uint32_t m = (uint32_t)bits & 0x3ffu;
    uint32_t x;
    float f;
    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in float */
        f = (float)m * 0x1p-24f;
        return sign ? -f : f;
    }
    x = sign | (e == 31u ? 0x7f800000u | (m << 13) : ((e + 112u) << 23) | (m << 13));
    memcpy(&f, &x, sizeof f);
    return f;
#endif
}

static inline int32_t round_half_even(float value)
{
    int32_t i = (int32_t)value;        /* truncates toward zero */
    float frac = value - (float)i;     /* exact below 2^24 */
    if (frac > 0.5f || (frac == 0.5f && (i & 1)))
        i += 1;
    else if (frac < -0.5f || (frac == -0.5f && (i & 1)))
        i -= 1;
    return i;
}

/* NaN -> lo, as in the IR */
static inline float clamp_float(float x, float lo, float hi)
{
    return !(x >= lo) ? lo : (x > hi ? hi : x);
}

static inline int32_t clamp_int(int32_t q, int32_t lo, int32_t hi)
{
    return q < lo ? lo : (q > hi ? hi : q);
}

static inline int32_t float_to_code(float z, const adaptq_to_int *t)
{
    float y = clamp_float(z, t->lo_r, t->hi_r) * t->inv_scale;
    return clamp_int(round_half_even(y), t->lo, t->hi);
}

static inline float canonical_float(float z)
{
    static const uint32_t nan_bits = 0x7fc00000u;
    if (z != z)
        memcpy(&z, &nan_bits, sizeof z);
    return z;
}

/* -- TFLite's fixed point (gemmlowp's roundings) -------------------------------------------------------- *
 * srdhm(a, b) = trunc((a·b + nudge) / 2^31) with TFLite's sign-dependent nudge equals
 * floor((a·b + 2^30) / 2^31) (for a·b < 0, trunc((t)/2^31) = floor((t + 2^31 − 1)/2^31)), which is
 * SMMULR of 2a and b: one instruction, exact while |a| < 2^30 (ir.py's validation guarantees it) and
 * the multiplier is not −2^31 (it never is: |M| < 2^31). */
static inline int32_t srdhm(int32_t a, int32_t b) { return SMMULR((int32_t)((uint32_t)a << 1), b); }

static inline int32_t rdbpot(int32_t x, int32_t exponent)
{
    int32_t mask = (int32_t)((UINT32_C(1) << exponent) - 1u);
    int32_t threshold = (mask >> 1) + (x < 0);
    return (x >> exponent) + ((x & mask) > threshold);
}

static inline int32_t mbqm(int32_t x, int32_t multiplier, int32_t shift)
{
    int32_t left = shift > 0 ? shift : 0;
    return rdbpot(srdhm((int32_t)((uint32_t)x << left), multiplier), left ? 0 : -shift);
}

/* -- packed codes ----------------------------------------------------------------------------------------- */
/* Element i of a k-bit buffer: bits (i*k) mod 8 of byte i*k/8; sign extension by (v ^ m) - m. */
static inline int32_t load_code(const uint8_t *p, uint32_t i, unsigned bits, unsigned is_signed)
{
    uint32_t bit = i * bits;
    uint32_t v = ((uint32_t)p[bit >> 3] >> (bit & 7u)) & ((1u << bits) - 1u);
    uint32_t m = is_signed ? 1u << (bits - 1u) : 0u;
    return (int32_t)(v ^ m) - (int32_t)m;
}

static inline void store_code(uint8_t *p, uint32_t i, unsigned bits, int32_t q)
{
    uint32_t bit = i * bits, shift = bit & 7u, mask = ((1u << bits) - 1u) << shift;
    uint8_t *byte = p + (bit >> 3);
    *byte = (uint8_t)((*byte & ~mask) | (((uint32_t)q << shift) & mask));
}

/* Writes consecutive codes from element `first` on, a byte at a time (the bytes around the run keep
 * their other elements). */
typedef struct {
    uint8_t *byte;
    uint32_t cur;
    unsigned shift, bits;
} code_writer;

static inline code_writer code_writer_at(uint8_t *p, uint32_t first, unsigned bits)
{
    code_writer w;
    uint32_t bit = first * bits;
    w.byte = p + (bit >> 3);
    w.shift = bit & 7u;
    w.bits = bits;
    w.cur = *w.byte & ((1u << w.shift) - 1u);
    return w;
}

static inline void code_writer_put(code_writer *w, int32_t q)
{
    w->cur |= ((uint32_t)q & ((1u << w->bits) - 1u)) << w->shift;
    w->shift += w->bits;
    if (w->shift == 8u) {
        *w->byte++ = (uint8_t)w->cur;
        w->cur = 0;
        w->shift = 0;
    }
}

static inline void code_writer_end(code_writer *w)
{
    if (w->shift)
        *w->byte = (uint8_t)((*w->byte & ~((1u << w->shift) - 1u)) | w->cur);
}

/* Half and float elements of the byte arena go through memcpy (one load or store once compiled), which
 * keeps the arena free of type-punned pointers; storage is the target's, little endian. */
static inline float load_f32(const uint8_t *p, uint32_t i)
{
    float v;
    memcpy(&v, p + 4u * i, sizeof v);
    return v;
}

static inline float load_f16(const uint8_t *p, uint32_t i)
{
    uint16_t v;
    memcpy(&v, p + 2u * i, sizeof v);
    return half_to_float(v);
}

/* What the residual and the pool read from any buffer, as a real value. */
static inline float load_real(const adaptq_buffer *b, const uint8_t *p, uint32_t i)
{
    if (b->kind == ADAPTQ_INT)
        return (float)load_code(p, i, b->bits, b->is_signed) * b->scale;
    if (b->kind == ADAPTQ_FP16)
        return load_f16(p, i);
    return load_f32(p, i);
}

/* -- the geometry of a conv part -------------------------------------------------------------------------- */
typedef struct {
    const adaptq_buffer *in;
    const uint8_t *base;     /* the input buffer's bytes */
    int32_t height, width;   /* input */
    uint32_t out_h, out_w;
} conv_geometry;

conv_geometry adaptq_conv_geometry(const adaptq_network *net, const adaptq_conv *c, const uint8_t *arena);

/* Runs every output's epilogue of one output position: int accumulators (int compute) or floats. */
void adaptq_conv_epilogues(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena, uint32_t position,
                           const int32_t *acc_codes, const float *acc_floats);

void adaptq_conv_int_gemm(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena);
void adaptq_dwconv_int(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena);
void adaptq_conv_float(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena);

#endif
