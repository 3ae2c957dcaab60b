/*
 * Int conv, pointwise, linear and grouped conv parts (not depthwise): the receptive fields of two
 * output positions are expanded into two int16 columns (im2col), then a block of 2 output channels x
 * 2 positions is accumulated with dual 16-bit MACs, so every activation and weight word loaded feeds
 * two products (the technique of CMSIS-NN's arm_nn_mat_mult_kernel_s8_s16, written anew here).
 *
 * Column order: one word of 32/bits input codes (E = 8/bits per byte) widens, code slot s of bytes
 * (0, 2) then (1, 3), into lane pairs; so each group of 32/bits column slots holds its reduction
 * elements e = (ky, kx, ci) in that order (c_export.column_order: [0, 2, 1, 3] at 8 bits, [0, 4, 2, 6,
 * 1, 5, 3, 7] at 4), and a sub-byte code sits in its lane scaled by 2^(8 - bits). The exporter packs
 * each weight row (c_export.pack_gemm_weights) in the same order, so that one 32-bit word of 8/bits
 * weight codes per byte widens, slot by slot (slot_bytes), into lane pairs that meet the column's
 * pairs in order; the row is padded with zero codes to row_elements, a multiple of 32/bits of the
 * narrower of the two. INT4 and INT2 weights come out of the word scaled by 16 and 64 too: the exact
 * factors are shifted out of the accumulator after the loop, so fewer bits cost fewer loads and no
 * more MACs.
 *
 * DoReFa rows hold unsigned codes u: acc = 2·Σq·u − L_w·Σq, with Σq of the column summed as it is
 * written.
 */
#include "adaptq_internal.h"

#define ONES_PAIR 0x00010001

/* the slot of element i of a group of 32/bits (the inverse of c_export.column_order) */
static const uint8_t slot8[4] = {0, 2, 1, 3};
static const uint8_t slot4[8] = {0, 4, 2, 6, 1, 5, 3, 7};
static const uint8_t slot2[16] = {0, 4, 8, 12, 2, 6, 10, 14, 1, 5, 9, 13, 3, 7, 11, 15};

static inline uint32_t slot_of(uint32_t e, unsigned bits)
{
    const uint8_t *table = bits == 8 ? slot8 : bits == 4 ? slot4 : slot2;
    uint32_t group = 32u / bits;
    return (e & ~(group - 1u)) | table[e & (group - 1u)];
}

/* One run of per_group codes of a pixel starting on a byte: word by word, widened into the column
 * slots in their order; returns the run's Σq scaled like the lanes. */
static ALWAYS_INLINE int32_t widen_run(const uint8_t *src, int16_t *dst, uint32_t per_group, const unsigned bits,
                                       const int is_signed)
{
    int32_t sum = 0;
    uint32_t i;
    unsigned s;
    for (i = 0; i < per_group; i += 32u / bits, src += 4) {
        int32_t word = load_word(src);
        for (s = 0; s < 8u / bits; ++s, dst += 4) {
            int32_t v = slot_bytes(word, bits, s);
            int32_t even = is_signed ? SXTB16(v) : UXTB16(v), odd = is_signed ? SXTB16_ROR8(v) : UXTB16_ROR8(v);
            store_word(dst, even);
            store_word(dst + 2, odd);
            sum = SMLAD(even, ONES_PAIR, sum);
            sum = SMLAD(odd, ONES_PAIR, sum);
        }
    }
    return sum;
}

/* The receptive field of output (oy, ox) over input channels [channel, channel + per_group): writes
 * the column's slots of the first kh*kw*per_group elements (padding as zero codes) and returns Σq. */
static int32_t im2col(const adaptq_conv *c, const conv_geometry *g, uint32_t channel, uint32_t oy, uint32_t ox,
                      int16_t *column)
{
    const adaptq_buffer *in = g->in;
    const unsigned bits = in->bits, is_signed = in->is_signed, scale = 8u - bits;
    const uint32_t per_group = c->in_per_group;
    const int32_t iy0 = (int32_t)(oy * c->stride_h) - c->pad_h, ix0 = (int32_t)(ox * c->stride_w) - c->pad_w;
    /* whole words when every run fills whole column groups and starts on a byte of the buffer */
    const int words = per_group % (32u / bits) == 0 && ((uint32_t)in->channels * bits) % 8u == 0 &&
                      (channel * bits) % 8u == 0;
    int32_t sum = 0;
    uint32_t e = 0, ky, kx, i;
    for (ky = 0; ky < c->kernel_h; ++ky) {
        int32_t iy = iy0 + (int32_t)ky;
        for (kx = 0; kx < c->kernel_w; ++kx, e += per_group) {
            int32_t ix = ix0 + (int32_t)kx;
            uint32_t first;
            if (iy < 0 || iy >= g->height || ix < 0 || ix >= g->width) {
                for (i = 0; i < per_group; ++i)
                    column[slot_of(e + i, bits)] = 0;
                continue;
            }
            first = ((uint32_t)iy * (uint32_t)g->width + (uint32_t)ix) * in->channels + channel;
            if (words) {
                const uint8_t *src = g->base + first * bits / 8u;
                switch (bits * 2u + is_signed) {
                case 16: sum += widen_run(src, column + e, per_group, 8, 0); break;
                case 17: sum += widen_run(src, column + e, per_group, 8, 1); break;
                case 8: sum += widen_run(src, column + e, per_group, 4, 0); break;
                case 9: sum += widen_run(src, column + e, per_group, 4, 1); break;
                case 4: sum += widen_run(src, column + e, per_group, 2, 0); break;
                default: sum += widen_run(src, column + e, per_group, 2, 1); break;
                }
            } else {
                for (i = 0; i < per_group; ++i) {
                    int32_t q = load_code(g->base, first + i, bits, is_signed) * (1 << scale);
                    column[slot_of(e + i, bits)] = (int16_t)q;
                    sum += q;
                }
            }
        }
    }
    return sum >> scale; /* exact: every term carries the factor */
}

/* Σq of a pixel's n 8-bit codes (n a multiple of 4), for DoReFa's correction */
static int32_t pixel_sum(const uint8_t *x, uint32_t n, int is_signed)
{
    int32_t sum = 0;
    uint32_t i;
    for (i = 0; i < n; i += 4u, x += 4) {
        int32_t word = load_word(x);
        sum = SMLAD(is_signed ? SXTB16(word) : UXTB16(word), ONES_PAIR, sum);
        sum = SMLAD(is_signed ? SXTB16_ROR8(word) : UXTB16_ROR8(word), ONES_PAIR, sum);
    }
    return sum;
}

/* Rows w0 (and w1) against columns x0 (and x1) over `blocks` weight words: acc[row][col]. The weight
 * format and the block shape are constants in every caller, so each case compiles to its own loop with
 * the slots unrolled. */
#define GEMM_SLOT(S)                                                                                        \
    do {                                                                                                    \
        int32_t v0 = slot_bytes(word0, bits, S);                                                            \
        int32_t p0 = unsigned_weights ? UXTB16(v0) : SXTB16(v0);                                            \
        int32_t q0 = unsigned_weights ? UXTB16_ROR8(v0) : SXTB16_ROR8(v0);                                  \
        int32_t xa, xb;                                                                                     \
        LOAD_X(xp0, S, xa, xb);                                                                              \
        a00 = SMLAD(p0, xa, a00);                                                                           \
        a00 = SMLAD(q0, xb, a00);                                                                           \
        if (cols > 1) {                                                                                     \
            int32_t ya, yb;                                                                                 \
            LOAD_X(xp1, S, ya, yb);                                                                          \
            a01 = SMLAD(p0, ya, a01);                                                                       \
            a01 = SMLAD(q0, yb, a01);                                                                       \
            if (rows > 1) {                                                                                 \
                int32_t v1 = slot_bytes(word1, bits, S);                                                    \
                int32_t p1 = unsigned_weights ? UXTB16(v1) : SXTB16(v1);                                    \
                int32_t q1 = unsigned_weights ? UXTB16_ROR8(v1) : SXTB16_ROR8(v1);                          \
                a10 = SMLAD(p1, xa, a10);                                                                   \
                a10 = SMLAD(q1, xb, a10);                                                                   \
                a11 = SMLAD(p1, ya, a11);                                                                   \
                a11 = SMLAD(q1, yb, a11);                                                                   \
            }                                                                                               \
        } else if (rows > 1) {                                                                              \
            int32_t v1 = slot_bytes(word1, bits, S);                                                        \
            int32_t p1 = unsigned_weights ? UXTB16(v1) : SXTB16(v1);                                        \
            int32_t q1 = unsigned_weights ? UXTB16_ROR8(v1) : SXTB16_ROR8(v1);                              \
            a10 = SMLAD(p1, xa, a10);                                                                       \
            a10 = SMLAD(q1, xb, a10);                                                                       \
        }                                                                                                   \
    } while (0)

/* The activations of one slot: two words of the int16 column, or (direct) one word of four 8-bit codes
 * of the pixel itself, widened into the same lanes (x0, x2), (x1, x3). */
#define LOAD_X(X, S, XA, XB)                                                                                \
    do {                                                                                                    \
        if (direct) {                                                                                       \
            int32_t word = load_word((const uint8_t *)(X) + 4 * (S));                                       \
            XA = direct == DIRECT_SIGNED ? SXTB16(word) : UXTB16(word);                                     \
            XB = direct == DIRECT_SIGNED ? SXTB16_ROR8(word) : UXTB16_ROR8(word);                           \
        } else {                                                                                            \
            XA = load_word((const int16_t *)(X) + 4 * (S));                                                 \
            XB = load_word((const int16_t *)(X) + 4 * (S) + 2);                                             \
        }                                                                                                   \
    } while (0)

enum { COLUMNS = 0, DIRECT_UNSIGNED = 1, DIRECT_SIGNED = 2 };

static ALWAYS_INLINE void gemm_block(const uint8_t *w0, const uint8_t *w1, const void *x0, const void *x1,
                                     uint32_t blocks, const unsigned bits, const int unsigned_weights,
                                     const int rows, const int cols, const int direct, int32_t acc[2][2])
{
    /* bytes of activations per weight word: int16 columns hold 2 per code, a pixel 1 */
    const uint32_t step = direct ? 4u * (8u / bits) : 8u * (8u / bits);
    const uint8_t *xp0 = (const uint8_t *)x0, *xp1 = (const uint8_t *)x1;
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0;
    for (; blocks; --blocks) {
        int32_t word0 = load_word(w0), word1 = rows > 1 ? load_word(w1) : 0;
        w0 += 4;
        w1 += 4;
        GEMM_SLOT(0);
        if (bits <= 4)
            GEMM_SLOT(1);
        if (bits == 2) {
            GEMM_SLOT(2);
            GEMM_SLOT(3);
        }
        xp0 += step;
        xp1 += step;
    }
    acc[0][0] = a00;
    acc[0][1] = a01;
    acc[1][0] = a10;
    acc[1][1] = a11;
}

typedef struct {
    const uint8_t *weights;   /* the part's packed rows */
    uint32_t row_bytes, blocks;
    int dorefa;
    int32_t levels;           /* L_w */
    unsigned unscale;         /* the lanes' exact factor: (8 - weight bits) + (8 - input bits) */
} gemm_rows_args;

/* Rows [row, end) against one or two columns, into acc[k][row]: the scale shifted out, DoReFa's Σq term
 * subtracted. */
static ALWAYS_INLINE void gemm_rows(const gemm_rows_args *g, uint32_t row, uint32_t end, const void *x0,
                                    const void *x1, const int32_t sums[2], int32_t *acc0, int32_t *acc1,
                                    const unsigned bits, const int unsigned_weights, const int cols, const int direct)
{
    int32_t block[2][2];
    const int32_t l0 = g->levels * sums[0], l1 = g->levels * sums[1];
    const unsigned unscale = g->unscale;
    for (; row + 1u < end; row += 2u) {
        const uint8_t *w0 = g->weights + row * g->row_bytes;
        gemm_block(w0, w0 + g->row_bytes, x0, x1, g->blocks, bits, unsigned_weights, 2, cols, direct, block);
        if (unsigned_weights) { /* DoReFa */
            acc0[row] = 2 * (block[0][0] >> unscale) - l0;
            acc0[row + 1u] = 2 * (block[1][0] >> unscale) - l0;
            if (cols > 1) {
                acc1[row] = 2 * (block[0][1] >> unscale) - l1;
                acc1[row + 1u] = 2 * (block[1][1] >> unscale) - l1;
            }
        } else {
            acc0[row] = block[0][0] >> unscale;
            acc0[row + 1u] = block[1][0] >> unscale;
            if (cols > 1) {
                acc1[row] = block[0][1] >> unscale;
                acc1[row + 1u] = block[1][1] >> unscale;
            }
        }
    }
    if (row < end) {
        const uint8_t *w0 = g->weights + row * g->row_bytes;
        gemm_block(w0, w0, x0, x1, g->blocks, bits, unsigned_weights, 1, cols, direct, block);
        acc0[row] = unsigned_weights ? 2 * (block[0][0] >> unscale) - l0 : block[0][0] >> unscale;
        if (cols > 1)
            acc1[row] = unsigned_weights ? 2 * (block[0][1] >> unscale) - l1 : block[0][1] >> unscale;
    }
}

#define GEMM_ROWS(BITS, UNSIGNED)                                                                           \
    do {                                                                                                    \
        if (direct == DIRECT_UNSIGNED)                                                                      \
            GEMM_COLS(BITS, UNSIGNED, DIRECT_UNSIGNED);                                                     \
        else if (direct == DIRECT_SIGNED)                                                                   \
            GEMM_COLS(BITS, UNSIGNED, DIRECT_SIGNED);                                                       \
        else                                                                                                \
            GEMM_COLS(BITS, UNSIGNED, COLUMNS);                                                             \
    } while (0)
/* Two columns, except a lone position read in place (a linear layer): a lone last position of im2col
 * columns computes its column twice rather than having a loop of its own, which keeps the number of
 * kernels this file compiles to (and its compile time) down. */
#define GEMM_COLS(BITS, UNSIGNED, DIRECT)                                                                   \
    do {                                                                                                    \
        if ((DIRECT) && cols == 1)                                                                          \
            gemm_rows(g, row, end, x0, x1, sums, acc0, acc1, BITS, UNSIGNED, 1, DIRECT);                    \
        else                                                                                                \
            gemm_rows(g, row, end, x0, x1, sums, acc0, acc1, BITS, UNSIGNED, 2, DIRECT);                    \
    } while (0)

static void gemm(const gemm_rows_args *g, unsigned bits, uint32_t row, uint32_t end, const void *x0, const void *x1,
                 int cols, int direct, const int32_t sums[2], int32_t *acc0, int32_t *acc1)
{
    switch (bits * 2u + (unsigned)g->dorefa) {
    case 16: GEMM_ROWS(8, 0); break;
    case 17: GEMM_ROWS(8, 1); break;
    case 8: GEMM_ROWS(4, 0); break;
    case 9: GEMM_ROWS(4, 1); break;
    case 4: GEMM_ROWS(2, 0); break;
    default: GEMM_ROWS(2, 1); break;
    }
}

void adaptq_conv_int_gemm(const adaptq_network *net, const adaptq_conv *c, uint8_t *arena)
{
    const conv_geometry geo = adaptq_conv_geometry(net, c, arena);
    const uint32_t positions = geo.out_h * geo.out_w;
    const uint32_t out_per_group = c->out_channels / c->groups;
    gemm_rows_args g;
    int16_t *columns[2];
    int32_t *acc[2];
    uint32_t position;
    int direct;
    g.weights = (const uint8_t *)c->weights;
    g.row_bytes = c->row_elements * c->weight_bits / 8u;
    g.blocks = c->row_elements * c->weight_bits / 32u;
    g.dorefa = c->weight_grid == ADAPTQ_GRID_DOREFA;
    g.levels = g.dorefa ? (int32_t)(1u << c->weight_bits) - 1 : 0;
    g.unscale = (8u - c->weight_bits) + (8u - geo.in->bits);
    columns[0] = net->scratch.columns;
    columns[1] = net->scratch.columns + c->row_elements;
    acc[0] = net->scratch.acc;
    acc[1] = net->scratch.acc + c->out_channels;
    /* slots past the reduction stay zero for the whole part: im2col writes only the first ones */
    memset(net->scratch.columns, 0, 2u * c->row_elements * sizeof(int16_t));
    /* A pointwise layer over 8-bit codes whose rows need no padding reads its pixels in place: their
     * bytes widen into the column's lanes directly, with no im2col pass. */
    direct = c->kernel_h == 1 && c->kernel_w == 1 && c->stride_h == 1 && c->stride_w == 1 && c->pad_h == 0 &&
             c->pad_w == 0 && geo.in->bits == 8 && c->row_elements == c->in_per_group
                 ? (geo.in->is_signed ? DIRECT_SIGNED : DIRECT_UNSIGNED) : COLUMNS;

    for (position = 0; position < positions; position += 2u) {
        const int cols = position + 1u < positions ? 2 : 1;
        uint32_t group;
        for (group = 0; group < c->groups; ++group) {
            uint32_t channel = c->input.offset + group * c->in_per_group;
            int32_t sums[2] = {0, 0};
            const void *x[2];
            int k;
            for (k = 0; k < cols; ++k) {
                uint32_t p = position + (uint32_t)k;
                if (direct) { /* a pixel's codes are the column already */
                    x[k] = geo.base + p * geo.in->channels + channel;
                    if (g.dorefa)
                        sums[k] = pixel_sum((const uint8_t *)x[k], c->in_per_group, direct == DIRECT_SIGNED);
                } else {
                    x[k] = columns[k];
                    sums[k] = im2col(c, &geo, channel, p / geo.out_w, p % geo.out_w, columns[k]);
                }
            }
            if (cols == 1) {
                x[1] = x[0];
                sums[1] = sums[0];
            }
            gemm(&g, c->weight_bits, group * out_per_group, (group + 1u) * out_per_group, x[0], x[1], cols, direct,
                 sums, acc[0], acc[1]);
        }
        adaptq_conv_epilogues(net, c, arena, position, acc[0], 0);
        if (cols > 1)
            adaptq_conv_epilogues(net, c, arena, position + 1u, acc[1], 0);
    }
}
