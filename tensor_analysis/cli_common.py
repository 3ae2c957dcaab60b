"""What the tensor-analysis command-line tools share: model flags, one-line argument errors, tables,
compact JSON output."""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Dict, List, Optional, Sequence

from models import list_models
from models.base import PRECISION_ORDER, canonical_precisions

from .analysis import KB, MAPPING_SCHEMA, NetworkAnalysis, analyze_network, as_analysis, load_analysis_json


class OneLineParser(argparse.ArgumentParser):
    """Argument errors become a ValueError, so run_cli prints one 'error: ...' line (no usage dump)."""

    def error(self, message):
        raise ValueError(f"{message} (see --help)")


def non_negative_kb(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of KB (1 KB = 1024 bytes), got {text!r}")
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number of KB, got {text}")
    return v


def positive_mhz(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a clock in MHz, got {text!r}")
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive clock in MHz, got {text}")
    return v


def precision_list(text: str) -> List[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return list(canonical_precisions(names, "--precisions"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--precisions: ", ""))


def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model_type", required=required, default=None,
                   help=f"registered model ({', '.join(list_models())}); the seed's 'mobilenetv3' and "
                        f"'efficientnet' also work with --mode / --model_version")
    g.add_argument("--mode", default=None,
                   help="with --model_type mobilenetv3: small or large (→ mobilenetv3_<mode>)")
    g.add_argument("--model_version", default=None,
                   help="with --model_type efficientnet: b0, lite0, ... (→ efficientnet_<version>)")
    g.add_argument("--input_size", type=int, default=32, help="square input side in pixels (default 32)")
    g.add_argument("--width_mult", type=float, default=1.0, help="width multiplier (default 1.0)")
    g.add_argument("--num_classes", type=int, default=10, help="classifier outputs (default 10, CIFAR-10)")
    g.add_argument("--strides", default=None,
                   help="stride preset (auto, imagenet, cifar, seed) or comma-separated strides; "
                        "default: the model's 'auto' (small-input strides up to 64 px)")


def model_name(model_type: str, mode: Optional[str] = None, model_version: Optional[str] = None) -> str:
    """The registry name for the seed's flags: mobilenetv3 + --mode small → mobilenetv3_small,
    efficientnet + --model_version b0 → efficientnet_b0; registry names pass through."""
    known = list_models()
    if model_type in known:
        return model_type
    for suffix in (mode, model_version):
        if suffix and f"{model_type}_{suffix}" in known:
            return f"{model_type}_{suffix}"
    hint = ""
    variants = [m for m in known if m.startswith(model_type + "_")]
    if variants:
        flag = "--mode" if model_type == "mobilenetv3" else "--model_version"
        hint = f"; {model_type} needs {flag} (one of {', '.join(v[len(model_type) + 1:] for v in variants)})"
    raise ValueError(f"--model_type: unknown model {model_type!r}{hint}; known models: {', '.join(known)}")


def spec_from_args(args) -> Dict[str, Any]:
    if args.input_size is not None and args.input_size <= 0:
        raise ValueError(f"--input_size: expected a positive number of pixels, got {args.input_size}")
    if args.num_classes is not None and args.num_classes <= 0:
        raise ValueError(f"--num_classes: expected a positive integer, got {args.num_classes}")
    if args.width_mult is not None and not args.width_mult > 0:
        raise ValueError(f"--width_mult: expected a positive number, got {args.width_mult}")
    spec: Dict[str, Any] = {"type": model_name(args.model_type, args.mode, args.model_version),
                            "input_size": args.input_size, "width_mult": args.width_mult,
                            "num_classes": args.num_classes}
    if args.strides:
        s = args.strides.strip()
        spec["strides"] = [int(v) for v in s.split(",")] if "," in s or s.isdigit() else s
    return spec


def analysis_from_args(args) -> NetworkAnalysis:
    return analyze_network(spec_from_args(args))


def model_tag(spec: Dict[str, Any]) -> str:
    """mobilenetv2_w1.0_s32: the stem of default output names."""
    w = f"{float(spec.get('width_mult', 1.0)):g}"
    return f"{spec['type']}_w{w if '.' in w else w + '.0'}_s{spec.get('input_size')}"


def kb_tag(kb: float) -> str:
    return f"{kb:g}kb"


# ----------------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------------
def compact_json(obj: Any, indent: int = 0, width: int = 110) -> str:
    """JSON with small objects and lists on one line: readable, a fraction of indent=2's size."""
    flat = json.dumps(obj)
    if len(flat) + indent <= width or not isinstance(obj, (dict, list)) or not obj:
        return flat
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(str(k))}: {compact_json(v, indent + 2, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{compact_json(v, indent + 2, width)}" for v in obj]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def write_text(text: str, path: str) -> None:
    from Search_CIFAR10.dnas.utils.checkpoint import write_text_atomic
    write_text_atomic(text, path)


def write_json(obj: Any, path: str) -> None:
    write_text(compact_json(obj) + "\n", path)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], align: Optional[str] = None) -> str:
    """Plain-text table; ``align`` is one 'l'/'r' per column (default: first left, rest right)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    align = align or ("l" + "r" * (len(header) - 1))

    def fmt(r):
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)).rstrip()
    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells[1:]]
    return "\n".join(lines)


def kb(nbytes: float) -> str:
    return f"{nbytes / KB:.1f}"


def shape(s: Sequence[int]) -> str:
    return "x".join(str(v) for v in s)


__all__ = ["OneLineParser", "add_model_args", "model_name", "spec_from_args", "analysis_from_args",
           "model_tag", "kb_tag", "compact_json", "write_json", "write_text", "table", "kb", "shape", "non_negative_kb",
           "positive_mhz", "precision_list", "PRECISION_ORDER", "MAPPING_SCHEMA", "as_analysis",
           "load_analysis_json"]
