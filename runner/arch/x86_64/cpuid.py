"""The CPUID table of each vCPU, made from what KVM_GET_SUPPORTED_CPUID returns.

Facts (Intel SDM vol. 2A "CPUID"; AMD APM vol. 3 "CPUID"; Documentation/virt/kvm/api.rst;
Firecracker cpu_config/x86_64/cpuid/{normalize.rs, intel/normalize.rs} and
static_cpu_templates/{t2.rs, c3.rs}):

- KVM_GET_SUPPORTED_CPUID lists what KVM can offer, not a per-vCPU table: the topology fields
  (APIC ids, sibling counts) describe the host or nothing, and the VMM fills them in per vCPU
  before KVM_SET_CPUID2. Entries whose sub-leaf matters carry KVM_CPUID_FLAG_SIGNIFCANT_INDEX.
- Leaf 1: EBX[31:24] initial APIC id, EBX[23:16] addressable logical processors per package
  (valid when EDX[28] HTT is set; software rounds it up to a power of two), ECX[31] "running
  under a hypervisor", ECX[5] VMX.
- Leaf 4 (Intel deterministic caches, one sub-leaf per cache, ended by an all-zero one):
  EAX[7:5] cache level, EAX[25:14] logical processors sharing the cache minus 1, EAX[31:26]
  cores per package minus 1 (6 bits).
- Leaf 0xb (extended topology, Intel and KVM on AMD): per sub-leaf EAX[4:0] x2APIC-id bits
  to shift off to reach the next level, EBX[15:0] logical processors at this level,
  ECX[7:0] the sub-leaf, ECX[15:8] level type (1 SMT, 2 core, 0 invalid), EDX the x2APIC id.
  Since Linux 6.2 (and 5.10 stable) KVM lists only sub-leaf 0, so sub-leaf 1 is added here.
  Leaf 0x1f, where present, is the same with more level types: it gets a copy of 0xb.
- KVM emulates the local APIC's TSC-deadline timer mode but reports it through
  KVM_CAP_TSC_DEADLINE_TIMER, not in KVM_GET_SUPPORTED_CPUID's leaf 1 ECX[24] (api.rst): the
  VMM sets the bit. Without it Linux calibrates the APIC timer at boot and programs it in
  one-shot mode, which is slower on both counts (Firecracker and QEMU set it).
- Leaf 6 (thermal and power management) describes host power controls a guest cannot use.
- Leaf 0x80000001 ECX[2] is AMD's SVM. With VMX or SVM visible a guest may try to run its own
  VMs, which only works when the host enabled nested virtualization.
- Leaf 0x40000000 holds KVM's signature "KVMKVMKVM\\0\\0\\0" and its highest leaf; Linux
  looks for it to use kvmclock and paravirtual features, so it passes through unchanged.

Templates (Firecracker's T2 and C3, made to look like AWS T2 and C3 instances: Haswell and
Ivy Bridge Xeons) are (filter, value) pairs per register: the bits in `filter` take their
value from `value`, the rest keep KVM's. Both templates are Intel-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

from runner.errors import VmrunError

KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1  # the kernel's spelling

Register = Literal["eax", "ebx", "ecx", "edx"]

LEAF_VENDOR = 0x0
LEAF_FEATURES = 0x1
LEAF_CACHE = 0x4
LEAF_POWER = 0x6
LEAF_TOPOLOGY = 0xB
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_HYPERVISOR = 0x4000_0000
LEAF_EXT_FEATURES = 0x8000_0001

FEATURES_ECX_VMX = 1 << 5
FEATURES_ECX_TSC_DEADLINE = 1 << 24
FEATURES_ECX_HYPERVISOR = 1 << 31
FEATURES_EDX_HTT = 1 << 28
EXT_FEATURES_ECX_SVM = 1 << 2

TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2

VENDOR_INTEL = b"GenuineIntel"
MAX_VCPUS = 254  # what the MP table can describe


class CpuidError(VmrunError, ValueError):
    """A CPUID table that cannot be made for this machine."""


@attrs.frozen
class CpuidEntry:
    """One `struct kvm_cpuid_entry2`, by the kernel's field names."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


@attrs.frozen
class RegisterModifier:
    """Bits `filter` of `register` in leaf (function, index) are set to those of `value`."""

    function: int
    index: int
    register: Register
    filter: int
    value: int = 0

    def apply(self, old: int) -> int:
        return (old & ~self.filter & 0xFFFF_FFFF) | (self.value & self.filter)


@attrs.frozen
class CpuTemplate:
    name: str
    vendor: bytes
    modifiers: tuple[RegisterModifier, ...]


def bits(*positions: int) -> int:
    return sum(1 << p for p in positions)


# Leaf 1 EAX: stepping, model, family, type, extended model and family (all but the
# reserved bits 14-15 and 28-31) come from the template.
_SIGNATURE = bits(*range(0, 14), *range(16, 28))

# Shared by T2 and C3.
_XSAVE_COMMON = (
    # 0xd.0 EAX: XCR0 bits for MPX (3-4), AVX-512 (5-7) and PKRU (9) state.
    RegisterModifier(0xD, 0, "eax", bits(3, 4, 5, 6, 7, 9)),
    # 0xd.1 EAX: XSAVEC (1), XGETBV with ECX=1 (2), XSAVES/IA32_XSS (3).
    RegisterModifier(0xD, 1, "eax", bits(1, 2, 3)),
    # 0x80000001 EDX: 1 GiB pages (26).
    RegisterModifier(LEAF_EXT_FEATURES, 0, "edx", bits(26)),
)

T2 = CpuTemplate(
    "T2",
    VENDOR_INTEL,
    (
        # Family 6, model 0x3f, stepping 2 (Haswell-EP).
        RegisterModifier(LEAF_FEATURES, 0, "eax", _SIGNATURE, 0x000306F2),
        # DTES64, MONITOR, DS-CPL, VMX, SMX, EIST, TM2, CNXT-ID, SDBG, xTPR, PDCM, DCA.
        RegisterModifier(LEAF_FEATURES, 0, "ecx", bits(2, 3, 4, 5, 6, 7, 8, 10, 11, 14, 15, 18)),
        # MCE and MTRR set; PSN, DS, ACPI, SS, TM, IA64, PBE cleared.
        RegisterModifier(
            LEAF_FEATURES, 0, "edx", bits(7, 12, 18, 21, 22, 27, 29, 30, 31), bits(7, 12)
        ),
        # ERMS (9) set; SGX, HLE, RTM, RDT-M, MPX, RDT-A, AVX512F/DQ, RDSEED, ADX, AVX512_IFMA,
        # PCOMMIT, CLFLUSHOPT, CLWB, PT, AVX512PF/ER/CD, SHA, AVX512BW/VL cleared.
        RegisterModifier(
            0x7,
            0,
            "ebx",
            bits(2, 4, 9, 11, 12, 14, 15, 16, 17, 18, 19, 21, *range(22, 32)),
            bits(9),
        ),
        # AVX512_VBMI, UMIP, PKU, OSPKE, AVX512_VBMI2, GFNI, VAES, VPCLMULQDQ, AVX512_VNNI,
        # AVX512_BITALG, AVX512_VPOPCNTDQ, LA57, RDPID, SGX_LC.
        RegisterModifier(0x7, 0, "ecx", bits(1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 14, 16, 22, 30)),
        # AVX512_4VNNIW, AVX512_4FMAPS, fast short REP MOV, AVX512_VP2INTERSECT.
        RegisterModifier(0x7, 0, "edx", bits(2, 3, 4, 8)),
        *_XSAVE_COMMON,
        # PREFETCHW (8), MONITORX/MWAITX (29).
        RegisterModifier(LEAF_EXT_FEATURES, 0, "ecx", bits(8, 29)),
        # WBNOINVD.
        RegisterModifier(0x8000_0008, 0, "ebx", bits(9)),
    ),
)

C3 = CpuTemplate(
    "C3",
    VENDOR_INTEL,
    (
        # Family 6, model 0x3e, stepping 4 (Ivy Bridge-EP).
        RegisterModifier(LEAF_FEATURES, 0, "eax", _SIGNATURE, 0x000306E4),
        # DTES64, MONITOR, DS-CPL, VMX, TM2, CNXT-ID, SDBG, FMA, xTPR, PDCM, MOVBE.
        RegisterModifier(LEAF_FEATURES, 0, "ecx", bits(2, 3, 4, 5, 8, 10, 11, 12, 14, 15, 22)),
        # MCE and MTRR set; PSN, DS, ACPI, SS, TM, PBE cleared.
        RegisterModifier(LEAF_FEATURES, 0, "edx", bits(7, 12, 18, 21, 22, 27, 29, 31), bits(7, 12)),
        # SGX, BMI1, HLE, AVX2, BMI2, INVPCID, RTM, RDT-M, MPX, RDT-A, AVX512F/DQ, RDSEED, ADX,
        # AVX512_IFMA, CLFLUSHOPT, CLWB, PT, AVX512PF/ER/CD, SHA, AVX512BW/VL.
        RegisterModifier(
            0x7,
            0,
            "ebx",
            bits(2, 3, 4, 5, 8, 10, 11, 12, 14, 15, 16, 17, 18, 19, 21, *range(23, 32)),
        ),
        # AVX512_VBMI, UMIP, PKU, OSPKE, AVX512_VNNI, AVX512_VPOPCNTDQ, LA57, RDPID, SGX_LC.
        RegisterModifier(0x7, 0, "ecx", bits(1, 2, 3, 4, 11, 14, 16, 22, 30)),
        # AVX512_4VNNIW, AVX512_4FMAPS.
        RegisterModifier(0x7, 0, "edx", bits(2, 3)),
        *_XSAVE_COMMON,
        # LZCNT (5), PREFETCHW (8).
        RegisterModifier(LEAF_EXT_FEATURES, 0, "ecx", bits(5, 8)),
    ),
)

TEMPLATES = {template.name: template for template in (T2, C3)}


@attrs.frozen
class Topology:
    """How `vcpus` vCPUs are presented: one package of `cores` cores of `threads` threads."""

    vcpus: int
    threads: int

    @property
    def cores(self) -> int:
        return self.vcpus // self.threads

    @property
    def thread_bits(self) -> int:
        """x2APIC-id bits that number the threads of a core."""
        return (self.threads - 1).bit_length()

    @property
    def package_bits(self) -> int:
        """x2APIC-id bits that number every logical processor of the package."""
        return max(self.thread_bits, (self.vcpus - 1).bit_length())


def topology(vcpus: int, ht_enabled: bool) -> Topology:
    if not 1 <= vcpus <= MAX_VCPUS:
        raise CpuidError(f"{vcpus} vCPUs; between 1 and {MAX_VCPUS} can be described")
    if ht_enabled and vcpus > 1 and vcpus % 2:
        raise CpuidError(f"{vcpus} vCPUs cannot be hyperthread pairs; use 1 or an even count")
    return Topology(vcpus, 2 if ht_enabled and vcpus > 1 else 1)


def vendor(entries: Iterable[CpuidEntry]) -> bytes | None:
    """The vendor string of leaf 0 (EBX, EDX, ECX), or None without a leaf 0."""
    for entry in entries:
        if entry.function == LEAF_VENDOR and entry.index == 0:
            return b"".join(r.to_bytes(4, "little") for r in (entry.ebx, entry.edx, entry.ecx))
    return None


def apply_template(entries: Sequence[CpuidEntry], template: CpuTemplate) -> list[CpuidEntry]:
    """`entries` with the template's bits; every leaf it names must be there."""
    found = vendor(entries)
    if found != template.vendor:
        raise CpuidError(
            f"CPU template {template.name} is for {template.vendor.decode()} CPUs; "
            f"this host reports {found.decode(errors='replace') if found else 'no vendor'}"
        )
    table = {(e.function, e.index): e for e in entries}
    for mod in template.modifiers:
        key = (mod.function, mod.index)
        if key not in table:
            raise CpuidError(
                f"CPU template {template.name} changes CPUID leaf {mod.function:#x}.{mod.index}, "
                "which KVM does not offer on this host"
            )
        old = table[key]
        table[key] = attrs.evolve(old, **{mod.register: mod.apply(getattr(old, mod.register))})
    return list(table.values())


def with_tsc_deadline(supported: Sequence[CpuidEntry]) -> list[CpuidEntry]:
    """`supported` with leaf 1's TSC-deadline bit set, for a KVM that has the capability."""
    return [
        attrs.evolve(e, ecx=e.ecx | FEATURES_ECX_TSC_DEADLINE) if e.function == LEAF_FEATURES else e
        for e in supported
    ]


def vcpu_cpuid(
    supported: Sequence[CpuidEntry],
    vcpu_index: int,
    vcpus: int,
    *,
    ht_enabled: bool = False,
    nested: bool = False,
    template: str | None = None,
) -> list[CpuidEntry]:
    """The table to give vCPU `vcpu_index` (its APIC id) of `vcpus` with KVM_SET_CPUID2.

    `supported` is KVM_GET_SUPPORTED_CPUID's list; it is not changed. `template` names one of
    TEMPLATES ("T2", "C3") or is None."""
    topo = topology(vcpus, ht_enabled)
    if not 0 <= vcpu_index < vcpus:
        raise CpuidError(f"vCPU {vcpu_index} of {vcpus} does not exist")
    entries = list(supported)
    if template is not None:
        if template not in TEMPLATES:
            raise CpuidError(f"no CPU template {template!r}; there are {sorted(TEMPLATES)}")
        entries = apply_template(entries, TEMPLATES[template])
    entries = _with_topology_subleaf(entries)
    result = [_vcpu_entry(e, vcpu_index, topo, nested) for e in entries]
    return _with_topology_copy(result)


def _vcpu_entry(e: CpuidEntry, apic_id: int, topo: Topology, nested: bool) -> CpuidEntry:
    if e.function == LEAF_FEATURES:
        # Power of two at least vcpus, as the field is read; 256 does not fit its 8 bits,
        # and 255 rounds up to it.
        logical = min(1 << (topo.vcpus - 1).bit_length(), 0xFF)
        ebx = (e.ebx & 0x0000_FFFF) | (logical << 16) | (apic_id << 24)
        ecx = e.ecx | FEATURES_ECX_HYPERVISOR
        if not nested:
            ecx &= ~FEATURES_ECX_VMX
        edx = (e.edx | FEATURES_EDX_HTT) if topo.vcpus > 1 else (e.edx & ~FEATURES_EDX_HTT)
        return attrs.evolve(e, ebx=ebx, ecx=ecx, edx=edx)
    if e.function == LEAF_CACHE and (e.eax, e.ebx, e.ecx, e.edx) != (0, 0, 0, 0):
        level = (e.eax >> 5) & 0x7
        sharing = {1: topo.threads, 2: topo.threads, 3: topo.vcpus}.get(level)
        eax = e.eax
        if sharing is not None:
            eax = (eax & ~(0xFFF << 14)) | ((sharing - 1) << 14)
        # 6 bits: 64 cores at most; more vCPUs than that share the top value.
        eax = (eax & ~(0x3F << 26)) | (min(topo.cores - 1, 0x3F) << 26)
        return attrs.evolve(e, eax=eax)
    if e.function == LEAF_POWER:
        return attrs.evolve(e, eax=0, ebx=0, ecx=0, edx=0)
    if e.function == LEAF_TOPOLOGY:
        return _topology_entry(e, apic_id, topo)
    if e.function == LEAF_EXT_FEATURES and not nested:
        return attrs.evolve(e, ecx=e.ecx & ~EXT_FEATURES_ECX_SVM)
    return e


def _topology_entry(e: CpuidEntry, apic_id: int, topo: Topology) -> CpuidEntry:
    if e.index == 0:
        eax, ebx, ecx = topo.thread_bits, topo.threads, TOPOLOGY_LEVEL_SMT << 8
    elif e.index == 1:
        eax, ebx, ecx = topo.package_bits, topo.vcpus, (TOPOLOGY_LEVEL_CORE << 8) | 1
    else:  # an invalid level: only the sub-leaf number and the x2APIC id
        eax, ebx, ecx = 0, 0, e.index & 0xFF
    return attrs.evolve(
        e, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX, eax=eax, ebx=ebx, ecx=ecx, edx=apic_id
    )


def _with_topology_subleaf(entries: list[CpuidEntry]) -> list[CpuidEntry]:
    """Add leaf 0xb sub-leaf 1 (the core level) after sub-leaf 0 when KVM left it out."""
    keys = {(e.function, e.index) for e in entries}
    if (LEAF_TOPOLOGY, 0) not in keys or (LEAF_TOPOLOGY, 1) in keys:
        return entries
    out = []
    for e in entries:
        out.append(e)
        if (e.function, e.index) == (LEAF_TOPOLOGY, 0):
            out.append(CpuidEntry(LEAF_TOPOLOGY, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0, 0, 0, 0))
    return out


def _with_topology_copy(entries: list[CpuidEntry]) -> list[CpuidEntry]:
    """Where leaf 0x1f exists, replace its sub-leaves with copies of leaf 0xb's."""
    if not any(e.function == LEAF_TOPOLOGY_V2 for e in entries):
        return entries
    copies = [
        attrs.evolve(e, function=LEAF_TOPOLOGY_V2) for e in entries if e.function == LEAF_TOPOLOGY
    ]
    out = []
    for e in entries:
        if e.function == LEAF_TOPOLOGY_V2:
            out.extend(copies)
            copies = []
        else:
            out.append(e)
    return out
