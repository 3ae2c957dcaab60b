"""Profiling on the target (deploy/profiling.py, deploy/c/profile*.c, deploy/profile_m7.py): the op table
every export carries, the harness's output and its checks, and, on QEMU (skipped without
arm-none-eabi-gcc and qemu-system-arm unless CI=true), the harness itself: still bit-exact, one count
per op, instructions calibrated on a loop of known length. The normal builds stay unprofiled."""
import json
import os
import subprocess

import pytest

from deploy import c_export, profiling, synthetic
from models import formats

IMAGES = 3


@pytest.fixture
def m7_toolchain():
    if not profiling.qemu_toolchain_available():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: arm-none-eabi-gcc and qemu-system-arm must be installed "
                        "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
        pytest.skip("needs arm-none-eabi-gcc and qemu-system-arm")


@pytest.fixture(scope="module")
def graph_export(tmp_path_factory):
    """(folder, network): random graph 0 exported with IMAGES images."""
    net = synthetic.random_network(0)
    images = synthetic.random_images(7, net.input_shape, IMAGES)
    folder = c_export.write_c_project(net, str(tmp_path_factory.mktemp("profile") / "g0"), images, [0] * IMAGES)
    return folder, net


def harness_text(ops, counter="instructions", calibration=(2_000_000, 2_000_000), exact="2/2", total=None):
    lines = [f"counter {counter} {40 if counter == 'instructions' else 1}", "images 2",
             f"calibration {calibration[0]} {calibration[1]}"]
    lines += [f"op {i} {c} op{i}" for i, c in enumerate(ops)]
    lines += [f"total {sum(ops) + 100 if total is None else total}", "accuracy: 1/2", f"bit-exact: {exact}"]
    return "\n".join(lines) + "\n"


# -- the op table ------------------------------------------------------------------------------------------------
def test_schemas_agree_with_the_project_list():
    assert (profiling.SCHEMA, profiling.OPS_SCHEMA) == (formats.PROFILE, formats.PROFILE_OPS)


def test_op_table_names_kinds_precisions_and_macs():
    net = synthetic.mobilenetv2_network(precision="mixed", seed=3)
    table = profiling.profile_table(net)
    assert [row["index"] for row in table] == list(range(len(net.ops)))
    assert sum(row["macs"] for row in table) == synthetic.multiply_accumulates(net)
    by_layer = {}
    for row in table:
        by_layer.setdefault(row["layer"], set()).add(row["kind"])
    assert by_layer["stem"] == {"conv"} and by_layer["b2.dw"] == {"dwconv"} and by_layer["b2.expand"] == {"pwconv"}
    assert by_layer["classifier"] == {"linear"} and by_layer["pool"] == {"pool"}
    assert by_layer["quantize"] == {"quantize"}
    assert {row["precision"] for row in table if row["macs"]} == {"int8", "int4", "int2", "fp16", "fp32"}
    quantize = table[0]
    assert quantize["feeds"] == ["stem"] and quantize["macs"] == 0


def test_uniform_int4_and_int2_networks_run_at_their_bits():
    for precision, bits in (("int4", 4), ("int2", 2)):
        net = synthetic.mobilenetv2_network(precision=precision, model_names=True)
        parts = [row for row in profiling.profile_table(net) if row["kind"] not in ("quantize", "pool")]
        assert {row["precision"] for row in parts} == {precision}
        assert {row["input"].lstrip("u") for row in parts} == {f"int{bits}"}
        assert parts[0]["layer"] == "features.0.0" and parts[-1]["layer"] == "classifier.1"
        assert net.metadata["model"]["type"] == "mobilenetv2"


def test_every_export_carries_the_op_table(graph_export):
    folder, net = graph_export
    doc = profiling.read_op_table(folder)
    assert doc["ops"] == json.loads(json.dumps(profiling.profile_table(net)))
    header = open(os.path.join(folder, profiling.OPS_HEADER)).read()
    assert f"#define ADAPTQ_PROFILE_OPS {len(net.ops)}\n" in header and '"b1.dw.p0"' in header
    for name in ("profile.c", "profile.h", "profile_main.c"):
        assert os.path.isfile(os.path.join(folder, name))


def test_a_profiled_export_is_still_replaceable(tmp_path):
    net = synthetic.random_network(1)
    images = synthetic.random_images(1, net.input_shape, 1)
    folder = c_export.write_c_project(net, str(tmp_path / "c"), images, [0])
    open(os.path.join(folder, profiling.PROFILE_FILE), "w").write("{}")
    c_export.write_c_project(net, folder, images, [0])


def test_normal_builds_are_not_profiled(graph_export):
    folder, _ = graph_export
    for target in ("host", "m7"):
        plan = subprocess.run(["make", "-n", "-B", "-C", folder, target], capture_output=True, text=True).stdout
        assert "gcc" in plan and "PROFILE" not in plan and "profile.c" not in plan and "profile-m7" not in plan, plan
    plan = subprocess.run(["make", "-n", "-B", "-C", folder, "profile-m7"], capture_output=True, text=True).stdout
    assert "-DADAPTQ_PROFILE " in plan and "-O2" in plan and "-mfpu=fpv5-d16 -mfloat-abi=hard" in plan
    assert "-icount shift=0" in plan and "build/profile-m7/" in plan and "build/m7/" not in plan


# -- the harness's output ----------------------------------------------------------------------------------------------
def test_parse_profile_output():
    parsed = profiling.parse_profile_output(harness_text([400, 1200, 80]))
    assert (parsed.counter, parsed.resolution, parsed.images) == ("instructions", 40, 2)
    assert parsed.ops == {0: 400, 1: 1200, 2: 80} and parsed.total == 1780 and parsed.calibration == [2_000_000] * 2


@pytest.mark.parametrize("text, message", [
    (harness_text([400], exact="1/2"), "bit-exact 1/2"),
    (harness_text([400], calibration=(1_065_240, 2_000_000)), "-icount shift=0"),
    (harness_text([0], counter="cycles", calibration=(0, 2_000_000), total=0), "counter never advanced"),
    ("counter instructions 40\nimages 2\nadaptq: processor fault\n", "no complete profile.*processor fault"),
])
def test_parse_profile_output_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        profiling.parse_profile_output(text, "harness")


def test_profile_document_joins_counts_with_the_table():
    net = synthetic.random_network(2)
    table = {"ops": profiling.profile_table(net), "network": net.metadata}
    counts = [100 * (i + 1) for i in range(len(net.ops))]
    doc = profiling.profile_document(table, profiling.parse_profile_output(harness_text(counts)), "qemu-mps2-an500")
    assert doc["schema"] == formats.PROFILE and doc["counter"] == "instructions"
    assert [op["count"] for op in doc["ops"]] == counts
    assert sum(row["count"] for row in doc["layers"]) == doc["total"]["ops_count"] == sum(counts)
    assert sum(row["macs"] for row in doc["layers"]) == doc["total"]["macs"] == synthetic.multiply_accumulates(net)
    with pytest.raises(ValueError, match="printed 2 op counts"):
        profiling.profile_document(table, profiling.parse_profile_output(harness_text(counts[:2])), "qemu")


# -- on QEMU -------------------------------------------------------------------------------------------------------
def test_profile_harness_is_bit_exact_and_counts_every_op(graph_export, m7_toolchain, tmp_path):
    folder, net = graph_export
    out = str(tmp_path / "profile.json")
    doc = profiling.run_profile(folder, images=2, output_json=out, timeout=300)
    assert doc["bit_exact"] == "2/2" and doc["images"] == 2 and doc["target"] == "qemu-mps2-an500"
    assert len(doc["ops"]) == len(net.ops) and all(op["count"] > 0 for op in doc["ops"])
    assert doc["total"]["ops_count"] <= doc["total"]["count"]
    counted, executed = doc["calibration"]["counted"], doc["calibration"]["instructions"]
    assert executed == 2_000_000 and abs(counted - executed) <= profiling.CALIBRATION_SLACK_TICKS * 40
    assert json.load(open(out)) == json.loads(json.dumps(doc))
    again = profiling.run_profile(folder, images=2, timeout=300)  # QEMU's virtual time is deterministic
    assert [op["count"] for op in again["ops"]] == [op["count"] for op in doc["ops"]]


def test_profile_harness_fails_when_not_bit_exact(tmp_path, m7_toolchain):
    from deploy import reference
    net = synthetic.random_network(3)
    images = synthetic.random_images(2, net.input_shape, 2)
    expected = reference.run(net, images)
    expected[1, 0] += 1.0
    folder = c_export.write_c_project(net, str(tmp_path / "c"), images, [0, 0], expected)
    with pytest.raises(ValueError, match="bit-exact 1/2"):
        profiling.run_profile(folder, images=2, timeout=300)


def test_the_calibration_loop_catches_a_timer_that_counts_host_time(graph_export, m7_toolchain):
    folder, _ = graph_export
    subprocess.run(["make", "-s", "-C", folder, "build/profile-m7/adaptq_profile.elf"], check=True,
                   capture_output=True)
    run = subprocess.run(["qemu-system-arm", "-M", "mps2-an500", "-cpu", "cortex-m7", "-nographic", "-monitor",
                          "none", "-semihosting-config", "enable=on,target=native", "-kernel",
                          os.path.join(folder, "build", "profile-m7", "adaptq_profile.elf")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "is QEMU run with -icount shift=0?" in run.stdout


def test_board_build_builds_and_reads_zero_on_qemu(graph_export, m7_toolchain):
    folder, _ = graph_export
    subprocess.run(["make", "-s", "-C", folder, "profile-m7-board"], check=True, capture_output=True)
    elf = os.path.join(folder, "build", "profile-m7-board", "adaptq_profile.elf")
    run = subprocess.run(["qemu-system-arm", "-M", "mps2-an500", "-cpu", "cortex-m7", "-nographic", "-monitor",
                          "none", "-semihosting-config", "enable=on,target=native", "-kernel", elf],
                         capture_output=True, text=True, timeout=120)
    assert "counter cycles 1" in run.stdout
    with pytest.raises(ValueError, match="counter never advanced"):  # QEMU has no DWT
        profiling.profile_from_output(folder, run.stdout, "board log")


# -- the command line ----------------------------------------------------------------------------------------------
def test_profile_m7_command_line(graph_export, m7_toolchain, run_python, tmp_path):
    folder, _ = graph_export
    out = tmp_path / "p.json"
    run = run_python(["deploy/profile_m7.py", "--export_dir", folder, "--output_json", out, "--images", "1"])
    assert run.returncode == 0, run.stderr[-2000:]
    assert "adaptq_predict:" in run.stdout and json.load(open(out))["images"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--export_dir", "/nonexistent/c"], "--export_dir /nonexistent/c: not a folder"),
    (["--export_dir", "."], "no profile_ops.json"),
    (["--export_dir", ".", "--images", "0"], "--images: expected a positive integer"),
    (["--export_dir", ".", "--board_output", "/nonexistent.log"], "--board_output /nonexistent.log: no such file"),
])
def test_profile_m7_bad_input_is_one_line(argv, message, run_main, tmp_path, monkeypatch):
    from deploy.profile_m7 import main
    monkeypatch.chdir(tmp_path)
    code, err = run_main(main, argv + ["--output_json", str(tmp_path / "p.json")])
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "p.json").exists()


def test_profile_m7_help_names_every_flag(run_main, capsys):
    from deploy.profile_m7 import build_parser
    text = build_parser().format_help()
    for flag in ("--export_dir", "--output_json", "--images", "--timeout", "--board_output", "--overwrite"):
        assert flag in text
