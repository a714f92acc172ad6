/* Max pooling of a carried feature map (_sparse_max_pool in zeroskip/activation.py) in one parallel
 * pass that writes every output element once: the maximum over its window where the activity map
 * marks the output active, the background field's value elsewhere.
 *
 * The torch path fills the whole output with the background, then pools each box of active rows and
 * columns with F.max_pool2d on a copy padded with -inf: about 5 ms at 1 thread for resnet18's max
 * pooling at 768 x 576 (64 x 288 x 384 in), most of it the boxes' copies and calls. Here each work
 * item, one band of rows of one channel of one image, writes its rows left to right: background up
 * to each run of active columns, then the run's maxima, LANES outputs at a time in registers. The
 * input rows under a run are first copied into per-thread lines split by the column step (as the
 * executor's buffer is), so that every tap of the window reads consecutive values.
 *
 * Values are compared as PyTorch's CPU max pooling compares them, in its order (the window's rows,
 * then its columns): a value replaces the maximum when it is greater or NaN, so that of equal values
 * (+0.0 and -0.0) the first wins and of NaNs the last, and the output has dense's bits. Padding
 * taps, -inf, would never replace anything: they are skipped.
 *
 * Built by zeroskip/engine/native.py with the system C compiler and called through ctypes;
 * zeroskip runs the torch path wherever it is not built. Threads: see _parallel.c.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_background.h"
#include "_parallel.h"

#define MAX_THREADS 256
/* Items per thread: a thread the scheduler takes away holds up one item, not a share of the call. */
#define ITEMS_PER_THREAD 4
/* Outputs computed at a time (a run's last vector past its end, into scratch): 16 floats, one
 * AVX-512 vector, two AVX ones. */
#define LANES 16

typedef float vf __attribute__((vector_size(LANES * 4)));
typedef int32_t vi __attribute__((vector_size(LANES * 4)));

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

typedef struct {
    /* input (B, C, H, W) and output (B, C, H_out, W_out), strides in elements */
    const float *x;
    int64_t batch, channels, height, width, xs_b, xs_c, xs_h, xs_w;
    float *out;
    int64_t out_h, out_w, os_b, os_c, os_h, os_w;
    /* window: output (i, j) reads rows i * step_h - pad_top + dil_h * t (t < kernel_h), columns alike */
    int64_t kernel_h, kernel_w, step_h, step_w, dil_h, dil_w, pad_top, pad_left;
    /* the active columns of output row r = b * out_h + i: runs [runs[2 n], runs[2 n + 1]) for n in
     * [run_start[r], run_start[r + 1]) */
    const int64_t *run_start, *runs;
    /* background: core (core_b, C, core_h, core_w), contiguous, read through its border bands (top,
     * bottom, left, right) as zeroskip._background.Background stores it; image b reads core image
     * b % core_b */
    const float *core;
    int64_t core_b, core_h, core_w, band_top, band_bottom, band_left, band_right;
    /* work items: `bands` bands of `band_rows` output rows per (image, channel) plane */
    int64_t bands, band_rows, items;
    int64_t next; /* the next item to take (atomic) */
    int failed;
} pool_job;

/* Columns [c0, c1) of an output row from `values`, its core row (every value written). */
static void background(const pool_job *job, const float *values, float *dst, int64_t c0, int64_t c1) {
    background_row(dst, job->os_w, values, c0, c1, job->out_w, job->band_left, job->band_right, 0, 0);
}

/* dst[m] = src[m * step] for m < n; inlined where called, so that a constant step (1, or 2 for the
 * usual stride) becomes vector loads and shuffles. */
static inline void gather(float *restrict dst, const float *restrict src, int64_t n, int64_t step) {
    for (int64_t m = 0; m < n; m++) dst[m] = src[m * step];
}

/* The maxima of output row i, columns [c0, c1), of input plane `plane` into acc[0, c1 - c0) (and
 * past it, to the end of the last vector begun). `lines` takes step_w lines of `pitch` values per
 * window row (at least the run's vectors plus the window's reach): line p holds the input columns
 * w0 + p + step_w * m, -inf outside the image, so that tap t of every output reads line t % step_w
 * from t / step_w on. Lanes past the run read whatever the lines hold there. */
static void pool_run(const pool_job *job, const float *plane, int64_t i, int64_t c0, int64_t c1, float *restrict acc,
                     float *restrict lines) {
    int64_t s = job->step_w, w0 = c0 * s - job->pad_left, step = s * job->xs_w;
    int64_t vectors = (c1 - c0 + LANES - 1) / LANES, reach = (job->kernel_w - 1) * job->dil_w / s;
    int64_t count = c1 - c0 + reach, pitch = vectors * LANES + reach, rows = 0;
    for (int64_t ty = 0; ty < job->kernel_h; ty++) {
        int64_t h = i * job->step_h - job->pad_top + ty * job->dil_h;
        if (h < 0 || h >= job->height) continue;
        const float *row = plane + h * job->xs_h;
        for (int64_t p = 0; p < s; p++) {
            float *line = lines + (rows * s + p) * pitch;
            /* line[m] = column w0 + p + s * m, inside the image for m in [lo, hi) */
            int64_t first = w0 + p, lo = first >= 0 ? 0 : (-first + s - 1) / s;
            int64_t hi = job->width - first > 0 ? (job->width - first + s - 1) / s : 0;
            lo = lo > count ? count : lo;
            hi = hi > count ? count : (hi < lo ? lo : hi);
            for (int64_t m = 0; m < lo; m++) line[m] = -INFINITY;
            const float *src = row + (first + s * lo) * job->xs_w;
            if (step == 1)
                gather(line + lo, src, hi - lo, 1);
            else if (step == 2)
                gather(line + lo, src, hi - lo, 2);
            else
                gather(line + lo, src, hi - lo, step);
            for (int64_t m = hi; m < count; m++) line[m] = -INFINITY;
        }
        rows++;
    }
    for (int64_t v = 0; v < vectors; v++) {
        vf max = (vf){0} - INFINITY;
        for (int64_t k = 0; k < rows; k++)
            for (int64_t tx = 0; tx < job->kernel_w; tx++) {
                int64_t t = tx * job->dil_w;
                vf value = load(lines + (k * s + t % s) * pitch + t / s + v * LANES);
                /* PyTorch's comparison: greater, or NaN (value != value), replaces the maximum. */
                vi take = (value > max) | (value != value);
                max = (vf)((take & (vi)value) | (~take & (vi)max));
            }
        store(acc + v * LANES, max);
    }
}

static void *pool_items(void *arg) {
    pool_job *job = (pool_job *)arg;
    /* The longest run, a whole row, takes its vectors of maxima and, per line, as many values plus
     * the window's reach; zeroed, so that the lanes past a run never read uninitialised memory. */
    int64_t width = (job->out_w + LANES - 1) / LANES * LANES;
    int64_t pitch = width + (job->kernel_w - 1) * job->dil_w / job->step_w;
    float *acc = (float *)calloc((size_t)(width + job->kernel_h * job->step_w * pitch), sizeof(float));
    if (!acc) {
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    for (;;) {
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->items) break;
        int64_t plane_index = item / job->bands, b = plane_index / job->channels, c = plane_index % job->channels;
        int64_t i0 = item % job->bands * job->band_rows;
        int64_t i1 = i0 + job->band_rows < job->out_h ? i0 + job->band_rows : job->out_h;
        const float *in = job->x + b * job->xs_b + c * job->xs_c;
        const float *core = job->core + ((b % job->core_b) * job->channels + c) * job->core_h * job->core_w;
        float *out = job->out + b * job->os_b + c * job->os_c;
        for (int64_t i = i0; i < i1; i++) {
            const float *values = core + core_index(i, job->out_h, job->band_top, job->band_bottom) * job->core_w;
            float *dst = out + i * job->os_h;
            int64_t done = 0, r = b * job->out_h + i;
            for (int64_t n = job->run_start[r]; n < job->run_start[r + 1]; n++) {
                int64_t first = job->runs[2 * n], last = job->runs[2 * n + 1];
                background(job, values, dst, done, first);
                pool_run(job, in, i, first, last, acc, acc + width);
                if (job->os_w == 1)
                    memcpy(dst + first, acc, (size_t)(last - first) * sizeof(float));
                else
                    for (int64_t j = first; j < last; j++) dst[j * job->os_w] = acc[j - first];
                done = last;
            }
            background(job, values, dst, done, job->out_w);
        }
    }
    free(acc);
    return NULL;
}

/* The runs of non-zero bytes of every activity row, into job->run_start and job->runs (one
 * allocation, freed with run_start). The map's columns are contiguous, its rows and images
 * `stride_h` and `stride_b` bytes apart. Returns 0 on success. */
static int find_runs(pool_job *job, const uint8_t *activity, int64_t stride_b, int64_t stride_h) {
    int64_t rows = job->batch * job->out_h, total = 0;
    /* Two passes over the map (a few bytes per output): count the runs, then record them. */
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = activity + r / job->out_h * stride_b + r % job->out_h * stride_h;
        total += row[0] != 0;
        for (int64_t j = 1; j < job->out_w; j++) total += row[j] && !row[j - 1];
    }
    int64_t *start = (int64_t *)malloc((size_t)(rows + 1 + 2 * total) * sizeof(int64_t));
    if (!start) return 1;
    int64_t *runs = start + rows + 1, n = 0;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = activity + r / job->out_h * stride_b + r % job->out_h * stride_h;
        start[r] = n;
        for (int64_t j = 0; j < job->out_w; j++) {
            if (!row[j]) continue;
            runs[2 * n] = j;
            while (j < job->out_w && row[j]) j++;
            runs[2 * n++ + 1] = j;
        }
    }
    start[rows] = n;
    job->run_start = start;
    job->runs = runs;
    return 0;
}

/* Max pooling of x (batch, channels, height, width) into out (batch, channels, out_h, out_w) where
 * the uint8 activity map (batch, 1, out_h, out_w; columns contiguous, rows and images `as_h` and
 * `as_b` bytes apart) is non-zero, the background (see pool_job) elsewhere. Strides are in elements;
 * the output must not overlap itself or the input. Returns 0 on success, 1 when out of memory. */
int zeroskip_max_pool(const float *x, int64_t batch, int64_t channels, int64_t height, int64_t width, int64_t xs_b,
                      int64_t xs_c, int64_t xs_h, int64_t xs_w, float *out, int64_t out_h, int64_t out_w,
                      int64_t os_b, int64_t os_c, int64_t os_h, int64_t os_w, int64_t kernel_h, int64_t kernel_w,
                      int64_t step_h, int64_t step_w, int64_t dil_h, int64_t dil_w, int64_t pad_top, int64_t pad_left,
                      const uint8_t *activity, int64_t as_b, int64_t as_h, const float *core, int64_t core_b,
                      int64_t core_h, int64_t core_w, int64_t band_top, int64_t band_bottom, int64_t band_left,
                      int64_t band_right, int threads) {
    if (batch <= 0 || channels <= 0 || out_h <= 0 || out_w <= 0) return 0;
    pool_job job = {.x = x, .batch = batch, .channels = channels, .height = height, .width = width, .xs_b = xs_b,
                    .xs_c = xs_c, .xs_h = xs_h, .xs_w = xs_w, .out = out, .out_h = out_h, .out_w = out_w,
                    .os_b = os_b, .os_c = os_c, .os_h = os_h, .os_w = os_w, .kernel_h = kernel_h,
                    .kernel_w = kernel_w, .step_h = step_h, .step_w = step_w, .dil_h = dil_h, .dil_w = dil_w,
                    .pad_top = pad_top, .pad_left = pad_left, .core = core, .core_b = core_b, .core_h = core_h,
                    .core_w = core_w, .band_top = band_top, .band_bottom = band_bottom, .band_left = band_left,
                    .band_right = band_right};
    if (find_runs(&job, activity, as_b, as_h)) return 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    /* Planes are cut into bands of rows only where there are fewer than the items wanted. */
    int64_t planes = batch * channels, wanted = (int64_t)threads * ITEMS_PER_THREAD;
    int64_t bands = planes >= wanted ? 1 : (wanted + planes - 1) / planes;
    if (bands > out_h) bands = out_h;
    job.band_rows = (out_h + bands - 1) / bands;
    job.bands = (out_h + job.band_rows - 1) / job.band_rows;
    job.items = planes * job.bands;
    static parallel_site site;
    parallel(&site, pool_items, &job, job.items < threads ? (int)job.items : threads,
             (double)planes * out_h * out_w * kernel_h * kernel_w);
    free((void *)job.run_start);
    return job.failed;
}
