/* Which output tiles of a convolution have a non-zero value in their receptive field.
 *
 * One pass over the input at memory speed, where the pure-torch check needs several reductions.
 * Values are compared by their bits with the sign bit cleared, so -0.0 is zero and NaN and Inf
 * are non-zero, exactly as in zeroskip/_activity.py. A tile row stops reading input as soon as all
 * of its tiles are known to be active, so a dense image costs a small part of a full pass.
 *
 * Built by zeroskip/_native.py with the system C compiler and called through ctypes (which
 * releases the GIL); zeroskip falls back to the torch check wherever it is not built.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_parallel.h"

typedef struct {
    const char *data;
    int64_t batch, channels, height, width;
    int64_t stride_b, stride_c, stride_h, stride_w; /* in elements */
    int element_size;
    int64_t lanes; /* channels when a row's pixels are contiguous and interleaved (channels_last), else 1 */
    int64_t tiles_i, tile_h, step_h, pad_top, window_h, out_height;
    int64_t tiles_j, tile_w, step_w, pad_left, window_w;
    uint8_t *tiles; /* (batch, tiles_i, tiles_j) */
    uint8_t *rows;  /* (batch, out_height), or NULL */
    int64_t row_step;  /* scan every row_step-th tile row only (1: all) */
    int rest;          /* scan the other tile rows instead: those a sample with row_step left */
    int64_t items, next; /* work items (image, scanned tile row), the next one to take (atomic) */
    int failed;
} scan_job;

static int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* or_row: OR of the raw bits of one input row over its channels into acc[0 .. width x lanes);
 * returns whether the row holds a non-zero value.
 * row_any: the same answer alone, stopping at the first non-zero value.
 * tile_flags: the flags of a tile row's tiles from acc; returns whether all are active.
 * Bits are masked to "is non-zero" (sign bit cleared) only after OR-ing, which gives the same. */
#define SCAN_FUNCTIONS(TYPE, MASK)                                                                      \
    static int or_row_##TYPE(const scan_job *job, const char *row, void *accumulator) {               \
        const TYPE *base = (const TYPE *)row;                                                           \
        TYPE *acc = (TYPE *)accumulator, any = 0;                                                       \
        int64_t c, w;                                                                                   \
        if (job->lanes > 1) {                                                                           \
            for (w = 0; w < job->width * job->lanes; w++) {                                             \
                acc[w] |= base[w];                                                                      \
                any |= base[w];                                                                         \
            }                                                                                           \
        } else if (job->stride_w == 1) {                                                                \
            for (c = 0; c < job->channels; c++) {                                                       \
                const TYPE *p = base + c * job->stride_c;                                               \
                for (w = 0; w < job->width; w++) {                                                      \
                    acc[w] |= p[w];                                                                     \
                    any |= p[w];                                                                        \
                }                                                                                       \
            }                                                                                           \
        } else {                                                                                        \
            for (w = 0; w < job->width; w++) {                                                          \
                const TYPE *p = base + w * job->stride_w;                                               \
                TYPE bits = 0;                                                                          \
                for (c = 0; c < job->channels; c++) bits |= p[c * job->stride_c];                        \
                acc[w] |= bits;                                                                         \
                any |= bits;                                                                            \
            }                                                                                           \
        }                                                                                               \
        return (any & (TYPE)MASK) != 0;                                                                 \
    }                                                                                                   \
    static int row_any_##TYPE(const scan_job *job, const char *row) {                                  \
        const TYPE *base = (const TYPE *)row;                                                           \
        for (int64_t c = 0; c < job->channels; c++)                                                     \
            for (int64_t w = 0; w < job->width; w++)                                                    \
                if (base[c * job->stride_c + w * job->stride_w] & (TYPE)MASK) return 1;                 \
        return 0;                                                                                       \
    }                                                                                                   \
    static int tile_flags_##TYPE(const scan_job *job, const void *accumulator, uint8_t *out) {          \
        const TYPE *acc = (const TYPE *)accumulator;                                                    \
        int all = 1;                                                                                    \
        for (int64_t j = 0; j < job->tiles_j; j++) {                                                    \
            if (out[j]) continue;                                                                       \
            int64_t first = j * job->tile_w * job->step_w - job->pad_left;                              \
            int64_t start = clamp(first, 0, job->width) * job->lanes;                                   \
            int64_t end = clamp(first + (job->tile_w - 1) * job->step_w + job->window_w, 0, job->width) * job->lanes; \
            TYPE bits = 0;                                                                              \
            for (int64_t w = start; w < end; w++) bits |= acc[w];                                       \
            out[j] = (bits & (TYPE)MASK) != 0;                                                          \
            all &= out[j];                                                                              \
        }                                                                                               \
        return all;                                                                                     \
    }
SCAN_FUNCTIONS(uint16_t, 0x7fffu)
SCAN_FUNCTIONS(uint32_t, 0x7fffffffu)
SCAN_FUNCTIONS(uint64_t, 0x7fffffffffffffffull)

static void *scan_items(void *arg) {
    scan_job *job = (scan_job *)arg;
    int size = job->element_size;
    int (*or_row)(const scan_job *, const char *, void *) =
        size == 2 ? or_row_uint16_t : size == 4 ? or_row_uint32_t : or_row_uint64_t;
    int (*row_any)(const scan_job *, const char *) =
        size == 2 ? row_any_uint16_t : size == 4 ? row_any_uint32_t : row_any_uint64_t;
    int (*tile_flags)(const scan_job *, const void *, uint8_t *) =
        size == 2 ? tile_flags_uint16_t : size == 4 ? tile_flags_uint32_t : tile_flags_uint64_t;
    int64_t footprint = (job->tile_h - 1) * job->step_h + job->window_h;
    void *acc = malloc((size_t)(job->width * job->lanes + 1) * size);
    uint8_t *row_flags = malloc((size_t)footprint + 1);
    if (!acc || !row_flags) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        free(acc);
        free(row_flags);
        return NULL;
    }
    int64_t step = job->row_step, sampled = (job->tiles_i + step - 1) / step;
    int64_t scanned_rows = job->rest ? job->tiles_i - sampled : sampled;
    /* Items are taken one at a time: a thread the scheduler takes away holds up one item, not a
     * share of the scan. */
    for (;;) {
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->items) break;
        int64_t b = item / scanned_rows, k = item % scanned_rows;
        /* the k-th tile row that is (not, with rest) a multiple of the step */
        int64_t i = job->rest ? k + k / (step - 1) + 1 : k * step;
        uint8_t *tiles = job->tiles + (b * job->tiles_i + i) * job->tiles_j;
        int64_t first = i * job->tile_h * job->step_h - job->pad_top;
        int64_t start = clamp(first, 0, job->height);
        int64_t end = clamp(first + footprint, 0, job->height);
        int all = 0;
        memset(tiles, 0, (size_t)job->tiles_j);
        memset(acc, 0, (size_t)(job->width * job->lanes) * size);
        for (int64_t h = start; h < end; h++) {
            const char *row = job->data + (b * job->stride_b + h * job->stride_h) * size;
            if (!all) {
                row_flags[h - start] = or_row(job, row, acc);
                /* Every few rows, see whether the whole tile row is known to be active: then only
                 * the row flags are left to find, each stopping at its first non-zero value. */
                if (((h - start) & 3) == 3) all = tile_flags(job, acc, tiles);
            } else if (job->rows) {
                row_flags[h - start] = row_any(job, row);
            } else {
                break;
            }
        }
        if (!all) tile_flags(job, acc, tiles);
        if (!job->rows) continue;
        /* The output rows of this tile row: active if any input row under the kernel is. */
        int64_t last_row = (i + 1) * job->tile_h < job->out_height ? (i + 1) * job->tile_h : job->out_height;
        for (int64_t r = i * job->tile_h; r < last_row; r++) {
            int64_t top = r * job->step_h - job->pad_top;
            int64_t from = clamp(top, 0, job->height), to = clamp(top + job->window_h, 0, job->height);
            uint8_t any = 0;
            for (int64_t h = from; h < to; h++) any |= row_flags[h - start];
            job->rows[b * job->out_height + r] = any;
        }
    }
    free(acc);
    free(row_flags);
    return NULL;
}

/* Which output tiles (and, if `rows` is not NULL, which output rows) have a non-zero input value
 * under their receptive field. With row_step > 1 only every row_step-th tile row is scanned (a
 * sample), or with `rest` every other one (completing that sample's flags); the flags of the tile
 * rows not scanned are left as they are. Strides are in elements. Returns 0 on success. */
int zeroskip_scan(const void *data, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  int64_t stride_b, int64_t stride_c, int64_t stride_h, int64_t stride_w, int element_size,
                  int64_t tiles_i, int64_t tile_h, int64_t step_h, int64_t pad_top, int64_t window_h,
                  int64_t out_height, int64_t tiles_j, int64_t tile_w, int64_t step_w, int64_t pad_left,
                  int64_t window_w, uint8_t *tiles, uint8_t *rows, int64_t row_step, int rest, int threads) {
    if ((element_size != 2 && element_size != 4 && element_size != 8) || row_step < 1 || (rest && row_step < 2))
        return 1;
    int64_t sampled = (tiles_i + row_step - 1) / row_step;
    int64_t items = batch * (rest ? tiles_i - sampled : sampled);
    if (items == 0) return 0;
    if (threads > items) threads = (int)items;
    if (threads > 64) threads = 64;
    if (threads < 1) threads = 1;
    scan_job job = {(const char *)data, batch, channels, height, width, stride_b, stride_c, stride_h, stride_w,
                    element_size, stride_c == 1 && stride_w == channels ? channels : 1,
                    tiles_i, tile_h, step_h, pad_top, window_h, out_height,
                    tiles_j, tile_w, step_w, pad_left, window_w, tiles, rows, row_step, rest, items, 0, 0};
    parallel(scan_items, &job, threads);
    return job.failed;
}
