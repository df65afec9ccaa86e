"""A range of guest memory as the guest sees it after a table writer's writes."""

from __future__ import annotations


def laid_out(writes: list[tuple[int, bytes]], start: int, end: int) -> bytes:
    """Guest physical [start, end) after `writes`, each of which must lie inside it and
    overlap no other."""
    region = bytearray(end - start)
    for gpa, data in writes:
        assert gpa >= start and gpa + len(data) <= end
        offset = gpa - start
        assert not any(region[offset : offset + len(data)]), f"overlap at {gpa:#x}"
        region[offset : offset + len(data)] = data
    return bytes(region)
