"""Which copies of each tensor a deployed network stores under a mapping (docs/design.md §6.4).

A layer's precision applies to its input, so a tensor is stored as its layer readers read it: one copy
per distinct precision of a reader's parts (a depthwise part reads only its channel slice, so a split
depthwise layer reads slices). Other readers (a residual add fused into a layer, a pool) read those
copies; a tensor only they read takes the copies their output is stored in (the last feature map: the
pooled vector's, i.e. the classifier's input format); the network output is float32 logits. A copy is
named by the layer whose read format it is: int formats carry that layer's PACT clip.

``tensor_analysis.memory`` counts the same copies as bytes per element (its ``resolve_storage_factors``
is this rule in a form that also takes the search's expectations); ``tensor_analysis.flash`` counts the
constants each copy costs; ``deploy/build.py`` builds the buffers from it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, TypeVar

from models.mapping import Part
from models.precisions import PRECISION_ORDER, precision_bits

from .graph import NetworkAnalysis, Operator

C = TypeVar("C")

OUTPUT_PRECISION = "fp32"  # the logits


@dataclass(frozen=True)
class StoredCopy:
    """Channels [c0, c1) of a tensor at ``precision`` as layer ``reader`` reads them (None: the
    network output)."""
    reader: Optional[str]
    precision: str
    c0: int
    c1: int

    @property
    def bits(self) -> int:
        return precision_bits(self.precision)


def layer_reads(op: Operator, parts: Sequence[Part]) -> List[StoredCopy]:
    """The input copies a layer's parts read: a depthwise part its channel slice at its precision, any
    other layer one whole copy per distinct precision."""
    if op.op == "dwconv":
        return [StoredCopy(op.name, p.precision, p.c0, p.c1) for p in parts]
    distinct = [p for p in PRECISION_ORDER if p in {q.precision for q in parts}]
    return [StoredCopy(op.name, p, 0, op.in_channels) for p in distinct]


def _merge(copies: Sequence[StoredCopy]) -> List[StoredCopy]:
    """One copy per (reader, precision) covering the channels its parts read, widest first."""
    ranges: Dict[tuple, List[int]] = {}
    for c in copies:
        r = ranges.setdefault((c.reader, c.precision), [c.c0, c.c1])
        r[0], r[1] = min(r[0], c.c0), max(r[1], c.c1)
    merged = [StoredCopy(reader, p, c0, c1) for (reader, p), (c0, c1) in ranges.items()]
    return sorted(merged, key=lambda c: (-c.bits, c.c0))


def layer_readers(a: NetworkAnalysis, tid: int) -> List[Operator]:
    """The layers that read tensor ``tid`` through their input quantizer (``Operator.quantizes``)."""
    return [a.operators[c] for c in a.tensors[tid].consumers if a.operators[c].quantizes(tid)]


def storage_copies(a: NetworkAnalysis, parts_of: Mapping[str, Sequence[Part]]) -> Dict[int, List[StoredCopy]]:
    """Every tensor's stored copies, widest first (module docstring). With several layer readers the
    one reading the most bytes per element decides (the memory model's widest)."""
    copies: Dict[int, List[StoredCopy]] = {}
    # consumers come later than producers: resolve from the last tensor backwards
    for tid in sorted(a.tensors, key=lambda i: -a.tensors[i].producer):
        t = a.tensors[tid]
        channels = t.shape[0]
        readers = layer_readers(a, tid)
        if readers:
            per_reader = [_merge(layer_reads(op, parts_of[op.name])) for op in readers]
            copies[tid] = max(per_reader, key=lambda cs: sum(c.bits * (c.c1 - c.c0) for c in cs))
        elif t.consumers:
            consumer = a.operators[t.consumers[0]]
            spans_all = consumer.op == "pool"
            copies[tid] = _merge([StoredCopy(c.reader, c.precision, 0 if spans_all else c.c0,
                                             channels if spans_all else c.c1) for c in copies[consumer.output]])
        else:
            copies[tid] = [StoredCopy(None, OUTPUT_PRECISION, 0, channels)]
    return copies


def skip_copy(copies: Sequence[C], channel: int) -> C:
    """The copy a fused residual add reads for ``channel``: the widest holding it (what training adds,
    models.layers.stored_input). ``copies``: widest first, anything with channels [c0, c1) (the
    memory model's StoredCopy, the integer network's copies)."""
    return next(c for c in copies if c.c0 <= channel < c.c1)
