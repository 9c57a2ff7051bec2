"""The baseline store on real files: layout, round trips, atomic writes, merges under concurrency."""

import json
import multiprocessing
from pathlib import Path
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pytest_sdopt.checks.baselines import BaselineError, BaselineStore, fingerprint, model_key, scenario_key
from pytest_sdopt.config.scenario import Scenario
from pytest_sdopt.measure.figures import SpeedFigure

SCENARIO = Scenario("tiny", "cpu", "a red circle", 1, (64, 48), 2, 7.5)
ENV = {"device_name": "AMD EPYC", "torch": "2.13.0+cpu", "diffusers": "0.42.1"}


def result(stack="fp16", its=40.0, env=ENV, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return SimpleNamespace(stack=stack, scenario=SCENARIO, images=[Image.fromarray(pixels)],
                           image=Image.fromarray(pixels), step_times_s=[[1 / its] * 2], its=its, total_s=0.5,
                           speed=SpeedFigure.measured([[1 / its] * 2], []), device="cpu", env=env, peak_vram_bytes=None,
                           peak_vram_reserved_bytes=None, peak_device_bytes=None, peak_host_bytes=500_000_000,
                           run_host_bytes=20_000_000)


def test_layout_names_model_scenario_and_stack(tmp_path):
    store = BaselineStore(tmp_path / "baselines", tmp_path / "locks")
    key = scenario_key(SCENARIO)
    assert key.startswith("64x48-2steps-seed1-cfg7.5-p")
    assert store.image_path(SCENARIO, "fp16+tome:0.3") == tmp_path / "baselines" / "tiny" / key / "fp16+tome-0.3.png"


def test_every_part_of_the_scenario_but_the_device_changes_the_folder(tmp_path):
    store = BaselineStore(tmp_path, tmp_path / "locks")
    folders = {store.folder(SCENARIO)}
    for change in [dict(prompt="a blue square"), dict(seed=2), dict(size=(64, 64)), dict(steps=3),
                   dict(guidance=5.0), dict(model="sd15-random")]:
        folders.add(store.folder(replace(SCENARIO, **change)))
    assert len(folders) == 7
    assert store.folder(replace(SCENARIO, device="cuda:0")) == store.folder(SCENARIO)


def test_model_keys_are_safe_folder_names(tmp_path):
    assert model_key("runwayml/stable-diffusion-v1-5") == "runwayml--stable-diffusion-v1-5"
    folder = tmp_path / "my model"
    folder.mkdir()
    assert model_key(str(folder)) == "my_model"


def test_record_then_read_round_trips_image_and_metrics(tmp_path):
    store = BaselineStore(tmp_path / "b", tmp_path / "locks")
    run = result()
    writes = store.record(run)
    path = Path(writes[0].path)
    assert [(Path(w.path).name, w.replaced) for w in writes] == [("fp16.png", False), ("fp16.json", False)]
    assert np.array_equal(np.asarray(store.read_image(SCENARIO, "fp16")), np.asarray(run.image))
    baseline = store.baseline(SCENARIO, "fp16", ENV)
    assert baseline.exists and baseline.image_path == path
    assert baseline.metrics["its"] == 40.0 and baseline.metrics["peak_host_bytes"] == 500_000_000
    scenario = json.loads((path.parent / "scenario.json").read_text())
    assert scenario["prompt"] == "a red circle" and scenario["size"] == [64, 48]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # no temporary files left
    assert not (tmp_path / "b" / "locks").exists()  # locks live outside the baseline dir


def test_nothing_stored_reads_as_none(tmp_path):
    baseline = BaselineStore(tmp_path, tmp_path / "locks").baseline(SCENARIO, "fp16", ENV)
    assert not baseline.exists and baseline.metrics is None and baseline.all_metrics == {}


def test_metrics_of_other_devices_are_kept_when_one_device_records(tmp_path):
    store = BaselineStore(tmp_path, tmp_path / "locks")
    gpu = {**ENV, "device_name": "NVIDIA H100"}
    store.record(result(its=40.0))
    store.record(result(its=900.0, env=gpu))
    store.record(result(its=41.0))
    every = store.read_metrics(SCENARIO, "fp16")
    assert {name: entry["its"] for name, entry in every.items()} == {fingerprint(ENV): 41.0, fingerprint(gpu): 900.0}


def _record_as(args):
    root, name = args
    store = BaselineStore(root, root.parent / "locks")
    store.record(result(its=float(len(name)), env={**ENV, "device_name": name}))


def test_concurrent_recorders_never_lose_each_others_metrics(tmp_path):
    """As pytest-xdist workers on different GPUs would: separate processes, one metrics file."""
    names = [f"GPU {index}" + "x" * index for index in range(8)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_record_as, [(tmp_path / "b", name) for name in names])
    store = BaselineStore(tmp_path / "b", tmp_path / "locks")
    assert len(store.read_metrics(SCENARIO, "fp16")) == 8


def test_unreadable_files_are_errors_that_say_how_to_repair_them(tmp_path):
    store = BaselineStore(tmp_path, tmp_path / "locks")
    path = Path(store.record(result())[0].path)
    store.metrics_path(SCENARIO, "fp16").write_text("{not json")
    with pytest.raises(BaselineError, match="cannot be read.*--sdopt-update-baselines"):
        store.read_metrics(SCENARIO, "fp16")
    store.metrics_path(SCENARIO, "fp16").write_text('{"schema": 99}')
    with pytest.raises(BaselineError, match="not in schema 1"):
        store.read_metrics(SCENARIO, "fp16")
    path.write_bytes(b"not a png")
    with pytest.raises(BaselineError, match="cannot be read"):
        store.read_image(SCENARIO, "fp16")


def test_every_write_is_returned_with_the_replaced_image_s_ssim_to_the_old_one(tmp_path):
    store = BaselineStore(tmp_path, tmp_path / "locks")
    store.record(result())
    same = store.record(result(), tolerance=0.95)
    assert [(Path(w.path).name, w.replaced) for w in same] == [("fp16.png", True), ("fp16.json", True)]
    assert same[0].ssim_to_old == pytest.approx(1.0) and not same[0].suspicious
    assert same[0].describe("b/fp16.png") == "replaced b/fp16.png: SSIM 1.0000 to the old image"
    other = store.record(result(seed=1), tolerance=0.95)[0]  # other noise: nothing alike
    assert other.suspicious and other.ssim_to_old < 0.1
    assert "below fp16's min_ssim 0.95: look at it before you commit it" in other.describe("b/fp16.png")
    only_metrics = store.record(result(seed=2), image=False)
    assert [Path(w.path).name for w in only_metrics] == ["fp16.json"]
    assert np.array_equal(np.asarray(store.read_image(SCENARIO, "fp16")), np.asarray(result(seed=1).image))


def test_a_speed_recorded_on_a_disturbed_machine_is_flagged_in_the_list_of_writes(tmp_path):
    store = BaselineStore(tmp_path, tmp_path / "locks")
    steady = store.record(result(), image=False)[0]
    assert not steady.suspicious and steady.describe("b/fp16.json") == f"new b/fp16.json ({fingerprint(ENV)})"
    disturbed = result()
    disturbed.speed = SpeedFigure.measured([[0.025] * 2, [0.1] * 2, [1.0] * 2], [])  # calls 40x apart
    flagged = store.record(disturbed, image=False)[0]
    assert flagged.suspicious and flagged.disturbed
    assert "its speed was recorded on a disturbed machine (its runs disagree by ±" in flagged.describe("b/fp16.json")
    assert "checks against it will be inconclusive" in flagged.describe("b/fp16.json")
