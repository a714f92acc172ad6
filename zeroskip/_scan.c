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
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *data;
    int64_t batch, channels, height, width;
    int64_t stride_b, stride_c, stride_h, stride_w; /* in elements */
    int element_size;
    int64_t lanes; /* channels when a row's pixels are contiguous and interleaved (channels_last), else 1 */
    int64_t tiles_i, tile_h, step_h, pad_top, window_h;
    int64_t tiles_j, tile_w, step_w, pad_left, window_w;
    uint8_t *out; /* (batch, tiles_i, tiles_j) */
    int64_t first_item, last_item; /* work items (image, tile row) of one thread */
    int failed;
} scan_job;

static int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* OR of the raw bits of one input row over its channels into acc[0 .. width), and the tile flags
 * of a tile row from acc (masked to "is non-zero"); returns whether all its tiles are active. */
#define SCAN_FUNCTIONS(TYPE, MASK)                                                             \
    static void or_row_##TYPE(const scan_job *job, const char *row, void *accumulator) {     \
        const TYPE *base = (const TYPE *)row;                                                  \
        TYPE *acc = (TYPE *)accumulator;                                                       \
        int64_t c, w;                                                                          \
        if (job->lanes > 1) { /* channels_last: the row is one contiguous run of width x channels */ \
            for (w = 0; w < job->width * job->lanes; w++) acc[w] |= base[w];                   \
        } else if (job->stride_w == 1) {                                                       \
            for (c = 0; c < job->channels; c++) {                                              \
                const TYPE *p = base + c * job->stride_c;                                      \
                for (w = 0; w < job->width; w++) acc[w] |= p[w];                               \
            }                                                                                  \
        } else {                                                                               \
            for (w = 0; w < job->width; w++) {                                                 \
                const TYPE *p = base + w * job->stride_w;                                      \
                TYPE bits = 0;                                                                 \
                for (c = 0; c < job->channels; c++) bits |= p[c * job->stride_c];               \
                acc[w] |= bits;                                                                \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
    static int tile_flags_##TYPE(const scan_job *job, const void *accumulator, uint8_t *out) { \
        const TYPE *acc = (const TYPE *)accumulator;                                           \
        int all = 1;                                                                           \
        for (int64_t j = 0; j < job->tiles_j; j++) {                                           \
            if (out[j]) continue;                                                              \
            int64_t first = j * job->tile_w * job->step_w - job->pad_left;                     \
            int64_t start = clamp(first, 0, job->width);                                       \
            int64_t end = clamp(first + (job->tile_w - 1) * job->step_w + job->window_w, 0, job->width); \
            TYPE bits = 0;                                                                     \
            for (int64_t w = start * job->lanes; w < end * job->lanes; w++) bits |= acc[w];                              \
            out[j] = (bits & (TYPE)MASK) != 0;                                                 \
            all &= out[j];                                                                     \
        }                                                                                      \
        return all;                                                                            \
    }
SCAN_FUNCTIONS(uint16_t, 0x7fffu)
SCAN_FUNCTIONS(uint32_t, 0x7fffffffu)
SCAN_FUNCTIONS(uint64_t, 0x7fffffffffffffffull)

static void *scan_items(void *arg) {
    scan_job *job = (scan_job *)arg;
    void (*or_row)(const scan_job *, const char *, void *) =
        job->element_size == 2 ? or_row_uint16_t : job->element_size == 4 ? or_row_uint32_t : or_row_uint64_t;
    int (*flags)(const scan_job *, const void *, uint8_t *) =
        job->element_size == 2 ? tile_flags_uint16_t : job->element_size == 4 ? tile_flags_uint32_t : tile_flags_uint64_t;
    void *acc = malloc((size_t)(job->width * job->lanes + 1) * job->element_size);
    if (!acc) {
        job->failed = 1;
        return NULL;
    }
    for (int64_t item = job->first_item; item < job->last_item; item++) {
        int64_t b = item / job->tiles_i, i = item % job->tiles_i;
        uint8_t *out = job->out + item * job->tiles_j;
        int64_t first = i * job->tile_h * job->step_h - job->pad_top;
        int64_t start = clamp(first, 0, job->height);
        int64_t end = clamp(first + (job->tile_h - 1) * job->step_h + job->window_h, 0, job->height);
        memset(out, 0, (size_t)job->tiles_j);
        memset(acc, 0, (size_t)(job->width * job->lanes) * job->element_size);
        for (int64_t h = start; h < end; h++) {
            or_row(job, job->data + (b * job->stride_b + h * job->stride_h) * job->element_size, acc);
            /* Every few rows, stop reading once the whole tile row is known to be active. */
            if (((h - start) & 3) == 3 && flags(job, acc, out)) break;
        }
        flags(job, acc, out);
    }
    free(acc);
    return NULL;
}

/* Returns 0 on success. Strides are in elements; threads >= 1. */
int zeroskip_scan_tiles(const void *data, int64_t batch, int64_t channels, int64_t height, int64_t width,
                        int64_t stride_b, int64_t stride_c, int64_t stride_h, int64_t stride_w, int element_size,
                        int64_t tiles_i, int64_t tile_h, int64_t step_h, int64_t pad_top, int64_t window_h,
                        int64_t tiles_j, int64_t tile_w, int64_t step_w, int64_t pad_left, int64_t window_w,
                        uint8_t *out, int threads) {
    if (element_size != 2 && element_size != 4 && element_size != 8) return 1;
    int64_t items = batch * tiles_i;
    if (threads < 1) threads = 1;
    if (threads > items) threads = items > 0 ? (int)items : 1;
    if (threads > 64) threads = 64;
    scan_job jobs[64];
    pthread_t workers[64];
    int started[64] = {0};
    for (int t = 0; t < threads; t++) {
        scan_job job = {(const char *)data, batch, channels, height, width, stride_b, stride_c, stride_h, stride_w,
                        element_size, stride_c == 1 && stride_w == channels ? channels : 1, tiles_i, tile_h, step_h, pad_top, window_h, tiles_j, tile_w, step_w,
                        pad_left, window_w, out, items * t / threads, items * (t + 1) / threads, 0};
        jobs[t] = job;
    }
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&workers[t], NULL, scan_items, &jobs[t]) == 0;
    scan_items(&jobs[0]);
    int failed = jobs[0].failed;
    for (int t = 1; t < threads; t++) {
        if (started[t]) pthread_join(workers[t], NULL);
        else scan_items(&jobs[t]); /* no thread to spare: do its share here */
        failed |= jobs[t].failed;
    }
    return failed;
}
