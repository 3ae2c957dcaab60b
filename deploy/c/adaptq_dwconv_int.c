/*
 * Int depthwise parts, channels-last: at each output position the taps inside the input (loop
 * bounds, no padding tests per element) are accumulated four channels at a time with one word load
 * per tap: a word of 4 (8-bit), 8 (4-bit) or 16 (2-bit) input codes widens, slot by slot
 * (slot_bytes), into two lane pairs, and SMLABB / SMLATT multiply each lane by its channel's weight.
 * Per pass the cost is one word, two widenings, two weight words and four MACs whatever the input's
 * bit width, so fewer bits never cost more. Sub-byte codes come out scaled by 16 or 64, an exact
 * factor shifted out of the accumulators.
 *
 * The weights (the IR's packing: [channel][ky][kx], LSB first) are unpacked once per part into
 * scratch as effective int16 values (DoReFa: 2u − L_w), in the lane order the passes read: per block
 * of 32/bits channels, per slot s, per tap, the words (w[s], w[2E + s]) and (w[E + s], w[3E + s]) with
 * E = 8/bits codes per byte. Channels that do not fill a block, or start off a byte, run one by one.
 */
#include "adaptq_internal.h"

static int32_t effective_weight(const adaptq_conv *c, uint32_t i)
{
    const uint8_t *w = (const uint8_t *)c->weights;
    if (c->weight_grid == ADAPTQ_GRID_DOREFA)
        return 2 * load_code(w, i, c->weight_bits, 0) - ((int32_t)(1u << c->weight_bits) - 1);
    return load_code(w, i, c->weight_bits, 1);
}

typedef struct {
    uint32_t block_channels; /* 32 / input bits */
    uint32_t blocks;         /* channels [0, blocks * block_channels) run in blocks */
    const int16_t *block_weights, *single_weights;
} dw_plan;

static dw_plan unpack_weights(const adaptq_conv *c, const adaptq_buffer *in, int16_t *scratch)
{
    const uint32_t taps = (uint32_t)c->kernel_h * c->kernel_w;
    const uint32_t per_byte = 8u / in->bits;
    dw_plan plan;
    uint32_t b, s, t, ch;
    int16_t *dst = scratch;
    plan.block_channels = 4u * per_byte;
    /* blocks need every pixel's first block on a byte: the buffer's channels and the part's first one */
    plan.blocks = ((uint32_t)in->channels * in->bits) % 8u == 0 && ((uint32_t)c->input.offset * in->bits) % 8u == 0
                      ? c->out_channels / plan.block_channels : 0;
    plan.block_weights = scratch;
    for (b = 0; b < plan.blocks; ++b) {
        uint32_t first = b * plan.block_channels;
        for (s = 0; s < per_byte; ++s)
            for (t = 0; t < taps; ++t) {
                *dst++ = (int16_t)effective_weight(c, (first + s) * taps + t);
                *dst++ = (int16_t)effective_weight(c, (first + 2u * per_byte + s) * taps + t);
                *dst++ = (int16_t)effective_weight(c, (first + per_byte + s) * taps + t);
                *dst++ = (int16_t)effective_weight(c, (first + 3u * per_byte + s) * taps + t);
            }
    }
    plan.single_weights = dst;
    for (ch = plan.blocks * plan.block_channels; ch < c->out_channels; ++ch)
        for (t = 0; t < taps; ++t)
            *dst++ = (int16_t)effective_weight(c, ch * taps + t);
    return plan;
}

/* One pass: channels (s, 2E+s, E+s, 3E+s) of the block whose first code is at byte `block_byte` of
 * pixel 0, over taps [ky0, ky1) x [kx0, kx1). */
#define DW_PASS(EXTEND)                                                                                     \
    do {                                                                                                    \
        int32_t a0 = 0, a1 = 0, b0 = 0, b1 = 0;                                                            \
        uint32_t ky, kx;                                                                                    \
        for (ky = ky0; ky < ky1; ++ky) {                                                                    \
            const uint8_t *row = src + ((uint32_t)(iy0 + (int32_t)ky) * width + (uint32_t)(ix0 + (int32_t)kx0)) \
                                           * pixel_bytes;                                                    \
            const int16_t *w = pass_weights + 4u * (ky * kernel_w + kx0);                                   \
            for (kx = kx0; kx < kx1; ++kx, row += pixel_bytes, w += 4) {                                    \
                int32_t v = slot_bytes(load_word(row), bits, s);                                            \
                int32_t lo = EXTEND(v), hi = EXTEND(ROR8(v));                                               \
                int32_t wa = load_word(w), wb = load_word(w + 2);                                           \
                a0 = SMLABB(lo, wa, a0);                                                                    \
                a1 = SMLATT(lo, wa, a1);                                                                    \
                b0 = SMLABB(hi, wb, b0);                                                                    \
                b1 = SMLATT(hi, wb, b1);                                                                    \
            }                                                                                               \
        }                                                                                                   \
        acc[first + s] = a0 >> unscale;                                                                     \
        acc[first + 2u * per_byte + s] = a1 >> unscale;                                                     \
        acc[first + per_byte + s] = b0 >> unscale;                                                          \
        acc[first + 3u * per_byte + s] = b1 >> unscale;                                                     \
    } while (0)

void adaptq_dwconv_int(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena)
{
    const conv_geometry g = adaptq_conv_geometry(net, c, arena);
    const adaptq_buffer *in = g.in;
    const unsigned bits = in->bits, is_signed = in->is_signed, unscale = 8u - bits;
    const uint32_t per_byte = 8u / bits, taps = (uint32_t)c->kernel_h * c->kernel_w, kernel_w = c->kernel_w;
    const uint32_t width = (uint32_t)g.width, pixel_bytes = (uint32_t)in->channels * bits / 8u;
    const dw_plan plan = unpack_weights(c, in, net->scratch.columns);
    int32_t *acc = net->scratch.acc;
    uint32_t oy, ox;
    for (oy = 0; oy < g.out_h; ++oy) {
        const int32_t iy0 = (int32_t)(oy * c->stride_h) - c->pad_h;
        const uint32_t ky0 = iy0 < 0 ? (uint32_t)-iy0 : 0u;
        const uint32_t ky1 = iy0 + (int32_t)c->kernel_h > g.height ? (uint32_t)(g.height - iy0) : c->kernel_h;
        for (ox = 0; ox < g.out_w; ++ox) {
            const int32_t ix0 = (int32_t)(ox * c->stride_w) - c->pad_w;
            const uint32_t kx0 = ix0 < 0 ? (uint32_t)-ix0 : 0u;
            const uint32_t kx1 = ix0 + (int32_t)c->kernel_w > g.width ? (uint32_t)(g.width - ix0) : c->kernel_w;
            uint32_t b, s, ch;
            for (b = 0; b < plan.blocks; ++b) {
                const uint32_t first = b * plan.block_channels;
                const uint8_t *src = g.base + (c->input.offset + first) * bits / 8u;
                for (s = 0; s < per_byte; ++s) {
                    const int16_t *pass_weights = plan.block_weights + (b * per_byte + s) * 4u * taps;
                    if (is_signed)
                        DW_PASS(SXTB16);
                    else
                        DW_PASS(UXTB16);
                }
            }
            for (ch = plan.blocks * plan.block_channels; ch < c->out_channels; ++ch) {
                const int16_t *w = plan.single_weights + (ch - plan.blocks * plan.block_channels) * taps;
                int32_t sum = 0;
                uint32_t ky, kx;
                for (ky = ky0; ky < ky1; ++ky)
                    for (kx = kx0; kx < kx1; ++kx) {
                        uint32_t pixel = (uint32_t)(iy0 + (int32_t)ky) * width + (uint32_t)(ix0 + (int32_t)kx);
                        sum += load_code(g.base, pixel * in->channels + c->input.offset + ch, bits, is_signed)
                               * w[ky * kernel_w + kx];
                    }
                acc[ch] = sum;
            }
            adaptq_conv_epilogues(net, c, arena, oy * g.out_w + ox, acc, 0);
        }
    }
}
