"""The end-of-session table, from records alone: ratios to the reference run, n/a, skips."""

from types import SimpleNamespace

from pytest_sdopt.checks.checking import CheckedRun
from pytest_sdopt.config.scenario import GateLimits
from pytest_sdopt.checks.gates import GateOutcome, Status
from pytest_sdopt.results.report import run_entry
from pytest_sdopt.config.scenario import Scenario
from pytest_sdopt.measure.settling import Settled
from pytest_sdopt.measure.figures import SpeedFigure
from pytest_sdopt.results.summary import RunRecord, render_table, table_rows

SCENARIO = Scenario("tiny", "cuda:0", "p", 1, (64, 64), 2, 7.5)


def run(stack, its, vram, host=2 * 10**9, scenario=SCENARIO):
    return SimpleNamespace(stack=stack, its=its, peak_vram_bytes=vram, peak_host_bytes=host, device="cuda:0",
                           scenario=scenario, env={}, total_s=1.0, peak_vram_reserved_bytes=vram,
                           peak_device_bytes=None, step_times_s=[[1 / its] * 2] * 3, run_host_bytes=host // 10,
                           speed=SpeedFigure.measured([[1 / its] * 2] * 3, []), reference_s=[], warmup_s=[1.0],
                           call_s=[1.0], settled=Settled())


def checked(result, *outcomes):
    return CheckedRun(result, GateLimits(), list(outcomes))


def test_ratios_are_to_the_reference_run_of_the_same_scenario():
    reference, fast = run("fp32", 10.0, 8 * 10**9), run("fp16", 25.0, 4 * 10**9)
    other_scenario = run("bf16", 30.0, 4 * 10**9, scenario=Scenario("tiny", "cuda:0", "q", 1, (64, 64), 2, 7.5))
    records = [RunRecord("m::fp32", "fp32", "fp32", result=reference, in_matrix=True),
               RunRecord("m::fp16", "fp16", "fp16", result=fast, in_matrix=True,
                         checked=checked(fast, GateOutcome("min_ssim", Status.PASS, value=0.97123))),
               RunRecord("m::bf16", "bf16", "bf16", result=other_scenario, in_matrix=True)]
    header, rows = table_rows([run_entry(record) for record in records])
    assert header[0] == "stack"  # no test column when every row comes from the matrix
    assert rows[0][2:11] == ["10.00", "1.00x", "8.00 GB", "1.00x", "2.00 GB", "200.00 MB", "1.00x", "-", "not checked"]
    assert rows[1][2:11] == ["25.00", "2.50x", "4.00 GB", "0.50x", "2.00 GB", "200.00 MB", "1.00x", "0.9712", "pass"]
    assert rows[2][3] == "-"  # no reference ran on its scenario


def test_verdicts_name_failed_and_not_applicable_gates_and_skips():
    result = run("fp16", 5.0, None)
    outcomes = (GateOutcome("min_its", Status.FAIL), GateOutcome("max_vram", Status.NOT_APPLICABLE),
                GateOutcome("min_ssim", Status.PASS, value=0.99))
    records = [RunRecord("t.py::test[fp16]", "test[fp16]", "fp16", result=result, checked=checked(result, *outcomes)),
               RunRecord("t.py::test[xformers]", "test[xformers]", "xformers", skipped="xformers needs CUDA")]
    entries = [run_entry(record) for record in records]
    header, rows = table_rows(entries)
    assert header[:2] == ["test", "stack"]
    assert rows[0][-1] == "FAIL: min_its (n/a: max_vram)"
    assert rows[0][5] == "n/a"  # peak VRAM not measured
    assert rows[1][-1] == "skipped: xformers needs CUDA"
    lines = render_table(entries)
    assert lines[1].index("FAIL") == lines[0].index("verdict")  # columns line up
    assert lines[0].index("it/s") + len("it/s") == lines[1].index("5.00") + len("5.00")  # numbers right-aligned


def test_an_inconclusive_gate_passes_the_run_and_is_named_in_its_verdict_and_strict_fails_it():
    result = run("fp16", 5.0, None)
    outcomes = (GateOutcome("max_its_drop", Status.INCONCLUSIVE), GateOutcome("max_vram", Status.NOT_APPLICABLE))
    lenient = RunRecord("t.py::test[fp16]", "test[fp16]", "fp16", result=result, checked=checked(result, *outcomes))
    strict = RunRecord("t.py::test[fp16]", "test[fp16]", "fp16", result=result,
                       checked=CheckedRun(result, GateLimits(), list(outcomes), strict=True))
    rows = table_rows([run_entry(lenient), run_entry(strict)])[1]
    assert rows[0][-1] == "pass (inconclusive: max_its_drop; n/a: max_vram)"
    assert rows[1][-1] == "FAIL (strict): max_its_drop inconclusive (n/a: max_vram)"
    assert run_entry(lenient)["outcome"] == "passed" and run_entry(strict)["outcome"] == "failed"


def test_a_speed_ratio_of_a_disturbed_run_is_marked_and_explained():
    reference, steady = run("fp32", 10.0, None), run("fp16", 20.0, None)
    disturbed = run("bf16", 0.7, None)
    disturbed.speed = SpeedFigure.measured([[1 / 0.7] * 2, [1 / 0.2] * 2, [1 / 0.7] * 2], [])  # calls 3.5x apart
    entries = [run_entry(RunRecord(f"m::{r.stack}", r.stack, r.stack, result=r, in_matrix=True))
               for r in (reference, steady, disturbed)]
    header, rows = table_rows(entries)
    assert [row[3] for row in rows] == ["1.00x", "2.00x", "0.07x?"]
    assert render_table(entries)[-1].startswith("?: a disturbed run (its calls disagree by more than 10%")
