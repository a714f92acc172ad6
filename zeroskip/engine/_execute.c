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
 * releases the GIL); zeroskip runs its torch executor wherever this is not built.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VLEN 16
#define MR 12
#elif defined(__AVX__)
#define VLEN 8
#define MR 6
#else
#define VLEN 4
#define MR 6
#endif
#define NV 2
#define NR (VLEN * NV)
#define MAX_THREADS 256
#ifndef KC
#define KC 64
#endif

typedef float vf __attribute__((vector_size(VLEN * 4)));

static inline vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store(float *p, vf v) { memcpy(p, &v, sizeof v); }

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
    /* output (B, C_out, H_out, W_out), strides in elements */
    float *out;
    int64_t os_b, os_c, os_h, os_w;
    /* plan: tiles (B, tiles_i, tiles_j) of tile_h x tile_w outputs to compute, within the active
     * output rows (B, H_out) or every row when NULL */
    const uint8_t *tiles;
    int64_t tiles_i, tiles_j, tile_h, tile_w;
    const uint8_t *rows;
    /* background of the outputs not computed: core (core_b, C_out, core_h, core_w), contiguous, read
     * through its border bands (top, bottom, left, right); image b reads core image b % core_b */
    const float *core;
    int64_t core_b, core_h, core_w, band_top, band_bottom, band_left, band_right;
    /* work items: image and output rows [start, end) of each */
    const int64_t *item_image, *item_start, *item_end;
    int64_t items;
    int64_t next; /* the next item to take (atomic) */
    /* buffer geometry, shared by every thread */
    int64_t phase_w, buffer_rows, item_rows, blocks;
    int failed;
} exec_job;

/* The core's row (or column) that holds position `i` of a side of `size` with bands (lead, trail). */
static inline int64_t core_index(int64_t i, int64_t size, int64_t lead, int64_t trail) {
    if (i < lead) return i;
    if (i >= size - trail) return lead + 1 + (i - (size - trail));
    return lead;
}

/* Background values into output row `o` of image `b`, columns [c0, c1), every output channel. */
static void fill(const exec_job *job, int64_t b, int64_t o, int64_t c0, int64_t c1) {
    if (c0 >= c1) return;
    int64_t channels = job->groups * job->group_out;
    const float *core = job->core + (b % job->core_b) * channels * job->core_h * job->core_w +
                        core_index(o, job->out_h, job->band_top, job->band_bottom) * job->core_w;
    float *row = job->out + b * job->os_b + o * job->os_h;
    int constant = job->band_left == 0 && job->band_right == 0;
    for (int64_t m = 0; m < channels; m++) {
        const float *values = core + m * job->core_h * job->core_w;
        float *dst = row + m * job->os_c;
        if (constant) {
            float v = values[0];
            if (job->os_w == 1)
                for (int64_t c = c0; c < c1; c++) dst[c] = v;
            else
                for (int64_t c = c0; c < c1; c++) dst[c * job->os_w] = v;
        } else {
            for (int64_t c = c0; c < c1; c++)
                dst[c * job->os_w] = values[core_index(c, job->out_w, job->band_left, job->band_right)];
        }
    }
}

/* Copy input rows [r0, r0 + count) of image b into the buffer: per row and channel, `stride_w`
 * phases of `phase_w` values, phase p holding padded columns p, p + s, ... Rows outside the image
 * are not copied: their pointers go to `zeros`. */
static void copy_rows(const exec_job *job, float *buffer, int64_t b, int64_t r0, int64_t count) {
    int64_t s = job->stride_w, pw = job->phase_w;
    for (int64_t r = 0; r < count; r++) {
        int64_t h = r0 + r;
        if (h < 0 || h >= job->height) continue;
        for (int64_t ci = 0; ci < job->channels; ci++) {
            const float *src = job->x + b * job->xs_b + ci * job->xs_c + h * job->xs_h;
            float *dst = buffer + (r * job->channels + ci) * s * pw;
            for (int64_t p = 0; p < s; p++) {
                float *phase = dst + p * pw;
                /* phase[j] = padded column j * s + p = input column j * s + p - pad_left */
                for (int64_t j = 0; j < pw; j++) {
                    int64_t w = j * s + p - job->pad_left;
                    phase[j] = (w >= 0 && w < job->width) ? src[w * job->xs_w] : 0.0f;
                }
            }
        }
    }
}

/* acc[m][v] = sum_k A[k, m] * B_k[offset + v * VLEN ...], for MR channels and `vectors` vectors of
 * pixels, B_k = pointers[k]; one vector for the last pixels of a segment, so that a ragged end
 * costs at most one vector of wasted work. */
static inline void kernel(int64_t k, const float *a, const float *const *pointers, int64_t offset, int vectors,
                          vf acc[MR][NV]) {
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = (vf){0};
    if (vectors == NV) {
        for (int64_t t = 0; t < k; t++, a += MR) {
            const float *bp = pointers[t] + offset;
            vf b[NV];
            for (int v = 0; v < NV; v++) b[v] = load(bp + v * VLEN);
#pragma GCC unroll 16
            for (int i = 0; i < MR; i++)
                for (int v = 0; v < NV; v++) acc[i][v] += a[i] * b[v]; /* the scalar is broadcast */
        }
    } else {
        for (int64_t t = 0; t < k; t++, a += MR) {
            vf b = load(pointers[t] + offset);
#pragma GCC unroll 16
            for (int i = 0; i < MR; i++) acc[i][0] += a[i] * b;
        }
    }
}

typedef struct {
    int64_t row, first, last; /* output row, columns [first, last) */
} segment;

/* Pointers to the input values under taps [t0, t0 + taps) of group g for output row `o`, as read by
 * output column 0 (column c reads c further on); the buffer's first row is input row `r0`. */
static void tap_pointers(const exec_job *job, const float *buffer, const float *zeros, int64_t g, int64_t o,
                         int64_t r0, int64_t t0, int64_t taps, const float **pointers) {
    int64_t s = job->stride_w, pw = job->phase_w, area = job->kh * job->kw;
    for (int64_t t = t0; t < t0 + taps; t++) {
        int64_t ci = g * job->group_in + t / area, ky = t % area / job->kw, kx = t % job->kw;
        int64_t h = o * job->stride_h - job->pad_top + ky * job->dil_h, tap = kx * job->dil_w;
        pointers[t - t0] = (h < 0 || h >= job->height)
                               ? zeros
                               : buffer + ((h - r0) * job->channels + ci) * s * pw + (tap % s) * pw + tap / s;
    }
}

/* Weights of output channels [m, m + channels) for taps [t0, t0 + taps) into a[taps][MR], rows past
 * `channels` zero. */
static void pack(const exec_job *job, int64_t m, int64_t channels, int64_t t0, int64_t taps, float *a) {
    for (int64_t i = 0; i < MR; i++) {
        const float *w = job->weight + (m + i) * job->k + t0;
        for (int64_t t = 0; t < taps; t++) a[t * MR + i] = i < channels ? w[t] : 0.0f;
    }
}

/* Convolve the segments of image b for group g: out = bias + sum over taps of weight x input.
 *
 * Taps go in chunks of KC and output channels in blocks of MR: one block's weights for one chunk
 * are packed (KC x MR, in L1) and read by every segment of the item, so the weights are read from
 * memory once per item, not once per pixel block; packing them here, not once per weight tensor,
 * leaves nothing to go stale when the weights change in place. Each chunk's partial sums are added into the
 * output (in cache: an item's output rows are small): the rounding error of one long running sum
 * grows with the number of terms (K reaches thousands) much faster than that of chunk sums. */
static void compute(const exec_job *job, const float *buffer, const float *zeros, const float **pointers, float *a,
                    const segment *segments, int64_t count, int64_t b, int64_t g, int64_t r0) {
    float *out = job->out + b * job->os_b;
    int64_t m0 = g * job->group_out;
    for (int64_t t0 = 0; t0 < job->k; t0 += KC) {
        int64_t taps = job->k - t0 < KC ? job->k - t0 : KC;
        for (int64_t n = 0; n < count; n++)
            tap_pointers(job, buffer, zeros, g, segments[n].row, r0, t0, taps, pointers + n * KC);
        for (int64_t blk = 0; blk < job->blocks; blk++) {
            int64_t channels = job->group_out - blk * MR < MR ? job->group_out - blk * MR : MR;
            pack(job, m0 + blk * MR, channels, t0, taps, a);
            for (int64_t n = 0; n < count; n++) {
                const segment *seg = segments + n;
                for (int64_t p = seg->first; p < seg->last; p += NR) {
                    vf acc[MR][NV];
                    int64_t cols = seg->last - p < NR ? seg->last - p : NR;
                    kernel(taps, a, pointers + n * KC, p, cols > VLEN * (NV - 1) ? NV : 1, acc);
                    for (int64_t i = 0; i < channels; i++) {
                        int64_t m = m0 + blk * MR + i;
                        float *dst = out + m * job->os_c + seg->row * job->os_h + p * job->os_w;
                        float tmp[NR];
                        if (cols == NR && job->os_w == 1) {
                            for (int v = 0; v < NV; v++) {
                                vf before = t0 ? load(dst + v * VLEN) : (vf){0} + (job->bias ? job->bias[m] : 0.0f);
                                store(dst + v * VLEN, before + acc[i][v]);
                            }
                            continue;
                        }
                        for (int v = 0; v < NV; v++) store(tmp + v * VLEN, acc[i][v]);
                        for (int64_t c = 0; c < cols; c++)
                            dst[c * job->os_w] = (t0 ? dst[c * job->os_w] : (job->bias ? job->bias[m] : 0.0f)) + tmp[c];
                    }
                }
            }
        }
    }
}

/* The output rows [o0, o1) of image b: background where no active tile is, convolution where one
 * is. Returns the segments to compute. */
static int64_t plan_rows(const exec_job *job, int64_t b, int64_t o0, int64_t o1, segment *segments) {
    int64_t count = 0;
    for (int64_t o = o0; o < o1; o++) {
        if (job->rows && !job->rows[b * job->out_h + o]) {
            fill(job, b, o, 0, job->out_w);
            continue;
        }
        const uint8_t *tiles = job->tiles + (b * job->tiles_i + o / job->tile_h) * job->tiles_j;
        int64_t done = 0; /* columns [0, done) are written or planned */
        for (int64_t j = 0; j < job->tiles_j;) {
            if (!tiles[j]) {
                j++;
                continue;
            }
            int64_t end = j;
            while (end < job->tiles_j && tiles[end]) end++;
            segment seg = {o, j * job->tile_w, end * job->tile_w < job->out_w ? end * job->tile_w : job->out_w};
            fill(job, b, o, done, seg.first);
            segments[count++] = seg;
            done = seg.last;
            j = end;
        }
        fill(job, b, o, done, job->out_w);
    }
    return count;
}

static void *run_items(void *arg) {
    exec_job *job = (exec_job *)arg;
    int64_t row_floats = job->channels * job->stride_w * job->phase_w;
    /* At most one segment per two tiles of a row (runs are separated by inactive tiles). */
    int64_t most_segments = job->item_rows * (job->tiles_j / 2 + 1);
    float *buffer = (float *)malloc((size_t)(job->buffer_rows * row_floats + job->phase_w) * sizeof(float));
    const float **pointers = (const float **)malloc((size_t)(most_segments * KC) * sizeof(float *));
    segment *segments = (segment *)malloc((size_t)most_segments * sizeof(segment));
    float *a = (float *)malloc(KC * MR * sizeof(float));
    if (!buffer || !pointers || !segments || !a) {
        free(buffer);
        free(pointers);
        free(segments);
        free(a);
        __atomic_store_n(&job->failed, 1, __ATOMIC_RELAXED);
        return NULL;
    }
    float *zeros = buffer + job->buffer_rows * row_floats;
    memset(zeros, 0, (size_t)job->phase_w * sizeof(float));
    for (;;) {
        int64_t item = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (item >= job->items) break;
        int64_t b = job->item_image[item];
        int64_t count = plan_rows(job, b, job->item_start[item], job->item_end[item], segments);
        if (!count) continue;
        /* The input rows under the item's segments, copied once for all of them. */
        int64_t first = segments[0].row, last = segments[count - 1].row;
        int64_t r0 = first * job->stride_h - job->pad_top;
        copy_rows(job, buffer, b, r0, (last - first) * job->stride_h + (job->kh - 1) * job->dil_h + 1);
        for (int64_t g = 0; g < job->groups; g++) compute(job, buffer, zeros, pointers, a, segments, count, b, g, r0);
    }
    free(buffer);
    free(pointers);
    free(segments);
    free(a);
    return NULL;
}

/* Cut the rows of every image into work items of about `total / (threads * 4)` work each (at most
 * MAX_ITEM_ROWS rows, so that the input buffer stays small). Returns the largest item's rows, or -1
 * when out of memory. */
#define MAX_ITEM_ROWS 32
#define ITEMS_PER_THREAD 4
/* Filling one output costs about as much as this many multiply-accumulates of the kernel. */
#define FILL_MACS 4
static int64_t cut_items(exec_job *job, int threads) {
    int64_t channels = job->groups * job->group_out, rows = job->batch * job->out_h;
    double *work = (double *)malloc((size_t)rows * sizeof(double));
    int64_t *items = (int64_t *)malloc((size_t)rows * 3 * sizeof(int64_t));
    if (!work || !items) {
        free(work);
        free(items);
        return -1;
    }
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
            total += w;
        }
    double target = total / ((double)threads * ITEMS_PER_THREAD);
    int64_t n = 0, most = 1;
    for (int64_t b = 0; b < job->batch; b++) {
        int64_t start = 0;
        double sum = 0;
        for (int64_t o = 0; o < job->out_h; o++) {
            sum += work[b * job->out_h + o];
            if (sum >= target || o + 1 - start >= MAX_ITEM_ROWS || o + 1 == job->out_h) {
                items[n] = b;
                items[rows + n] = start;
                items[2 * rows + n] = o + 1;
                if (o + 1 - start > most) most = o + 1 - start;
                n++;
                start = o + 1;
                sum = 0;
            }
        }
    }
    free(work);
    job->item_image = items;
    job->item_start = items + rows;
    job->item_end = items + 2 * rows;
    job->items = n;
    return most;
}

/* Convolve what `tiles` and `rows` mark and fill the rest; see exec_job for the arguments (the
 * items and buffer sizes are set here). Returns 0 on success. */
int zeroskip_execute(exec_job *job, int threads) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads < 1) threads = 1;
    int64_t most = cut_items(job, threads);
    if (most < 0) return 1;
    if (threads > job->items) threads = (int)job->items;
    job->phase_w = job->out_w + (job->kw - 1) * job->dil_w / job->stride_w + NR;
    job->buffer_rows = (most - 1) * job->stride_h + (job->kh - 1) * job->dil_h + 1;
    job->item_rows = most;
    job->blocks = (job->group_out + MR - 1) / MR;
    job->next = 0;
    job->failed = 0;
    pthread_t workers[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&workers[t], NULL, run_items, job) == 0;
    run_items(job);
    for (int t = 1; t < threads; t++)
        if (started[t]) pthread_join(workers[t], NULL);
    free((void *)job->item_image);
    return job->failed;
}

