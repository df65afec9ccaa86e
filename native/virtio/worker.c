/* A device's native worker thread: see worker.h. */
#include "worker.h"

#include <signal.h>

#include "rng.h" /* VMRUN_WORKER_STACK */

int vmrun_worker_spawn(pthread_t *thread, void *(*run)(void *), void *arg)
{
    sigset_t all, previous;
    sigfillset(&all);
    pthread_attr_t attr;
    int error = pthread_attr_init(&attr);
    if (error)
        return error;
    error = pthread_attr_setstacksize(&attr, VMRUN_WORKER_STACK);
    if (!error) {
        pthread_sigmask(SIG_SETMASK, &all, &previous);
        error = pthread_create(thread, &attr, run, arg);
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
    }
    pthread_attr_destroy(&attr);
    return error;
}
