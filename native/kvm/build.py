"""cffi builder for `runner.kvm._native`: the KVM bindings, in API mode.

Run by setuptools through `setup.py` (`cffi_modules`) whenever the package is built or
installed (`pip install -e .` builds it in place). This file stays outside the wheel (STYLE 8):
only the compiled module is shipped.

Two declarations go to cffi:

- KERNEL_CDEF, below: the parts of <linux/kvm.h> that vmrun uses. Every struct is declared with
  a trailing `...;` and every constant as `...`, so cffi takes sizes, field offsets and values
  from the C compiler compiling against the system's <linux/kvm.h>; nothing here is a
  hand-written offset or number. The integer types are `typedef int... __u32;` for the same
  reason: their sizes are the header's too. The anonymous structs inside kvm_run's exit union
  get names (PREAMBLE), since cffi would otherwise lay them out itself.
  tests/kvm/test_kvm_native.py compiles a separate program to compare every size and offset.
- native/kvm/vmrun_kvm.h, read as it is (less its `#` lines): vmrun's own C helpers.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
HEADER = HERE / "vmrun_kvm.h"
# The virtio engine and devices' data paths (native/virtio/), declared in cdef order.
VIRTIO_HEADERS = [
    HERE.parent / "virtio" / name
    for name in ("virtqueue.h", "rng.h", "console.h", "balloon.h", "nbd.h", "blk.h")
]
# setuptools refuses absolute paths in setup() arguments: these are relative to the project
# root, the working directory of every build (pip, `python -m build`, setup.py).
SOURCE_DIR = "native/kvm"
VIRTIO_DIR = "native/virtio"

KERNEL_CDEF = """
typedef int... __u8;
typedef int... __u16;
typedef int... __u32;
typedef int... __u64;
typedef int... __s32;

/* ---- structs ------------------------------------------------------------------------- */

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
    ...;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    ...;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    ...;
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[...];
    ...;
};

struct kvm_fpu {
    __u8 fpr[8][16];
    __u16 fcw;
    __u16 fsw;
    __u8 ftwx;
    __u16 last_opcode;
    __u64 last_ip;
    __u64 last_dp;
    __u8 xmm[16][16];
    __u32 mxcsr;
    ...;
};

struct kvm_msr_entry {
    __u32 index;
    __u64 data;
    ...;
};

struct kvm_msrs {
    __u32 nmsrs;
    struct kvm_msr_entry entries[];
    ...;
};

struct kvm_msr_list {
    __u32 nmsrs;
    __u32 indices[];
    ...;
};

struct kvm_cpuid_entry2 {
    __u32 function;
    __u32 index;
    __u32 flags;
    __u32 eax;
    __u32 ebx;
    __u32 ecx;
    __u32 edx;
    ...;
};

struct kvm_cpuid2 {
    __u32 nent;
    struct kvm_cpuid_entry2 entries[];
    ...;
};

struct kvm_lapic_state {
    char regs[...];
    ...;
};

struct kvm_pit_config {
    __u32 flags;
    ...;
};

struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
    ...;
};

struct kvm_irq_level {
    union {
        __u32 irq;
        __s32 status;
    };
    __u32 level;
    ...;
};

struct kvm_irqfd {
    __u32 fd;
    __u32 gsi;
    __u32 flags;
    __u32 resamplefd;
    ...;
};

struct kvm_ioeventfd {
    __u64 datamatch;
    __u64 addr;
    __u32 len;
    __s32 fd;
    __u32 flags;
    ...;
};

struct kvm_enable_cap {
    __u32 cap;
    __u32 flags;
    __u64 args[4];
    ...;
};

struct kvm_msi {
    __u32 address_lo;
    __u32 address_hi;
    __u32 data;
    __u32 flags;
    __u32 devid;
    ...;
};

struct kvm_irq_routing_msi {
    __u32 address_lo;
    __u32 address_hi;
    __u32 data;
    ...;
};

/* kvm_irq_routing_entry's `u` is an anonymous union: named in PREAMBLE, like kvm_run's
 * members below. Only the MSI member is declared; the others are left to `...`. */
typedef union {
    struct kvm_irq_routing_msi msi;
    ...;
} vmrun_irq_routing_u;

struct kvm_irq_routing_entry {
    __u32 gsi;
    __u32 type;
    __u32 flags;
    vmrun_irq_routing_u u;
    ...;
};

struct kvm_irq_routing {
    __u32 nr;
    __u32 flags;
    struct kvm_irq_routing_entry entries[];
    ...;
};

/* The members of kvm_run's exit union are anonymous structs, and cffi cannot ask the compiler
 * for the layout of an anonymous nested struct (it would compute the offsets itself). So each
 * one gets a name, a typedef of __typeof__ in PREAMBLE, and is declared here by that name. */
typedef struct {
    __u64 hardware_exit_reason;
    ...;
} vmrun_run_hw;

typedef struct {
    __u64 hardware_entry_failure_reason;
    __u32 cpu;
    ...;
} vmrun_run_fail_entry;

typedef struct {
    __u32 exception;
    __u32 error_code;
    ...;
} vmrun_run_ex;

typedef struct {
    __u8 direction;
    __u8 size;
    __u16 port;
    __u32 count;
    __u64 data_offset;
    ...;
} vmrun_run_io;

typedef struct {
    __u64 phys_addr;
    __u8 data[8];
    __u32 len;
    __u8 is_write;
    ...;
} vmrun_run_mmio;

typedef struct {
    __u64 nr;
    __u64 args[6];
    __u64 ret;
    __u32 longmode;
    ...;
} vmrun_run_hypercall;

typedef struct {
    __u32 suberror;
    __u32 ndata;
    __u64 data[16];
    ...;
} vmrun_run_internal;

typedef struct {
    __u32 type;
    __u32 ndata;
    union {
        __u64 flags;
        __u64 data[16];
    };
    ...;
} vmrun_run_system_event;

typedef struct {
    __u8 error;
    __u32 reason;
    __u32 index;
    __u64 data;
    ...;
} vmrun_run_msr;

typedef struct {
    __u8 vector;
    ...;
} vmrun_run_eoi;

/* The vCPU's shared page, mmap'd from the vCPU fd. Only the exit-union members that vmrun
 * reads are declared; the union's other members and the sync-regs area are left to `...`. */
struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    union {
        vmrun_run_hw hw;
        vmrun_run_fail_entry fail_entry;
        vmrun_run_ex ex;
        vmrun_run_io io;
        vmrun_run_mmio mmio;
        vmrun_run_hypercall hypercall;
        vmrun_run_internal internal;
        vmrun_run_system_event system_event;
        vmrun_run_msr msr;
        vmrun_run_eoi eoi;
    };
    ...;
};

/* ---- ioctl request numbers (the kernel's _IO/_IOR/_IOW/_IOWR macros) ------------------ */

/* /dev/kvm */
static const unsigned long KVM_GET_API_VERSION;
static const unsigned long KVM_CREATE_VM;
static const unsigned long KVM_GET_MSR_INDEX_LIST;
static const unsigned long KVM_CHECK_EXTENSION;
static const unsigned long KVM_GET_VCPU_MMAP_SIZE;
static const unsigned long KVM_GET_SUPPORTED_CPUID;

/* VM fd */
static const unsigned long KVM_SET_TSS_ADDR;
static const unsigned long KVM_SET_IDENTITY_MAP_ADDR;
static const unsigned long KVM_CREATE_IRQCHIP;
static const unsigned long KVM_CREATE_PIT2;
static const unsigned long KVM_ENABLE_CAP;
static const unsigned long KVM_SET_USER_MEMORY_REGION;
static const unsigned long KVM_IRQ_LINE;
static const unsigned long KVM_IRQFD;
static const unsigned long KVM_IOEVENTFD;
static const unsigned long KVM_SIGNAL_MSI;
static const unsigned long KVM_SET_GSI_ROUTING;
static const unsigned long KVM_CREATE_VCPU;

/* vCPU fd */
static const unsigned long KVM_RUN;
static const unsigned long KVM_GET_REGS;
static const unsigned long KVM_SET_REGS;
static const unsigned long KVM_GET_SREGS;
static const unsigned long KVM_SET_SREGS;
static const unsigned long KVM_GET_FPU;
static const unsigned long KVM_SET_FPU;
static const unsigned long KVM_GET_MSRS;
static const unsigned long KVM_SET_MSRS;
static const unsigned long KVM_GET_CPUID2;
static const unsigned long KVM_SET_CPUID2;
static const unsigned long KVM_GET_LAPIC;
static const unsigned long KVM_SET_LAPIC;

/* ---- other constants --------------------------------------------------------------------- */

#define KVM_API_VERSION ...

#define KVM_MEM_LOG_DIRTY_PAGES ...
#define KVM_MEM_READONLY ...
#define KVM_PIT_SPEAKER_DUMMY ...
#define KVM_IRQFD_FLAG_DEASSIGN ...
#define KVM_IRQFD_FLAG_RESAMPLE ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_IRQ_ROUTING_MSI ...

#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...

#define KVM_SYSTEM_EVENT_SHUTDOWN ...
#define KVM_SYSTEM_EVENT_RESET ...
#define KVM_SYSTEM_EVENT_CRASH ...

#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_INTERNAL_ERROR_SIMUL_EX ...
#define KVM_INTERNAL_ERROR_DELIVERY_EV ...
#define KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON ...

/* Exit reasons: every KVM_EXIT_* of the oldest <linux/kvm.h> vmrun builds against (6.1). */
#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HYPERCALL ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_SET_TPR ...
#define KVM_EXIT_TPR_ACCESS ...
#define KVM_EXIT_S390_SIEIC ...
#define KVM_EXIT_S390_RESET ...
#define KVM_EXIT_DCR ...
#define KVM_EXIT_NMI ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_OSI ...
#define KVM_EXIT_PAPR_HCALL ...
#define KVM_EXIT_S390_UCONTROL ...
#define KVM_EXIT_WATCHDOG ...
#define KVM_EXIT_S390_TSCH ...
#define KVM_EXIT_EPR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_S390_STSI ...
#define KVM_EXIT_IOAPIC_EOI ...
#define KVM_EXIT_HYPERV ...
#define KVM_EXIT_ARM_NISV ...
#define KVM_EXIT_X86_RDMSR ...
#define KVM_EXIT_X86_WRMSR ...
#define KVM_EXIT_DIRTY_RING_FULL ...
#define KVM_EXIT_AP_RESET_HOLD ...
#define KVM_EXIT_X86_BUS_LOCK ...
#define KVM_EXIT_XEN ...
#define KVM_EXIT_RISCV_SBI ...
#define KVM_EXIT_RISCV_CSR ...
#define KVM_EXIT_NOTIFY ...

/* Capabilities (KVM_CHECK_EXTENSION, KVM_ENABLE_CAP) that vmrun asks about. */
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_HLT ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_NR_MEMSLOTS ...
#define KVM_CAP_NOP_IO_DELAY ...
#define KVM_CAP_MP_STATE ...
#define KVM_CAP_SYNC_MMU ...
#define KVM_CAP_IRQ_ROUTING ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_PIT2 ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_SET_IDENTITY_MAP_ADDR ...
#define KVM_CAP_ADJUST_CLOCK ...
#define KVM_CAP_VCPU_EVENTS ...
#define KVM_CAP_XSAVE ...
#define KVM_CAP_MAX_VCPUS ...
#define KVM_CAP_TSC_DEADLINE_TIMER ...
#define KVM_CAP_KVMCLOCK_CTRL ...
#define KVM_CAP_READONLY_MEM ...
#define KVM_CAP_IRQFD_RESAMPLE ...
#define KVM_CAP_CHECK_EXTENSION_VM ...
#define KVM_CAP_SPLIT_IRQCHIP ...
#define KVM_CAP_IOEVENTFD_ANY_LENGTH ...
#define KVM_CAP_MAX_VCPU_ID ...
#define KVM_CAP_X2APIC_API ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_X86_DISABLE_EXITS ...
#define KVM_CAP_GET_MSR_FEATURES ...
#define KVM_CAP_X86_USER_SPACE_MSR ...
#define KVM_CAP_EXIT_HYPERCALL ...
"""

# What the virtio headers use from the C library, declared for cffi (layout from the compiler).
LIBC_CDEF = """
struct iovec {
    void *iov_base;
    size_t iov_len;
    ...;
};
"""


# The C code that cffi's generated module starts with.
PREAMBLE = """
#include <linux/kvm.h>
#include "vmrun_kvm.h"
#include "virtqueue.h"
#include "rng.h"
#include "console.h"
#include "balloon.h"
#include "nbd.h"
#include "blk.h"

#define VMRUN_RUN_MEMBER(name) __typeof__(((struct kvm_run *)0)->name)
typedef VMRUN_RUN_MEMBER(hw) vmrun_run_hw;
typedef VMRUN_RUN_MEMBER(fail_entry) vmrun_run_fail_entry;
typedef VMRUN_RUN_MEMBER(ex) vmrun_run_ex;
typedef VMRUN_RUN_MEMBER(io) vmrun_run_io;
typedef VMRUN_RUN_MEMBER(mmio) vmrun_run_mmio;
typedef VMRUN_RUN_MEMBER(hypercall) vmrun_run_hypercall;
typedef VMRUN_RUN_MEMBER(internal) vmrun_run_internal;
typedef VMRUN_RUN_MEMBER(system_event) vmrun_run_system_event;
typedef VMRUN_RUN_MEMBER(msr) vmrun_run_msr;
typedef VMRUN_RUN_MEMBER(eoi) vmrun_run_eoi;
typedef __typeof__(((struct kvm_irq_routing_entry *)0)->u) vmrun_irq_routing_u;
"""


def header_cdef(text: str) -> str:
    """The header as cffi's cdef: without its preprocessor lines, which are for the compiler."""
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(KERNEL_CDEF)
ffibuilder.cdef(header_cdef(HEADER.read_text(encoding="utf-8")))
ffibuilder.cdef(LIBC_CDEF)
for header in VIRTIO_HEADERS:
    ffibuilder.cdef(header_cdef(header.read_text(encoding="utf-8")))
ffibuilder.set_source(
    "runner.kvm._native",
    PREAMBLE,
    sources=[
        f"{SOURCE_DIR}/vmrun_kvm.c",
        f"{VIRTIO_DIR}/virtqueue.c",
        f"{VIRTIO_DIR}/worker.c",
        f"{VIRTIO_DIR}/rng.c",
        f"{VIRTIO_DIR}/console.c",
        f"{VIRTIO_DIR}/console_port.c",
        f"{VIRTIO_DIR}/console_control.c",
        f"{VIRTIO_DIR}/balloon.c",
        f"{VIRTIO_DIR}/nbd.c",
        f"{VIRTIO_DIR}/blk.c",
        f"{VIRTIO_DIR}/blk_request.c",
        f"{VIRTIO_DIR}/blk_disk_file.c",
        f"{VIRTIO_DIR}/blk_disk_nbd.c",
    ],
    include_dirs=[SOURCE_DIR, VIRTIO_DIR],
    depends=[
        f"{SOURCE_DIR}/vmrun_kvm.h",
        f"{VIRTIO_DIR}/virtqueue.h",
        f"{VIRTIO_DIR}/rng.h",
        f"{VIRTIO_DIR}/console.h",
        f"{VIRTIO_DIR}/console_internal.h",
        f"{VIRTIO_DIR}/balloon.h",
        f"{VIRTIO_DIR}/worker.h",
        f"{VIRTIO_DIR}/nbd.h",
        f"{VIRTIO_DIR}/blk.h",
        f"{VIRTIO_DIR}/blk_disk.h",
        f"{VIRTIO_DIR}/blk_internal.h",
    ],
    # Type mismatches between a declaration above and the real header are errors, not
    # warnings that scroll past in pip's output.
    extra_compile_args=[
        "-Wall",
        "-Wextra",
        "-Werror",
        "-fstack-protector-strong",
        "-D_FORTIFY_SOURCE=2",
        "-Werror=incompatible-pointer-types",
        "-Werror=implicit-function-declaration",
        "-Werror=int-conversion",
    ],
)
