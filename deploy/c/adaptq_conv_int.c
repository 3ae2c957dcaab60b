/*
 * Int conv, pointwise, linear and grouped conv parts (not depthwise): the receptive fields of two
 * output positions are expanded into two int16 columns (im2col), then a block of 2 output channels x
 * 2 positions is accumulated with dual 16-bit MACs, so every activation and weight word loaded feeds
 * two products (the technique of CMSIS-NN's arm_nn_mat_mult_kernel_s8_s16, written anew here).
 *
 * Column order: the reduction index e = (ky, kx, ci) is stored at slot e with the middle two of every
 * four swapped ([0, 2, 1, 3]), because one word of four 8-bit codes widens into the lanes (x0, x2)
 * and (x1, x3). The exporter packs each weight row (c_export.pack_gemm_weights) so that one 32-bit word
 * of 8/bits codes per byte widens, slot by slot (slot_bytes), into lane pairs that meet the column's
 * pairs in order; the row is padded with zero codes to row_elements, a multiple of 32/bits. INT4 and
 * INT2 weights come out of the word scaled by 16 and 64, an exact factor shifted out of the
 * accumulator after the loop, so fewer weight bits cost fewer loads and no more MACs.
 *
 * DoReFa rows hold unsigned codes u: acc = 2·Σq·u − L_w·Σq, with Σq of the column summed as it is
 * written.
 */
#include "adaptq_internal.h"

#if defined(__GNUC__)
#define ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define ALWAYS_INLINE inline
#endif

#define ONES_PAIR 0x00010001

static const uint8_t column_slot[4] = {0, 2, 1, 3};

static inline uint32_t slot_of(uint32_t e) { return (e & ~3u) | column_slot[e & 3u]; }

/* The receptive field of output (oy, ox) over input channels [channel, channel + per_group): writes
 * the column's slots of the first kh*kw*per_group elements (padding as zero codes) and returns Σq. */
static int32_t im2col(const adaptq_conv *c, const conv_geometry *g, uint32_t channel, uint32_t oy, uint32_t ox,
                      int16_t *column)
{
    const adaptq_buffer *in = g->in;
    const unsigned bits = in->bits, is_signed = in->is_signed;
    const uint32_t per_group = c->in_per_group;
    const int32_t iy0 = (int32_t)(oy * c->stride_h) - c->pad_h, ix0 = (int32_t)(ox * c->stride_w) - c->pad_w;
    /* whole words of four 8-bit codes when every run starts on a word of the column and a byte of the buffer */
    const int words = bits == 8 && (per_group & 3u) == 0;
    int32_t sum = 0;
    uint32_t e = 0, ky, kx, i;
    for (ky = 0; ky < c->kernel_h; ++ky) {
        int32_t iy = iy0 + (int32_t)ky;
        for (kx = 0; kx < c->kernel_w; ++kx, e += per_group) {
            int32_t ix = ix0 + (int32_t)kx;
            uint32_t first;
            if (iy < 0 || iy >= g->height || ix < 0 || ix >= g->width) {
                for (i = 0; i < per_group; ++i)
                    column[slot_of(e + i)] = 0;
                continue;
            }
            first = ((uint32_t)iy * (uint32_t)g->width + (uint32_t)ix) * in->channels + channel;
            if (words) {
                const uint8_t *src = g->base + first;
                int16_t *dst = column + e;
                for (i = 0; i < per_group; i += 4u, src += 4, dst += 4) {
                    int32_t word = load_word(src);
                    int32_t even = is_signed ? SXTB16(word) : UXTB16(word);
                    int32_t odd = is_signed ? SXTB16(ROR8(word)) : UXTB16(ROR8(word));
                    store_word(dst, even);
                    store_word(dst + 2, odd);
                    sum = SMLAD(even, ONES_PAIR, sum);
                    sum = SMLAD(odd, ONES_PAIR, sum);
                }
            } else {
                for (i = 0; i < per_group; ++i) {
                    int32_t q = load_code(g->base, first + i, bits, is_signed);
                    column[slot_of(e + i)] = (int16_t)q;
                    sum += q;
                }
            }
        }
    }
    return sum;
}

/* Rows r0 (and r1) against columns x0 (and x1) over `blocks` weight words; acc[row][col]. The weight
 * format and the block shape are constants in every caller, so each case compiles to its own loop. */
static ALWAYS_INLINE void gemm_block(const uint8_t *w0, const uint8_t *w1, const int16_t *x0, const int16_t *x1,
                                     uint32_t blocks, const unsigned bits, const int unsigned_weights,
                                     const int rows, const int cols, int32_t acc[2][2])
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    const unsigned slots = 8u / bits;
    uint32_t n;
    for (n = 0; n < blocks; ++n) {
        int32_t word0 = load_word(w0), word1 = rows > 1 ? load_word(w1) : 0;
        unsigned s;
        w0 += 4;
        w1 += 4;
        for (s = 0; s < slots; ++s) {
            int32_t v0 = slot_bytes(word0, bits, s), v1 = slot_bytes(word1, bits, s);
            int32_t p0 = unsigned_weights ? UXTB16(v0) : SXTB16(v0);
            int32_t q0 = unsigned_weights ? UXTB16(ROR8(v0)) : SXTB16(ROR8(v0));
            int32_t xa = load_word(x0), xb = load_word(x0 + 2);
            a00 = SMLAD(p0, xa, a00);
            a00 = SMLAD(q0, xb, a00);
            if (rows > 1) {
                int32_t p1 = unsigned_weights ? UXTB16(v1) : SXTB16(v1);
                int32_t q1 = unsigned_weights ? UXTB16(ROR8(v1)) : SXTB16(ROR8(v1));
                a10 = SMLAD(p1, xa, a10);
                a10 = SMLAD(q1, xb, a10);
                if (cols > 1) {
                    int32_t ya = load_word(x1), yb = load_word(x1 + 2);
                    a01 = SMLAD(p0, ya, a01);
                    a01 = SMLAD(q0, yb, a01);
                    a11 = SMLAD(p1, ya, a11);
                    a11 = SMLAD(q1, yb, a11);
                }
            } else if (cols > 1) {
                int32_t ya = load_word(x1), yb = load_word(x1 + 2);
                a01 = SMLAD(p0, ya, a01);
                a01 = SMLAD(q0, yb, a01);
            }
            x0 += 4;
            x1 += 4;
        }
    }
    acc[0][0] = a00;
    acc[0][1] = a01;
    acc[1][0] = a10;
    acc[1][1] = a11;
}

#define GEMM_CASES(BITS, UNSIGNED)                                                                          \
    if (rows == 2 && cols == 2)                                                                             \
        gemm_block(w0, w1, x0, x1, blocks, BITS, UNSIGNED, 2, 2, acc);                                      \
    else if (rows == 2)                                                                                     \
        gemm_block(w0, w1, x0, x1, blocks, BITS, UNSIGNED, 2, 1, acc);                                      \
    else if (cols == 2)                                                                                     \
        gemm_block(w0, w1, x0, x1, blocks, BITS, UNSIGNED, 1, 2, acc);                                      \
    else                                                                                                    \
        gemm_block(w0, w1, x0, x1, blocks, BITS, UNSIGNED, 1, 1, acc)

static void gemm(const adaptq_conv *c, const uint8_t *w0, const uint8_t *w1, const int16_t *x0, const int16_t *x1,
                 int rows, int cols, int32_t acc[2][2])
{
    const uint32_t blocks = c->row_elements * c->weight_bits / 32u;
    const int dorefa = c->weight_grid == ADAPTQ_GRID_DOREFA;
    switch (c->weight_bits * 2u + (unsigned)dorefa) {
    case 16: GEMM_CASES(8, 0); break;
    case 17: GEMM_CASES(8, 1); break;
    case 8: GEMM_CASES(4, 0); break;
    case 9: GEMM_CASES(4, 1); break;
    case 4: GEMM_CASES(2, 0); break;
    default: GEMM_CASES(2, 1); break;
    }
}

void adaptq_conv_int_gemm(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena)
{
    const conv_geometry g = adaptq_conv_geometry(net, c, arena);
    const uint32_t positions = g.out_h * g.out_w;
    const uint32_t out_per_group = c->out_channels / c->groups;
    const uint32_t row_bytes = c->row_elements * c->weight_bits / 8u;
    const unsigned unscale = 8u - c->weight_bits;
    const int dorefa = c->weight_grid == ADAPTQ_GRID_DOREFA;
    const int32_t levels = (int32_t)(1u << c->weight_bits) - 1;
    const uint8_t *weights = (const uint8_t *)c->weights;
    int16_t *columns[2];
    int32_t *acc[2];
    uint32_t position;
    columns[0] = net->scratch.columns;
    columns[1] = net->scratch.columns + c->row_elements;
    acc[0] = net->scratch.acc;
    acc[1] = net->scratch.acc + c->out_channels;
    /* slots past the reduction stay zero for the whole part: im2col writes only the first ones */
    memset(net->scratch.columns, 0, 2u * c->row_elements * sizeof(int16_t));

    for (position = 0; position < positions; position += 2u) {
        const int cols = position + 1u < positions ? 2 : 1;
        uint32_t group;
        for (group = 0; group < c->groups; ++group) {
            uint32_t channel = c->input.offset + group * c->in_per_group;
            int32_t sums[2] = {0, 0};
            uint32_t row, k;
            for (k = 0; k < (uint32_t)cols; ++k) {
                uint32_t p = position + k;
                sums[k] = im2col(c, &g, channel, p / g.out_w, p % g.out_w, columns[k]);
            }
            for (row = group * out_per_group; row < (group + 1u) * out_per_group; row += 2u) {
                const int rows = row + 1u < (group + 1u) * out_per_group ? 2 : 1;
                const uint8_t *w0 = weights + row * row_bytes;
                int32_t block[2][2];
                int r;
                gemm(c, w0, w0 + row_bytes, columns[0], columns[1], rows, cols, block);
                for (r = 0; r < rows; ++r)
                    for (k = 0; k < (uint32_t)cols; ++k) {
                        int32_t a = block[r][k] >> unscale; /* exact: every product carries the factor */
                        acc[k][row + (uint32_t)r] = dorefa ? 2 * a - levels * sums[k] : a;
                    }
            }
        }
        adaptq_conv_epilogues(net, c, arena, position, acc[0], 0);
        if (cols > 1)
            adaptq_conv_epilogues(net, c, arena, position + 1u, acc[1], 0);
    }
}
