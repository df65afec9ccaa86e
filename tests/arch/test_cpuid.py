"""Per-vCPU CPUID from a synthetic KVM_GET_SUPPORTED_CPUID list."""

from __future__ import annotations

import attrs
import pytest

from runner.arch.x86_64 import cpuid
from runner.arch.x86_64.cpuid import CpuidEntry

SIG = cpuid.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
VMX, HYPERVISOR, HTT, SVM = 1 << 5, 1 << 31, 1 << 28, 1 << 2


def vendor_regs(name: bytes) -> dict[str, int]:
    ebx, edx, ecx = (int.from_bytes(name[i : i + 4], "little") for i in (0, 4, 8))
    return {"ebx": ebx, "ecx": ecx, "edx": edx}


def supported(vendor: bytes = b"GenuineIntel", *, leaf_0x1f: bool = True) -> list[CpuidEntry]:
    """Roughly what KVM reports on a Skylake-SP host, with host topology left in."""
    e = [
        CpuidEntry(0x0, 0, 0, 0x1F, **vendor_regs(vendor)),
        CpuidEntry(0x1, 0, 0, 0x0005_0654, 0x0B10_0800, 0xF7FA_3223, 0x0F8B_FBFF),
        # L1d, L1i, L2, L3 and the terminating all-zero sub-leaf.
        CpuidEntry(0x4, 0, SIG, 0x7C00_4121, 0x01C0_003F, 0x3F, 0),
        CpuidEntry(0x4, 1, SIG, 0x7C00_4122, 0x01C0_003F, 0x3F, 0),
        CpuidEntry(0x4, 2, SIG, 0x7C00_4143, 0x03C0_003F, 0x3FF, 0),
        CpuidEntry(0x4, 3, SIG, 0x7C0F_C163, 0x0280_003F, 0xB3FF, 4),
        CpuidEntry(0x4, 4, SIG, 0, 0, 0, 0),
        CpuidEntry(0x6, 0, 0, 0x4, 0x0, 0x1, 0x0),
        CpuidEntry(0x7, 0, SIG, 0, 0xD19F_4FBB, 0x0000_0808, 0xBC00_0400),
        CpuidEntry(0xB, 0, SIG, 0x1, 0x2, 0x100, 0x3F),
        CpuidEntry(0xD, 0, SIG, 0x2FF, 0xA88, 0xA88, 0),
        CpuidEntry(0xD, 1, SIG, 0xF, 0, 0, 0),
        CpuidEntry(0x4000_0000, 0, 0, 0x4000_0001, 0x4B4D_564B, 0x564B_4D56, 0x0000_004D),
        CpuidEntry(0x4000_0001, 0, 0, 0x0100_7AFB, 0, 0, 0),
        CpuidEntry(0x8000_0000, 0, 0, 0x8000_0008, 0, 0, 0),
        CpuidEntry(0x8000_0001, 0, 0, 0, 0, 0x2000_0125, 0x2C10_0800),
        CpuidEntry(0x8000_0008, 0, 0, 0x3028, 0x200, 0, 0),
    ]
    if leaf_0x1f:
        e.append(CpuidEntry(0x1F, 0, SIG, 0x1, 0x2, 0x100, 0x3F))
    return e


def leaf(table: list[CpuidEntry], function: int, index: int = 0) -> CpuidEntry:
    (entry,) = [e for e in table if (e.function, e.index) == (function, index)]
    return entry


@pytest.mark.parametrize("vcpus", [1, 2, 4])
def test_apic_ids_per_vcpu(vcpus: int) -> None:
    for i in range(vcpus):
        table = cpuid.vcpu_cpuid(supported(), i, vcpus)
        assert leaf(table, 0x1).ebx >> 24 == i
        assert leaf(table, 0x1).ebx & 0xFFFF == 0x0800  # brand index, CLFLUSH size kept
        for function in (0xB, 0x1F):
            assert leaf(table, function, 0).edx == i
            assert leaf(table, function, 1).edx == i


@pytest.mark.parametrize(("vcpus", "logical"), [(1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (200, 255)])
def test_logical_count(vcpus: int, logical: int) -> None:
    table = cpuid.vcpu_cpuid(supported(), 0, vcpus)
    assert (leaf(table, 0x1).ebx >> 16) & 0xFF == logical
    assert bool(leaf(table, 0x1).edx & HTT) == (vcpus > 1)


def test_hypervisor_bit_and_kvm_signature() -> None:
    table = cpuid.vcpu_cpuid(supported(), 0, 1)
    assert leaf(table, 0x1).ecx & HYPERVISOR
    kvm = leaf(table, 0x4000_0000)
    assert kvm == leaf(supported(), 0x4000_0000)
    # The hypervisor leaf's signature reads EBX, ECX, EDX (leaf 0 reads EBX, EDX, ECX).
    signature = b"".join(r.to_bytes(4, "little") for r in (kvm.ebx, kvm.ecx, kvm.edx))
    assert signature == b"KVMKVMKVM\0\0\0"


def test_tsc_deadline_bit_is_added_to_leaf_1_only() -> None:
    # KVM reports the bit as a capability, not in leaf 1: clear it as KVM does.
    before = [
        attrs.evolve(e, ecx=e.ecx & ~(1 << 24)) if e.function == 0x1 else e for e in supported()
    ]
    after = cpuid.with_tsc_deadline(before)
    assert leaf(after, 0x1).ecx == leaf(before, 0x1).ecx | (1 << 24)
    assert [e for e in after if e.function != 0x1] == [e for e in before if e.function != 0x1]
    assert leaf(cpuid.vcpu_cpuid(after, 1, 2), 0x1).ecx & (1 << 24)  # kept per vCPU


def test_topology_without_ht() -> None:
    table = cpuid.vcpu_cpuid(supported(), 3, 4, ht_enabled=False)
    smt, core = leaf(table, 0xB, 0), leaf(table, 0xB, 1)
    assert (smt.eax, smt.ebx, smt.ecx, smt.edx, smt.flags) == (0, 1, 0x100, 3, SIG)
    assert (core.eax, core.ebx, core.ecx, core.edx, core.flags) == (2, 4, 0x201, 3, SIG)
    l1d, l2, l3 = leaf(table, 0x4, 0), leaf(table, 0x4, 2), leaf(table, 0x4, 3)
    assert (l1d.eax >> 14) & 0xFFF == 0  # one thread per L1
    assert (l2.eax >> 14) & 0xFFF == 0
    assert (l3.eax >> 14) & 0xFFF == 3  # all four share the L3
    assert all(leaf(table, 0x4, i).eax >> 26 == 3 for i in range(4))  # four cores
    assert l1d.eax & 0x3FFF == 0x0121 and l3.eax & 0x3FFF == 0x0163  # the rest is the host's
    assert leaf(table, 0x4, 4) == CpuidEntry(0x4, 4, SIG, 0, 0, 0, 0)


def test_topology_with_ht() -> None:
    table = cpuid.vcpu_cpuid(supported(), 1, 4, ht_enabled=True)
    smt, core = leaf(table, 0xB, 0), leaf(table, 0xB, 1)
    assert (smt.eax, smt.ebx, smt.ecx, smt.edx) == (1, 2, 0x100, 1)
    assert (core.eax, core.ebx, core.ecx, core.edx) == (2, 4, 0x201, 1)
    assert (leaf(table, 0x4, 0).eax >> 14) & 0xFFF == 1  # two threads share L1
    assert (leaf(table, 0x4, 3).eax >> 14) & 0xFFF == 3
    assert all(leaf(table, 0x4, i).eax >> 26 == 1 for i in range(4))  # two cores
    assert leaf(table, 0x1F, 0) == attrs.evolve(smt, function=0x1F)
    assert leaf(table, 0x1F, 1) == attrs.evolve(core, function=0x1F)


def test_ht_with_one_vcpu_is_one_thread() -> None:
    table = cpuid.vcpu_cpuid(supported(), 0, 1, ht_enabled=True)
    smt = leaf(table, 0xB, 0)
    assert (smt.eax, smt.ebx) == (0, 1)


def test_ht_needs_an_even_count() -> None:
    with pytest.raises(cpuid.CpuidError, match="hyperthread pairs"):
        cpuid.vcpu_cpuid(supported(), 0, 3, ht_enabled=True)


def test_missing_core_subleaf_is_added_after_subleaf_0() -> None:
    table = cpuid.vcpu_cpuid(supported(leaf_0x1f=False), 0, 2)
    keys = [(e.function, e.index) for e in table]
    assert keys[keys.index((0xB, 0)) + 1] == (0xB, 1)
    assert (0x1F, 0) not in keys


def test_leaf_6_cleared() -> None:
    assert leaf(cpuid.vcpu_cpuid(supported(), 0, 1), 0x6) == CpuidEntry(0x6, 0, 0, 0, 0, 0, 0)


@pytest.mark.parametrize("nested", [False, True])
def test_nested(nested: bool) -> None:
    amd = [
        attrs.evolve(e, ecx=e.ecx | SVM) if e.function == 0x8000_0001 else e
        for e in supported(b"AuthenticAMD")
    ]
    table = cpuid.vcpu_cpuid(amd, 0, 1, nested=nested)
    assert bool(leaf(table, 0x1).ecx & VMX) == nested
    assert bool(leaf(table, 0x8000_0001).ecx & SVM) == nested
    # Nothing else in those registers moves.
    assert leaf(table, 0x1).ecx | VMX == leaf(amd, 0x1).ecx | VMX | HYPERVISOR
    assert leaf(table, 0x8000_0001).ecx | SVM == leaf(amd, 0x8000_0001).ecx


def test_input_left_alone() -> None:
    before = supported()
    given = list(before)
    cpuid.vcpu_cpuid(given, 1, 2, template="T2")
    assert given == before


def test_untouched_leaves_pass_through() -> None:
    table = cpuid.vcpu_cpuid(supported(), 0, 2)
    for function in (0x0, 0x7, 0xD, 0x4000_0001, 0x8000_0000, 0x8000_0008):
        assert leaf(table, function) == leaf(supported(), function)


def test_template_masks_are_firecrackers() -> None:
    """The filters and values, as the binary literals of Firecracker's t2.rs and c3.rs read."""

    def masks(template: cpuid.CpuTemplate) -> dict[tuple[int, int, str], tuple[int, int]]:
        return {(m.function, m.index, m.register): (m.filter, m.value) for m in template.modifiers}

    common = {
        (0xD, 0, "eax"): (0x0000_02F8, 0),
        (0xD, 1, "eax"): (0x0000_000E, 0),
        (0x8000_0001, 0, "edx"): (0x0400_0000, 0),
    }
    assert masks(cpuid.T2) == {
        (0x1, 0, "eax"): (0x0FFF_3FFF, 0x0003_06F2),
        (0x1, 0, "ecx"): (0x0004_CDFC, 0),
        (0x1, 0, "edx"): (0xE864_1080, 0x0000_1080),
        (0x7, 0, "ebx"): (0xFFEF_DA14, 0x0000_0200),
        (0x7, 0, "ecx"): (0x4041_5F5E, 0),
        (0x7, 0, "edx"): (0x0000_011C, 0),
        (0x8000_0001, 0, "ecx"): (0x2000_0100, 0),
        (0x8000_0008, 0, "ebx"): (0x0000_0200, 0),
        **common,
    }
    assert masks(cpuid.C3) == {
        (0x1, 0, "eax"): (0x0FFF_3FFF, 0x0003_06E4),
        (0x1, 0, "ecx"): (0x0040_DD3C, 0),
        (0x1, 0, "edx"): (0xA864_1080, 0x0000_1080),
        (0x7, 0, "ebx"): (0xFFAF_DD3C, 0),
        (0x7, 0, "ecx"): (0x4041_481E, 0),
        (0x7, 0, "edx"): (0x0000_000C, 0),
        (0x8000_0001, 0, "ecx"): (0x0000_0120, 0),
        **common,
    }


def test_t2_applied() -> None:
    host = supported()
    table = cpuid.vcpu_cpuid(host, 0, 2, template="T2", nested=True)
    f1 = leaf(table, 0x1)
    assert f1.eax == 0x0003_06F2  # the host's reserved bits were 0
    assert f1.ecx & 0x0004_CDFC == 0  # VMX included: the template wins over nested
    assert f1.ecx & HYPERVISOR
    assert f1.edx == (leaf(host, 0x1).edx & ~0xE864_1080) | 0x1080 | HTT
    f7 = leaf(table, 0x7)
    assert f7.ebx == (0xD19F_4FBB & ~0xFFEF_DA14) | 0x200
    assert f7.ecx == 0x0000_0808 & ~0x4041_5F5E
    assert leaf(table, 0xD, 0).eax == 0x2FF & ~0x2F8
    assert leaf(table, 0xD, 1).eax == 0x1
    assert leaf(table, 0x8000_0001).ecx == 0x2000_0125 & ~0x2000_0100  # SVM kept: nested
    assert leaf(table, 0x8000_0008).ebx == 0


def test_c3_applied() -> None:
    table = cpuid.vcpu_cpuid(supported(), 0, 1, template="C3")
    assert leaf(table, 0x1).eax == 0x0003_06E4
    assert leaf(table, 0x7).ebx == 0xD19F_4FBB & ~0xFFAF_DD3C
    assert leaf(table, 0x8000_0001).ecx == 0x2000_0125 & ~0x120 & ~SVM
    assert leaf(table, 0x8000_0008) == leaf(supported(), 0x8000_0008)


def test_template_keeps_reserved_signature_bits() -> None:
    host = [
        attrs.evolve(e, eax=0xF000_C000 | e.eax) if e.function == 0x1 else e for e in supported()
    ]
    assert leaf(cpuid.vcpu_cpuid(host, 0, 1, template="T2"), 0x1).eax == 0xF003_C6F2


def test_template_on_amd_refused() -> None:
    with pytest.raises(cpuid.CpuidError, match="GenuineIntel"):
        cpuid.vcpu_cpuid(supported(b"AuthenticAMD"), 0, 1, template="C3")


def test_template_needs_its_leaves() -> None:
    host = [e for e in supported() if e.function != 0x8000_0008]
    cpuid.vcpu_cpuid(host, 0, 1, template="C3")
    with pytest.raises(cpuid.CpuidError, match="0x80000008"):
        cpuid.vcpu_cpuid(host, 0, 1, template="T2")


def test_bad_arguments() -> None:
    with pytest.raises(cpuid.CpuidError, match="no CPU template"):
        cpuid.vcpu_cpuid(supported(), 0, 1, template="T3")
    with pytest.raises(cpuid.CpuidError, match="does not exist"):
        cpuid.vcpu_cpuid(supported(), 2, 2)
    with pytest.raises(cpuid.CpuidError, match="between 1 and 254"):
        cpuid.vcpu_cpuid(supported(), 0, 0)
