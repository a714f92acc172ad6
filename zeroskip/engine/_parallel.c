/* The parallel regions of every native pass, and how many threads they take.
 *
 * With OpenMP (the build's first choice) a region runs on the process's OpenMP thread pool, which
 * is PyTorch's own (a library already loaded under the same name, libgomp.so.1, is not loaded
 * twice): its threads are the ones spinning after PyTorch's last parallel operator, so they take the
 * items at once, and no second set of threads competes with them for the cores. Without OpenMP,
 * threads are started for the region.
 *
 * Threads that start late. A region ends when every one of its threads has arrived, and a thread
 * that the scheduler keeps off its core (other work holds the cores) arrives a time slice later,
 * after the others have taken all the items and wait for it: beside one busy process on a 2-core
 * machine, a 1.7 ms W1 call at 2 threads (three regions) took 6.6 ms (quartiles 3.4-7.7 ms). So
 * each region notes which of its threads began within LATE_NS of its start; after a region with
 * latecomers, the short regions that follow take only the threads that were on time (at least one,
 * the caller), until a probe with the full count after a back-off that doubles while the cores stay
 * taken (BACKOFF_MIN_NS to BACKOFF_MAX_NS). The same W1 call then took 3.0 ms (2.7-3.5 ms), and
 * quietly 1.7 as before. Long regions (expected to take LONG_NS or more, from their site's measured
 * cost) always take every thread: a wait for one latecomer is a small part of them, and the share of
 * a core the latecomer does get is not (resnet18 beside the busy process: 198 ms a frame with every
 * region limited, 169 ms with none). The counts only steer speed: any number of threads computes
 * the same outputs. Regions run concurrently from several Python threads share the state; relaxed
 * atomics suffice for a hint.
 */
#include <stdint.h>
#include <time.h>

#include "_parallel.h"

#ifdef _OPENMP
#include <omp.h>
#else
#include <pthread.h>
#define MAX_PARALLEL 256
#endif

/* A thread that has not begun 1 ms after its region was held off its core: waking a sleeping pool
 * thread takes tens of microseconds, a scheduler's time slice milliseconds. */
#define LATE_NS 1000000
#define LONG_NS 4000000
#define BACKOFF_MIN_NS 50000000
#define BACKOFF_MAX_NS 1000000000

static int limit;        /* threads a region takes until `probe_at` (0: no limit) */
static int64_t probe_at; /* when a region next takes the threads asked for */
static int64_t backoff = BACKOFF_MIN_NS;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* The threads a short region takes at `now`, or 0 when it takes those asked for. */
static int current_limit(int64_t now) {
    int limited = __atomic_load_n(&limit, __ATOMIC_RELAXED);
    return limited && now < __atomic_load_n(&probe_at, __ATOMIC_RELAXED) ? limited : 0;
}

typedef struct {
    void *(*work)(void *);
    void *arg;
    int64_t start;
    int on_time; /* threads that began within LATE_NS (atomic) */
} region;

static void *begin(void *arg) {
    region *r = (region *)arg;
    if (now_ns() - r->start <= LATE_NS) __atomic_fetch_add(&r->on_time, 1, __ATOMIC_RELAXED);
    return r->work(r->arg);
}

/* Run the region on `threads` threads; returns how many it had. */
static int run(region *r, int threads) {
#ifdef _OPENMP
    int team = threads;
#pragma omp parallel num_threads(threads)
    {
#pragma omp single nowait
        team = omp_get_num_threads();
        begin(r);
    }
    return team;
#else
    pthread_t workers[MAX_PARALLEL];
    int started[MAX_PARALLEL] = {0}, team = 1;
    if (threads > MAX_PARALLEL) threads = MAX_PARALLEL;
    /* A thread that cannot start leaves its items to the others. */
    for (int t = 1; t < threads; t++) team += started[t] = pthread_create(&workers[t], NULL, begin, r) == 0;
    begin(r);
    for (int t = 1; t < threads; t++)
        if (started[t]) pthread_join(workers[t], NULL);
    return team;
#endif
}

void parallel(parallel_site *site, void *(*work)(void *), void *arg, int threads, double units) {
    region r = {work, arg, now_ns(), 0};
    int asked = threads, limited = current_limit(r.start);
    double cost; /* 0 until measured */
    __atomic_load(&site->ns_per_unit, &cost, __ATOMIC_RELAXED);
    int is_long = cost * units >= (double)LONG_NS * threads;
    if (!is_long && limited && limited < threads) threads = limited;
    if (threads <= 1) {
        work(arg);
        return;
    }
    int team = run(&r, threads);
    int64_t end = now_ns();
    int on_time = r.on_time < 1 ? 1 : r.on_time;
    if (on_time < team) {
        int64_t wait = __atomic_load_n(&backoff, __ATOMIC_RELAXED);
        __atomic_store_n(&limit, on_time, __ATOMIC_RELAXED);
        __atomic_store_n(&probe_at, end + wait, __ATOMIC_RELAXED);
        __atomic_store_n(&backoff, wait * 2 < BACKOFF_MAX_NS ? wait * 2 : BACKOFF_MAX_NS, __ATOMIC_RELAXED);
        return;
    }
    if (units > 0) {
        /* Undisturbed: the site's cost, smoothed over its last few regions. */
        double measured = (double)(end - r.start) * team / units;
        double smoothed = cost > 0 ? 0.75 * cost + 0.25 * measured : measured;
        __atomic_store(&site->ns_per_unit, &smoothed, __ATOMIC_RELAXED);
    }
    if (team >= asked && !is_long) {
        /* Everyone on time at the count asked for: no limit, and the next latecomer backs off briefly. */
        __atomic_store_n(&limit, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&backoff, BACKOFF_MIN_NS, __ATOMIC_RELAXED);
    }
}

/* The threads the short regions take now, or 0 when they take those asked for (the profile's note). */
int zeroskip_parallel_limit(void) { return current_limit(now_ns()); }
