/* vmrun's C helpers for KVM. Compiled into the cffi module runner.kvm._native by
 * native/kvm/build.py; declared in vmrun_kvm.h, which is also the cffi declaration.
 *
 * Kernel facts these helpers rely on (STYLE 15), from Documentation/virt/kvm/api.rst:
 *
 * - KVM ioctls report failure as -1 with errno set; on success most return 0, and some return
 *   a value: a new fd (KVM_CREATE_VM, KVM_CREATE_VCPU), a size (KVM_GET_VCPU_MMAP_SIZE), a
 *   capability's value (KVM_CHECK_EXTENSION) or a count (KVM_GET_MSRS, KVM_SET_MSRS). The
 *   helpers here return that value, or -errno, so Python never reads errno, which another
 *   call could overwrite between the ioctl and the check.
 * - The argument buffers are owned by the caller (Python, through cffi) and used by the kernel
 *   only during the call; nothing here keeps a pointer after returning.
 */
#include "vmrun_kvm.h"

#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>

#include <linux/kvm.h>

const char vmrun_kvm_version[] = "vmrun-kvm 8";

int vmrun_kvm_ioctl(int fd, unsigned long request, void *arg)
{
    int ret = ioctl(fd, request, arg);
    return ret < 0 ? -errno : ret;
}

int vmrun_kvm_ioctl_val(int fd, unsigned long request, unsigned long value)
{
    int ret = ioctl(fd, request, value);
    return ret < 0 ? -errno : ret;
}

/* KVM_RUN: enter the guest on this thread until it exits to user space.
 *
 * The GIL: cffi releases it around every call into this module (API mode, out-of-line), so
 * other Python threads run while this thread is inside the guest, and this function must not
 * touch Python objects (it does not).
 *
 * Signals: KVM_RUN checks for pending signals before each guest entry and returns -EINTR
 * (with kvm_run->exit_reason = KVM_EXIT_INTR) when one is pending; a signal that arrives
 * while the guest runs forces an exit to the host, which then sees it pending. The signal is
 * delivered to this thread on its way back to user space, so its handler has run by the time
 * this function returns. Python's handler only records the signal; the Python code runs
 * later, in the main thread.
 *
 * immediate_exit (KVM_CAP_IMMEDIATE_EXIT): when kvm_run->immediate_exit is non-zero, KVM_RUN
 * returns -EINTR at once without entering the guest. Stopping a vCPU thread therefore takes
 * two steps, in this order: set immediate_exit (covers a thread that is about to call
 * KVM_RUN), then send the thread a signal with a handler installed (covers a thread already
 * in the guest). Either way this returns -EINTR; the caller clears immediate_exit before
 * running the vCPU again.
 *
 * Not retried here on EINTR: the interruption is how the VMM regains control of the thread,
 * and only the caller knows whether to stop or to run again. */
int vmrun_kvm_run(int vcpu_fd)
{
    int ret = ioctl(vcpu_fd, KVM_RUN, 0);
    return ret < 0 ? -errno : ret;
}

/* The one fast register this exit is for, answered; 0 when it is none of them. */
static int answer_fast(struct kvm_run *run, const struct vmrun_fast_mmio *table, size_t count)
{
    if (run->exit_reason != KVM_EXIT_MMIO || run->mmio.len != 4)
        return 0;
    for (size_t i = 0; i < count; i++) {
        uint64_t addr = run->mmio.phys_addr;
        if (!run->mmio.is_write && addr == table[i].status_addr) {
            uint32_t value = __atomic_load_n(table[i].status, __ATOMIC_SEQ_CST);
            memcpy(run->mmio.data, &value, 4);
            return 1;
        }
        if (run->mmio.is_write && addr == table[i].status_addr + 4) {
            uint32_t bits;
            memcpy(&bits, run->mmio.data, 4);
            __atomic_fetch_and(table[i].status, ~bits, __ATOMIC_SEQ_CST);
            return 1;
        }
    }
    return 0;
}

int vmrun_kvm_run_fast(int vcpu_fd, struct kvm_run *run, const struct vmrun_fast_mmio *table,
                       size_t count)
{
    for (;;) {
        /* immediate_exit, set by the VMM to stop this thread, makes this return -EINTR: the
         * loop never outlives a stop. */
        int ret = ioctl(vcpu_fd, KVM_RUN, 0);
        if (ret < 0)
            return -errno;
        if (!answer_fast(run, table, count))
            return ret;
    }
}

void *vmrun_guest_ptr(const struct vmrun_guest_region *regions, size_t count, uint64_t gpa,
                      uint64_t len)
{
    for (size_t i = 0; i < count; i++) {
        const struct vmrun_guest_region *r = &regions[i];
        if (gpa < r->guest_addr)
            continue;
        uint64_t offset = gpa - r->guest_addr; /* no underflow: gpa >= guest_addr */
        if (offset >= r->size)
            continue;
        /* offset < size, so size - offset cannot underflow; comparing len with the room left
         * instead of computing gpa + len is what keeps this overflow-safe. */
        if (len > r->size - offset)
            return NULL;
        return r->host + offset;
    }
    return NULL;
}
