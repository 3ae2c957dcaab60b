"""The adaptq_m7 profile (this project's C kernels, fitted to QEMU instruction counts) and its fitter
(benchmarks/fit_kernel_profile.py, docs/hardware.md §4.7). No QEMU: the measured counts are fixtures."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import fit_kernel_profile as fit  # noqa: E402
from tensor_analysis.profiles import list_profiles, load_profile  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data")
MEASURED = os.path.join(DATA, "adaptq_m7_measurements.json")
HELD_OUT = os.path.join(DATA, "adaptq_m7_heldout.json")


def _errors(records, profile):
    return [(p - r["instructions"]) / r["instructions"] for r, p in zip(records, fit.predict(records, profile))]


def test_the_profile_loads_and_validates():
    assert "adaptq_m7" in list_profiles()
    prof = load_profile("adaptq_m7")
    assert prof.units["m7"].clock_mhz == 480 and prof.ram_kb == 1056 and prof.flash_kb == 2048
    assert 0 < prof.raw["cycles_per_instruction"] <= 2
    assert "cycles_per_instruction" in prof.sources and "[E]" in prof.sources["cycles_per_instruction"]


def test_uniform_networks_every_layer_within_10_percent():
    records, _ = fit.load_measurements(MEASURED)
    uniform = [r for r in records if r["network"] != "mixed"]
    errs = _errors(uniform, "adaptq_m7")
    worst = max(range(len(errs)), key=lambda i: abs(errs[i]))
    assert abs(errs[worst]) <= 0.10, (uniform[worst]["network"], uniform[worst]["name"], errs[worst])


def test_network_totals_within_2_percent():
    records, _ = fit.load_measurements(MEASURED)
    for net in {r["network"] for r in records}:
        rows = [r for r in records if r["network"] == net]
        m = sum(r["instructions"] for r in rows)
        p = sum(fit.predict(rows, "adaptq_m7"))
        assert abs(p - m) / m <= 0.02, (net, m, p)


def test_held_out_layer_shapes_within_10_percent():
    records, _ = fit.load_measurements(HELD_OUT)
    assert {r["kind"] for r in records} == {"conv", "dwconv", "pwconv"}
    for r, e in zip(records, _errors(records, "adaptq_m7")):
        assert abs(e) <= 0.10, (r["name"], e)


def test_refit_round_trip_reproduces_the_shipped_profile(tmp_path):
    out = tmp_path / "p.json"
    assert fit.main(["--measurements", MEASURED, "--output_profile", str(out)]) == 0
    new, shipped = json.loads(out.read_text()), load_profile("adaptq_m7").raw
    assert new["units"] == shipped["units"]
    records, _ = fit.load_measurements(MEASURED)
    assert max(abs(a - b) for a, b in zip(fit.predict(records, str(out)), fit.predict(records, "adaptq_m7"))) < 1e-6


@pytest.mark.parametrize("argv,message", [
    (["--output_profile", "x.json"], "give either"),
    (["--measurements", "/nonexistent.json", "--output_profile", "x.json"], "cannot read"),
    (["--measurements", MEASURED], "nothing to do"),
    (["--measurements", MEASURED, "--output_profile", "x.json", "--cycles_per_instruction", "0"], "must be > 0"),
    (["--work_dir", "/nonexistent", "--output_profile", "x.json"], "no such folder"),
])
def test_bad_input_is_refused_with_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fit.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.json").exists()


def test_the_script_refuses_as_a_user_runs_it(tmp_path):
    """The same refusal through the script itself: one line, exit 2, no traceback."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "fit_kernel_profile.py"), "--output_profile",
                        "x.json"], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2 and "give either" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
