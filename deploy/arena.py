"""The static activation arena: buffer lifetimes, a greedy offset planner and the peak of live bytes.

A buffer is alive from the first op that writes it to the last op that reads it; the network's output
buffer stays alive until the last op. Two buffers alive at the same op must not share bytes (no op
works in place). The planner places the largest buffer first, each at the lowest 4-byte-aligned
offset that overlaps no already placed buffer alive at the same time; the arena is the highest end
offset. The peak of live bytes (the largest sum of sizes of the buffers alive at one op) is a lower
bound no placement can beat.

Works on any object with ``ops`` (each with ``reads()`` and ``writes()`` lists of buffer names),
``buffers`` (each with ``name``, ``size_bytes`` and ``offset``), ``output`` and ``arena_bytes``: an
``IntegerNetwork``. Imports nothing from the rest of ``deploy`` so that ``ir`` can use it.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Tuple

ALIGNMENT = 4


def buffer_lifetimes(network) -> Dict[str, Tuple[int, int]]:
    """Buffer name → (index of the first op writing it, index of the last op reading it)."""
    first_write: Dict[str, int] = {}
    last_read: Dict[str, int] = {}
    for index, op in enumerate(network.ops):
        for name in op.writes():
            first_write.setdefault(name, index)
        for name in op.reads():
            last_read[name] = index
    last_op = len(network.ops) - 1
    lifetimes = {}
    for b in network.buffers:
        if b.name not in first_write:
            raise ValueError(f"arena: buffer {b.name!r} is never written")
        end = last_op if b.name == network.output else last_read.get(b.name, first_write[b.name])
        lifetimes[b.name] = (first_write[b.name], end)
    return lifetimes


def _overlap(a: Tuple[int, int], b: Tuple[int, int]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def peak_live_bytes(network) -> int:
    """Max over ops of the summed sizes of the buffers alive at that op."""
    lifetimes = buffer_lifetimes(network)
    live = [0] * len(network.ops)
    for b in network.buffers:
        start, end = lifetimes[b.name]
        for index in range(start, end + 1):
            live[index] += b.size_bytes
    return max(live)


def _align(value: int) -> int:
    return -(-value // ALIGNMENT) * ALIGNMENT


def plan_offsets(network) -> Tuple[Dict[str, int], int]:
    """Greedy placement: (buffer name → offset, arena bytes)."""
    lifetimes = buffer_lifetimes(network)
    order = sorted(network.buffers, key=lambda b: (-b.size_bytes, lifetimes[b.name][0], b.name))
    placed: List[Tuple[int, int, Tuple[int, int]]] = []  # (offset, end, lifetime)
    offsets: Dict[str, int] = {}
    for b in order:
        life = lifetimes[b.name]
        conflicts = sorted((start, end) for start, end, other in placed if _overlap(life, other))
        offset = 0
        for start, end in conflicts:
            if offset + b.size_bytes <= start:
                break
            offset = max(offset, _align(end))
        offsets[b.name] = offset
        placed.append((offset, offset + b.size_bytes, life))
    arena_bytes = _align(max(end for _, end, _ in placed)) if placed else 0
    return offsets, arena_bytes


def plan_arena(network):
    """A copy of ``network`` with every buffer's ``offset`` and ``arena_bytes`` set by the planner (new
    buffer objects; the ops are shared with ``network``)."""
    offsets, arena_bytes = plan_offsets(network)
    planned = copy.copy(network)
    planned.buffers = [_with_offset(b, offsets[b.name]) for b in network.buffers]
    planned.arena_bytes = arena_bytes
    return planned


def _with_offset(buffer, offset: int):
    placed = copy.copy(buffer)
    placed.offset = offset
    return placed


def check_plan(network) -> None:
    """ValueError unless every buffer has an aligned offset inside the arena and no two buffers alive
    at the same op share a byte."""
    if network.arena_bytes is None:
        raise ValueError("arena: buffers have offsets but network.arena_bytes is not set")
    lifetimes = buffer_lifetimes(network)
    spans = []
    for b in network.buffers:
        if b.offset is None:
            raise ValueError(f"arena: buffer {b.name!r} has no offset (plan the arena with deploy.arena.plan_arena)")
        if b.offset < 0 or b.offset % ALIGNMENT:
            raise ValueError(f"arena: buffer {b.name!r} offset {b.offset} is not a non-negative multiple of "
                             f"{ALIGNMENT}")
        if b.offset + b.size_bytes > network.arena_bytes:
            raise ValueError(f"arena: buffer {b.name!r} ends at {b.offset + b.size_bytes}, past arena_bytes "
                             f"{network.arena_bytes}")
        spans.append((b.offset, b.offset + b.size_bytes, lifetimes[b.name], b.name))
    spans.sort()
    for i, (start, end, life, name) in enumerate(spans):
        for other_start, other_end, other_life, other in spans[i + 1:]:
            if other_start >= end:
                break
            if _overlap(life, other_life):
                raise ValueError(f"arena: buffers {name!r} and {other!r} are alive at the same time and overlap "
                                 f"([{start}, {end}) and [{other_start}, {other_end}))")
