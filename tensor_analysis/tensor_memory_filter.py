"""Memory filter: which precisions each layer may use under an activation-RAM threshold.

For every conv / depthwise / pointwise / linear layer, the bytes alive while it runs (its input and
output, plus tensors kept for a later residual add) at each precision; a precision is allowed when
that fits --memory_threshold. Prints a per-layer table and a summary and writes analysis.json (the
search reads its allowed_precisions). Exits non-zero, writing nothing, when an operator fits at no
precision, unless --allow_infeasible.

    python tensor_analysis/tensor_memory_filter.py --model_type mobilenetv2 --memory_threshold 512 \\
        --input_size 112 --output_file analysis.json
"""
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..")))

from models import formats  # noqa: E402
from models.files import write_json_atomic  # noqa: E402
from models.precisions import PRECISION_ORDER  # noqa: E402
from tensor_analysis.analysis_file import analysis_document  # noqa: E402
from tensor_analysis.cli import (Parser, add_model_args, add_overwrite_arg, analysis_from_args, check_outputs,  # noqa: E402
                                 json_kind, kb_tag, model_tag, non_negative_kb, precision_list, run_cli,
                                 spec_from_args)

ANALYSIS_OUTPUT = json_kind(formats.ANALYSIS, "an analysis file (tensor_memory_filter.py)")
from tensor_analysis.reports import filter_report  # noqa: E402


def build_parser(description=__doc__):
    p = Parser(description=description)
    add_model_args(p)
    g = p.add_argument_group("memory")
    g.add_argument("--memory_threshold", type=non_negative_kb, default=512.0,
                   help="activation RAM available, in KB of 1024 bytes (default 512)")
    g.add_argument("--precisions", type=precision_list, default=list(PRECISION_ORDER),
                   help="comma-separated candidates (default fp32,fp16,int8,int4,int2)")
    g.add_argument("--inplace_depthwise", action="store_true",
                   help="count depthwise convs as running in place (TinyEngine: max(in, out) + one channel) "
                        "instead of input + output (TFLM)")
    g.add_argument("--allow_infeasible", action="store_true",
                   help="write the file even if an operator fits at no precision (such a layer keeps its "
                        "least-memory precision, marked infeasible) and exit 0")
    p.add_argument("--output_file", default=None,
                   help="analysis.json to write (default: <model>_w<width>_s<size>_<threshold>kb.json here)")
    p.add_argument("--quiet", action="store_true", help="print the summary only, not the per-layer table")
    add_overwrite_arg(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = args.output_file or f"{model_tag(spec_from_args(args))}_{kb_tag(args.memory_threshold)}.json"
    check_outputs([("--output_file", out, ANALYSIS_OUTPUT)], overwrite=args.overwrite)
    analysis = analysis_from_args(args)
    d = analysis_document(analysis, args.memory_threshold, args.precisions, args.inplace_depthwise, args.allow_infeasible)
    report = filter_report(d)
    print(report if not args.quiet else report[report.index("layers:"):])
    if d["infeasible"] and not args.allow_infeasible:
        names = ", ".join(f"{i['name']} ({i['min_live_kb']:.1f} KB at {i['at']})" for i in d["infeasible"])
        raise ValueError(f"--memory_threshold {args.memory_threshold:g} KB: {len(d['infeasible'])} operator(s) "
                         f"fit at no precision: {names}; raise the threshold, change the model, or pass "
                         f"--allow_infeasible (nothing written)")
    write_json_atomic(d, out, compact=True)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
