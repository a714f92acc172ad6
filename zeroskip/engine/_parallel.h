/* One parallel region running `work(arg)` on up to `threads` threads (see _parallel.c); the work
 * shares out its items itself (an atomic counter), so the region's only wait is for the last item. */
#ifndef ZEROSKIP_PARALLEL_H
#define ZEROSKIP_PARALLEL_H

/* A place in the code that runs regions, and its measured cost: nanoseconds of one thread per unit
 * of work (its caller's measure: bytes read, multiply-accumulates), from regions run undisturbed. */
typedef struct {
    double ns_per_unit;
} parallel_site;

/* Run `work(arg)` on up to `threads` threads; `units`: the region's work in the site's measure. */
__attribute__((visibility("hidden"))) void parallel(parallel_site *site, void *(*work)(void *), void *arg,
                                                    int threads, double units);

#endif
