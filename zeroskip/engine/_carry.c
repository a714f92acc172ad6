/* The activity maps of a carried input: the activity of a windowed op's output (dilate in
 * zeroskip/activation.py), and the tile map and active rows the engine plans with (carried_maps in
 * zeroskip/engine/plan.py).
 *
 * The torch versions pad, then take one maximum per kernel tap and axis, each a pass over a new
 * tensor: 0.3-0.6 ms for a 576 x 768 map under a 7 x 7 stride-2 kernel, on every carried layer of
 * every frame. Here each output row combines its window's input rows in registers, then its
 * columns the same way, from a line split by the step so that no column between two windows is
 * combined; input rows with no active pixel are skipped, and an output row whose window holds none
 * is only cleared. Values are combined by their maximum, as torch does, so any uint8 map gives the
 * same bytes.
 *
 * Built by zeroskip/engine/native.py with the system C compiler and called through ctypes;
 * zeroskip falls back to the torch ops wherever it is not built.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The most taps a window has along one axis: kernels are small, and a larger one goes to torch. */
#define MAX_TAPS 64
/* Bytes combined in registers before they are stored: a tap then costs a load and a maximum,
 * where a pass per tap would store and reload every byte. */
#define BLOCK 64

static int64_t clamp(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* Whether any of n bytes is non-zero, read as words: a tile's 16 bytes are two loads, a row's
 * words an OR the compiler vectorises. No early exit: active rows are rarely active early. */
static int any_bytes(const uint8_t *bytes, int64_t n) {
    uint64_t bits = 0, word;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        memcpy(&word, bytes + i, 8);
        bits |= word;
    }
    for (; i < n; i++) bits |= bytes[i];
    return bits != 0;
}

/* out[x] = the maximum of sources[t][x] over t < count, for x < n; out is none of the sources. */
static void max_of(uint8_t *out, const uint8_t *const *sources, int64_t count, int64_t n) {
    if (n < BLOCK) {
        for (int64_t x = 0; x < n; x++) {
            uint8_t m = sources[0][x];
            for (int64_t t = 1; t < count; t++) m = sources[t][x] > m ? sources[t][x] : m;
            out[x] = m;
        }
        return;
    }
    for (int64_t x = 0; x < n; x += BLOCK) {
        /* The last block ends at n, overlapping the one before: a maximum computed twice is the
         * same, and no byte is left to a scalar loop. */
        int64_t at = x < n - BLOCK ? x : n - BLOCK;
        /* Byte arrays rather than one loop over taps and bytes: compilers then keep the block in
         * vector registers (that loop nest they unroll and jam, one byte at a time, 20x slower). */
        uint8_t acc[BLOCK], next[BLOCK];
        memcpy(acc, sources[0] + at, BLOCK);
        for (int64_t t = 1; t < count; t++) {
            memcpy(next, sources[t] + at, BLOCK);
            for (int i = 0; i < BLOCK; i++) acc[i] = next[i] > acc[i] ? next[i] : acc[i];
        }
        memcpy(out + at, acc, BLOCK);
    }
}

/* Inlined into each call, so that a constant step (2, the common one) becomes a vectorised shuffle
 * instead of one byte at a time (3x the whole dilation's time for a 7 x 7 stride-2 window). */
static inline void subsample(uint8_t *out, const uint8_t *bytes, int64_t count, int64_t step) {
    for (int64_t j = 0; j < count; j++) out[j] = bytes[j * step];
}

/* The activity (batch, out_h, out_w) of a windowed op's output from the activity (batch, height,
 * width) of its input: output (i, j) is the maximum of the input at rows i * step_h - pad_top +
 * dil_h * t (t < kernel_h) and columns j * step_w - pad_left + dil_w * t (t < kernel_w), pixels
 * outside the input counting as 0. The input's columns are contiguous, its rows and images
 * `stride_h` and `stride_b` bytes apart (0 for a batch broadcast from one image); the output is
 * contiguous. Returns 0 on success, 1 for a kernel over MAX_TAPS or a failed allocation. */
int zeroskip_dilate(const uint8_t *in, int64_t batch, int64_t height, int64_t width, int64_t stride_b,
                    int64_t stride_h, uint8_t *out, int64_t out_h, int64_t out_w, int64_t kernel_h, int64_t step_h,
                    int64_t dil_h, int64_t pad_top, int64_t kernel_w, int64_t step_w, int64_t dil_w,
                    int64_t pad_left) {
    if (kernel_h > MAX_TAPS || kernel_w > MAX_TAPS) return 1;
    if (batch <= 0 || out_h <= 0 || out_w <= 0) return 0;
    /* An output row's input rows, combined, padded: line[x] is input column x - pad_left, over the
     * columns its windows read. The padding stays 0: only [first, last) is ever written. */
    int64_t span = (out_w - 1) * step_w + dil_w * (kernel_w - 1) + 1;
    int64_t first = clamp(pad_left, 0, span), last = clamp(pad_left + width, first, span);
    /* With a step, the line split by column modulo the step: phase r holds line[m * step_w + r] at
     * phases[r * phase + m], so that every tap of the windows reads consecutive bytes, and only the
     * out_w windows are combined, not every column's. */
    int64_t phase = (span + step_w - 1) / step_w;
    uint8_t *line = calloc((size_t)span, 1);
    uint8_t *phases = step_w > 1 ? malloc((size_t)(phase * step_w)) : line;
    uint8_t *active = malloc((size_t)(height > 0 ? height : 1));
    if (!line || !phases || !active) {
        free(line);
        if (phases != line) free(phases);
        free(active);
        return 1;
    }
    const uint8_t *taps[MAX_TAPS], *columns[MAX_TAPS];
    for (int64_t t = 0; t < kernel_w; t++)
        columns[t] = phases + (t * dil_w) % step_w * phase + (t * dil_w) / step_w;
    for (int64_t b = 0; b < batch; b++) {
        const uint8_t *image = in + b * stride_b;
        /* Rows with no active pixel add nothing to a maximum: they are never read again. */
        for (int64_t h = 0; h < height; h++) active[h] = (uint8_t)any_bytes(image + h * stride_h, width);
        for (int64_t i = 0; i < out_h; i++) {
            uint8_t *row = out + (b * out_h + i) * out_w;
            int64_t read = 0, top = i * step_h - pad_top;
            for (int64_t t = 0; t < kernel_h; t++) {
                int64_t h = top + t * dil_h;
                if (h >= 0 && h < height && active[h]) taps[read++] = image + h * stride_h + first - pad_left;
            }
            if (!read) {
                memset(row, 0, (size_t)out_w);
                continue;
            }
            max_of(line + first, taps, read, last - first);
            for (int64_t r = 0; step_w > 1 && r < step_w; r++) {
                int64_t count = (span - r + step_w - 1) / step_w;
                if (step_w == 2)
                    subsample(phases + r * phase, line + r, count, 2);
                else
                    subsample(phases + r * phase, line + r, count, step_w);
            }
            max_of(row, columns, kernel_w, out_w);
        }
    }
    free(line);
    if (phases != line) free(phases);
    free(active);
    return 0;
}

/* Which tiles of tile_h x tile_w pixels (tiles: (batch, ceil(height / tile_h), ceil(width /
 * tile_w))) and which rows (rows: (batch, height)) of an activity map hold a non-zero pixel, as 0 or
 * 1. The map's columns are contiguous, its rows and images `stride_h` and `stride_b` bytes apart. */
void zeroskip_carried_maps(const uint8_t *activity, int64_t batch, int64_t height, int64_t width,
                           int64_t stride_b, int64_t stride_h, int64_t tile_h, int64_t tile_w, uint8_t *tiles,
                           uint8_t *rows) {
    int64_t tiles_i = (height + tile_h - 1) / tile_h, tiles_j = (width + tile_w - 1) / tile_w;
    memset(tiles, 0, (size_t)(batch * tiles_i * tiles_j));
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t h = 0; h < height; h++) {
            const uint8_t *row = activity + b * stride_b + h * stride_h;
            rows[b * height + h] = (uint8_t)any_bytes(row, width);
            /* Most rows of a sparse map are inactive: their tiles are left as they are. */
            if (!rows[b * height + h]) continue;
            uint8_t *flags = tiles + (b * tiles_i + h / tile_h) * tiles_j;
            for (int64_t j = 0; j < tiles_j; j++) {
                if (flags[j]) continue;
                int64_t start = j * tile_w;
                flags[j] = (uint8_t)any_bytes(row + start, (start + tile_w < width ? start + tile_w : width) - start);
            }
        }
    }
}
