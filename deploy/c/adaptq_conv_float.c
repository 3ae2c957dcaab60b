/*
 * fp32 and fp16 parts of every conv kind, channels-last: per output position and group, the
 * receptive field is gathered into a float patch in (ky, kx, ci) order (zeros at padding: with finite
 * weights they add ±0, which changes no sum that starts at +0), then each output channel's sum runs
 * over it in that order, one float32 multiply and one add per term (the IR's order, no contraction).
 * Two channels share every patch load. Depthwise parts skip the patch: each channel sums its taps
 * inside the input in place. fp16 weights and tensors are widened to float32 on load; the M7's
 * conversion instruction does it in one step (half to float is exact).
 */
#include "adaptq_internal.h"

static void gather(const adaptq_conv *c, const conv_geometry *g, uint32_t channel, uint32_t oy, uint32_t ox,
                   float *patch)
{
    const adaptq_buffer *in = g->in;
    const int32_t iy0 = (int32_t)(oy * c->stride_h) - c->pad_h, ix0 = (int32_t)(ox * c->stride_w) - c->pad_w;
    const uint32_t per_group = c->in_per_group;
    uint32_t ky, kx, i;
    for (ky = 0; ky < c->kernel_h; ++ky) {
        int32_t iy = iy0 + (int32_t)ky;
        for (kx = 0; kx < c->kernel_w; ++kx, patch += per_group) {
            int32_t ix = ix0 + (int32_t)kx;
            uint32_t first;
            if (iy < 0 || iy >= g->height || ix < 0 || ix >= g->width) {
                for (i = 0; i < per_group; ++i)
                    patch[i] = 0.0f;
                continue;
            }
            first = ((uint32_t)iy * (uint32_t)g->width + (uint32_t)ix) * in->channels + channel;
            if (in->kind == ADAPTQ_FP16)
                for (i = 0; i < per_group; ++i)
                    patch[i] = load_f16(g->base, first + i);
            else
                for (i = 0; i < per_group; ++i)
                    patch[i] = load_f32(g->base, first + i);
        }
    }
}

/* Rows [row, row + rows) against the patch, two at a time; W(w, i) is weight i of row pointer w as float. */
#define DOT_ROWS(TYPE, W)                                                                                   \
    do {                                                                                                    \
        const TYPE *w = (const TYPE *)c->weights;                                                           \
        for (r = 0; r + 1u < rows; r += 2u) {                                                               \
            const TYPE *w0 = w + (row + r) * k, *w1 = w0 + k;                                               \
            float s0 = 0.0f, s1 = 0.0f;                                                                     \
            for (i = 0; i < k; ++i) {                                                                       \
                s0 += x[i] * W(w0, i);                                                                      \
                s1 += x[i] * W(w1, i);                                                                      \
            }                                                                                               \
            acc[row + r] = s0;                                                                              \
            acc[row + r + 1u] = s1;                                                                         \
        }                                                                                                   \
        for (; r < rows; ++r) {                                                                             \
            const TYPE *w0 = w + (row + r) * k;                                                             \
            float s0 = 0.0f;                                                                                \
            for (i = 0; i < k; ++i)                                                                         \
                s0 += x[i] * W(w0, i);                                                                      \
            acc[row + r] = s0;                                                                              \
        }                                                                                                   \
    } while (0)
#define HALF_WEIGHT(w, i) half_to_float((w)[i])
#define FLOAT_WEIGHT(w, i) ((w)[i])

static void dot_rows(const adaptq_conv *c, uint32_t k, uint32_t row, uint32_t rows, const float *x, float *acc)
{
    uint32_t r, i;
    if (c->compute == ADAPTQ_FP16)
        DOT_ROWS(uint16_t, HALF_WEIGHT);
    else
        DOT_ROWS(float, FLOAT_WEIGHT);
}

/* Depthwise: per output position and channel, the taps inside the input (loop bounds; the padded ones
 * would add ±0) in (ky, kx) order, the IR's order for one input channel per group. */
static void depthwise_float(const adaptq_network *net, const adaptq_conv *c, const conv_geometry *g, uint8_t *arena,
                            float *acc)
{
    const adaptq_buffer *in = g->in;
    const uint32_t taps = (uint32_t)c->kernel_h * c->kernel_w, stride = in->channels;
    const int half = in->kind == ADAPTQ_FP16;
    const uint32_t row = (uint32_t)g->width * stride;
    const uint16_t *wh = (const uint16_t *)c->weights;
    const float *wf = (const float *)c->weights;
    uint32_t oy, ox, ch, ky, kx;
    for (oy = 0; oy < g->out_h; ++oy) {
        const int32_t iy0 = (int32_t)(oy * c->stride_h) - c->pad_h;
        const uint32_t ky0 = iy0 < 0 ? (uint32_t)-iy0 : 0u;
        const uint32_t ky1 = iy0 + (int32_t)c->kernel_h > g->height ? (uint32_t)(g->height - iy0) : c->kernel_h;
        for (ox = 0; ox < g->out_w; ++ox) {
            const int32_t ix0 = (int32_t)(ox * c->stride_w) - c->pad_w;
            const uint32_t kx0 = ix0 < 0 ? (uint32_t)-ix0 : 0u;
            const uint32_t kx1 = ix0 + (int32_t)c->kernel_w > g->width ? (uint32_t)(g->width - ix0) : c->kernel_w;
            const uint32_t first = ((uint32_t)(iy0 + (int32_t)ky0) * (uint32_t)g->width
                                    + (uint32_t)(ix0 + (int32_t)kx0)) * stride + c->input.offset;
#define DW_FLOAT_CHANNELS(LOAD_X, W)                                                                        \
    for (ch = 0; ch < c->out_channels; ++ch) {                                                              \
        float sum = 0.0f;                                                                                   \
        for (ky = ky0; ky < ky1; ++ky) {                                                                    \
            uint32_t i = first + ch + (ky - ky0) * row;                                                     \
            uint32_t t = ch * taps + ky * c->kernel_w + kx0;                                                \
            for (kx = kx0; kx < kx1; ++kx, i += stride, ++t)                                                \
                sum += LOAD_X(g->base, i) * (W);                                                            \
        }                                                                                                   \
        acc[ch] = sum;                                                                                      \
    }
            if (half)
                DW_FLOAT_CHANNELS(load_f16, half_to_float(wh[t]))
            else
                DW_FLOAT_CHANNELS(load_f32, wf[t])
            adaptq_conv_epilogues(net, c, arena, oy * g->out_w + ox, 0, acc);
        }
    }
}

void adaptq_conv_float(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena)
{
    const conv_geometry g = adaptq_conv_geometry(net, c, arena);
    const uint32_t k = (uint32_t)c->kernel_h * c->kernel_w * c->in_per_group;
    const uint32_t out_per_group = c->out_channels / c->groups;
    float *patch = net->scratch.floats, *acc = net->scratch.floats + k;
    uint32_t oy, ox, group;
    if (c->in_per_group == 1 && out_per_group == 1) {
        depthwise_float(net, c, &g, arena, acc);
        return;
    }
    for (oy = 0; oy < g.out_h; ++oy)
        for (ox = 0; ox < g.out_w; ++ox) {
            for (group = 0; group < c->groups; ++group) {
                gather(c, &g, c->input.offset + group * c->in_per_group, oy, ox, patch);
                dot_rows(c, k, group * out_per_group, out_per_group, patch, acc);
            }
            adaptq_conv_epilogues(net, c, arena, oy * g.out_w + ox, 0, acc);
        }
}
