/* A device's native worker thread (rng.c, console*.c): not read by cffi. */
#ifndef VMRUN_WORKER_H
#define VMRUN_WORKER_H

#include <pthread.h>

/* Start `run(arg)` on a thread of its own with every signal blocked (signals are for the
 * main thread, Ctrl-C and SIGTERM, and for the vCPUs, their kick) and a small stack
 * (VMRUN_WORKER_STACK: a worker needs a few KiB, and glibc's default, 8 MiB whose first
 * touch may be a 2 MiB huge page, would weigh in the VMM's memory). 0 or an errno value. */
int vmrun_worker_spawn(pthread_t *thread, void *(*run)(void *), void *arg);

#endif /* VMRUN_WORKER_H */
