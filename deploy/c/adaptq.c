/*
 * AdaptQNet integer-network kernels (see adaptq.h and deploy/ir.py for the arithmetic they implement).
 *
 * A conv part runs position by position: for each output position and group it gathers the receptive
 * field into a patch (codes or floats, in (ci, ky, kx) order, zeros at padding), takes the dot product
 * of the patch with every output channel's weights, then applies each output's epilogue. The gather is
 * specialised by input format and the dot product by weight format (switches outside the loops, macro
 * bodies inside), so the inner loops hold no calls and no format tests.
 *
 * Only C99 with exact-width integers; no libm, no rounding mode, no implementation-defined shifts of
 * negative numbers.
 */
#include "adaptq.h"

#include <float.h>
#include <string.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "adaptq needs float expressions evaluated in float (FLT_EVAL_METHOD == 0), e.g. SSE2 or an FPU"
#endif
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "adaptq stores half and float elements little endian, as the IR and the reference do"
#endif

/* -- roundings ---------------------------------------------------------------------------------- */

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

static inline float half_to_float(uint16_t bits)
{
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

uint16_t adaptq_float_to_half(float value) { return float_to_half(value); }
float adaptq_half_to_float(uint16_t bits) { return half_to_float(bits); }
int32_t adaptq_round_half_even(float value) { return round_half_even(value); }

/* NaN -> lo, as in the IR */
static float clamp_float(float x, float lo, float hi)
{
    return !(x >= lo) ? lo : (x > hi ? hi : x);
}

static int32_t clamp_int(int64_t q, int32_t lo, int32_t hi)
{
    return q < lo ? lo : (q > hi ? hi : (int32_t)q);
}

static int32_t float_to_code(float z, const adaptq_to_int *t)
{
    float y = clamp_float(z, t->lo_r, t->hi_r) * t->inv_scale;
    return clamp_int(round_half_even(y), t->lo, t->hi);
}

static float canonical_float(float z)
{
    static const uint32_t nan_bits = 0x7fc00000u;
    if (z != z)
        memcpy(&z, &nan_bits, sizeof z);
    return z;
}

/* floor(t / 2^s) without shifting a negative number (implementation-defined in C) */
static int64_t floor_shift(int64_t t, unsigned s)
{
    return t >= 0 ? t >> s : -(((-t) - 1) >> s) - 1;
}

static int32_t divide_round_half_even(int32_t sum, int32_t n)
{
    int32_t q = sum / n, r = sum % n;
    if (r < 0) {
        q -= 1;
        r += n;
    }
    if (2 * r > n || (2 * r == n && (q & 1)))
        q += 1;
    return q;
}

/* -- packed codes ----------------------------------------------------------------------------------- */

/* Element i of a k-bit buffer: bits (i*k) mod 8 of byte i*k/8; sign extension by (v ^ m) - m. */
#define LOAD_U8(p, i) ((int32_t)(p)[i])
#define LOAD_S8(p, i) (((int32_t)(p)[i] ^ 0x80) - 0x80)
#define LOAD_U4(p, i) ((int32_t)((p)[(i) >> 1] >> (((i) & 1u) << 2)) & 0xf)
#define LOAD_S4(p, i) ((LOAD_U4(p, i) ^ 0x8) - 0x8)
#define LOAD_U2(p, i) ((int32_t)((p)[(i) >> 2] >> (((i) & 3u) << 1)) & 0x3)
#define LOAD_S2(p, i) ((LOAD_U2(p, i) ^ 0x2) - 0x2)

static int32_t load_code(const uint8_t *p, uint32_t i, unsigned bits, unsigned is_signed)
{
    switch (bits * 2u + is_signed) {
    case 16: return LOAD_U8(p, i);
    case 17: return LOAD_S8(p, i);
    case 8: return LOAD_U4(p, i);
    case 9: return LOAD_S4(p, i);
    case 4: return LOAD_U2(p, i);
    default: return LOAD_S2(p, i);
    }
}

static void store_code(uint8_t *p, uint32_t i, unsigned bits, int32_t q)
{
    uint32_t bit = i * bits, shift = bit & 7u, mask = ((1u << bits) - 1u) << shift;
    uint8_t *byte = p + (bit >> 3);
    *byte = (uint8_t)((*byte & ~mask) | (((uint32_t)q << shift) & mask));
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
static float load_real(const adaptq_buffer *b, const uint8_t *p, uint32_t i)
{
    if (b->kind == ADAPTQ_INT)
        return (float)load_code(p, i, b->bits, b->is_signed) * b->scale;
    if (b->kind == ADAPTQ_FP16)
        return load_f16(p, i);
    return load_f32(p, i);
}

/* Stores a float the way the IR stores into a buffer of that format. */
static void store_float(const adaptq_buffer *b, uint8_t *p, uint32_t i, float z, const adaptq_to_int *t)
{
    if (b->kind == ADAPTQ_INT) {
        store_code(p, i, b->bits, float_to_code(z, t));
    } else if (b->kind == ADAPTQ_FP16) {
        uint16_t h = float_to_half(z);
        memcpy(p + 2u * i, &h, sizeof h);
    } else {
        z = canonical_float(z);
        memcpy(p + 4u * i, &z, sizeof z);
    }
}

/* -- quantize ------------------------------------------------------------------------------------------ */

static void run_quantize(const adaptq_network *net, const adaptq_quantize *op, const float *input, uint8_t *arena)
{
    uint32_t plane = (uint32_t)net->input_height * net->input_width;
    uint16_t j;
    for (j = 0; j < op->n_outputs; ++j) {
        const adaptq_quantize_output *o = &op->outputs[j];
        const adaptq_buffer *b = &net->buffers[o->buffer];
        const float *x = input + (uint32_t)o->first_channel * plane;
        uint32_t i, n = (uint32_t)b->channels * plane;
        uint8_t *p = arena + b->offset;
        for (i = 0; i < n; ++i)
            store_float(b, p, i, x[i], &o->to_int);
    }
}

/* -- conv: gather ---------------------------------------------------------------------------------------- */

typedef struct {
    const adaptq_conv *c;
    const adaptq_buffer *in;
    const uint8_t *base; /* the input buffer's bytes */
    uint32_t k;          /* patch length: in_per_group * kh * kw */
    uint16_t out_h, out_w;
} conv_geometry;

/* The receptive field of output (oy, ox) over input channels [channel, channel + in_per_group). */
#define GATHER(TYPE, LOAD)                                                                          \
    do {                                                                                            \
        TYPE *dst = patch;                                                                          \
        uint32_t ci, ky, kx;                                                                        \
        for (ci = 0; ci < c->in_per_group; ++ci) {                                                  \
            uint32_t plane_start = (channel + ci) * plane;                                          \
            for (ky = 0; ky < c->kernel_h; ++ky) {                                                  \
                int32_t iy = iy0 + (int32_t)ky;                                                     \
                if (iy < 0 || iy >= height) {                                                       \
                    for (kx = 0; kx < c->kernel_w; ++kx)                                            \
                        *dst++ = 0;                                                                 \
                    continue;                                                                       \
                }                                                                                   \
                {                                                                                   \
                    uint32_t row = plane_start + (uint32_t)iy * (uint32_t)width;                    \
                    for (kx = 0; kx < c->kernel_w; ++kx) {                                          \
                        int32_t ix = ix0 + (int32_t)kx;                                             \
                        *dst++ = (ix < 0 || ix >= width) ? 0 : LOAD(p, row + (uint32_t)ix);         \
                    }                                                                               \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
    } while (0)

#define GATHER_SETUP                                                                                \
    const adaptq_conv *c = g->c;                                                                    \
    int32_t height = g->in->height, width = g->in->width;                                           \
    uint32_t plane = (uint32_t)height * (uint32_t)width;                                            \
    int32_t iy0 = oy * c->stride_h - c->pad_h, ix0 = ox * c->stride_w - c->pad_w

static void gather_codes(const conv_geometry *g, uint32_t channel, int32_t oy, int32_t ox, int32_t *patch)
{
    GATHER_SETUP;
    const uint8_t *p = g->base;
    switch (g->in->bits * 2u + g->in->is_signed) {
    case 16: GATHER(int32_t, LOAD_U8); break;
    case 17: GATHER(int32_t, LOAD_S8); break;
    case 8: GATHER(int32_t, LOAD_U4); break;
    case 9: GATHER(int32_t, LOAD_S4); break;
    case 4: GATHER(int32_t, LOAD_U2); break;
    default: GATHER(int32_t, LOAD_S2); break;
    }
}

static void gather_floats(const conv_geometry *g, uint32_t channel, int32_t oy, int32_t ox, float *patch)
{
    GATHER_SETUP;
    const uint8_t *p = g->base;
    if (g->in->kind == ADAPTQ_FP16)
        GATHER(float, load_f16);
    else
        GATHER(float, load_f32);
}

/* -- conv: dot products ------------------------------------------------------------------------------------- */

/* Rows [row0, row0 + rows) of the packed weights against the patch. Rows are byte aligned when
 * k * bits is a multiple of 8; then whole bytes are decoded at once, otherwise element by element. */
#define DOT_ELEMENTWISE(LOADW)                                                                      \
    for (r = 0; r < rows; ++r) {                                                                    \
        uint32_t e = (row0 + r) * k, i;                                                             \
        int32_t sum = 0;                                                                            \
        for (i = 0; i < k; ++i)                                                                     \
            sum += x[i] * LOADW(w, e + i);                                                          \
        acc[r] = sum;                                                                               \
    }

#define DOT_BYTES_8(DECODE)                                                                         \
    for (r = 0; r < rows; ++r) {                                                                    \
        const uint8_t *wr = w + (row0 + r) * k;                                                     \
        int32_t sum = 0;                                                                            \
        uint32_t i;                                                                                 \
        for (i = 0; i < k; ++i)                                                                     \
            sum += x[i] * DECODE((int32_t)wr[i]);                                                   \
        acc[r] = sum;                                                                               \
    }

#define DOT_BYTES_4(DECODE)                                                                         \
    for (r = 0; r < rows; ++r) {                                                                    \
        const uint8_t *wr = w + (row0 + r) * k / 2u;                                                \
        int32_t sum = 0;                                                                            \
        uint32_t i;                                                                                 \
        for (i = 0; i < k; i += 2u) {                                                               \
            int32_t b = *wr++;                                                                      \
            sum += x[i] * DECODE(b & 0xf) + x[i + 1u] * DECODE(b >> 4);                              \
        }                                                                                           \
        acc[r] = sum;                                                                               \
    }

#define DOT_BYTES_2(DECODE)                                                                         \
    for (r = 0; r < rows; ++r) {                                                                    \
        const uint8_t *wr = w + (row0 + r) * k / 4u;                                                \
        int32_t sum = 0;                                                                            \
        uint32_t i;                                                                                 \
        for (i = 0; i < k; i += 4u) {                                                               \
            int32_t b = *wr++;                                                                      \
            sum += x[i] * DECODE(b & 3) + x[i + 1u] * DECODE((b >> 2) & 3) +                         \
                   x[i + 2u] * DECODE((b >> 4) & 3) + x[i + 3u] * DECODE(b >> 6);                    \
        }                                                                                           \
        acc[r] = sum;                                                                               \
    }

#define AS_IS(v) (v)
#define SIGNED8(v) (((v) ^ 0x80) - 0x80)
#define SIGNED4(v) (((v) ^ 0x8) - 0x8)
#define SIGNED2(v) (((v) ^ 0x2) - 0x2)

/* Σ x·code for each row: the symmetric accumulator, or dorefa's Σ q·u. */
static void dot_codes(const adaptq_conv *c, uint32_t k, uint32_t row0, uint32_t rows, const int32_t *x, int32_t *acc)
{
    const uint8_t *w = (const uint8_t *)c->weights;
    int aligned = (k * c->weight_bits) % 8u == 0;
    int symmetric = c->weight_grid == ADAPTQ_GRID_SYMMETRIC;
    uint32_t r;
    switch (c->weight_bits * 4u + (unsigned)symmetric * 2u + (unsigned)aligned) {
    case 33: DOT_BYTES_8(AS_IS); break;
    case 35: DOT_BYTES_8(SIGNED8); break;
    case 17: DOT_BYTES_4(AS_IS); break;
    case 19: DOT_BYTES_4(SIGNED4); break;
    case 9: DOT_BYTES_2(AS_IS); break;
    case 11: DOT_BYTES_2(SIGNED2); break;
    case 16: DOT_ELEMENTWISE(LOAD_U4); break;
    case 18: DOT_ELEMENTWISE(LOAD_S4); break;
    case 8: DOT_ELEMENTWISE(LOAD_U2); break;
    default: DOT_ELEMENTWISE(LOAD_S2); break; /* 10; 8-bit rows are always aligned */
    }
}

/* acc = 0.0f; acc += x[i] * w[i] in order, each operation rounded to float */
static void dot_floats(const adaptq_conv *c, uint32_t k, uint32_t row0, uint32_t rows, const float *x, float *acc)
{
    uint32_t r, i;
    if (c->compute == ADAPTQ_FP16) {
        const uint16_t *w = (const uint16_t *)c->weights;
        for (r = 0; r < rows; ++r) {
            const uint16_t *wr = w + (row0 + r) * k;
            float sum = 0.0f;
            for (i = 0; i < k; ++i)
                sum += x[i] * half_to_float(wr[i]);
            acc[r] = sum;
        }
    } else {
        const float *w = (const float *)c->weights;
        for (r = 0; r < rows; ++r) {
            const float *wr = w + (row0 + r) * k;
            float sum = 0.0f;
            for (i = 0; i < k; ++i)
                sum += x[i] * wr[i];
            acc[r] = sum;
        }
    }
}

/* -- conv: epilogues --------------------------------------------------------------------------------------- */

typedef struct {
    int32_t *acc_codes; /* int compute */
    float *acc_floats;  /* float compute */
    int32_t *res_codes; /* residual codes (int segments) */
    float *res_reals;   /* residual real values */
} conv_results;

#define FIXED_LOOP(STORE)                                                                           \
    for (j = 0; j < o->count; ++j, index += plane) {                                                \
        uint32_t ch = o->first + j;                                                                 \
        unsigned s = o->shift[j];                                                                   \
        int64_t v = (int64_t)res->acc_codes[ch] * o->multiplier[j] + o->bias[j];                    \
        if (res->res_codes)                                                                         \
            v += (int64_t)res->res_codes[ch] * o->residual_multiplier[j];                           \
        STORE(clamp_int(floor_shift(v + ((int64_t)1 << (s - 1u)), s), o->lo[j], o->hi[j]));          \
    }

#define STORE_BITS(q) store_code(p, index, bits, (q))
#define STORE_BYTE(q) (p[index] = (uint8_t)(q))

static void epilogue_fixed(const adaptq_output *o, const adaptq_buffer *b, uint8_t *arena, uint32_t position,
                           const conv_results *res)
{
    uint32_t plane = (uint32_t)b->height * b->width;
    uint32_t index = (uint32_t)o->channel_offset * plane + position;
    unsigned bits = b->bits;
    uint8_t *p = arena + b->offset;
    uint16_t j;
    if (bits == 8) {
        FIXED_LOOP(STORE_BYTE);
    } else {
        FIXED_LOOP(STORE_BITS);
    }
}

static void epilogue_float(const adaptq_conv *c, const adaptq_output *o, const adaptq_buffer *b, uint8_t *arena,
                           uint32_t position, const conv_results *res)
{
    uint32_t plane = (uint32_t)b->height * b->width;
    uint32_t index = (uint32_t)o->channel_offset * plane + position;
    uint8_t *p = arena + b->offset;
    uint16_t j;
    for (j = 0; j < o->count; ++j, index += plane) {
        uint32_t ch = o->first + j;
        float acc = res->acc_codes ? (float)res->acc_codes[ch] : res->acc_floats[ch];
        float z = acc * o->scale[j] + o->offset[j];
        if (c->has_activation)
            z = clamp_float(z, c->act_lo, c->act_hi);
        if (res->res_reals)
            z = z + res->res_reals[ch];
        store_float(b, p, index, z, &o->to_int);
    }
}

static void gather_residual(const adaptq_network *net, const adaptq_conv *c, const uint8_t *arena, uint32_t position,
                            int32_t *codes, float *reals)
{
    uint32_t ch = 0;
    uint16_t s;
    for (s = 0; s < c->n_residual; ++s) {
        const adaptq_slice *seg = &c->residual[s];
        const adaptq_buffer *b = &net->buffers[seg->buffer];
        const uint8_t *p = arena + b->offset;
        uint32_t plane = (uint32_t)b->height * b->width;
        uint32_t index = (uint32_t)seg->offset * plane + position;
        uint16_t j;
        for (j = 0; j < seg->channels; ++j, ++ch, index += plane) {
            if (b->kind == ADAPTQ_INT) {
                int32_t q = load_code(p, index, b->bits, b->is_signed);
                if (codes)
                    codes[ch] = q;
                reals[ch] = (float)q * b->scale;
            } else {
                if (codes)
                    codes[ch] = 0;
                reals[ch] = load_real(b, p, index);
            }
        }
    }
}

/* -- conv ----------------------------------------------------------------------------------------------- */

static void run_conv(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena)
{
    conv_geometry g;
    uint32_t out_per_group = c->out_channels / c->groups;
    int is_int = c->compute == ADAPTQ_INT;
    /* Scratch layout: int parts use int_scratch = patch | acc | residual codes, and float_scratch for
     * the residual's real values; float parts use float_scratch = patch | acc | residual values. */
    int32_t *patch_codes = net->int_scratch;
    float *patch_floats = net->float_scratch;
    conv_results res;
    int32_t *acc_codes;
    float *acc_floats;
    int32_t oy, ox;
    uint32_t dorefa_levels = (1u << c->weight_bits) - 1u;

    g.c = c;
    g.in = &net->buffers[c->input.buffer];
    g.base = arena + g.in->offset;
    g.k = (uint32_t)c->in_per_group * c->kernel_h * c->kernel_w;
    g.out_h = net->buffers[c->outputs[0].buffer].height;
    g.out_w = net->buffers[c->outputs[0].buffer].width;
    acc_codes = patch_codes + g.k;
    acc_floats = patch_floats + g.k;
    res.acc_codes = is_int ? acc_codes : 0;
    res.acc_floats = is_int ? 0 : acc_floats;
    res.res_codes = (c->n_residual && is_int) ? acc_codes + c->out_channels : 0;
    res.res_reals = c->n_residual ? (is_int ? patch_floats : acc_floats + c->out_channels) : 0;

    for (oy = 0; oy < g.out_h; ++oy) {
        for (ox = 0; ox < g.out_w; ++ox) {
            uint32_t position = (uint32_t)oy * g.out_w + (uint32_t)ox;
            uint32_t group;
            uint16_t j;
            for (group = 0; group < c->groups; ++group) {
                uint32_t channel = c->input.offset + group * c->in_per_group;
                uint32_t row0 = group * out_per_group;
                if (is_int) {
                    gather_codes(&g, channel, oy, ox, patch_codes);
                    dot_codes(c, g.k, row0, out_per_group, patch_codes, acc_codes + row0);
                    if (c->weight_grid == ADAPTQ_GRID_DOREFA) { /* acc = 2 Σq·u − L_w Σq */
                        int32_t patch_sum = 0;
                        uint32_t i, r;
                        for (i = 0; i < g.k; ++i)
                            patch_sum += patch_codes[i];
                        for (r = 0; r < out_per_group; ++r)
                            acc_codes[row0 + r] = 2 * acc_codes[row0 + r] - (int32_t)dorefa_levels * patch_sum;
                    }
                } else {
                    gather_floats(&g, channel, oy, ox, patch_floats);
                    dot_floats(c, g.k, row0, out_per_group, patch_floats, acc_floats + row0);
                }
            }
            if (c->n_residual)
                gather_residual(net, c, arena, position, res.res_codes, res.res_reals);
            for (j = 0; j < c->n_outputs; ++j) {
                const adaptq_output *o = &c->outputs[j];
                const adaptq_buffer *b = &net->buffers[o->buffer];
                if (o->epilogue == ADAPTQ_EPILOGUE_FIXED)
                    epilogue_fixed(o, b, arena, position, &res);
                else
                    epilogue_float(c, o, b, arena, position, &res);
            }
        }
    }
}

/* -- global average pool ------------------------------------------------------------------------------------ */

static void run_pool(const adaptq_network *net, const adaptq_pool *op, uint8_t *arena)
{
    const adaptq_buffer *in = &net->buffers[op->input];
    const adaptq_buffer *out = &net->buffers[op->output];
    const uint8_t *src = arena + in->offset;
    uint8_t *dst = arena + out->offset;
    uint32_t n = (uint32_t)in->height * in->width;
    uint32_t ch, i;
    for (ch = 0; ch < in->channels; ++ch) {
        uint32_t first = ch * n;
        if (in->kind == ADAPTQ_INT) {
            int32_t sum = 0;
            for (i = 0; i < n; ++i)
                sum += load_code(src, first + i, in->bits, in->is_signed);
            store_code(dst, ch, out->bits, divide_round_half_even(sum, (int32_t)n));
        } else {
            float sum = 0.0f;
            for (i = 0; i < n; ++i)
                sum += load_real(in, src, first + i);
            store_float(out, dst, ch, sum / (float)n, 0);
        }
    }
}

/* -- network ---------------------------------------------------------------------------------------------------- */

int adaptq_run(const adaptq_network *net, const float *input, uint8_t *arena, float *output)
{
    const adaptq_buffer *out;
    uint16_t i;
    for (i = 0; i < net->n_ops; ++i) {
        const adaptq_op *op = &net->ops[i];
#ifdef ADAPTQ_PROFILE
        adaptq_profile_op_begin(i);
#endif
        switch (op->type) {
        case ADAPTQ_OP_QUANTIZE: run_quantize(net, (const adaptq_quantize *)op->op, input, arena); break;
        case ADAPTQ_OP_CONV: run_conv(net, (const adaptq_conv *)op->op, arena); break;
        case ADAPTQ_OP_POOL: run_pool(net, (const adaptq_pool *)op->op, arena); break;
        default: return -1;
        }
#ifdef ADAPTQ_PROFILE
        adaptq_profile_op_end(i);
#endif
    }
    out = &net->buffers[net->output_buffer];
    memcpy(output, arena + out->offset, (size_t)out->channels * out->height * out->width * sizeof(float));
    return 0;
}
