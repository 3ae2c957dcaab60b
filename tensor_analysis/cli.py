"""What every command-line tool of the project shares: one-line errors, output checks, argument
types, model flags.

Bad input (a missing file, malformed JSON, an unknown name, a mismatched checkpoint) and a file system
that refuses (read-only, permissions, a parent that is a file) must end in one readable line on stderr
and a non-zero exit, never a traceback. Library code raises ``ValueError`` (or a subclass) /
``OSError`` with a message that names the file or flag; ``run_cli`` turns those into that line, and
``Parser`` turns argparse's own errors into the same kind of line (argparse's default prints the whole
usage first, 40 lines for the search scripts, and hides the one line that names the flag). Ctrl-C and
SIGTERM end in one line too, with whatever a run registered to say then (``note_on_interrupt``: where
its checkpoint is). Anything else is a bug and keeps its traceback.

Every tool that writes files checks its outputs with ``check_outputs`` before any work: an output is
never one of the command's inputs, never a folder or below a file, and an existing file is replaced
only when it is of the kind the tool writes (``OutputKind``), else only with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from models import formats, list_models
from models.files import FileWriteError, file_ancestor, read_json
from models.precisions import canonical_precisions

from .graph import NetworkAnalysis, analyze_network

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130     # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_TERMINATED = 143      # 128 + SIGTERM


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


class Terminated(BaseException):
    """SIGTERM (``kill``, a batch system ending a job), raised in the main thread as Ctrl-C raises
    KeyboardInterrupt, so the same clean-up runs (a checkpoint being written is discarded whole)."""


_interrupt_notes: List[Callable[[], str]] = []


def note_on_interrupt(note: Callable[[], str]) -> None:
    """``note()`` is appended to the line run_cli prints when the process is interrupted or terminated
    (a training run: where its last checkpoint is and how to resume)."""
    _interrupt_notes.append(note)


def _interrupt_line(word: str) -> str:
    return "; ".join([word] + [text for text in (note() for note in _interrupt_notes) if text])


def _raise_terminated(signum, frame):
    raise Terminated()


def describe_os_error(exc: OSError) -> str:
    """One line naming the path the system refused (``[Errno 13] ...: 'x'`` reads as ``x: permission denied``)."""
    if isinstance(exc, FileWriteError) or not exc.filename:
        return str(exc)
    what = (exc.strerror or exc.__class__.__name__).lower()
    return f"{exc.filename}: {what}" + (f" ({exc.filename2})" if exc.filename2 else "")


def run_cli(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv=None) -> None:
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    _interrupt_notes.clear()
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print(_interrupt_line("interrupted"), file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Terminated:
        print(_interrupt_line("terminated"), file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    finally:
        _interrupt_notes.clear()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    sys.exit(code or 0)


# ----------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputKind:
    """What a tool writes to an output path (``what``, as in "exists and is not <what>"), and how to
    recognise a file of that kind already there, which the tool may replace."""
    what: str
    is_own: Callable[[str], bool]


def json_kind(schema: str, what: str) -> OutputKind:
    """A JSON file of ``schema``'s kind (any version)."""
    def is_own(path: str) -> bool:
        try:
            doc = read_json(path)
        except ValueError:
            return False
        return isinstance(doc, dict) and formats.kind_of(str(doc.get("schema", "x/x"))) == formats.kind_of(schema)
    return OutputKind(what, is_own)


def text_kind(what: str, opening: str) -> OutputKind:
    """A text file whose first 4 KB hold ``opening`` (a report's title, a table's header)."""
    def is_own(path: str) -> bool:
        try:
            with open(path, "rb") as f:
                return opening.encode() in f.read(4096)
        except OSError:
            return False
    return OutputKind(what, is_own)


def _writable_folder(path: str) -> Tuple[str, Optional[str]]:
    """(the folder a write of ``path`` starts in: its nearest existing ancestor, why it cannot be written or None)."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    if os.access(folder, os.W_OK):
        return folder, None
    read_only = bool(os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1))
    return folder, "read-only file system" if read_only else "permission denied"


def check_output_folder(flag: str, path: str) -> None:
    """Refuse an output folder that is a file or lies below one, with one line naming ``flag``."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path}: is a file; expected a folder")
    blocker = file_ancestor(os.path.join(path, "_"))
    if blocker:
        raise ValueError(f"{flag} {path}: {blocker} is a file, not a folder")


def check_outputs(outputs: Sequence[Tuple[str, Optional[str], OutputKind]],
                  inputs: Sequence[Tuple[str, Optional[str]]] = (), overwrite: bool = False) -> None:
    """Refuse, before any work, an output (flag, path, kind) that is one of the ``inputs`` (flag, path)
    or another output, that is a folder or lies below a file, that cannot be written, or that exists
    and is not of ``kind`` (unless ``overwrite``); an empty file holds nothing to lose."""
    read = {os.path.realpath(p): flag for flag, p in inputs if p}
    written: Dict[str, str] = {}
    for flag, path, kind in outputs:
        if not path:
            continue
        where, real = f"{flag} {path}", os.path.realpath(path)
        if os.path.isdir(path):
            raise ValueError(f"{where}: is a folder; expected a file name")
        blocker = file_ancestor(path)
        if blocker:
            raise ValueError(f"{where}: {blocker} is a file, not a folder")
        if real in read:
            raise ValueError(f"{where}: is one of this command's inputs ({read[real]}); an output never replaces "
                             f"an input, so write it elsewhere")
        if real in written:
            raise ValueError(f"{where}: is also {written[real]}; give each output its own file")
        written[real] = flag
        if (os.path.isfile(path) and os.path.getsize(path) > 0 and not overwrite
                and not kind.is_own(path)):
            raise ValueError(f"{where}: exists and is not {kind.what}; pass --overwrite to replace it, "
                             f"or choose another name")
        folder, refused = _writable_folder(path)
        if refused:
            raise ValueError(f"{where}: cannot write in {folder} ({refused})")


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output file even when it is not the kind of file this tool "
                             "writes (an output never replaces one of the command's inputs)")


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
