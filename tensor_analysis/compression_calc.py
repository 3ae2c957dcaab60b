"""Compression calculator: model size and compression ratio vs FP32 for a precision mapping, with the
precision distribution per op kind and per stage (stage = the resolution a layer produces).

Size = packed weights (sub-byte values packed) + per-output-channel bias/scale, the bytes a deployment
stores in Flash; the weights-only ratio is printed too.

    python tensor_analysis/compression_calc.py --model_type mobilenetv2 --input_size 32 \\
        --precision_mapping_file tensor_analysis/example_precision_mapping.json
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models import formats  # noqa: E402
from models.files import write_json_atomic  # noqa: E402
from tensor_analysis.cli import Parser, add_model_args, add_overwrite_arg, check_outputs, json_kind, run_cli  # noqa: E402
from tensor_analysis.flash import compression  # noqa: E402
from tensor_analysis.reports import compression_report  # noqa: E402
from tensor_analysis.tensor_latency_predictor import resolve  # noqa: E402

COMPRESSION_OUTPUT = json_kind(formats.COMPRESSION, "a compression report (compression_calc.py --output_file)")


def build_parser():
    p = Parser(description=__doc__)
    add_model_args(p, required=False)
    p.add_argument("--analysis", default=None, help="take the model from an analysis.json instead of --model_type")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--precision_mapping_file", default=None, help="mapping.json or {layer: precision}")
    g.add_argument("--precision", default=None, help="one precision for every layer (default int8)")
    p.add_argument("--output_file", default=None, help="write the figures as JSON")
    add_overwrite_arg(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    check_outputs([("--output_file", args.output_file, COMPRESSION_OUTPUT)],
                  [("--analysis", args.analysis), ("--precision_mapping_file", args.precision_mapping_file)],
                  args.overwrite)
    analysis, layers = resolve(args)
    c = compression(analysis, layers)
    print(compression_report(c, analysis.spec))
    if args.output_file:
        write_json_atomic({"schema": formats.COMPRESSION, "model": analysis.spec, "mapping": layers, **c}, args.output_file, compact=True)
        print(f"wrote {args.output_file}")
    return 0


if __name__ == "__main__":
    run_cli(main)
