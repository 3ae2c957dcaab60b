"""The five precisions a layer can run at, and their canonical order (docs/design.md §2)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Tuple


@dataclass(frozen=True)
class Precision:
    name: str
    bits: int
    is_float: bool

    @property
    def bytes_per_element(self) -> float:
        return self.bits / 8.0


PRECISIONS: Dict[str, Precision] = {
    "fp32": Precision("fp32", 32, True),
    "fp16": Precision("fp16", 16, True),
    "int8": Precision("int8", 8, False),
    "int4": Precision("int4", 4, False),
    "int2": Precision("int2", 2, False),
}
# Highest to lowest: the order α vectors, cost vectors and reports use.
PRECISION_ORDER: Tuple[str, ...] = ("fp32", "fp16", "int8", "int4", "int2")
INT_PRECISIONS: Tuple[str, ...] = ("int8", "int4", "int2")

# Integer widths the quantizers implement; MCU kernels exist for 2..8 bits.
SUPPORTED_INT_BITS = range(2, 9)

def get_precision(name: str, where: str = "precision") -> Precision:
    try:
        return PRECISIONS[name]
    except KeyError:
        raise ValueError(
            f"{where}: unknown precision {name!r}; expected one of {', '.join(PRECISION_ORDER)}"
        ) from None


def canonical_precisions(names: Iterable[str], where: str = "layer") -> Tuple[str, ...]:
    """Validate names and return them, deduplicated, in PRECISION_ORDER."""
    names = list(names)
    if not names:
        raise ValueError(f"{where}: the allowed precision list is empty; "
                         f"expected a non-empty subset of {', '.join(PRECISION_ORDER)}")
    for n in names:
        get_precision(n, where)
    return tuple(p for p in PRECISION_ORDER if p in names)


def check_int_bits(bits: int, where: str) -> None:
    if not isinstance(bits, int) or bits not in SUPPORTED_INT_BITS:
        raise ValueError(f"{where}: unsupported bit width {bits!r}; expected an integer in "
                         f"{SUPPORTED_INT_BITS.start}..{SUPPORTED_INT_BITS.stop - 1}")


def precision_bits(name: str) -> int:
    return get_precision(name).bits


def tensor_bytes(elements: float, bits_or_factor: float, factor: bool = False) -> int:
    """Bytes of ``elements`` values at ``bits`` (or ``factor`` bytes per element), sub-byte packed."""
    per = bits_or_factor if factor else bits_or_factor / 8.0
    return int(math.ceil(elements * per - 1e-9))
