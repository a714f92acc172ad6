/* The background field (zeroskip._background.Background) as the native passes write it: a core of
 * band rows, one interior row standing for all rows between the bands, and band rows; columns alike.
 * A field stored whole has bands (size, 0). */
#ifndef ZEROSKIP_BACKGROUND_H
#define ZEROSKIP_BACKGROUND_H

#include <stdint.h>

/* The core's row (or column) that holds position `i` of a side of `size` with bands (lead, trail). */
static inline int64_t core_index(int64_t i, int64_t size, int64_t lead, int64_t trail) {
    if (i < lead) return i;
    if (i >= size - trail) return lead + 1 + (i - (size - trail));
    return lead;
}

/* Columns [c0, c1) of an output row whose columns lie `step` floats apart, from `values`, the core row
 * that holds it (a row of `width` columns with bands `lead` and `trail`): the band columns one by one,
 * those between them one value, as a vectorised run. That run is not written where its value is +0.0
 * and it lies in the addresses [zero_start, zero_end), which read as +0.0 already (pages given back
 * to the kernel are never touched). */
static inline void background_row(float *dst, int64_t step, const float *values, int64_t c0, int64_t c1,
                                  int64_t width, int64_t lead, int64_t trail, uintptr_t zero_start,
                                  uintptr_t zero_end) {
    int64_t right = width - trail;
    int64_t inner0 = lead < c0 ? c0 : (lead > c1 ? c1 : lead);
    int64_t inner1 = right < inner0 ? inner0 : (right > c1 ? c1 : right);
    for (int64_t c = c0; c < inner0; c++) dst[c * step] = values[c];
    for (int64_t c = inner1; c < c1; c++) dst[c * step] = values[lead + 1 + c - right];
    if (inner0 >= inner1) return;
    float v = values[lead];
    uintptr_t first = (uintptr_t)(dst + inner0 * step), last = (uintptr_t)(dst + (inner1 - 1) * step);
    if (v == 0.0f && !__builtin_signbit(v) && first >= zero_start && last < zero_end) return;
    if (step == 1)
        for (int64_t c = inner0; c < inner1; c++) dst[c] = v;
    else
        for (int64_t c = inner0; c < inner1; c++) dst[c * step] = v;
}

#endif
