/* The native executor: one parallel pass that writes every output element of a float32
 * convolution once, computing the active outputs and filling the others with the background.
 *
 * Work items are (image, band of output rows), cut so that each holds about the same active work,
 * and taken from an atomic counter: a thread that the scheduler takes away holds up one item, not a
 * share of the call. Per item, the input rows under the band are copied once into a per-thread
 * buffer, zero-padded and split into stride phases, so that every kernel tap of every output pixel
 * is a contiguous run of that buffer: the convolution is a GEMM (output channels x pixels, over
 * channels x taps) whose B operand is read through a table of row pointers (an indirect GEMM, no
 * im2col copy), with the weights as A and the output as C.
 *
 * Built by zeroskip/engine/native.py with the system C compiler and called through ctypes (which
 * releases the GIL); zeroskip runs its torch executor wherever this is not built. Threads: see
 * _parallel.c.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "_background.h"
#include "_parallel.h"

#if defined(__AVX512F__)
#define VLEN 16
#elif defined(__AVX__)
#define VLEN 8
#else
#define VLEN 4
#endif
#ifndef MR
#if defined(__AVX512F__)
#define MR 12
#else
#define MR 6
#endif
#endif
#ifndef NV
#define NV 2
#endif
#define NR (VLEN * NV)
/* The channel kernel (see channel_sums): CV vectors of output channels x PX pixels of sums. */
#ifndef CV
#if VLEN == 16
#define CV 4
#else
#define CV 2
#endif
#endif
#ifndef PX
#define PX 6
#endif
#define CBLOCK (CV * VLEN)
/* Pixels of one work item of the channel kernel at most (beside one row's): its running sums,
 * pixels x CBLOCK, stay in the core's L2 cache. */
#define MAX_ITEM_PIXELS 1024
/* The group's last block of channels, see KERNELS. */
#define MR_WIDE (MR + MR / 3)
#define MR_NARROW (MR * 2 / 3)
#define MAX_THREADS 256
/* The kernel asks for the input under the tap this many taps ahead: the taps' rows are scattered
 * over the item's buffer (channel by channel, row by row) where no hardware prefetcher follows
 * them, and a quarter to a third of the kernel's time went to waiting for them (perf annotate on
 * resnet18 over masked vtest). Measured at 8, 16 and 32 taps, one cache line or both of an
 * unaligned vector: 16 and one line, 12-15% off layers of 64 to 512 channels. */
#define PREFETCH_TAPS 16
/* zeroskip_execute's result bits */
#define OUT_OF_MEMORY 1
#define NOT_FINITE 2
/* The order of the sums is oneDNN's (PyTorch's dense CPU convolution, measured bit for bit on
 * AVX-512 against F.conv2d), so that float32 results equal dense's, not only come close: taps in
 * chunks of CHUNK_CHANNELS input channels (its channel block: one vector) times every kernel
 * position, summed within a chunk by position (ky, kx) then channel, one running sum from zero per
 * chunk, each chunk's sum added to the previous ones, the bias to the first; for 1 x 1 kernels
 * chunks of ONE_BY_ONE_CHANNELS channels, the bias the first sum's starting value. */
#define CHUNK_CHANNELS VLEN
#define ONE_BY_ONE_CHANNELS 256

typedef float vf __attribute__((vector_size(VLEN * 4)));
typedef int32_t vi __attribute__((vector_size(VLEN * 4)));
/* The even lanes of two vectors (a stride-2 phase of 2 VLEN columns). */
#if VLEN == 16
#define EVENS {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}
#elif VLEN == 8
#define EVENS {0, 2, 4, 6, 8, 10, 12, 14}
#else
#define EVENS {0, 2, 4, 6}
#endif

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }
/* The first n < VLEN lanes only: the other lanes' memory (past a row's last output, perhaps past the
 * tensor's end) is neither read nor written. */
#if defined(__AVX512F__)
static inline vf load_first(const float *p, int64_t n) { return (vf)_mm512_maskz_loadu_ps((__mmask16)((1u << n) - 1), p); }
static inline void store_first(float *p, vf v, int64_t n) { _mm512_mask_storeu_ps(p, (__mmask16)((1u << n) - 1), (__m512)v); }
#elif defined(__AVX__)
static inline __m256i first_lanes(int64_t n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
static inline vf load_first(const float *p, int64_t n) { return (vf)_mm256_maskload_ps(p, first_lanes(n)); }
static inline void store_first(float *p, vf v, int64_t n) { _mm256_maskstore_ps(p, first_lanes(n), (__m256)v); }
#else
static inline vf load_first(const float *p, int64_t n) {
    float lanes[VLEN] = {0};
    memcpy(lanes, p, (size_t)n * sizeof(float));
    return load(lanes);
}
static inline void store_first(float *p, vf v, int64_t n) {
    float lanes[VLEN];
    store(lanes, v);
    memcpy(p, lanes, (size_t)n * sizeof(float));
}
#endif

/* The epilogue (see exec_job) of one vector and of one value: a fused multiply-add, as PyTorch's
 * CPU BatchNorm computes it (measured bit for bit against F.batch_norm on AVX-512), then ReLU,
 * which keeps NaN as torch.relu does. */
static inline vf epilogue(vf v, float scale, float shift, int64_t relu) {
#if defined(__AVX512F__)
    v = (vf)_mm512_fmadd_ps((__m512)v, _mm512_set1_ps(scale), _mm512_set1_ps(shift));
#elif defined(__FMA__)
    v = (vf)_mm256_fmadd_ps((__m256)v, _mm256_set1_ps(scale), _mm256_set1_ps(shift));
#else
    for (int i = 0; i < VLEN; i++) v[i] = fmaf(v[i], scale, shift);
#endif
    return relu ? (vf)((vi)v & ~(vi)(v < (vf){0})) : v;
}
/* The same with a coefficient per lane (the channel kernel's vectors hold channels). */
static inline vf epilogue_lanes(vf v, vf scale, vf shift, int64_t relu) {
#if defined(__AVX512F__)
    v = (vf)_mm512_fmadd_ps((__m512)v, (__m512)scale, (__m512)shift);
#elif defined(__FMA__)
    v = (vf)_mm256_fmadd_ps((__m256)v, (__m256)scale, (__m256)shift);
#else
    for (int i = 0; i < VLEN; i++) v[i] = fmaf(v[i], scale[i], shift[i]);
#endif
    return relu ? (vf)((vi)v & ~(vi)(v < (vf){0})) : v;
}
static inline float epilogue_one(float v, float scale, float shift, int64_t relu) {
    v = fmaf(v, scale, shift);
    return relu && v < 0.0f ? 0.0f : v;
}

typedef struct {
    /* input (B, C, H, W), strides in elements */
    const float *x;
    int64_t batch, channels, height, width, xs_b, xs_c, xs_h, xs_w;
    /* geometry */
    int64_t groups, kh, kw, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left, out_h, out_w;
    /* weights (C_out, K = C_in / groups x kH x kW), contiguous */
    const float *weight;
    int64_t group_out, group_in, k;
    const float *bias; /* (C_out,) or NULL */
    /* epilogue of the computed outputs: value * scale[c] + shift[c] (one rounding), then max(., 0)
     * where relu is set: a following inference BatchNorm (and ReLU) folded into the writes; scale
     * NULL: none. The background is given after it. */
    const float *scale, *shift;
    int64_t relu;
    /* output (B, C_out, H_out, W_out), strides in elements */
    float *out;
    int64_t os_b, os_c, os_h, os_w;
    /* plan: tiles (B, tiles_i, tiles_j) of tile_h x tile_w outputs to compute, within the active
     * output rows (B, H_out) or every row when NULL */
    const uint8_t *tiles;
    int64_t tiles_i, tiles_j, tile_h, tile_w;
    const uint8_t *rows;
    /* 0: the kernel's vectors hold pixels (MR channels x NR pixels); 1: they hold output channels
     * (CV vectors of channels x PX pixels, see channel_kernel); -1: the one channel_kernel_for
     * chooses (the tests force each) */
    int64_t by_channels;
    /* background of the outputs not computed: core (core_b, C_out, core_h, core_w), contiguous, read
     * through its border bands (top, bottom, left, right); image b reads core image b % core_b */
    const float *core;
    int64_t core_b, core_h, core_w, band_top, band_bottom, band_left, band_right;
    /* addresses [zero_start, zero_end) of out read as +0.0 (pages given back to the kernel): +0.0
     * background values are not written there, so that the pages under them are never touched */
    uintptr_t zero_start, zero_end;
    /* work items: image and output rows [start, end) of each */
    const int64_t *item_image, *item_start, *item_end;
    int64_t items;
    int64_t next; /* the next item to take (atomic) */
    /* buffer geometry, shared by every thread (item_pixels: the most active outputs of an item, the
     * channel kernel's running sums; block: channels per block of the kernel, blocks per group) */
    int64_t phase_w, buffer_rows, item_rows, item_pixels, blocks, block, chunks, chunk, bias_in_sum;
    /* the weights packed per (group, block, chunk of taps), and whether each panel is (being) packed */
    float *panels;
    int *panel_state;
    /* per tap, in the order of the sums: its input's offset in the buffer from the input under the
     * output's first tap (rows, channel, stride phase and column in one), and its weight's column
     * (channel in group, ky, kx) */
    int64_t *tap_input, *tap_weight;
    int failed; /* OUT_OF_MEMORY | NOT_FINITE, set by any thread */
} exec_job;

/* Background values into output rows [o0, o1) of image `b`, columns [c0, c1), every output channel:
 * channel by channel, so that a band of rows is written as one run of memory per channel (row by
 * row, every row started 64 streams of writes, one per channel: 2.1 ms for the stem's 28 MB output
 * where a memset takes 1.6), the columns of the left and right bands one by one, those between
 * them one value (a vectorised run, not written where it is +0.0 in the zeroed range). */
static void fill(const exec_job *job, int64_t b, int64_t o0, int64_t o1, int64_t c0, int64_t c1) {
    if (c0 >= c1) return;
    int64_t channels = job->groups * job->group_out;
    const float *image = job->core + (b % job->core_b) * channels * job->core_h * job->core_w;
    /* Whole rows of one value per channel, contiguous: one run per channel (a row at a time, the
     * calls cost more than the writes on narrow layers). */
    int whole = c0 == 0 && c1 == job->out_w && job->os_w == 1 && job->os_h == job->out_w && !job->band_left &&
                !job->band_right && o0 >= job->band_top && o1 <= job->out_h - job->band_bottom;
    for (int64_t m = 0; m < channels; m++) {
        const float *plane = image + m * job->core_h * job->core_w;
        if (whole) {
            int64_t run = (o1 - o0) * job->out_w;
            background_row(job->out + b * job->os_b + m * job->os_c + o0 * job->os_h, 1,
                           plane + job->band_top * job->core_w, 0, run, run, 0, 0, job->zero_start, job->zero_end);
            continue;
        }
        for (int64_t o = o0; o < o1; o++) {
            const float *values = plane + core_index(o, job->out_h, job->band_top, job->band_bottom) * job->core_w;
            float *dst = job->out + b * job->os_b + m * job->os_c + o * job->os_h;
            background_row(dst, job->os_w, values, c0, c1, job->out_w, job->band_left, job->band_right,
                           job->zero_start, job->zero_end);
        }
    }
}

/* Copy input rows [r0, r0 + count) of image b into the buffer: per row and channel, `stride_w`
 * phases of `phase_w` values, phase p holding padded columns p, p + s, ... Only the phase columns
 * [j0, j1) that the item's pixel blocks read are copied: an item's active tiles often span a small
 * part of the row. Rows outside the image (the zero padding) are zeros. */
static void copy_rows(const exec_job *job, float *buffer, int64_t b, int64_t r0, int64_t count, int64_t j0,
                      int64_t j1) {
    int64_t s = job->stride_w, pw = job->phase_w, xs_w = job->xs_w;
    /* Channel by channel: the rows of one channel are one run of the input (when contiguous), which
     * the hardware prefetcher streams; row by row, each row of each channel starts a new stream. */
    for (int64_t ci = 0; ci < job->channels; ci++) {
        for (int64_t r = 0; r < count; r++) {
            int64_t h = r0 + r;
            float *dst = buffer + (r * job->channels + ci) * s * pw;
            if (h < 0 || h >= job->height) {
                for (int64_t p = 0; p < s; p++) memset(dst + p * pw + j0, 0, (size_t)(j1 - j0) * sizeof(float));
                continue;
            }
            const float *src = job->x + b * job->xs_b + ci * job->xs_c + h * job->xs_h;
            for (int64_t p = 0; p < s; p++) {
                float *phase = dst + p * pw;
                /* phase[j] = padded column j * s + p = input column j * s + p - pad_left, inside
                 * the input for j in [lo, hi) */
                int64_t first = job->pad_left - p, lo = first > 0 ? (first + s - 1) / s : 0;
                int64_t hi = (job->width + job->pad_left - p + s - 1) / s;
                lo = lo < j0 ? j0 : (lo > j1 ? j1 : lo);
                hi = hi > j1 ? j1 : (hi < lo ? lo : hi);
                const float *column = src + (p - job->pad_left) * xs_w;
                for (int64_t j = j0; j < lo; j++) phase[j] = 0.0f;
                int64_t j = lo;
                if (xs_w == 1 && s == 1) {
                    memcpy(phase + lo, column + lo, (size_t)(hi - lo) * sizeof(float));
                    j = hi;
                } else if (xs_w == 1 && s == 2) {
                    /* A shuffle per VLEN phase columns (the scalar loop cost 14% of a stride-2 layer
                     * of 64 channels); the input ends at column[width + pad_left - p - 1]. */
                    for (; j + VLEN <= hi && 2 * j + 2 * VLEN <= job->width + job->pad_left - p; j += VLEN)
                        store(phase + j, __builtin_shuffle(load(column + 2 * j), load(column + 2 * j + VLEN),
                                                           (vi)EVENS));
                }
                for (; j < hi; j++) phase[j] = column[j * s * xs_w];
                for (int64_t j = hi; j < j1; j++) phase[j] = 0.0f;
            }
        }
    }
}

/* acc[i][v] = init[i] + sum_k A[k, i] * pointers[v][k][at[v] ...], for m channels and w vectors of VLEN
 * pixels (m and w constants where it is inlined: the sums stay in registers). The vectors of one
 * call may come from anywhere in the item's output rows (each has its row's table of tap pointers),
 * so that short or scattered active runs, and rows whose width is not a multiple of NR, fill the
 * kernel's vectors as well as long ones do. */
static inline __attribute__((always_inline)) void kernel(int m, int w, int64_t k, const float *a,
                                                         const float *const *const pointers[], const int64_t *at,
                                                         const float *init, vf acc[MR_WIDE][NV]) {
    for (int i = 0; i < m; i++)
        for (int v = 0; v < w; v++) acc[i][v] = (vf){0} + init[i];
    for (int64_t t = 0; t < k; t++, a += m) {
        vf b[NV];
        for (int v = 0; v < w; v++) b[v] = load(pointers[v][t] + at[v]);
        if (t + PREFETCH_TAPS < k)
            for (int v = 0; v < w; v++) __builtin_prefetch(pointers[v][t + PREFETCH_TAPS] + at[v], 0, 3);
#pragma GCC unroll 16
        for (int i = 0; i < m; i++)
            for (int v = 0; v < w; v++) acc[i][v] += a[i] * b[v]; /* the scalar is broadcast */
    }
}

/* A block of m channels and w vectors of contiguous outputs: the sums go from the registers into
 * the output in the same function, never stored to the stack and read back (that round trip and a
 * general epilogue's address arithmetic cost about a fifth of a 64-tap chunk's time).
 * dst[v]: the block's first channel's outputs of vector v; cols[v]: its outputs (a row's last
 * vector may have fewer than VLEN: its lanes past them are computed, from buffer columns that
 * copy_rows wrote, and never stored, which keeps a row whose width is not a multiple of VLEN in
 * this kernel); init: the values the sums start from; first: the values the first chunk adds to
 * (NULL for a later chunk, which adds to the output); scale, shift, relu: the epilogue of the
 * block's channels, for the last chunk (scale NULL: none). */
static inline __attribute__((always_inline)) void sums(int m, int w, int64_t k, const float *a,
                                                       const float *const *const pointers[], const int64_t *at,
                                                       const int64_t *cols, float *const dst[], int64_t os_c,
                                                       const float *init, const float *first, const float *scale,
                                                       const float *shift, int64_t relu) {
    vf acc[MR_WIDE][NV];
    kernel(m, w, k, a, pointers, at, init, acc);
#pragma GCC unroll 16
    for (int i = 0; i < m; i++)
        for (int v = 0; v < w; v++) {
            float *p = dst[v] + i * os_c;
            int whole = cols[v] == VLEN;
            vf sum = (first ? (vf){0} + first[i] : whole ? load(p) : load_first(p, cols[v])) + acc[i][v];
            if (scale) sum = epilogue(sum, scale[i], shift[i], relu);
            if (whole)
                store(p, sum);
            else
                store_first(p, sum, cols[v]);
        }
}

/* A vector outside the kernel above (a block's lone vector, strided outputs, or a block of m
 * channels of which only `channels` are real): its `cols` outputs one at a time. */
static inline __attribute__((always_inline)) void sums_partial(int m, int64_t k, const float *a,
                                                               const float *const *pointers, int64_t at,
                                                               float *dst, int64_t channels, int64_t cols,
                                                               int64_t os_c, int64_t os_w, const float *init,
                                                               const float *first, const float *scale,
                                                               const float *shift, int64_t relu) {
    vf acc[MR_WIDE][NV];
    const float *const *table[1] = {pointers};
    kernel(m, 1, k, a, table, &at, init, acc);
    for (int64_t i = 0; i < channels; i++) {
        float tmp[VLEN], *row = dst + i * os_c;
        store(tmp, acc[i][0]);
        for (int64_t c = 0; c < cols; c++) {
            float sum = (first ? first[i] : row[c * os_w]) + tmp[c];
            row[c * os_w] = scale ? epilogue_one(sum, scale[i], shift[i], relu) : sum;
        }
    }
}

/* The kernels of the three block sizes, called per block through pointers. The main block is MR x
 * NV; the group's last block is MR_WIDE x 1 where that covers its remaining channels exactly or
 * nearly (64 = 4 x 12 + 16: one 12-channel block for the last 4 channels would waste two thirds of
 * its work, 11% of the layer's), or MR_NARROW x NV where that does. */
typedef void sums_fn(int64_t, const float *, const float *const *const[], const int64_t *, const int64_t *,
                     float *const[], int64_t, const float *, const float *, const float *, const float *, int64_t);
typedef void partial_fn(int64_t, const float *, const float *const *, int64_t, float *, int64_t, int64_t, int64_t,
                        int64_t, const float *, const float *, const float *, const float *, int64_t);
#define KERNELS(name, m, w)                                                                                      \
    static void sums_##name(int64_t k, const float *a, const float *const *const pointers[], const int64_t *at, \
                            const int64_t *cols, float *const dst[], int64_t os_c, const float *init,             \
                            const float *first, const float *scale, const float *shift, int64_t relu) {           \
        sums(m, w, k, a, pointers, at, cols, dst, os_c, init, first, scale, shift, relu);                         \
    }                                                                                                             \
    static void partial_##name(int64_t k, const float *a, const float *const *pointers, int64_t at, float *dst,   \
                               int64_t channels, int64_t cols, int64_t os_c, int64_t os_w, const float *init,     \
                               const float *first, const float *scale, const float *shift, int64_t relu) {        \
        sums_partial(m, k, a, pointers, at, dst, channels, cols, os_c, os_w, init, first, scale, shift, relu);    \
    }
KERNELS(main, MR, NV)
KERNELS(wide, MR_WIDE, 1)
KERNELS(narrow, MR_NARROW, NV)

typedef struct {
    /* per vector: its output row's index among the item's computed rows, first output column and
     * columns used (0: unused) */
    int64_t row[NV], at[NV], cols[NV];
    int vectors;
} pixel_block;

/* The channels of the kernel of a group's last block (see KERNELS; the channel kernel's: its
 * channels rounded up to whole vectors); the others have job->block. */
static int64_t last_channels(const exec_job *job) {
    if (job->by_channels) {
        int64_t rest = job->group_out % CBLOCK;
        return rest ? (rest + VLEN - 1) / VLEN * VLEN : CBLOCK;
    }
    int64_t rest = job->group_out % MR;
    if (!rest) return MR;
    if (job->group_out > MR && rest <= MR_WIDE - MR) return MR_WIDE;
    return rest <= MR_NARROW ? MR_NARROW : MR;
}

/* The channels of a group's blocks, each rounded up to its kernel's. */
static int64_t padded_channels(const exec_job *job) { return (job->blocks - 1) * job->block + last_channels(job); }

/* The channels of block `blk`'s kernel (its panel's rows). */
static int64_t block_size(const exec_job *job, int64_t blk) {
    return blk + 1 < job->blocks ? job->block : last_channels(job);
}

#if defined(__AVX__)
/* r[i] (row i of a VLEN x VLEN block) becomes column i: pairs of rows interleaved, then pairs of
 * pairs, then 128-bit lanes (two steps on AVX-512, one on AVX). */
static inline void transpose(vf r[VLEN]) {
#if defined(__AVX512F__)
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i++) u[i] = (__m512)r[i];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(u[2 * i], u[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(u[2 * i], u[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
        __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0xdd);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = (vf)_mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = (vf)_mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = (vf)_mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = (vf)_mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
    }
#else
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i++) u[i] = (__m256)r[i];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(u[2 * i], u[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(u[2 * i], u[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int i = 0; i < 4; i++) {
        r[i] = (vf)_mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
        r[i + 4] = (vf)_mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
#endif
}
#endif

/* The weights of block `blk` of group g for taps [t0, t0 + chunk) (in the order of the sums), as a[taps][m] (m: the block's
 * kernel's channels; rows past the group's output channels zero), stored after those of the
 * group's channels and taps before it: the panels take the weights' size (a fixed slot per panel
 * took 3.4x that for 256 channels in chunks of 64, whose first touch cost 7% of the call).
 * Each panel is packed once per call by whichever thread needs it first, into memory shared by
 * all; a thread that finds another one packing it packs its own copy into `scratch` rather than
 * wait for a thread the scheduler may have taken away. */
static const float *panel(exec_job *job, int64_t g, int64_t blk, int64_t t0, float *scratch) {
    int *state = job->panel_state + (g * job->blocks + blk) * job->chunks + t0 / job->chunk;
    int64_t m = block_size(job, blk);
    float *a = job->panels + (g * padded_channels(job) + blk * job->block) * job->chunks * job->chunk + t0 * m;
    int expected = 0;
    if (__atomic_load_n(state, __ATOMIC_ACQUIRE) == 2) return a;
    if (!__atomic_compare_exchange_n(state, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) a = scratch;
    int64_t first = g * job->group_out + blk * job->block, channels = job->group_out - blk * job->block;
    int64_t taps = job->k - t0 < job->chunk ? job->k - t0 : job->chunk;
    if (channels > m) channels = m;
    /* Tap by tap, writing the panel in order: channel by channel (each a stride-48-byte store per
     * tap) it took twice as long, 2.6 ms for a 512 x 512 x 3 x 3 layer's weights. */
    const float *w = job->weight + first * job->k;
    const int64_t *tap_weight = job->tap_weight + t0;
    int64_t i0 = 0; /* channels [0, i0) packed by vectors */
#if defined(__AVX__)
    /* A chunk's weights are one run of each channel's (its input channels, every position: the
     * taps' columns in another order), so VLEN channels' runs are read VLEN values at a time and
     * transposed in registers, each column stored at its tap. The next VLEN channels' values are
     * prefetched: a run is a few cache lines, too short for the hardware prefetcher. A gather of
     * 16 values k apart per tap, before, spent 84% of the packing waiting on its loads: a 512 x 512
     * x 3 x 3 layer computing one pixel took 3.3 ms, now 1.7 ms (AMD EPYC, 1 thread). */
    int64_t area = job->kh * job->kw, in_chunk = taps / area;
    for (; i0 + VLEN <= channels; i0 += VLEN) {
        const float *runs = w + i0 * job->k + tap_weight[0];
        for (int64_t s0 = 0; s0 < taps; s0 += VLEN) {
            int64_t n = taps - s0 < VLEN ? taps - s0 : VLEN;
            vf r[VLEN];
            for (int i = 0; i < VLEN; i++) {
                r[i] = n == VLEN ? load(runs + i * job->k + s0) : load_first(runs + i * job->k + s0, n);
                _mm_prefetch((const char *)(runs + (i + VLEN) * job->k + s0), _MM_HINT_T0);
            }
            transpose(r);
            /* column s is channel s / area of the chunk at position s % area, its tap position x in_chunk +
             * channel: the inverse of the order zeroskip_execute gives tap_weight (by position, then channel) */
            for (int64_t j = 0; j < n; j++) store(a + ((s0 + j) % area * in_chunk + (s0 + j) / area) * m + i0, r[j]);
        }
    }
#endif
    for (int64_t t = 0; t < taps; t++) {
        const float *src = w + tap_weight[t];
        float *dst = a + t * m;
        int64_t i = i0;
        for (; i < channels; i++) dst[i] = src[i * job->k];
        for (; i < m; i++) dst[i] = 0.0f;
    }
    /* A chunk's taps are a run of each channel's weights (its input channels, every position), so
     * their finiteness is a vectorised pass over runs (checked value by value in the packing loop,
     * it took a tenth of a sparse 256-channel layer's time). */
    uint32_t non_finite = 0; /* whether an exponent has all bits set (Inf, NaN) */
    for (int64_t i = 0; i < channels; i++) {
        const float *run = w + i * job->k + job->tap_weight[t0];
        for (int64_t t = 0; t < taps; t++) {
            uint32_t bits;
            memcpy(&bits, run + t, sizeof bits);
            non_finite |= (bits & 0x7f800000u) == 0x7f800000u;
        }
    }
    int finite = !non_finite;
    /* 0 * inf is NaN in the dense result: the caller discards this output (see zeroskip_execute). */
    if (!finite) __atomic_fetch_or(&job->failed, NOT_FINITE, __ATOMIC_RELAXED);
    if (a != scratch) __atomic_store_n(state, 2, __ATOMIC_RELEASE);
    return a;
}

/* Pointers to the input values under taps [t0, t0 + taps) of group g for output row `o`, as read by
 * output column 0 (column c reads c further on); the buffer's first row is input row `r0`. */
static void tap_pointers(const exec_job *job, const float *buffer, int64_t g, int64_t o,
                         int64_t r0, int64_t t0, int64_t taps, const float **pointers) {
    int64_t row = job->channels * job->stride_w * job->phase_w;
    const float *first = buffer + g * job->group_in * job->stride_w * job->phase_w +
                         (o * job->stride_h - job->pad_top - r0) * row;
    for (int64_t t = t0; t < t0 + taps; t++) pointers[t - t0] = first + job->tap_input[t];
}

/* Convolve the pixel blocks of image b for group g: out = bias + sum over taps of weight x input.
 * `rows` lists the output rows the blocks index.
 *
 * Taps go in chunks (job->chunk, see CHUNK_CHANNELS) and output channels in blocks of MR (the
 * group's last one of its own size, see KERNELS): one block's weights for one chunk are packed
 * (chunk x MR) and read by every pixel block of the item, so the weights are read from memory once
 * per item, not once per pixel block. Each chunk's sums are added into the output (in cache: an
 * item's output rows are small). The blocks go from `first_block` round to it. */
static void compute(exec_job *job, const float *buffer, const float **pointers, float *scratch,
                    const int64_t *rows, int64_t row_count, const pixel_block *blocks, int64_t count, int64_t b,
                    int64_t g, int64_t r0, int64_t first_block) {
    float *out = job->out + b * job->os_b;
    int64_t m0 = g * job->group_out;
    for (int64_t t0 = 0; t0 < job->k; t0 += job->chunk) {
        int64_t taps = job->k - t0 < job->chunk ? job->k - t0 : job->chunk;
        for (int64_t r = 0; r < row_count; r++)
            tap_pointers(job, buffer, g, rows[r], r0, t0, taps, pointers + r * job->chunk);
        for (int64_t nb = 0; nb < job->blocks; nb++) {
            int64_t blk = (first_block + nb) % job->blocks;
            int64_t m = block_size(job, blk);
            int64_t channels = job->group_out - blk * MR < m ? job->group_out - blk * MR : m;
            sums_fn *full_sums = m == MR ? sums_main : m == MR_WIDE ? sums_wide : sums_narrow;
            partial_fn *partial = m == MR ? partial_main : m == MR_WIDE ? partial_wide : partial_narrow;
            int w = m == MR_WIDE ? 1 : NV;
            const float *a = panel(job, g, blk, t0, scratch);
            /* The first chunk's sums start from the bias (1 x 1 kernels) or have it added. */
            float bias[MR_WIDE], zero[MR_WIDE] = {0};
            for (int64_t i = 0; i < m; i++) bias[i] = job->bias && i < channels ? job->bias[m0 + blk * MR + i] : 0.0f;
            const float *init = !t0 && job->bias_in_sum ? bias : zero;
            const float *start = t0 ? NULL : job->bias_in_sum ? zero : bias;
            /* The epilogue goes with the last chunk's sums, which complete the outputs. */
            int last = t0 + job->chunk >= job->k && job->scale;
            const float *scale = last ? job->scale + m0 + blk * MR : NULL, *shift = last ? job->shift + m0 + blk * MR : NULL;
            float *base = out + (m0 + blk * MR) * job->os_c;
            for (int64_t n = 0; n < count; n++) {
                const pixel_block *q = blocks + n;
                int full = channels == m && q->vectors == NV && job->os_w == 1;
                const float *const *table[NV];
                float *dst[NV];
                for (int v = 0; v < q->vectors; v++) {
                    table[v] = pointers + q->row[v] * job->chunk;
                    dst[v] = base + rows[q->row[v]] * job->os_h + q->at[v] * job->os_w;
                }
                if (full)
                    for (int v = 0; v < NV; v += w)
                        full_sums(taps, a, table + v, q->at + v, q->cols + v, dst + v, job->os_c, init, start, scale,
                                  shift, job->relu);
                else
                    for (int v = 0; v < q->vectors; v++)
                        partial(taps, a, table[v], q->at[v], dst[v], channels, q->cols[v], job->os_c, job->os_w, init,
                                start, scale, shift, job->relu);
            }
        }
    }
}

/* The channel kernel: acc[i][p] = init[i] + sum_k A[k, i] * base[p][offsets[k]], for cv vectors
 * of output channels (cv a constant where it is inlined) and PX pixels, each pixel's input one
 * value read and broadcast. Its pixels can be any outputs of the item, so that every lane computes
 * an active output: the pixel kernel's vectors take VLEN outputs of a row at a time, and on narrow
 * rows (24 outputs in 32 lanes) or short runs of active columns a third of their lanes or more
 * compute outputs nobody asked for. A tap's input is at the same offset from every pixel's base in
 * the item's buffer (whose rows outside the image are zeros), so a tap costs one offset, not a
 * pointer per pixel. Each output's terms are summed in the order of `kernel`'s. */
static inline __attribute__((always_inline)) void channel_kernel(int cv, int64_t k, const float *a,
                                                                 const float *const base[PX], const int64_t *offsets,
                                                                 const float *init, vf acc[CV][PX]) {
    for (int i = 0; i < cv; i++) {
        vf start = load(init + i * VLEN);
        for (int p = 0; p < PX; p++) acc[i][p] = start;
    }
    for (int64_t t = 0; t < k; t++, a += cv * VLEN) {
        vf w[CV];
        for (int i = 0; i < cv; i++) w[i] = load(a + i * VLEN);
        if (t + PREFETCH_TAPS < k) {
            __builtin_prefetch(base[0] + offsets[t + PREFETCH_TAPS], 0, 3);
            __builtin_prefetch(base[PX - 1] + offsets[t + PREFETCH_TAPS], 0, 3);
        }
        int64_t at = offsets[t];
#pragma GCC unroll 8
        for (int p = 0; p < PX; p++) {
            float x = base[p][at];
            for (int i = 0; i < cv; i++) acc[i][p] += w[i] * x; /* the scalar is broadcast */
        }
    }
}

/* One chunk's sums of `pixels` <= PX pixels (the kernel computes PX; the others repeat the last)
 * for a block of output channels: added to `first` (the first chunk) or to the running sums of the
 * chunks before (`running`, pixels x CBLOCK), and kept there, through the epilogue for the last
 * chunk (scale NULL: none; coefficients per channel of the block). */
static inline __attribute__((always_inline)) void channel_sums(int cv, int64_t k, const float *a,
                                                               const float *const base[PX], const int64_t *offsets,
                                                               const float *init, const float *first, float *running,
                                                               int pixels, const float *scale, const float *shift,
                                                               int64_t relu) {
    vf acc[CV][PX];
    channel_kernel(cv, k, a, base, offsets, init, acc);
    for (int p = 0; p < pixels; p++)
        for (int i = 0; i < cv; i++) {
            float *sums = running + p * CBLOCK + i * VLEN;
            vf sum = (first ? load(first + i * VLEN) : load(sums)) + acc[i][p];
            if (scale) sum = epilogue_lanes(sum, load(scale + i * VLEN), load(shift + i * VLEN), relu);
            store(sums, sum);
        }
}

typedef void channel_fn(int64_t, const float *, const float *const[PX], const int64_t *, const float *,
                        const float *, float *, int, const float *, const float *, int64_t);
#define CHANNEL_KERNEL(cv)                                                                                      \
    static void channel_sums_##cv(int64_t k, const float *a, const float *const base[PX], const int64_t *offsets, \
                                  const float *init, const float *first, float *running, int pixels,             \
                                  const float *scale, const float *shift, int64_t relu) {                        \
        channel_sums(cv, k, a, base, offsets, init, first, running, pixels, scale, shift, relu);                 \
    }
CHANNEL_KERNEL(1)
CHANNEL_KERNEL(2)
#if CV == 4
CHANNEL_KERNEL(3)
CHANNEL_KERNEL(4)
static channel_fn *const channel_kernels[CV] = {channel_sums_1, channel_sums_2, channel_sums_3, channel_sums_4};
#else
static channel_fn *const channel_kernels[CV] = {channel_sums_1, channel_sums_2};
#endif

/* compute()'s work with the channel kernel, for the item's active pixels (each its row's index
 * among `rows`, and its column): block by block of CBLOCK channels, then chunk by chunk (the
 * running sums of the block's pixels stay in cache), PX pixels at a time. */
static void compute_by_channels(exec_job *job, const float *buffer, float *scratch, float *running,
                                const int64_t *rows, const int64_t *pixel_row, const int64_t *pixel_col, int64_t count,
                                int64_t b, int64_t g, int64_t r0, int64_t first_block) {
    float *out = job->out + b * job->os_b;
    int64_t row_floats = job->channels * job->stride_w * job->phase_w;
    const float *group = buffer + g * job->group_in * job->stride_w * job->phase_w;
    for (int64_t nb = 0; nb < job->blocks; nb++) {
        int64_t blk = (first_block + nb) % job->blocks;
        int64_t m = block_size(job, blk);
        int64_t c0 = g * job->group_out + blk * CBLOCK;
        int64_t channels = job->group_out - blk * CBLOCK < m ? job->group_out - blk * CBLOCK : m;
        channel_fn *sums = channel_kernels[m / VLEN - 1];
        /* The bias as compute() adds it (0 + bias), and the epilogue's coefficients, per lane. */
        float bias[CBLOCK], zero[CBLOCK] = {0}, scale[CBLOCK] = {0}, shift[CBLOCK] = {0};
        for (int64_t i = 0; i < m; i++) {
            bias[i] = 0.0f + (job->bias && i < channels ? job->bias[c0 + i] : 0.0f);
            if (job->scale && i < channels) {
                scale[i] = job->scale[c0 + i];
                shift[i] = job->shift[c0 + i];
            }
        }
        for (int64_t t0 = 0; t0 < job->k; t0 += job->chunk) {
            int64_t taps = job->k - t0 < job->chunk ? job->k - t0 : job->chunk;
            const float *a = panel(job, g, blk, t0, scratch);
            const float *init = !t0 && job->bias_in_sum ? bias : zero;
            const float *start = t0 ? NULL : job->bias_in_sum ? zero : bias;
            int last = t0 + job->chunk >= job->k;
            for (int64_t n = 0; n < count; n += PX) {
                int pixels = count - n < PX ? (int)(count - n) : PX;
                const float *base[PX];
                for (int p = 0; p < PX; p++) {
                    int64_t q = n + (p < pixels ? p : pixels - 1);
                    base[p] = group + (rows[pixel_row[q]] * job->stride_h - job->pad_top - r0) * row_floats +
                              pixel_col[q];
                }
                sums(taps, a, base, job->tap_input + t0, init, start, running + n * CBLOCK, pixels,
                     last && job->scale ? scale : NULL, shift, job->relu);
            }
        }
        /* VLEN pixels at a time channel by channel, so that the writes run along the output's rows
         * (pixel by pixel, each pixel's CBLOCK channels were as many pages apart, and those writes
         * took a quarter of a 64-channel layer's time) while the pixels' sums stay in L1. */
        for (int64_t n0 = 0; n0 < count; n0 += VLEN) {
            int64_t n1 = n0 + VLEN < count ? n0 + VLEN : count, at[VLEN];
            for (int64_t n = n0; n < n1; n++) at[n - n0] = rows[pixel_row[n]] * job->os_h + pixel_col[n] * job->os_w;
            for (int64_t c = 0; c < channels; c++) {
                float *plane = out + (c0 + c) * job->os_c;
                for (int64_t n = n0; n < n1; n++) plane[at[n - n0]] = running[n * CBLOCK + c];
            }
        }
    }
}

/* Where the vectors of a run of active columns [first, last) begin: after the VLEN columns of the
 * row's last vector, which end at `reach` (0: none), when the run begins within them. That vector
 * then computes the columns between the two runs too (any computed output is exact): with tiles one
 * column wide, a row's vectors are the fewest that cover its active columns. */
static inline int64_t run_start(int64_t first, int64_t last, int64_t reach) {
    return first < reach ? (last < reach ? last : reach) : first;
}

/* The next run of active tiles of a row of `tiles_j` tiles, at or after tile *j: its columns
 * [*first, *last) (the row's last tile ragged at `out_w`), with *j moved past it. Returns 0 when
 * no run is left. */
static inline int next_run(const uint8_t *tiles, int64_t tiles_j, int64_t tile_w, int64_t out_w, int64_t *j,
                           int64_t *first, int64_t *last) {
    while (*j < tiles_j && !tiles[*j]) ++*j;
    if (*j >= tiles_j) return 0;
    int64_t end = *j;
    while (end < tiles_j && tiles[end]) end++;
    *first = *j * tile_w;
    *last = end * tile_w < out_w ? end * tile_w : out_w;
    *j = end;
    return 1;
}

/* The output rows [o0, o1) of image b: background where no active tile is; where one is, the
 * row goes into `rows` and its active columns, VLEN at a time from the first of each run of active
 * tiles (see run_start), into pixel blocks of NV vectors (a block's vectors may lie on different
 * rows), or for the channel kernel one by one into `pixel_row` (the row's index in `rows`) and
 * `pixel_col`. Returns the number of blocks, or of pixels. */
static int64_t plan_rows(const exec_job *job, int64_t b, int64_t o0, int64_t o1, int64_t *rows, int64_t *row_count,
                         pixel_block *blocks, int64_t *pixel_row, int64_t *pixel_col) {
    int64_t count = 0;
    *row_count = 0;
    pixel_block *open = NULL; /* a block with a vector left, which the next active columns fill */
    /* The channel kernel's outputs are written after the background of all the item's rows, one
     * run per channel (row by row and gap by gap between active runs, every gap cost a pass over
     * the channels: a twelfth of a 256-channel layer at 15% activity). */
    if (job->by_channels) fill(job, b, o0, o1, 0, job->out_w);
    for (int64_t o = o0; o < o1; o++) {
        if (job->by_channels && job->rows && !job->rows[b * job->out_h + o]) continue;
        if (job->rows && !job->rows[b * job->out_h + o]) {
            int64_t end = o + 1; /* the band of inactive rows that starts here */
            while (end < o1 && !job->rows[b * job->out_h + end]) end++;
            fill(job, b, o, end, 0, job->out_w);
            o = end - 1;
            continue;
        }
        const uint8_t *tiles = job->tiles + (b * job->tiles_i + o / job->tile_h) * job->tiles_j;
        if (job->by_channels) {
            int64_t start = count;
            for (int64_t j = 0, first, last; next_run(tiles, job->tiles_j, job->tile_w, job->out_w, &j, &first, &last);)
                for (int64_t c = first; c < last; c++) {
                    pixel_row[count] = *row_count;
                    pixel_col[count++] = c;
                }
            if (count > start) rows[(*row_count)++] = o;
            continue;
        }
        int64_t done = 0; /* columns [0, done) are written or planned */
        pixel_block *last_block = NULL; /* the row's last vector: last_block's vector last_vector */
        int last_vector = 0;
        for (int64_t j = 0, first, last; next_run(tiles, job->tiles_j, job->tile_w, job->out_w, &j, &first, &last);) {
            int64_t start = run_start(first, last, last_block ? last_block->at[last_vector] + VLEN : 0);
            if (start != first) {
                /* that vector computes the columns up to start */
                last_block->cols[last_vector] = start - last_block->at[last_vector];
                done = first = start;
            }
            fill(job, b, o, o + 1, done, first);
            rows[*row_count] = o;
            for (int64_t c = first; c < last; c += VLEN) {
                if (!open) {
                    open = blocks + count++;
                    open->vectors = 0;
                }
                last_block = open;
                last_vector = open->vectors;
                open->row[open->vectors] = *row_count;
                open->at[open->vectors] = c;
                open->cols[open->vectors] = last - c < VLEN ? last - c : VLEN;
                if (++open->vectors == NV) open = NULL;
            }
            if (last > done) done = last;
        }
        fill(job, b, o, o + 1, done, job->out_w);
        if (done) ++*row_count; /* the row has blocks (its active columns end after column 0) */
    }
    return count;
}

/* Whether the channel kernel computes a layer of kernel `area` (kh x kw) and `group_out` output
 * channels per group. Measured alternating against the pixel kernel on resnet18's layers (1 and 2
 * threads): on AVX-512 0.7-0.8x the time on 512 channels of 18 x 24 outputs, 0.92-0.98x on 64-256
 * channels, 0.44-0.63x on the 7 x 7 stem over masked frames; built for AVX2 (-march=x86-64-v3, on
 * the same AVX-512 machine) 0.76-0.78x, 0.88-1.01x and 0.56-0.89x. 1.1-1.35x on 1 x 1 kernels, whose
 * chunks of 256 channels give a panel of weights larger than L1. Channels that are not whole
 * vectors would compute lanes nobody asked for. Not measured with 4-lane vectors: not taken. */
static int channel_kernel_for(int64_t area, int64_t group_out) {
    return VLEN >= 8 && area > 1 && group_out % VLEN == 0;
}

/* Per image of `batch`, the outputs the executor computes from these maps (see exec_job's tiles,
 * tile_h, tile_w and rows; rows NULL: every row) for a layer of kernel `area` and `group_out`
 * channels per group: with the pixel kernel a vector's VLEN lanes, or the lanes left in its row;
 * with the channel kernel the outputs of the active tiles. The plan's cost model and the profile's
 * fractions read them. */
void zeroskip_computed(const uint8_t *tiles, const uint8_t *rows, int64_t batch, int64_t out_h, int64_t out_w,
                       int64_t tiles_i, int64_t tiles_j, int64_t tile_h, int64_t tile_w, int64_t area,
                       int64_t group_out, int64_t *computed) {
    int by_channels = channel_kernel_for(area, group_out);
    for (int64_t b = 0; b < batch; b++) {
        int64_t lanes = 0;
        for (int64_t o = 0; o < out_h; o++) {
            if (rows && !rows[b * out_h + o]) continue;
            const uint8_t *row = tiles + (b * tiles_i + o / tile_h) * tiles_j;
            if (by_channels && tile_w == 1) {
                /* One output per tile: a count of the non-zero bytes, which vectorises (run by run,
                 * a W1 frame's 288 x 384 map took 36 us, counted so 15 with the call's overhead). */
                int64_t active = 0;
                for (int64_t j = 0; j < tiles_j; j++) active += row[j] != 0;
                lanes += active;
                continue;
            }
            int64_t reach = 0; /* the end of the row's last vector's VLEN columns */
            for (int64_t j = 0, first, last; next_run(row, tiles_j, tile_w, out_w, &j, &first, &last);)
                if (by_channels)
                    lanes += last - first;
                else
                    for (int64_t c = run_start(first, last, reach); c < last; c += VLEN) {
                    lanes += out_w - c < VLEN ? out_w - c : VLEN;
                    reach = c + VLEN;
                }
        }
        computed[b] = lanes;
    }
}

static void *run_items(void *arg) {
    exec_job *job = (exec_job *)arg;
    int64_t row_floats = job->channels * job->stride_w * job->phase_w;
    /* A row's active runs (at most one per two tiles) take a vector per VLEN columns begun. */
    int64_t most_blocks = job->item_rows * (job->out_w / VLEN + (job->tiles_j + 1) / 2 + 1);
    float *buffer = (float *)malloc((size_t)(job->buffer_rows * row_floats) * sizeof(float));
    const float **pointers = (const float **)malloc((size_t)(job->item_rows * job->chunk) * sizeof(float *));
    /* The pixel kernel's blocks, or the channel kernel's pixels and their running sums. */
    int64_t pixels = job->by_channels ? job->item_pixels : 0;
    pixel_block *blocks = (pixel_block *)malloc((size_t)(pixels ? 1 : most_blocks) * sizeof(pixel_block));
    int64_t *pixel_list = (int64_t *)malloc((size_t)(2 * pixels + 1) * sizeof(int64_t));
    float *running = (float *)malloc((size_t)(pixels * CBLOCK + 1) * sizeof(float));
    int64_t *rows = (int64_t *)malloc((size_t)job->item_rows * sizeof(int64_t));
    float *scratch = (float *)malloc((size_t)(job->chunk * (pixels ? CBLOCK : MR_WIDE)) * sizeof(float));
    int allocated = buffer && pointers && blocks && pixel_list && running && rows && scratch;
    if (!allocated) __atomic_fetch_or(&job->failed, OUT_OF_MEMORY, __ATOMIC_RELAXED);
    while (allocated) {
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->items) break;
        int64_t b = job->item_image[item], row_count;
        int64_t count = plan_rows(job, b, job->item_start[item], job->item_end[item], rows, &row_count, blocks,
                                  pixel_list, pixel_list + pixels);
        if (!count) continue;
        /* The input under the item's computed rows, copied once for all of them: the phase
         * columns its vectors (each VLEN wide) or pixels read, shifted by up to the kernel's width. */
        int64_t j0 = job->out_w, j1 = 0;
        if (pixels)
            for (int64_t n = 0; n < count; n++) {
                int64_t c = pixel_list[pixels + n];
                if (c < j0) j0 = c;
                if (c + 1 > j1) j1 = c + 1;
            }
        else
            for (int64_t n = 0; n < count; n++)
                for (int v = 0; v < blocks[n].vectors; v++) {
                    if (blocks[n].at[v] < j0) j0 = blocks[n].at[v];
                    if (blocks[n].at[v] + VLEN > j1) j1 = blocks[n].at[v] + VLEN;
                }
        j1 += (job->kw - 1) * job->dil_w / job->stride_w;
        int64_t r0 = rows[0] * job->stride_h - job->pad_top;
        copy_rows(job, buffer, b, r0, (rows[row_count - 1] - rows[0]) * job->stride_h + (job->kh - 1) * job->dil_h + 1,
                  j0, j1);
        /* Items taken together start on blocks far apart (any block order gives the same sums):
         * threads that start together would otherwise both want the same unpacked panel, and the
         * one that loses packs its own copy (2 threads: up to 4% of a 512-channel layer). */
        for (int64_t g = 0; g < job->groups; g++)
            if (pixels)
                compute_by_channels(job, buffer, scratch, running, rows, pixel_list, pixel_list + pixels, count, b, g,
                                    r0, item * 5 * job->blocks / 8 % job->blocks);
            else
                compute(job, buffer, pointers, scratch, rows, row_count, blocks, count, b, g, r0,
                        item * 5 * job->blocks / 8 % job->blocks);
    }
    free(buffer);
    free(pointers);
    free(blocks);
    free(pixel_list);
    free(running);
    free(rows);
    free(scratch);
    return NULL;
}

/* Cut the rows of every image into work items of about `total / (threads * 4)` work each (at most
 * MAX_ITEM_ROWS rows, so that the input buffer stays small, and for the channel kernel about
 * MAX_ITEM_PIXELS active outputs). Returns the largest item's rows, or -1 when out of memory; the
 * total work (multiply-accumulates, a fill counted as FILL_MACS) into `total_work`. */
#define MAX_ITEM_ROWS 32
#ifndef ITEMS_PER_THREAD
#define ITEMS_PER_THREAD 4
#endif
/* Filling one output costs about as much as this many multiply-accumulates of the kernel. */
#define FILL_MACS 4
static int64_t cut_items(exec_job *job, int threads, double *total_work) {
    int64_t channels = job->groups * job->group_out, rows = job->batch * job->out_h;
    double *work = (double *)malloc((size_t)rows * sizeof(double));
    int64_t *items = (int64_t *)malloc((size_t)rows * 4 * sizeof(int64_t));
    if (!work || !items) {
        free(work);
        free(items);
        return -1;
    }
    int64_t *pixels = items + 3 * rows; /* per row, the outputs its active tiles cover (at most) */
    double total = 0;
    for (int64_t b = 0; b < job->batch; b++)
        for (int64_t o = 0; o < job->out_h; o++) {
            int64_t active = 0;
            if (!job->rows || job->rows[b * job->out_h + o]) {
                const uint8_t *tiles = job->tiles + (b * job->tiles_i + o / job->tile_h) * job->tiles_j;
                for (int64_t j = 0; j < job->tiles_j; j++) active += tiles[j];
            }
            double w = (double)channels * job->out_w * FILL_MACS + (double)active * job->tile_w * job->k * channels;
            work[b * job->out_h + o] = w;
            pixels[b * job->out_h + o] = active * job->tile_w;
            total += w;
        }
    double target = total / ((double)threads * ITEMS_PER_THREAD);
    int64_t n = 0, most = 1;
    job->item_pixels = 1;
    for (int64_t b = 0; b < job->batch; b++) {
        int64_t start = 0, item_pixels = 0;
        double sum = 0;
        for (int64_t o = 0; o < job->out_h; o++) {
            sum += work[b * job->out_h + o];
            item_pixels += pixels[b * job->out_h + o];
            if (sum >= target || o + 1 - start >= MAX_ITEM_ROWS || o + 1 == job->out_h ||
                (job->by_channels && item_pixels >= MAX_ITEM_PIXELS)) {
                items[n] = b;
                items[rows + n] = start;
                items[2 * rows + n] = o + 1;
                if (o + 1 - start > most) most = o + 1 - start;
                if (item_pixels > job->item_pixels) job->item_pixels = item_pixels;
                n++;
                start = o + 1;
                sum = 0;
                item_pixels = 0;
            }
        }
    }
    free(work);
    *total_work = total;
    job->item_image = items;
    job->item_start = items + rows;
    job->item_end = items + 2 * rows;
    job->items = n;
    return most;
}

/* Convolve what `tiles` and `rows` mark and fill the rest; see exec_job for the arguments (the
 * items and buffer sizes are set here). Returns 0 on success, else OUT_OF_MEMORY or NOT_FINITE (or
 * both): a bias value or a packed weight is Inf or NaN, and the output must be dense's instead. The
 * weights are all packed, and so all seen, whenever anything is computed. */
int zeroskip_execute(exec_job *job, int threads) {
    if (job->bias)
        for (int64_t c = 0; c < job->groups * job->group_out; c++)
            if (!isfinite(job->bias[c])) return NOT_FINITE;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    if (job->by_channels < 0) job->by_channels = channel_kernel_for(job->kh * job->kw, job->group_out);
    double work;
    int64_t most = cut_items(job, threads, &work);
    if (most < 0) return OUT_OF_MEMORY;
    if (threads > job->items) threads = (int)job->items;
    job->phase_w = job->out_w + (job->kw - 1) * job->dil_w / job->stride_w + NR;
    job->buffer_rows = (most - 1) * job->stride_h + (job->kh - 1) * job->dil_h + 1;
    job->item_rows = most;
    job->block = job->by_channels ? CBLOCK : MR;
    job->blocks = job->by_channels ? (job->group_out + CBLOCK - 1) / CBLOCK
                                   : job->group_out / MR + (last_channels(job) == MR_WIDE ? 0 : job->group_out % MR != 0);
    int64_t area = job->kh * job->kw;
    job->bias_in_sum = area == 1;
    int64_t chunk_channels = area == 1 ? ONE_BY_ONE_CHANNELS : CHUNK_CHANNELS;
    if (chunk_channels > job->group_in) chunk_channels = job->group_in;
    job->chunk = chunk_channels * area; /* the last chunk may have fewer channels */
    job->chunks = (job->k + job->chunk - 1) / job->chunk;
    int64_t count = job->groups * job->blocks * job->chunks;
    job->panels = (float *)malloc((size_t)(job->groups * padded_channels(job) * job->chunks * job->chunk) * sizeof(float));
    job->panel_state = (int *)calloc((size_t)count, sizeof(int));
    job->tap_input = (int64_t *)malloc((size_t)job->k * 2 * sizeof(int64_t));
    if (!job->panels || !job->panel_state || !job->tap_input) {
        free(job->panels);
        free(job->panel_state);
        free(job->tap_input);
        free((void *)job->item_image);
        return OUT_OF_MEMORY;
    }
    job->tap_weight = job->tap_input + job->k;
    for (int64_t t = 0; t < job->k; t++) {
        /* chunk c holds channels [c * chunk_channels, + in_chunk), by position then channel */
        int64_t c = t / job->chunk, first = c * chunk_channels, in_chunk = job->group_in - first;
        if (in_chunk > chunk_channels) in_chunk = chunk_channels;
        int64_t ci = first + t % job->chunk % in_chunk, position = t % job->chunk / in_chunk;
        int64_t ky = position / job->kw, kx = position % job->kw, tap = kx * job->dil_w;
        job->tap_weight[t] = ci * area + position;
        job->tap_input[t] = ky * job->dil_h * job->channels * job->stride_w * job->phase_w +
                            ci * job->stride_w * job->phase_w + (tap % job->stride_w) * job->phase_w + tap / job->stride_w;
    }
    job->next = 0;
    job->failed = 0;
    static parallel_site site;
    parallel(&site, run_items, job, threads, work);
    free((void *)job->item_image);
    free(job->panels);
    free(job->panel_state);
    free(job->tap_input);
    return job->failed;
}

