/*
 * Int depthwise parts, channels-last: at each output position the taps inside the input (loop
 * bounds, no padding tests per element) are accumulated four channels at a time with one word load
 * per tap: a word of 4 (8-bit), 8 (4-bit) or 16 (2-bit) input codes widens, slot by slot, into two
 * lane pairs, and SMLABB / SMLATT multiply each lane by its channel's weight. Per pass the cost is one
 * word, one mask, two widenings, two weight words and four MACs whatever the input's bit width.
 * Sub-byte codes come out scaled by a power of two (dw_slot), an exact factor shifted out of the
 * accumulators. A 3x3 kernel at a position whose taps all lie inside
 * the input runs unrolled; the border positions loop over their valid taps.
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

typedef struct {
    int32_t a0, a1, b0, b1;
} lanes4;

#if defined(__GNUC__)
#define OPAQUE(x) __asm__("" : "+r"(x))
#else
#define OPAQUE(x) ((void)0)
#endif

/* The codes of one slot of each byte of a word: signed ones shifted up to the byte's sign bit
 * (slot_bytes: scaled by 2^(8 - bits)), unsigned ones masked where they are (scaled by 2^(slot·bits)),
 * one instruction fewer. */
static ALWAYS_INLINE int32_t dw_slot(int32_t word, const unsigned bits, const unsigned slot, const int is_signed)
{
    if (is_signed || bits == 8)
        return slot_bytes(word, bits, slot);
    return (int32_t)((uint32_t)word & ((((1u << bits) - 1u) * 0x01010101u) << (slot * bits)));
}

static ALWAYS_INLINE unsigned dw_unscale(const unsigned bits, const unsigned slot, const int is_signed)
{
    return is_signed ? 8u - bits : slot * bits;
}

/* One tap of one pass: the word at `p`, the slot's codes widened, times the tap's weight words. */
static ALWAYS_INLINE void dw_tap(lanes4 *acc, const uint8_t *p, const int16_t *w, const unsigned bits,
                                 const unsigned slot, const int is_signed)
{
    int32_t v = dw_slot(load_word(p), bits, slot, is_signed);
    int32_t lo = is_signed ? SXTB16(v) : UXTB16(v), hi = is_signed ? SXTB16_ROR8(v) : UXTB16_ROR8(v);
    int32_t wa = load_word(w), wb = load_word(w + 2);
    acc->a0 = SMLABB(lo, wa, acc->a0);
    acc->a1 = SMLATT(lo, wa, acc->a1);
    acc->b0 = SMLABB(hi, wb, acc->b0);
    acc->b1 = SMLATT(hi, wb, acc->b1);
}

typedef struct {
    const uint8_t *src;      /* the block's first byte at pixel (iy0 + ky0, ix0 + kx0) */
    uint32_t row_bytes, pixel_bytes;
    uint32_t ky0, ky1, kx0, kx1, kernel_w;
    int full3x3;             /* every tap of a 3x3 kernel inside the input */
} dw_window;

static ALWAYS_INLINE lanes4 dw_pass(const dw_window *win, const int16_t *weights, const unsigned bits,
                                    const unsigned slot, const int is_signed)
{
    lanes4 acc = {0, 0, 0, 0};
    if (win->full3x3) {
        const uint8_t *r0 = win->src, *r1, *r2;
        uint32_t pb = win->pixel_bytes, pb2 = 2u * pb;
        /* Left to itself the compiler keeps nine tap addresses per pass alive across the block loop
         * and spills them; an opaque base makes it address the taps from three rows instead. */
        OPAQUE(r0);
        OPAQUE(pb);
        r1 = r0 + win->row_bytes;
        r2 = r1 + win->row_bytes;
        dw_tap(&acc, r0, weights + 0, bits, slot, is_signed);
        dw_tap(&acc, r0 + pb, weights + 4, bits, slot, is_signed);
        dw_tap(&acc, r0 + pb2, weights + 8, bits, slot, is_signed);
        dw_tap(&acc, r1, weights + 12, bits, slot, is_signed);
        dw_tap(&acc, r1 + pb, weights + 16, bits, slot, is_signed);
        dw_tap(&acc, r1 + pb2, weights + 20, bits, slot, is_signed);
        dw_tap(&acc, r2, weights + 24, bits, slot, is_signed);
        dw_tap(&acc, r2 + pb, weights + 28, bits, slot, is_signed);
        dw_tap(&acc, r2 + pb2, weights + 32, bits, slot, is_signed);
    } else {
        const uint8_t *row = win->src;
        uint32_t ky, kx;
        for (ky = win->ky0; ky < win->ky1; ++ky, row += win->row_bytes) {
            const uint8_t *p = row;
            const int16_t *w = weights + 4u * (ky * win->kernel_w + win->kx0);
            for (kx = win->kx0; kx < win->kx1; ++kx, p += win->pixel_bytes, w += 4)
                dw_tap(&acc, p, w, bits, slot, is_signed);
        }
    }
    return acc;
}

/* Every block of one position: channels (s, 2E+s, E+s, 3E+s) of each block per pass. */
static ALWAYS_INLINE void dw_slot_pass(const dw_window *win, const int16_t *weights, int32_t *out,
                                       const unsigned bits, const unsigned s, const int is_signed)
{
    const unsigned per_byte = 8u / bits, unscale = dw_unscale(bits, s, is_signed);
    lanes4 r = dw_pass(win, weights, bits, s, is_signed);
    out[s] = r.a0 >> unscale;
    out[2u * per_byte + s] = r.a1 >> unscale;
    out[per_byte + s] = r.b0 >> unscale;
    out[3u * per_byte + s] = r.b1 >> unscale;
}

static ALWAYS_INLINE void dw_blocks(const dw_window *base, const dw_plan *plan, uint32_t taps, int32_t *acc,
                                    const unsigned bits, const int is_signed)
{
    const unsigned per_byte = 8u / bits;
    const uint32_t pass_weights = 4u * taps;
    dw_window win = *base;
    uint32_t b;
    for (b = 0; b < plan->blocks; ++b, win.src += 4) {
        int32_t *out = acc + b * plan->block_channels;
        const int16_t *w = plan->block_weights + b * per_byte * pass_weights;
        dw_slot_pass(&win, w, out, bits, 0, is_signed); /* the slots unrolled: constant masks and shifts */
        if (per_byte > 1)
            dw_slot_pass(&win, w + pass_weights, out, bits, 1, is_signed);
        if (per_byte > 2) {
            dw_slot_pass(&win, w + 2u * pass_weights, out, bits, 2, is_signed);
            dw_slot_pass(&win, w + 3u * pass_weights, out, bits, 3, is_signed);
        }
    }
}

void adaptq_dwconv_int(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena)
{
    const conv_geometry g = adaptq_conv_geometry(net, c, arena);
    const adaptq_buffer *in = g.in;
    const unsigned bits = in->bits, is_signed = in->is_signed;
    const uint32_t taps = (uint32_t)c->kernel_h * c->kernel_w, kernel_w = c->kernel_w;
    const uint32_t width = (uint32_t)g.width, pixel_bytes = (uint32_t)in->channels * bits / 8u;
    const dw_plan plan = unpack_weights(c, in, net->scratch.columns);
    const int is3x3 = c->kernel_h == 3 && c->kernel_w == 3;
    int32_t *acc = net->scratch.acc;
    dw_window win;
    uint32_t oy, ox;
    win.row_bytes = width * pixel_bytes;
    win.pixel_bytes = pixel_bytes;
    win.kernel_w = kernel_w;
    for (oy = 0; oy < g.out_h; ++oy) {
        const int32_t iy0 = (int32_t)(oy * c->stride_h) - c->pad_h;
        win.ky0 = iy0 < 0 ? (uint32_t)-iy0 : 0u;
        win.ky1 = iy0 + (int32_t)c->kernel_h > g.height ? (uint32_t)(g.height - iy0) : c->kernel_h;
        for (ox = 0; ox < g.out_w; ++ox) {
            const int32_t ix0 = (int32_t)(ox * c->stride_w) - c->pad_w;
            uint32_t ch;
            win.kx0 = ix0 < 0 ? (uint32_t)-ix0 : 0u;
            win.kx1 = ix0 + (int32_t)c->kernel_w > g.width ? (uint32_t)(g.width - ix0) : c->kernel_w;
            win.full3x3 = is3x3 && win.ky0 == 0 && win.kx0 == 0 && win.ky1 == 3 && win.kx1 == 3;
            win.src = g.base + (uint32_t)(iy0 + (int32_t)win.ky0) * win.row_bytes
                      + (uint32_t)(ix0 + (int32_t)win.kx0) * pixel_bytes + c->input.offset * bits / 8u;
            switch (bits * 2u + is_signed) {
            case 16: dw_blocks(&win, &plan, taps, acc, 8, 0); break;
            case 17: dw_blocks(&win, &plan, taps, acc, 8, 1); break;
            case 8: dw_blocks(&win, &plan, taps, acc, 4, 0); break;
            case 9: dw_blocks(&win, &plan, taps, acc, 4, 1); break;
            case 4: dw_blocks(&win, &plan, taps, acc, 2, 0); break;
            default: dw_blocks(&win, &plan, taps, acc, 2, 1); break;
            }
            for (ch = plan.blocks * plan.block_channels; ch < c->out_channels; ++ch) {
                const int16_t *w = plan.single_weights + (ch - plan.blocks * plan.block_channels) * taps;
                int32_t sum = 0;
                uint32_t ky, kx;
                for (ky = win.ky0; ky < win.ky1; ++ky)
                    for (kx = win.kx0; kx < win.kx1; ++kx) {
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
