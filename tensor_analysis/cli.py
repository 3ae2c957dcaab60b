"""What every command-line tool of the project shares: one-line errors, argument types, model flags.

Bad input (a missing file, malformed JSON, an unknown name, a mismatched checkpoint) must end in one
readable line on stderr and a non-zero exit, never a traceback. Library code raises ``ValueError``
(or a subclass) / ``FileNotFoundError`` with a message that names the file or flag; ``run_cli``
turns those into that line, and ``Parser`` turns argparse's own errors into the same kind of line
(argparse's default prints the whole usage first, 40 lines for the search scripts, and hides the
one line that names the flag). Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from models import list_models
from models.precisions import canonical_precisions

from .graph import NetworkAnalysis, analyze_network

EXIT_BAD_INPUT = 2


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to a flag's help unless the help already says its default or there is
    nothing to say (None, False: "(default: None)" tells a user nothing); keeps the description's
    line breaks (the examples in a script's docstring)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one ValueError line (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise ValueError(f"{message} (see --help)")


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv=None) -> None:
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(code or 0)


# ----------------------------------------------------------------------------------------------------
# Argument types
# ----------------------------------------------------------------------------------------------------
def number_type(kind: Callable[[str], Any], minimum: float = 0.0, strict: bool = False, what: str = ""):
    """An argparse type: ``kind`` (int or float) parsed from the flag, finite, >= ``minimum`` (> with
    ``strict``). ``what`` names the unit in errors ("KB", "MHz")."""
    noun = "integer" if kind is int else "number"
    bound = ("positive" if strict else "non-negative") if minimum == 0 else (
        f"{'>' if strict else '>='} {minimum:g}")
    expected = f"a {bound} {noun}" + (f" of {what}" if what else "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    parse.__name__ = f"{bound} {noun}"  # what argparse prints for "invalid <type> value"
    return parse


positive_int = number_type(int, strict=True)
non_negative_int = number_type(int)
positive_float = number_type(float, strict=True)
non_negative_float = number_type(float)
non_negative_kb = number_type(float, what="KB (1 KB = 1024 bytes)")
positive_mhz = number_type(float, strict=True, what="MHz")


def precision_list(text: str) -> List[str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return list(canonical_precisions(names, "--precisions"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--precisions: ", ""))


# ----------------------------------------------------------------------------------------------------
# The model flags of the analysis tools
# ----------------------------------------------------------------------------------------------------
def add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model_type", "--model", dest="model_type", required=required, default=None,
                   help=f"registered model ({', '.join(list_models())}); the seed's 'mobilenetv3' and "
                        f"'efficientnet' also work with --mode / --model_version")
    g.add_argument("--mode", default=None,
                   help="with --model_type mobilenetv3: small or large (→ mobilenetv3_<mode>)")
    g.add_argument("--model_version", default=None,
                   help="with --model_type efficientnet: b0, lite0, ... (→ efficientnet_<version>)")
    g.add_argument("--input_size", type=positive_int, default=32, help="square input side in pixels")
    g.add_argument("--width_mult", type=positive_float, default=1.0, help="width multiplier")
    g.add_argument("--num_classes", type=positive_int, default=10, help="classifier outputs (CIFAR-10: 10)")
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
