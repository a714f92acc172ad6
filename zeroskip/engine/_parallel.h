/* One parallel region running `work(arg)` on `threads` threads; the work shares out its items itself
 * (an atomic counter), so the region's only wait is for the last item.
 *
 * With OpenMP (the build's first choice) the region runs on the process's OpenMP thread pool, which
 * is PyTorch's own (a library already loaded under the same name, libgomp.so.1, is not loaded
 * twice): its threads are the ones spinning after PyTorch's last parallel operator, so they take the
 * items at once, and no second set of threads competes with them for the cores. Without OpenMP,
 * threads are started for the call. */
#ifndef ZEROSKIP_PARALLEL_H
#define ZEROSKIP_PARALLEL_H

#ifdef _OPENMP
#include <omp.h>

static void parallel(void *(*work)(void *), void *arg, int threads) {
#pragma omp parallel num_threads(threads)
    work(arg);
}
#else
#include <pthread.h>

#define MAX_PARALLEL 256

static void parallel(void *(*work)(void *), void *arg, int threads) {
    pthread_t workers[MAX_PARALLEL];
    int started[MAX_PARALLEL] = {0};
    if (threads > MAX_PARALLEL) threads = MAX_PARALLEL;
    /* A thread that cannot start leaves its items to the others. */
    for (int t = 1; t < threads; t++) started[t] = pthread_create(&workers[t], NULL, work, arg) == 0;
    work(arg);
    for (int t = 1; t < threads; t++)
        if (started[t]) pthread_join(workers[t], NULL);
}
#endif

#endif
