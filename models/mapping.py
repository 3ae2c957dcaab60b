"""The precision mapping: which precision (or dual-core split) each layer runs at, and mapping.json.

A mapping is ``{layer name: entry}``. An entry is a precision name (``"int8"``: the whole layer on the
primary processing unit), a dual-core option key (``"m7:int8[0:48]+m4:int4[48:96]"``: output channels
[0, 48) on unit m7 at int8, the rest on m4 at int4), or its object form ``{"split": 0.5, "units":
{"m7": {"precision": "int8", "channels": [0, 48]}, "m4": {...}}}`` (one unit listed: the whole layer
there). mapping.json wraps it as ``{"schema": "adaptqnet/mapping/1", "model": spec, "layers": {...}}``;
a bare ``{layer: precision}`` object (the seed artifact's format) is read too.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import formats
from .files import read_json
from .precisions import PRECISION_ORDER, get_precision


@dataclass(frozen=True)
class Part:
    """One processing unit's share of a layer: its precision and output-channel range [c0, c1)."""
    unit: Optional[str]   # None: the profile's primary unit
    precision: str
    c0: int
    c1: int


def _parse_option_key(key: str, where: str) -> List[Part]:
    """"m7:int8[0:48]+m4:int4[48:96]" (see dual_option_key)."""
    parts = []
    for chunk in key.split("+"):
        try:
            unit, rest = chunk.split(":", 1)
            precision, rng = rest.rstrip("]").split("[")
            c0, c1 = (int(v) for v in rng.split(":"))
        except ValueError:
            raise ValueError(f"{where}: cannot read dual-core option {key!r}; expected "
                             f"'unit:precision[c0:c1]+unit:precision[c0:c1]'") from None
        parts.append(Part(unit, precision, c0, c1))
    return parts


def entry_parts(name: str, out_channels: int, entry: Any, where: str = "mapping") -> List[Part]:
    """A mapping value as a list of Parts, validated against the layer ``name`` with ``out_channels``.

    Accepted forms: ``"int8"`` (whole layer on the primary unit); a dual-core option key
    ``"m7:int8[0:48]+m4:int4[48:96]"``; or an object
    ``{"split": 0.5, "units": {"m7": {"precision": "int8", "channels": [0, 48]},
    "m4": {"precision": "int4", "channels": [48, 96]}}}`` (one unit listed = whole layer there).
    """
    where = f"{where}: layer {name}"
    if isinstance(entry, str):
        if ":" in entry:
            parts = _parse_option_key(entry, where)
        else:
            get_precision(entry, where)
            return [Part(None, entry, 0, out_channels)]
    elif isinstance(entry, Mapping):
        units = entry.get("units")
        if not isinstance(units, Mapping) or not units:
            raise ValueError(f"{where}: a dual-core entry needs 'units': {{unit: {{'precision': ..., "
                             f"'channels': [c0, c1]}}}}, got {entry!r}")
        parts = []
        for unit, spec in units.items():
            if not isinstance(spec, Mapping) or "precision" not in spec:
                raise ValueError(f"{where}: unit {unit!r} needs a 'precision', got {spec!r}")
            ch = spec.get("channels", [0, out_channels])
            if (not isinstance(ch, (list, tuple)) or len(ch) != 2
                    or not all(isinstance(c, int) and not isinstance(c, bool) for c in ch)):
                raise ValueError(f"{where}: unit {unit!r}: 'channels' must be [c0, c1] integers, got {ch!r}")
            parts.append(Part(str(unit), spec["precision"], ch[0], ch[1]))
    else:
        raise ValueError(f"{where}: expected a precision name or a dual-core object, got {entry!r}")
    for p in parts:
        get_precision(p.precision, where)
    ranges = sorted((p.c0, p.c1) for p in parts)
    pos = 0
    for c0, c1 in ranges:
        if c0 != pos or c1 <= c0:
            raise ValueError(f"{where}: channel ranges {[[a, b] for a, b in ranges]} must split "
                             f"[0, {out_channels}) into contiguous, non-empty pieces")
        pos = c1
    if pos != out_channels:
        raise ValueError(f"{where}: channel ranges {[[a, b] for a, b in ranges]} must cover all "
                         f"{out_channels} output channels")
    if len({p.unit for p in parts}) != len(parts):
        raise ValueError(f"{where}: a unit appears twice")
    return sorted(parts, key=lambda p: p.c0)


def dual_option_key(parts: Sequence[Part]) -> str:
    return "+".join(f"{p.unit}:{p.precision}[{p.c0}:{p.c1}]" for p in parts)


def dual_entry(parts: Sequence[Part], out_channels: int) -> Dict[str, Any]:
    """The object form of a mapping entry (what mapping.json stores for a dual-core layer)."""
    first = parts[0]
    return {"split": round((first.c1 - first.c0) / out_channels, 4),
            "units": {p.unit: {"precision": p.precision, "channels": [p.c0, p.c1]} for p in parts}}




def option_label(parts: Sequence[Part]) -> str:
    """An option's name: a plain precision for the whole layer on the primary unit, else its key."""
    if len(parts) == 1 and parts[0].unit is None:
        return parts[0].precision
    return dual_option_key(parts)


def option_entry(parts: Sequence[Part], out_channels: int) -> Any:
    """What mapping.json stores: a precision name, or the dual-core object."""
    if len(parts) == 1 and parts[0].unit is None:
        return parts[0].precision
    return dual_entry(parts, out_channels)


def is_single_unit(entry: Any) -> bool:
    """A plain precision: the whole layer on the primary unit (no dual-core split)."""
    return isinstance(entry, str) and ":" not in entry


def check_layer_names_match(expected: Sequence[str], given: Iterable[str], where: str,
                            what: str = "the model") -> None:
    """The one error for a file or table whose layer names differ from the model's: every missing and
    unknown name is listed (the first 10 of each, then how many more), so the user sees what to fix."""
    given = list(given)
    given_set, expected_set = set(given), set(expected)
    missing = [n for n in expected if n not in given_set]
    unknown = [n for n in given if n not in expected_set]
    if not (missing or unknown):
        return

    def listed(names: List[str]) -> str:
        return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    parts = ([f"missing layers: {listed(missing)}"] if missing else []) + (
        [f"unknown layers: {listed(unknown)}"] if unknown else [])
    raise ValueError(f"{where}: layer names do not match {what}: {'; '.join(parts)}")



def mapping_document(spec: Mapping, layers: Mapping[str, Any], extra: Optional[Mapping] = None) -> dict:
    """mapping.json's object for ``layers`` of the network ``spec``."""
    doc = {"schema": formats.MAPPING, "model": dict(spec), "layers": dict(layers)}
    if extra:
        doc.update(extra)
    return doc


def read_mapping(doc: Any, where: str, layer_names: Optional[Sequence[str]] = None
                 ) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """(model spec or None, {layer: entry}) from a mapping.json object or a bare {layer: precision}
    object. Values must be precision names, option keys or dual-core objects; with ``layer_names``,
    the names must be exactly those (whether entries fit each layer's channels is checked where the
    layers are known: ``NetworkAnalysis.check_mapping``, ``apply_mapping``)."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"{where}: not a mapping file (expected a JSON object, got {type(doc).__name__})")
    spec = None
    if "schema" in doc or isinstance(doc.get("layers"), Mapping):  # a document, not a bare mapping
        if "schema" in doc:
            formats.check_schema(doc, formats.MAPPING, where, "mapping file")
        if not isinstance(doc.get("layers"), Mapping):
            raise ValueError(f"{where}: 'layers' must be an object {{layer name: precision}}")
        spec = dict(doc["model"]) if isinstance(doc.get("model"), Mapping) else None
        doc = doc["layers"]
    for name, value in doc.items():
        if isinstance(value, str):
            if ":" not in value:
                get_precision(value, f"{where}: layer {name}")
        elif not isinstance(value, Mapping):
            raise ValueError(f"{where}: layer {name}: expected a precision name or a dual-core object, "
                             f"got {value!r}")
    if layer_names is not None:
        check_layer_names_match(layer_names, doc, where)
    return spec, dict(doc)


def load_mapping(path: str) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """read_mapping of the file at ``path``."""
    return read_mapping(read_json(path, "precision mapping file"), path)


def mapping_digest(layers: Mapping[str, Any]) -> str:
    """SHA-256 of a mapping's canonical JSON: what a checkpoint records of the mapping it was trained
    with, so a mapping.json edited afterwards is recognised as not belonging to the weights."""
    text = json.dumps({str(k): layers[k] for k in layers}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def check_final_matches(checkpoint: Mapping[str, Any], layers: Mapping[str, Any], where: str) -> None:
    """ValueError naming ``where`` (a mapping.json) when the weights in ``checkpoint`` (a run's final.pt)
    were trained with another mapping: final.pt records the mapping's digest (older runs: the mapping)."""
    recorded = checkpoint.get("mapping_sha256")
    if recorded is not None:
        if recorded != mapping_digest(layers):
            raise ValueError(f"{where}: does not belong to final.pt's network (the layer precisions differ from "
                             f"those it was trained with; was mapping.json edited after the run?)")
    elif "mapping" in checkpoint and dict(checkpoint["mapping"]) != dict(layers):
        raise ValueError(f"{where}: does not belong to final.pt's network (layer precisions differ)")


def precision_histogram(mapping: Mapping[str, Any]) -> Dict[str, int]:
    """Layers per precision, for single-unit entries."""
    counts = {p: 0 for p in PRECISION_ORDER}
    for p in mapping.values():
        if is_single_unit(p):
            counts[p] += 1
    return {p: c for p, c in counts.items() if c}
