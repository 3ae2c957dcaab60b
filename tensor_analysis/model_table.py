"""Side-by-side figures of the registered networks: MACs, parameters, uniform-INT8 peak activation RAM
(layer-wise and with in-place depthwise) and predicted latency on a hardware profile, as a markdown
table (the note's architecture comparison).

    python tensor_analysis/model_table.py                       # ImageNet heads, width 1.0, 224 and 144 px
    python tensor_analysis/model_table.py --sizes 32 --num_classes 10 --models mobilenetv2,efficientnet_lite0

Latency is the profile's prediction for every layer at INT8 on the first unit (STM32H747: the M7 at its
480 MHz unless --clock_mhz), fused activations and the non-searched operators included.
"""
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models import list_models  # noqa: E402
from models.files import write_text_atomic  # noqa: E402
from models.precisions import get_precision  # noqa: E402
from tensor_analysis.analysis_file import totals  # noqa: E402
from tensor_analysis.cli import (Parser, add_overwrite_arg, check_outputs, positive_float, positive_int,  # noqa: E402
                                 positive_mhz, run_cli, text_kind)
from tensor_analysis.graph import analyze_network  # noqa: E402
from tensor_analysis.memory import KB  # noqa: E402
from tensor_analysis.prediction import predict_network  # noqa: E402
from tensor_analysis.profiles import load_profile  # noqa: E402

DEFAULT_MODELS = ("mobilenetv1", "mobilenetv2", "mobilenetv3_small", "mobilenetv3_large", "efficientnet_b0",
                  "efficientnet_lite0")
TABLE_OUTPUT = text_kind("a model table (model_table.py)", "classes, every layer")


def model_rows(models: Sequence[str], sizes: Sequence[int], width_mult: float = 1.0, num_classes: int = 1000,
               hardware: str = "stm32h747", clock_mhz: Optional[float] = None,
               precision: str = "int8") -> List[Dict[str, Any]]:
    """One row per (model, input size): MACs, params, peak RAM both ways and where, predicted ms."""
    profile = load_profile(hardware)
    rows = []
    for name in models:
        for size in sizes:
            a = analyze_network({"type": name, "input_size": int(size), "width_mult": width_mult,
                                 "num_classes": num_classes})
            predicted = predict_network(a, {n: precision for n in a.layer_names}, profile, clock_mhz)["totals"]
            peaks = totals(a, [precision])
            clock = profile.clocks(clock_mhz)[profile.primary]
            rows.append({"model": name, "input_size": int(size), "strides": a.spec.get("strides"),
                         "macs": a.macs, "params": a.model_params, "layers": len(a.layers),
                         "peak_ram_bytes": predicted["peak_ram_bytes"], "peak_operator": peaks["peak_operator"][precision],
                         "peak_ram_bytes_inplace": predicted["peak_ram_bytes_inplace"],
                         "peak_operator_inplace": peaks["peak_operator_inplace"][precision],
                         "flash_bytes": predicted["flash_bytes"], "latency_ms": predicted["latency_ms"],
                         "fixed_ms": predicted["fixed_ms"],
                         "cycles_per_mac": predicted["latency_ms"] * clock * 1e3 / a.macs})
    return rows


def markdown_table(rows: Sequence[Dict[str, Any]], hardware_label: str, precision: str = "int8") -> str:
    p = precision.upper()
    header = ["model", "px", "MMACs", "params (M)", f"{p} peak RAM KiB (layer-wise)",
              f"{p} peak RAM KiB (in-place dw)", f"Flash KiB ({p})", f"latency ms ({hardware_label})", "cycles/MAC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], str(r["input_size"]), f"{r['macs'] / 1e6:.1f}", f"{r['params'] / 1e6:.2f}",
            f"{r['peak_ram_bytes'] / KB:.0f} ({r['peak_operator']})",
            f"{r['peak_ram_bytes_inplace'] / KB:.0f} ({r['peak_operator_inplace']})",
            f"{r['flash_bytes'] / KB:.0f}", f"{r['latency_ms']:.1f}", f"{r['cycles_per_mac']:.2f}"]) + " |")
    return "\n".join(lines)


def _int_list(text: str, flag: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag}: expected comma-separated pixel sizes, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{flag}: expected positive pixel sizes, got {text!r}")
    return values


def build_parser():
    p = Parser(description=__doc__)
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma-separated registry names (known: {', '.join(list_models())}) "
                        f"(default: %(default)s)")
    p.add_argument("--sizes", default="224,144", help="input sizes in pixels (default %(default)s)")
    p.add_argument("--width_mult", type=positive_float, default=1.0, help="width multiplier (default %(default)s)")
    p.add_argument("--num_classes", type=positive_int, default=1000,
                   help="classifier outputs (default %(default)s, ImageNet)")
    p.add_argument("--hardware", default="stm32h747", help="hardware profile name or path (default %(default)s)")
    p.add_argument("--clock_mhz", type=positive_mhz, default=None, help="first unit's clock (default: the profile's)")
    p.add_argument("--precision", default="int8", help="uniform precision of every layer (default %(default)s)")
    p.add_argument("--output_file", default=None, help="also write the markdown table to this file")
    add_overwrite_arg(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_outputs([("--output_file", args.output_file, TABLE_OUTPUT)], [("--hardware", args.hardware)], args.overwrite)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not models:
        raise ValueError("--models: expected at least one model name")
    unknown = [m for m in models if m not in list_models()]
    if unknown:
        raise ValueError(f"--models: unknown model {', '.join(unknown)}; known models: {', '.join(list_models())}")
    get_precision(args.precision, "--precision")
    sizes = _int_list(args.sizes, "--sizes")
    profile = load_profile(args.hardware)
    rows = model_rows(models, sizes, args.width_mult, args.num_classes, profile, args.clock_mhz, args.precision)
    unit = profile.units[profile.primary]
    clock = profile.clocks(args.clock_mhz)[profile.primary]
    label = f"{profile.name} {unit.core} @{clock:g} MHz"
    text = (f"width {args.width_mult:g}, {args.num_classes} classes, every layer {args.precision.upper()}; "
            f"KiB = 1024 B\n\n" + markdown_table(rows, label, args.precision))
    print(text)
    if args.output_file:
        write_text_atomic(text + "\n", args.output_file)
        print(f"wrote {args.output_file}")
    return 0


if __name__ == "__main__":
    run_cli(main)
