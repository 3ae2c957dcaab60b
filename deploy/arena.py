"""The static activation arena: buffer lifetimes, an offset planner and the peak of live bytes.

A buffer is alive from the first op that writes it to the last op that reads it; the network's output
buffer stays alive until the last op. Two buffers alive at the same op must not share bytes (no op
works in place). The peak of live bytes (the largest sum of sizes of the buffers alive at one op) is a
lower bound no placement can beat, and the figure the memory model predicts (tensor_analysis.memory).

The planner first searches for a placement inside a size limit, starting at that bound: buffers in the
order they are written, each at the lowest or the highest 4-byte-aligned offset of a free gap (no
buffer alive at the same time there), backtracking when one does not fit. Largest-first greedy
placement (each buffer at the lowest offset that fits; TFLM's planner) fragments on inverted-residual
chains: a block's skip tensor lands just above the previous one and the next expansion no longer fits
beside it (MobileNetV2-0.35 INT8 at 32 px: 114,688 bytes greedy, 106,496 = the bound searched). The
search tries limits from the bound upwards with a node budget each; the greedy plan is the fallback and
is kept whenever it is smaller.

Works on any object with ``ops`` (each with ``reads()`` and ``writes()`` lists of buffer names),
``buffers`` (each with ``name``, ``size_bytes`` and ``offset``), ``output`` and ``arena_bytes``: an
``IntegerNetwork``. Imports nothing from the rest of ``deploy`` so that ``ir`` can use it.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

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


# Placements tried per size limit, and the limits: the bound, then this much more each (module docstring).
SEARCH_NODES = 20000
SEARCH_STEPS = (0.0, 0.01, 0.02, 0.05, 0.1)


def _free_gaps(size: int, life: Tuple[int, int], placed, limit: Optional[int]) -> List[Tuple[int, int]]:
    """(first, end) of every aligned gap of at least ``size`` bytes among the placed buffers alive during
    ``life``; the last gap ends at ``limit`` (None: unbounded)."""
    conflicts = sorted((start, end) for start, end, other in placed if _overlap(life, other))
    gaps, offset = [], 0
    for start, end in conflicts:
        if start - offset >= size:
            gaps.append((offset, start))
        offset = max(offset, _align(end))
    if limit is None or limit - offset >= size:
        gaps.append((offset, limit))
    return gaps


def _search(network, lifetimes, limit: int) -> Optional[Dict[str, int]]:
    """Offsets inside ``limit`` bytes, or None if the node budget ran out first (module docstring)."""
    order = sorted(network.buffers, key=lambda b: (lifetimes[b.name][0], -b.size_bytes, b.name))
    placed: List[Tuple[int, int, Tuple[int, int]]] = []
    nodes = 0
    # an explicit stack of candidate lists keeps deep networks clear of Python's recursion limit
    stack: List[List[int]] = []
    while True:
        i = len(placed)
        if i == len(order):
            return {b.name: start for b, (start, _, _) in zip(order, placed)}
        if len(stack) == i:
            nodes += 1
            if nodes > SEARCH_NODES:
                return None
            b = order[i]
            preferred = []  # lowest gap first, its lowest offset before its highest
            for first, end in _free_gaps(b.size_bytes, lifetimes[b.name], placed, limit):
                highest = (end - b.size_bytes) // ALIGNMENT * ALIGNMENT
                preferred += [first] if highest == first else [first, highest]
            stack.append(preferred[::-1])
        if stack[-1]:
            offset = stack[-1].pop()
            b = order[i]
            placed.append((offset, offset + b.size_bytes, lifetimes[b.name]))
            continue
        stack.pop()
        if not placed:
            return None
        placed.pop()


def _greedy(network, lifetimes) -> Dict[str, int]:
    order = sorted(network.buffers, key=lambda b: (-b.size_bytes, lifetimes[b.name][0], b.name))
    placed: List[Tuple[int, int, Tuple[int, int]]] = []
    offsets: Dict[str, int] = {}
    for b in order:
        offset = _free_gaps(b.size_bytes, lifetimes[b.name], placed, None)[0][0]
        offsets[b.name] = offset
        placed.append((offset, offset + b.size_bytes, lifetimes[b.name]))
    return offsets


def _arena_of(network, offsets: Dict[str, int]) -> int:
    return _align(max((offsets[b.name] + b.size_bytes for b in network.buffers), default=0))


def plan_offsets(network) -> Tuple[Dict[str, int], int]:
    """(buffer name → offset, arena bytes): the smallest plan found (module docstring)."""
    lifetimes = buffer_lifetimes(network)
    best = _greedy(network, lifetimes)
    best_arena = _arena_of(network, best)
    bound = _align(peak_live_bytes(network))
    for step in SEARCH_STEPS:
        limit = _align(int(bound * (1 + step)))
        if limit >= best_arena:
            break
        found = _search(network, lifetimes, limit)
        if found is not None:
            return found, _arena_of(network, found)
    return best, best_arena


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
