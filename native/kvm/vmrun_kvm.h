/* vmrun's own C helpers for KVM: the declarations that Python sees through cffi.
 *
 * This header is read twice (STYLE 8):
 *   - by the C compiler, from vmrun_kvm.c and from the module cffi generates, so that the
 *     definitions and every call made by the generated code are checked against it;
 *   - by native/kvm/build.py as the cdef for these functions: build.py drops the lines that
 *     start with `#` (this guard and the includes, which are for the compiler only) and hands
 *     the rest to cffi unchanged. So keep everything else here in the C subset that cffi
 *     parses: plain prototypes and structs, no macros in declarations.
 *
 * The kernel's own structs and constants (<linux/kvm.h>) are declared for cffi in build.py.
 *
 * Every exported name starts with `vmrun_`. Functions that make a system call return the
 * call's non-negative result, or -errno: the caller never reads errno itself.
 *
 * cffi (API mode) releases the GIL around every call to these functions, so a vCPU thread
 * blocked in vmrun_kvm_run() does not stop other Python threads (DESIGN invariant 6).
 */
#ifndef VMRUN_KVM_H
#define VMRUN_KVM_H

#include <stddef.h>
#include <stdint.h>

#include <linux/kvm.h>

/* Compared by runner/kvm/native.py with the version it was written for; bump both when a
 * declaration here changes meaning. The value lives in vmrun_kvm.c. */
extern const char vmrun_kvm_version[];

/* ioctl(fd, request, arg) for requests whose argument is a pointer (or unused: pass NULL).
 * Returns the ioctl's result (>= 0) or -errno. `arg` is owned by the caller and only used
 * during the call. */
int vmrun_kvm_ioctl(int fd, unsigned long request, void *arg);

/* ioctl(fd, request, value) for requests whose argument is an integer (KVM_CHECK_EXTENSION,
 * KVM_CREATE_VCPU, KVM_SET_TSS_ADDR ...). Returns the result (>= 0) or -errno. */
int vmrun_kvm_ioctl_val(int fd, unsigned long request, unsigned long value);

/* KVM_RUN on a vCPU fd: 0 when the vCPU exited to user space (the reason is in its mmap'd
 * struct kvm_run), or -errno. -EINTR means a signal is pending or immediate_exit was set; see
 * the comment on the definition. */
int vmrun_kvm_run(int vcpu_fd);

/* A register that a vCPU thread answers itself, without returning to Python: a virtio-mmio
 * device's InterruptStatus (a read at `status_addr`) and InterruptACK (a write at
 * `status_addr + 4`), both 32-bit, on the transport's shared word `status` (set by the
 * device's workers; see native/virtio/virtqueue.h). Owned by runner/vmm.py for the run. */
struct vmrun_fast_mmio {
    uint64_t status_addr;
    uint32_t *status;
};

/* KVM_RUN as vmrun_kvm_run, but an MMIO exit for a register of `table[0..count)` is answered
 * here and the vCPU run again, so the guest's interrupt handler never waits for the GIL.
 * `run` is the vCPU's mmap'd struct kvm_run. Every other exit, and every failure, returns
 * as from vmrun_kvm_run. */
int vmrun_kvm_run_fast(int vcpu_fd, struct kvm_run *run, const struct vmrun_fast_mmio *table,
                       size_t count);

/* One region of guest RAM: guest physical [guest_addr, guest_addr + size) is at host
 * [host, host + size). The table is owned by runner/kvm/memory.py (GuestMemory). */
struct vmrun_guest_region {
    uint64_t guest_addr;
    uint64_t size;
    uint8_t *host;
};

/* THE guest-address check on the C side (STYLE 6, DESIGN invariant 1): the host pointer for
 * guest physical range [gpa, gpa + len), or NULL unless the whole range lies inside one
 * region of `regions[0..count)`. Overflow-safe for any gpa and len (gpa + len is never
 * computed). A zero-length range still needs gpa inside a region. No range spans two
 * regions, even adjacent ones: their host mappings need not be adjacent. The same rule as
 * GuestMemory.read/write in Python. */
void *vmrun_guest_ptr(const struct vmrun_guest_region *regions, size_t count, uint64_t gpa,
                      uint64_t len);

#endif /* VMRUN_KVM_H */
