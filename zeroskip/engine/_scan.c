/* Which output tiles of a convolution have a non-zero value in their receptive field.
 *
 * One pass over the input at memory speed, where the pure-torch check needs several reductions:
 * each input row is read once, reduced to one flag per column (non-zero in any channel), and the
 * tiles of every row of tiles are found from the flags of the rows under it. Rows of tiles whose
 * receptive fields overlap (tiles one output row tall under a 7 x 7 kernel read 7 input rows and
 * advance by 2) share those flags instead of reading the input again. Values are compared by their
 * bits with the sign bit cleared, so -0.0 is zero and NaN and Inf are non-zero, exactly as in
 * zeroskip/_activity.py.
 *
 * Built by zeroskip/engine/native.py with the system C compiler and called through ctypes (which
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
    int64_t unit;      /* rows of tiles per work item, and per unit of a sample */
    int64_t row_step;  /* scan every row_step-th unit only (1: all) */
    int rest;          /* scan the other units instead: those a sample with row_step left */
    int64_t items, next; /* work items (image, scanned unit), the next one to take (atomic) */
    int failed;
} scan_job;

static int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* column_flags: one input row's flags, flags[w] = whether column w holds a non-zero value in any
 * channel; returns whether any column does. acc: scratch of width values. Bits are masked
 * to "is non-zero" (sign bit cleared) only after OR-ing, which gives the same. */
#define SCAN_FUNCTIONS(TYPE, MASK)                                                                      \
    static int column_flags_##TYPE(const scan_job *job, const char *row, void *accumulator,             \
                                   uint8_t *flags) {                                                    \
        const TYPE *base = (const TYPE *)row;                                                           \
        TYPE *acc = (TYPE *)accumulator, any = 0;                                                       \
        /* Locals: a store through uint8_t may alias the job, which would be read again per value. */   \
        const int64_t width = job->width, lanes = job->lanes, channels = job->channels;                 \
        const int64_t stride_c = job->stride_c, stride_w = job->stride_w;                               \
        int64_t c, w, l;                                                                                \
        if (lanes > 1) {                                                                                \
            for (w = 0; w < width; w++) {                                                               \
                TYPE bits = 0;                                                                          \
                for (l = 0; l < lanes; l++) bits |= base[w * lanes + l];                                \
                acc[w] = bits;                                                                          \
            }                                                                                           \
        } else if (stride_w == 1) {                                                                     \
            memcpy(acc, base, (size_t)width * sizeof(TYPE));                                            \
            for (c = 1; c < channels; c++) {                                                            \
                const TYPE *p = base + c * stride_c;                                                    \
                for (w = 0; w < width; w++) acc[w] |= p[w];                                             \
            }                                                                                           \
        } else {                                                                                        \
            for (w = 0; w < width; w++) {                                                               \
                const TYPE *p = base + w * stride_w;                                                    \
                TYPE bits = 0;                                                                          \
                for (c = 0; c < channels; c++) bits |= p[c * stride_c];                                 \
                acc[w] = bits;                                                                          \
            }                                                                                           \
        }                                                                                               \
        for (w = 0; w < width; w++) {                                                                   \
            flags[w] = (acc[w] & (TYPE)MASK) != 0;                                                      \
            any |= acc[w];                                                                              \
        }                                                                                               \
        return (any & (TYPE)MASK) != 0;                                                                 \
    }
SCAN_FUNCTIONS(uint16_t, 0x7fffu)
SCAN_FUNCTIONS(uint32_t, 0x7fffffffu)
SCAN_FUNCTIONS(uint64_t, 0x7fffffffffffffffull)

static void *scan_items(void *arg) {
    scan_job *job = (scan_job *)arg;
    int size = job->element_size;
    int (*column_flags)(const scan_job *, const char *, void *, uint8_t *) =
        size == 2 ? column_flags_uint16_t : size == 4 ? column_flags_uint32_t : column_flags_uint64_t;
    int64_t footprint = (job->tile_h - 1) * job->step_h + job->window_h;
    int64_t advance = job->tile_h * job->step_h; /* input rows from one row of tiles to the next */
    int64_t span = (job->unit - 1) * advance + footprint;
    void *acc = malloc((size_t)(job->width + 1) * size);
    uint8_t *flags = malloc((size_t)(span * job->width + 1));   /* per input row of the item, per column */
    uint8_t *row_flags = malloc((size_t)span + 1);              /* per input row of the item */
    uint8_t *merged = malloc((size_t)job->width + 1);           /* per column, under one row of tiles */
    /* active columns before each column, under one row of tiles: a tile's any is a difference, so
     * that tiles one output wide under a 7-wide window cost one lookup each, not seven */
    int32_t *before = malloc((size_t)(job->width + 1) * sizeof(int32_t));
    int allocated = acc && flags && row_flags && merged && before;
    if (!allocated) __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
    int64_t step = job->row_step, units = (job->tiles_i + job->unit - 1) / job->unit;
    int64_t sampled = (units + step - 1) / step;
    int64_t scanned_units = job->rest ? units - sampled : sampled;
    /* Items are taken one at a time: a thread the scheduler takes away holds up one item, not a
     * share of the scan. */
    while (allocated) {
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->items) break;
        int64_t b = item / scanned_units, k = item % scanned_units;
        /* the k-th unit that is (not, with rest) a multiple of the step */
        int64_t u = job->rest ? k + k / (step - 1) + 1 : k * step;
        int64_t i0 = u * job->unit, i1 = i0 + job->unit < job->tiles_i ? i0 + job->unit : job->tiles_i;
        int64_t first = i0 * advance - job->pad_top;
        int64_t start = clamp(first, 0, job->height);
        int64_t end = clamp((i1 - 1) * advance - job->pad_top + footprint, 0, job->height);
        for (int64_t h = start; h < end; h++) {
            const char *row = job->data + (b * job->stride_b + h * job->stride_h) * size;
            row_flags[h - start] = column_flags(job, row, acc, flags + (h - start) * job->width);
        }
        /* Locals: a store through uint8_t may alias the job, which would be read again per value. */
        const int64_t width = job->width, tiles_j = job->tiles_j;
        const int64_t tile_span = job->tile_w * job->step_w, tile_extent = (job->tile_w - 1) * job->step_w + job->window_w;
        for (int64_t i = i0; i < i1; i++) {
            int64_t top = i * advance - job->pad_top;
            int64_t from = clamp(top, 0, job->height), to = clamp(top + footprint, 0, job->height);
            int active = 0; /* whether an input row under this row of tiles holds a non-zero value */
            for (int64_t h = from; h < to; h++) {
                const uint8_t *f = flags + (h - start) * width;
                if (!row_flags[h - start]) continue;
                if (!active) memcpy(merged, f, (size_t)width);
                else
                    for (int64_t w = 0; w < width; w++) merged[w] |= f[w];
                active = 1;
            }
            uint8_t *tiles = job->tiles + (b * job->tiles_i + i) * tiles_j;
            if (active) {
                before[0] = 0;
                for (int64_t w = 0; w < width; w++) before[w + 1] = before[w] + merged[w];
                for (int64_t j = 0; j < tiles_j; j++) {
                    int64_t left = j * tile_span - job->pad_left;
                    int64_t c0 = clamp(left, 0, width), c1 = clamp(left + tile_extent, 0, width);
                    tiles[j] = before[c1] > before[c0];
                }
            } else {
                memset(tiles, 0, (size_t)tiles_j);
            }
            if (!job->rows) continue;
            /* The output rows of this row of tiles: active if any input row under the kernel is. */
            int64_t last_row = (i + 1) * job->tile_h < job->out_height ? (i + 1) * job->tile_h : job->out_height;
            for (int64_t r = i * job->tile_h; r < last_row; r++) {
                int64_t r_top = r * job->step_h - job->pad_top;
                int64_t r_from = clamp(r_top, 0, job->height), r_to = clamp(r_top + job->window_h, 0, job->height);
                uint8_t any = 0;
                for (int64_t h = r_from; h < r_to; h++) any |= row_flags[h - start];
                job->rows[b * job->out_height + r] = any;
            }
        }
        if (job->rest || step == 1) continue;
        /* A sample clears the flags of the units it leaves, up to the next one it scans. */
        int64_t c0 = i1, c1 = (u + step) * job->unit < job->tiles_i ? (u + step) * job->unit : job->tiles_i;
        if (c0 >= c1) continue;
        memset(job->tiles + (b * job->tiles_i + c0) * tiles_j, 0, (size_t)((c1 - c0) * tiles_j));
        if (job->rows) {
            int64_t r0 = c0 * job->tile_h, r1 = c1 * job->tile_h < job->out_height ? c1 * job->tile_h : job->out_height;
            memset(job->rows + b * job->out_height + r0, 0, (size_t)(r1 - r0));
        }
    }
    free(acc);
    free(flags);
    free(row_flags);
    free(merged);
    free(before);
    return NULL;
}

/* Which output tiles (and, if `rows` is not NULL, which output rows) have a non-zero input value
 * under their receptive field. Rows of tiles go in units of `unit`; with row_step > 1 only every
 * row_step-th unit is scanned (a sample: the flags of the others are cleared), or with `rest` every
 * other one (completing that sample's flags, the sampled units' left as they are). Strides are in
 * elements.
 * Returns 0 on success. */
int zeroskip_scan(const void *data, int64_t batch, int64_t channels, int64_t height, int64_t width,
                  int64_t stride_b, int64_t stride_c, int64_t stride_h, int64_t stride_w, int element_size,
                  int64_t tiles_i, int64_t tile_h, int64_t step_h, int64_t pad_top, int64_t window_h,
                  int64_t out_height, int64_t tiles_j, int64_t tile_w, int64_t step_w, int64_t pad_left,
                  int64_t window_w, uint8_t *tiles, uint8_t *rows, int64_t unit, int64_t row_step, int rest,
                  int threads) {
    if ((element_size != 2 && element_size != 4 && element_size != 8) || unit < 1 || row_step < 1 ||
        (rest && row_step < 2))
        return 1;
    int64_t units = (tiles_i + unit - 1) / unit, sampled = (units + row_step - 1) / row_step;
    int64_t items = batch * (rest ? units - sampled : sampled);
    if (items == 0) return 0;
    if (threads > items) threads = (int)items;
    if (threads > 64) threads = 64;
    if (threads < 1) threads = 1;
    scan_job job = {(const char *)data, batch, channels, height, width, stride_b, stride_c, stride_h, stride_w,
                    element_size, stride_c == 1 && stride_w == channels ? channels : 1,
                    tiles_i, tile_h, step_h, pad_top, window_h, out_height,
                    tiles_j, tile_w, step_w, pad_left, window_w, tiles, rows, unit, row_step, rest, items, 0, 0};
    static parallel_site site;
    /* work: the input values under the scanned units */
    parallel(&site, scan_items, &job, threads, (double)items * channels * height * width / units);
    return job.failed;
}
