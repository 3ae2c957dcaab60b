"""A symmetric-grid run → ONNX QDQ (deploy/onnx_export.py, deploy/export_onnx.py): the file passes
onnx.checker, its weights are the integer network's codes at the bit width the mapping gives, onnxruntime
(graph optimisation off) agrees with the numpy reference to one LSB, DoReFa layers are refused with one
line, and the C export runs the symmetric grid bit-exactly too."""
import json
import re

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from deploy import onnx_export, reference  # noqa: E402
from deploy.build import build_integer_network, load_run, load_test_images  # noqa: E402
from deploy.export_onnx import main as onnx_main  # noqa: E402
from deploy.ir import ConvPart  # noqa: E402
from models.precisions import PRECISION_ORDER, PRECISIONS  # noqa: E402
from tensor_analysis.cli import run_cli  # noqa: E402
from test_deploy_build import SPEC, STAGE1, export_and_check, make_run_dir, random_network, split_mapping  # noqa: E402
from tensor_analysis.analysis_file import analysis_document  # noqa: E402
from tensor_analysis.graph import analyze_network  # noqa: E402

SIZE = {k: v for k, v in SPEC.items() if k != "type"}


def cli(capsys, *args):
    """deploy/export_onnx.py in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_cli(onnx_main, [str(a) for a in args])
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def every_precision(layers):
    return {n: PRECISION_ORDER[i % 5] for i, n in enumerate(layers)}


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory):
    """A symmetric-grid network with FP32, FP16, INT8, INT4 and INT2 layers."""
    model = random_network("mobilenetv2", every_precision, weight_grid="symmetric", **SIZE)
    return make_run_dir(tmp_path_factory.mktemp("mixed") / "run", model)


def test_export_passes_the_checker_and_holds_the_codes_at_the_mappings_bit_widths(mixed_run, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    code, stdout, stderr = cli(capsys, "--run_dir", mixed_run, "--output_file", out)
    assert code == 0, stderr
    last = stdout.strip().splitlines()[-1]
    match = re.fullmatch(r"onnxruntime top-1 agreement: (\d+\.\d\d) %", last)
    assert match and float(match.group(1)) >= 99.5, stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == onnx_export.OPSET_INT2  # INT2 weights need opset 25
    assert json.loads({p.key: p.value for p in model.metadata_props}["mapping"]) == load_run(mixed_run).mapping

    run = load_run(mixed_run)
    parts = {op.name: op for op in build_integer_network(run).ops if isinstance(op, ConvPart) and op.compute == "int"}
    stored = onnx_export.weight_codes_in(model)
    assert len(stored) == len(parts) and {bits for bits, _ in stored.values()} == {8, 4, 2}
    for name, part in parts.items():
        bits, codes = stored[f"{name}.w_int{part.weight_bits}"]
        assert bits == PRECISIONS[run.mapping[part.layer]].bits == part.weight_bits
        m = 2 ** (bits - 1) - 1
        assert codes.min() >= -m and codes.max() <= m   # narrow range: INT2 ternary
        # the trained codes, a channel's sign flipped where its multiplier is negative
        assert np.array_equal(np.abs(codes), np.abs(part.weights.astype(np.int64))), name
    # fp16 layers keep half weights, widened by a Cast
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves and any(n.op_type == "Cast" for n in model.graph.node)


def test_onnxruntime_agrees_with_the_reference_within_one_lsb(tmp_path):
    model = random_network("mobilenetv2", lambda layers: {n: "int8" for n in layers}, weight_grid="symmetric",
                           **SIZE)
    run = load_run(make_run_dir(tmp_path / "run", model))
    net = build_integer_network(run)
    exported = onnx_export.to_onnx(net, debug_outputs=True)
    assert exported.opset == onnx_export.OPSET
    images, _ = load_test_images(run)
    names = list(exported.buffer_outputs)
    got = onnx_export.run_ort(onnx_export.ort_session(exported.model), images,
                              outputs=[onnx_export.OUTPUT] + [exported.buffer_outputs[n] for n in names])
    expected, buffers = reference.run(net, images, return_buffers=True)
    first_layer = next(op for op in net.ops if isinstance(op, ConvPart)).outputs[0].buffer
    differing = total = 0
    for name, held in zip(names, got[1:]):
        codes = held.astype(np.int64) - onnx_export.zero_point(net.buffer(name).format)
        diff = np.abs(codes - buffers[name])
        if name in ("input:s8", first_layer):   # nothing upstream differs: the rounding alone, one LSB
            assert diff.max() <= 1, name
        differing, total = differing + int((diff > 0).sum()), total + diff.size
    assert differing <= 0.01 * total   # a 1-LSB miss downstream moves a few codes more, rarely
    # the logits: at most what one LSB of every classifier input moves them by
    head = [op for op in net.ops if isinstance(op, ConvPart)][-1]
    weights = np.abs(head.effective_weights()).reshape(head.out_channels, -1)
    lsb = np.abs(head.outputs[0].epilogue.scale) * weights.sum(1)
    assert np.all(np.abs(got[0] - expected) <= lsb[None, :] * 1.0001), np.abs(got[0] - expected).max()


def test_a_dorefa_layer_is_refused_with_one_line(tmp_path, capsys):
    model = random_network("mobilenetv2", every_precision, **SIZE)
    run_dir = make_run_dir(tmp_path / "run", model)
    code, _, stderr = cli(capsys, "--run_dir", run_dir, "--output_file", tmp_path / "net.onnx")
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    first_int = next(n for n, p in every_precision(load_run(run_dir).mapping).items() if p.startswith("int"))
    assert stderr.startswith(f"error: layer {first_int}: ") and "dorefa grid" in stderr
    assert "--weight_grid symmetric" in stderr and "deploy/export_c.py" in stderr
    assert not (tmp_path / "net.onnx").exists()


def test_files_of_another_grid_do_not_meet(mixed_run, tmp_path, capsys):
    import shutil
    other = tmp_path / "other"
    shutil.copytree(mixed_run, other)
    doc = json.loads((other / "mapping.json").read_text())
    del doc["model"]["weight_grid"]           # as a DoReFa run's mapping.json says it
    (other / "mapping.json").write_text(json.dumps(doc))
    code, _, stderr = cli(capsys, "--run_dir", other, "--output_file", tmp_path / "x.onnx")
    assert code == 2 and "weight grid 'dorefa'" in stderr and "'symmetric'" in stderr, stderr


def test_a_symmetric_stage1_run_records_its_grid_and_exports(tmp_path, capsys, run_python):
    """The user's path: the stage-1 script with --weight_grid symmetric, then the ONNX export."""
    doc = analysis_document(analyze_network(SPEC), memory_threshold_kb=1024)
    for i, layer in enumerate(doc["layers"]):
        layer["allowed_precisions"] = [PRECISION_ORDER[i % 5]]
    (tmp_path / "analysis.json").write_text(json.dumps(doc))
    r = run_python([STAGE1, "--tensor_analysis_json", tmp_path / "analysis.json", "--epochs", "1", "--warmup_epochs",
                    "0", "--finetune_epochs", "1", "--batch_size", "16", "--limit_train", "64", "--limit_eval", "32",
                    "--output_dir", tmp_path / "run", "--device", "cpu", "--compile", "off", "--threads", "1",
                    "--dataset", "digits", "--weight_grid", "symmetric"])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    mapping = json.loads((tmp_path / "run" / "mapping.json").read_text())
    assert summary["weight_grid"] == "symmetric" and mapping["model"]["weight_grid"] == "symmetric"
    code, stdout, stderr = cli(capsys, "--run_dir", tmp_path / "run", "--output_file", tmp_path / "run.onnx")
    assert code == 0, stderr
    assert float(stdout.strip().splitlines()[-1].split(":")[1].rstrip(" %")) >= 99.5, stdout


def test_the_c_export_runs_the_symmetric_grid_bit_exactly(mixed_run, tmp_path):
    export_and_check(mixed_run, tmp_path / "c", ["host"], images=8, agreement_images=0)


def test_a_pact_clip_just_below_a_code_keeps_that_code():
    """A trained clip a gives a·(L/a) = 254.9999997 exactly, 255 in the IR's float32 product: the export
    must take the IR's code (a floor of the exact quotient made every saturated activation of a trained
    run one LSB low)."""
    from deploy.ir import FloatToInt
    to_int = FloatToInt(lo_r=0.0, hi_r=0.9197608828544617, inv_scale=277.2459716796875, lo=0, hi=255)
    assert to_int.hi_r * to_int.inv_scale < 255 <= float(np.float32(to_int.hi_r) * np.float32(to_int.inv_scale))
    lo, hi = onnx_export.clamp_codes(to_int, 3)
    assert lo.tolist() == [0, 0, 0] and hi.tolist() == [255, 255, 255]


def test_an_output_file_that_is_not_an_export_is_left_alone(mixed_run, tmp_path, capsys):
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes")
    code, _, stderr = cli(capsys, "--run_dir", mixed_run, "--output_file", notes, "--agreement_images", "0")
    assert code == 2 and "exists and is not an ONNX model written by this tool" in stderr
    assert notes.read_text() == "my notes"


def test_split_layers_export_and_agree(tmp_path):
    """Stage-2 parts: each part's channels, a depthwise split reading its own input slice, joined again."""
    model = random_network("mobilenetv2", split_mapping, weight_grid="symmetric", **SIZE)
    from models.network import mixed_layers
    assert all(layer.weight_grid == "symmetric" for _, layer in mixed_layers(model))  # kept by the split layers
    run = load_run(make_run_dir(tmp_path / "run", model))
    net = build_integer_network(run)
    assert sum(isinstance(op, ConvPart) for op in net.ops) > len(run.mapping)
    exported = onnx_export.to_onnx(net, debug_outputs=True)
    images, _ = load_test_images(run)
    names = list(exported.buffer_outputs)
    got = onnx_export.run_ort(onnx_export.ort_session(exported.model), images,
                              outputs=[onnx_export.OUTPUT] + [exported.buffer_outputs[n] for n in names])
    expected, buffers = reference.run(net, images, return_buffers=True)
    assert (got[0].argmax(1) == expected.argmax(1)).mean() >= 0.95
    # Every buffer, the joined split outputs among them, agrees but where a rounding-boundary miss (float
    # against fixed point; the int pool's exact ties, which the IR sends to even) spreads: one 4-bit LSB
    # moves a whole 3x3 neighbourhood of the next depthwise output. A wrong slice or join would move most.
    for name, held in zip(names, got[1:]):
        fmt = net.buffer(name).format
        if fmt.is_int:
            diff = np.abs(held.astype(np.int64) - onnx_export.zero_point(fmt) - buffers[name])
            assert (diff <= 1).mean() >= 0.9 and (diff == 0).mean() >= 0.8, name
        else:
            ref = buffers[name].astype(np.float32)
            close = np.isclose(held.astype(np.float32), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())
            assert close.mean() >= 0.97, name
