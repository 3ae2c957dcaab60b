/*
 * AdaptQNet runtime: the op loop, quantize, global average pools, the epilogues every conv kernel
 * shares, and the exported roundings (see adaptq.h and deploy/ir.py for the arithmetic).
 */
#include "adaptq_internal.h"

uint16_t adaptq_float_to_half(float value) { return float_to_half(value); }
float adaptq_half_to_float(uint16_t bits) { return half_to_float(bits); }
int32_t adaptq_round_half_even(float value) { return round_half_even(value); }
int32_t adaptq_mbqm(int32_t x, int32_t multiplier, int32_t shift) { return mbqm(x, multiplier, shift); }

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

/* -- quantize: the (C, H, W) float image into channels-last buffers -------------------------------------- */

static void run_quantize(const adaptq_network *net, const adaptq_quantize *op, const float *input, uint8_t *arena)
{
    uint32_t plane = (uint32_t)net->input_height * net->input_width;
    uint16_t j;
    for (j = 0; j < op->n_outputs; ++j) {
        const adaptq_quantize_output *o = &op->outputs[j];
        const adaptq_buffer *b = &net->buffers[o->buffer];
        const float *x = input + (uint32_t)o->first_channel * plane;
        uint8_t *p = arena + b->offset;
        uint32_t pixel, ch, i = 0;
        if (b->kind == ADAPTQ_INT) {
            code_writer w = code_writer_at(p, 0, b->bits);
            for (pixel = 0; pixel < plane; ++pixel)
                for (ch = 0; ch < b->channels; ++ch)
                    code_writer_put(&w, float_to_code(x[ch * plane + pixel], &o->to_int));
            code_writer_end(&w);
        } else {
            for (pixel = 0; pixel < plane; ++pixel)
                for (ch = 0; ch < b->channels; ++ch)
                    store_float(b, p, i++, x[ch * plane + pixel], 0);
        }
    }
}

/* -- conv: what every kernel shares ------------------------------------------------------------------------ */

conv_geometry adaptq_conv_geometry(const adaptq_network *net, const adaptq_conv *c, const uint8_t *arena)
{
    conv_geometry g;
    const adaptq_buffer *out = &net->buffers[c->outputs[0].buffer];
    g.in = &net->buffers[c->input.buffer];
    g.base = arena + g.in->offset;
    g.height = g.in->height;
    g.width = g.in->width;
    g.out_h = out->height;
    g.out_w = out->width;
    return g;
}

/* The residual operand at one position: codes (0 for float segments) and real values, per part channel. */
static void gather_residual(const adaptq_network *net, const adaptq_conv *c, const uint8_t *arena, uint32_t position,
                            int32_t *codes, float *reals)
{
    uint32_t ch = 0;
    uint16_t s;
    for (s = 0; s < c->n_residual; ++s) {
        const adaptq_slice *seg = &c->residual[s];
        const adaptq_buffer *b = &net->buffers[seg->buffer];
        const uint8_t *p = arena + b->offset;
        uint32_t index = position * b->channels + seg->offset;
        uint16_t j;
        for (j = 0; j < seg->channels; ++j, ++ch, ++index) {
            if (b->kind == ADAPTQ_INT) {
                int32_t q = load_code(p, index, b->bits, b->is_signed);
                codes[ch] = q;
                reals[ch] = (float)q * b->scale;
            } else {
                codes[ch] = 0;
                reals[ch] = load_real(b, p, index);
            }
        }
    }
}

/* TFLite's conv requantisation (the doubled operand: see adaptq.h), then (with a residual) its ADD */
static inline int32_t fixed_point(const adaptq_output *o, uint32_t j, int32_t acc, const int32_t *res_codes,
                                  uint32_t ch)
{
    int32_t shift = o->shift[j];
    int32_t x2 = (int32_t)((uint32_t)acc << o->acc_shift1[j]) + o->bias2[j];
    int32_t y = SMMULR(shift > 0 ? (int32_t)((uint32_t)x2 << shift) : x2, o->multiplier[j]);
    if (shift < 0)
        y = rdbpot(y, -shift);
    if (o->add) {
        const adaptq_residual_add *a = o->add;
        int32_t t = clamp_int(y, a->t_lo[j], a->t_hi[j]);
        int32_t sum = mbqm(t * (1 << a->left_shift), a->t_multiplier[j], a->t_shift[j])
                      + mbqm(res_codes[ch] * (1 << a->left_shift), a->skip_multiplier[j], a->skip_shift[j]);
        y = mbqm(sum, a->output_multiplier[j], a->output_shift[j]);
    }
    return clamp_int(y, o->lo[j], o->hi[j]);
}

/* The common case, an output without a residual whose channels all shift right (e = −shift ≥ 1):
 * rdbpot(y, e) = ((y − [y < 0]) >> (e − 1) + 1) >> 1, exact for every y (ceil(z − 1/2) equals
 * floor(z + 1/2 − 2^−e) on multiples of 2^−e), four instructions with e − 1 = ~shift. The constants are
 * read through restrict-qualified locals: the output is bytes, which could alias them otherwise, and
 * the compiler would reload every pointer after every store. */
#define RIGHT_SHIFT_LOOP(STORE)                                                                             \
    do {                                                                                                    \
        const int32_t *restrict m = o->multiplier, *restrict b2 = o->bias2;                                \
        const int8_t *restrict sh = o->shift, *restrict p1 = o->acc_shift1;                                \
        const int16_t *restrict lo = o->lo, *restrict hi = o->hi;                                          \
        for (j = 0; j < count; ++j) {                                                                       \
            int32_t y = SMMULR((int32_t)((uint32_t)a[j] << p1[j]) + b2[j], m[j]);                          \
            y -= (int32_t)((uint32_t)y >> 31);                                                              \
            STORE(clamp_int(((y >> ~sh[j]) + 1) >> 1, lo[j], hi[j]));                                       \
        }                                                                                                   \
    } while (0)

/* ...and with one pre-shift and one clamp for every channel (the converter's usual output) */
#define UNIFORM_SETUP                                                                                       \
    const int32_t *restrict m = o->multiplier, *restrict b2 = o->bias2;                                    \
    const int8_t *restrict sh = o->shift;                                                                   \
    const uint32_t p1 = (uint32_t)o->acc_shift1[0];                                                         \
    const int32_t lo = o->lo[0], hi = o->hi[0]
static ALWAYS_INLINE int32_t uniform_code(const int32_t *restrict a, const int32_t *restrict m,
                                          const int32_t *restrict b2, const int8_t *restrict sh, uint32_t p1,
                                          int32_t lo, int32_t hi, uint32_t j)
{
    int32_t y = SMMULR((int32_t)((uint32_t)a[j] << p1) + b2[j], m[j]);
    y -= (int32_t)((uint32_t)y >> 31);
    return clamp_int(((y >> ~sh[j]) + 1) >> 1, lo, hi);
}

#define UNIFORM_LOOP(STORE)                                                                                 \
    do {                                                                                                    \
        UNIFORM_SETUP;                                                                                      \
        for (j = 0; j < count; ++j)                                                                         \
            STORE(uniform_code(a, m, b2, sh, p1, lo, hi, j));                                               \
    } while (0)

/* Sub-byte codes whose run starts on a byte and fills whole bytes: one store per 8/bits codes, the
 * codes of a byte combined in registers (the store drops what a last code's sign spills above 8 bits). */
#define CODE(J) uniform_code(a, m, b2, sh, p1, lo, hi, (J))
#define UNIFORM_PACKED4()                                                                                   \
    do {                                                                                                    \
        UNIFORM_SETUP;                                                                                      \
        uint8_t *restrict dst = p + index / 2u;                                                             \
        for (j = 0; j < count; j += 2u)                                                                     \
            *dst++ = (uint8_t)((CODE(j) & 0xf) | (CODE(j + 1u) << 4));                                      \
    } while (0)
#define UNIFORM_PACKED2()                                                                                   \
    do {                                                                                                    \
        UNIFORM_SETUP;                                                                                      \
        uint8_t *restrict dst = p + index / 4u;                                                             \
        for (j = 0; j < count; j += 4u)                                                                     \
            *dst++ = (uint8_t)((CODE(j) & 3) | ((CODE(j + 1u) & 3) << 2) | ((CODE(j + 2u) & 3) << 4) |     \
                               (CODE(j + 3u) << 6));                                                        \
    } while (0)

#define STORE_BYTE(q) (dst[j] = (uint8_t)(q))
#define STORE_CODE(q) code_writer_put(&w, (q))

static void epilogue_fixed(const adaptq_output *o, const adaptq_buffer *b, uint8_t *arena, uint32_t position,
                           const int32_t *acc, const int32_t *res_codes)
{
    const uint32_t index = position * b->channels + o->channel_offset, count = o->count;
    uint8_t *p = arena + b->offset;
    const int32_t *restrict a = acc + o->first;
    uint32_t j;
    if (b->bits == 8) {
        uint8_t *restrict dst = p + index;
        if (o->right_shift == ADAPTQ_RIGHT_SHIFT_UNIFORM)
            UNIFORM_LOOP(STORE_BYTE);
        else if (o->right_shift)
            RIGHT_SHIFT_LOOP(STORE_BYTE);
        else
            for (j = 0; j < count; ++j)
                dst[j] = (uint8_t)fixed_point(o, j, a[j], res_codes, o->first + j);
    } else if (o->right_shift == ADAPTQ_RIGHT_SHIFT_UNIFORM && (index * b->bits) % 8u == 0 &&
               (count * b->bits) % 8u == 0) {
        if (b->bits == 4)
            UNIFORM_PACKED4();
        else
            UNIFORM_PACKED2();
    } else {
        code_writer w = code_writer_at(p, index, b->bits);
        if (o->right_shift == ADAPTQ_RIGHT_SHIFT_UNIFORM)
            UNIFORM_LOOP(STORE_CODE);
        else if (o->right_shift)
            RIGHT_SHIFT_LOOP(STORE_CODE);
        else
            for (j = 0; j < count; ++j)
                code_writer_put(&w, fixed_point(o, j, a[j], res_codes, o->first + j));
        code_writer_end(&w);
    }
}

static void epilogue_float(const adaptq_conv *c, const adaptq_output *o, const adaptq_buffer *b, uint8_t *arena,
                           uint32_t position, const int32_t *acc_codes, const float *acc_floats, const float *res_reals)
{
    uint32_t index = position * b->channels + o->channel_offset;
    uint8_t *p = arena + b->offset;
    uint32_t j;
    for (j = 0; j < o->count; ++j) {
        uint32_t ch = o->first + j;
        float acc = acc_codes ? (float)acc_codes[ch] : acc_floats[ch];
        float z = acc * o->scale[j] + o->offset[j];
        if (c->has_activation)
            z = clamp_float(z, c->act_lo, c->act_hi);
        if (res_reals)
            z = z + res_reals[ch];
        store_float(b, p, index + j, z, &o->to_int);
    }
}

void adaptq_conv_epilogues(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena, uint32_t position,
                           const int32_t *acc_codes, const float *acc_floats)
{
    const float *res_reals = 0;
    uint16_t j;
    if (c->n_residual) {
        gather_residual(net, c, arena, position, net->scratch.codes, net->scratch.reals);
        res_reals = net->scratch.reals;
    }
    for (j = 0; j < c->n_outputs; ++j) {
        const adaptq_output *o = &c->outputs[j];
        const adaptq_buffer *b = &net->buffers[o->buffer];
        if (o->epilogue == ADAPTQ_EPILOGUE_FIXED)
            epilogue_fixed(o, b, arena, position, acc_codes, net->scratch.codes);
        else
            epilogue_float(c, o, b, arena, position, acc_codes, acc_floats, res_reals);
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
        if (in->kind == ADAPTQ_INT) {
            int32_t sum = 0;
            for (i = 0; i < n; ++i)
                sum += load_code(src, i * in->channels + ch, in->bits, in->is_signed);
            store_code(dst, ch, out->bits, divide_round_half_even(sum, (int32_t)n));
        } else {
            float sum = 0.0f;
            for (i = 0; i < n; ++i)
                sum += load_real(in, src, i * in->channels + ch);
            store_float(out, dst, ch, sum / (float)n, 0);
        }
    }
}

/* -- network ---------------------------------------------------------------------------------------------------- */

static int run_conv(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena)
{
    switch (c->kernel) {
    case ADAPTQ_KERNEL_INT_GEMM: adaptq_conv_int_gemm(net, c, arena); return 0;
    case ADAPTQ_KERNEL_INT_DEPTHWISE: adaptq_dwconv_int(net, c, arena); return 0;
    case ADAPTQ_KERNEL_FLOAT: adaptq_conv_float(net, c, arena); return 0;
    default: return -1;
    }
}

int adaptq_run(const adaptq_network *net, const float *input, uint8_t *arena, float *output)
{
    const adaptq_buffer *out;
    uint16_t i;
    for (i = 0; i < net->n_ops; ++i) {
        const adaptq_op *op = &net->ops[i];
        int status = 0;
#ifdef ADAPTQ_PROFILE
        adaptq_profile_op_begin(i);
#endif
        switch (op->type) {
        case ADAPTQ_OP_QUANTIZE: run_quantize(net, (const adaptq_quantize *)op->op, input, arena); break;
        case ADAPTQ_OP_CONV: status = run_conv(net, (const adaptq_conv *)op->op, arena); break;
        case ADAPTQ_OP_POOL: run_pool(net, (const adaptq_pool *)op->op, arena); break;
        default: status = -1;
        }
#ifdef ADAPTQ_PROFILE
        adaptq_profile_op_end(i);
#endif
        if (status)
            return status;
    }
    out = &net->buffers[net->output_buffer];
    {   /* the IR's outputs are channel-major; the arena is channels-last */
        uint32_t plane = (uint32_t)out->height * out->width, pixel, ch;
        for (pixel = 0; pixel < plane; ++pixel)
            for (ch = 0; ch < out->channels; ++ch)
                output[ch * plane + pixel] = load_f32(arena + out->offset, pixel * out->channels + ch);
    }
    return 0;
}
