"""Where models come from: the embedded one, a local folder, the hub cache, sd15-random."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_sdopt.models.architectures import SD15, TINY, build_components
from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.models.sources import TINY_DIR, resolve_model
from tests.conftest import FAST

REPO = Path(__file__).resolve().parent.parent
DRAW = """
def test_draw(sdopt):
    result = sdopt.run("fp16+vae_tiling")
    assert result.image.size == (64, 64)
    assert result.scenario.model == {model!r}
"""


# Each embedded model: its pipeline class, denoiser component and class, and its text encoders.
EMBEDDED = {
    "tiny": ("StableDiffusionPipeline", "unet", "UNet2DConditionModel", ["CLIPTextModel"]),
    "tiny-xl": ("StableDiffusionXLPipeline", "unet", "UNet2DConditionModel",
                ["CLIPTextModel", "CLIPTextModelWithProjection"]),
    "tiny-sd3": ("StableDiffusion3Pipeline", "transformer", "SD3Transformer2DModel",
                 ["CLIPTextModelWithProjection", "CLIPTextModelWithProjection"]),
}


@pytest.mark.parametrize("name", EMBEDDED)
def test_each_embedded_model_is_small_and_a_real_diffusers_folder(name):
    from pytest_sdopt.models.architectures import EMBEDDED_ARCHITECTURES

    folder = TINY_DIR.parent / name
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total <= 10 * 10**6
    index = json.loads((folder / "model_index.json").read_text())
    pipeline, denoiser, denoiser_class, encoders = EMBEDDED[name]
    assert index["_class_name"] == pipeline and index[denoiser] == ["diffusers", denoiser_class]
    assert [index[key][1] for key in ("text_encoder", "text_encoder_2") if key in index] == encoders
    assert index["tokenizer"][1] == "CLIPTokenizer"
    assert not [f for f in folder.rglob("*") if f.suffix in (".bin", ".ckpt", ".pt", ".pth", ".pkl")]
    source, arch = resolve_model(name), EMBEDDED_ARCHITECTURES[name]
    assert (source.kind, source.family.pipeline, source.denoiser.class_name) == ("embedded", pipeline, denoiser_class)
    assert (source.default_size, source.default_steps) == (arch.default_size, arch.default_steps) == ((128, 128), 10)


def test_a_local_folder_loads_through_from_pretrained(run_sdopt, tiny_copy):
    result = run_sdopt(DRAW.format(model=str(tiny_copy)), "--sdopt-model", str(tiny_copy))
    result.assert_outcomes(passed=1)


def test_the_marker_can_name_the_model(run_sdopt, tiny_copy):
    source = f"import pytest\n\n@pytest.mark.sdopt(model={str(tiny_copy)!r})" + DRAW.format(model=str(tiny_copy))
    result = run_sdopt(source)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("make, fragment", [
    (lambda tmp: tmp / "nowhere", r"does not exist \(no such folder\)"),
    (lambda tmp: tmp, "is not a diffusers pipeline: it has no model_index.json"),
    (lambda tmp: (tmp / "model.ckpt").write_bytes(b"x") and tmp / "model.ckpt", "is a file, not a diffusers pipeline"),
])
def test_a_model_that_is_not_a_pipeline_gets_a_clear_error(tmp_path, make, fragment):
    with pytest.raises(SdoptUsageError, match=fragment):
        resolve_model(str(make(tmp_path)))


def test_a_folder_holding_only_pickles_is_refused(run_sdopt, tiny_copy):
    weights = tiny_copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # never loaded: refused before any unpickling
    result = run_sdopt(DRAW.format(model=str(tiny_copy)), "--sdopt-model", str(tiny_copy))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*has only pickle weights (.bin/.ckpt) in unet; pytest-sdopt loads safetensors only*"])


def test_an_uncached_hub_id_names_the_fix(run_sdopt, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_sdopt(DRAW.format(model="acme/not-cached"), "--sdopt-model", "acme/not-cached", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*model 'acme/not-cached' is no folder*not in the local Hugging Face cache*never downloads*"
                                 "hf download acme/not-cached*"])


def test_a_cached_hub_id_loads_offline(run_sdopt, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-sd"
    shutil.copytree(TINY_DIR, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run_sdopt(DRAW.format(model="acme/tiny-sd"), "--sdopt-model", "acme/tiny-sd", subprocess=True)
    result.assert_outcomes(passed=1)


def test_a_name_that_is_neither_gets_the_list_of_kinds():
    # Not of the form org/name, so only a folder: "no such folder" and the other kinds, no hub-cache advice.
    with pytest.raises(SdoptUsageError, match="no such folder.*'tiny', 'tiny-xl', 'tiny-sd3', embedded; 'sd15-random', 'sdxl-random', 'sd3-random', random weights; a cached hub id") as raised:
        resolve_model("not a model")
    assert "Hugging Face cache" not in str(raised.value)


def test_sd15_random_has_the_published_parameter_counts():
    parts = build_components(SD15, seed=0, device="meta", special_token_ids={"eos_token_id": 49407})
    counts = {name: sum(p.numel() for p in parts[name].parameters()) / 1e6 for name in ("unet", "vae", "text_encoder")}
    assert round(counts["unet"], 2) == 859.52
    assert round(counts["vae"], 2) == 83.65
    assert round(counts["text_encoder"], 2) == 123.06
    assert next(parts["unet"].parameters()).device.type == "meta"
    source = resolve_model("sd15-random")
    assert (source.default_size, source.default_steps) == ((512, 512), 20)


# The published models' parameter counts (SDXL base 1.0; SD3 medium, whose T5 is left out).
PUBLISHED = {
    "sdxl-random": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                    "text_encoder_2": 694_659_840},
    "sd3-random": {"transformer": 2_028_328_000, "vae": 83_819_683, "text_encoder": 123_650_304,
                   "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_sdxl_and_sd3_random_have_the_published_parameter_counts(name):
    from pytest_sdopt.models.architectures import RANDOM

    parts = build_components(RANDOM[name], seed=0, device="meta", special_token_ids={"eos_token_id": 49407})
    counts = {part: sum(p.numel() for p in parts[part].parameters()) for part in PUBLISHED[name]}
    assert counts == PUBLISHED[name]
    source = resolve_model(name)
    family = {"sdxl-random": ("sdxl", "StableDiffusionXLPipeline", "unet"),
              "sd3-random": ("sd3", "StableDiffusion3Pipeline", "transformer")}[name]
    assert (source.family.name, source.pipeline_class_name(), source.denoiser.kind) == family
    assert source.default_size == (1024, 1024)


@pytest.mark.parametrize("name", EMBEDDED)
def test_the_shipped_files_are_those_the_training_run_recorded(name):
    folder = TINY_DIR.parent / name
    made = json.loads((folder / "sdopt_model.json").read_text())
    shipped = {f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file()} - {"sdopt_model.json"}
    assert set(made["sha256"]) == shipped
    for relative, digest in made["sha256"].items():
        assert hashlib.sha256((folder / relative).read_bytes()).hexdigest() == digest, relative
    assert made["trained"]["minutes"] <= 75  # "about an hour" on the 2-core machine that trained it
    assert made["made_with"]["threads"] >= 1 and made["name"] == name


def test_tiny_xl_shares_tinys_vae_and_tiny_sd3_started_from_it():
    vae = {name: json.loads((TINY_DIR.parent / name / "sdopt_model.json").read_text())["sha256"]
           ["vae/diffusion_pytorch_model.safetensors"] for name in EMBEDDED}
    assert vae["tiny-xl"] == vae["tiny"] != vae["tiny-sd3"]
    config = json.loads((TINY_DIR.parent / "tiny-sd3" / "vae" / "config.json").read_text())
    assert config["latent_channels"] == 16 and config["shift_factor"] != 0 and not config["use_quant_conv"]


@pytest.mark.parametrize("name", ["tiny-xl", "tiny-sd3"])
def test_the_training_script_writes_each_family_reproducibly_as_a_folder_that_runs(tmp_path, name):
    """--quick runs of the SDXL and SD3 models: the same files twice, the shipped configs, and a pipeline that draws."""
    digests = []
    for run in ("first", "second"):
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), "--model", name, "--quick",
                        "--out", str(tmp_path / run)], check=True, capture_output=True, timeout=300)
        digests.append(json.loads((tmp_path / run / "sdopt_model.json").read_text())["sha256"])
    assert digests[0] == digests[1]
    shipped = json.loads((TINY_DIR.parent / name / "sdopt_model.json").read_text())["sha256"]
    assert set(digests[0]) == set(shipped)
    denoiser = "transformer" if name == "tiny-sd3" else "unet"
    for relative in ("model_index.json", f"{denoiser}/config.json", "text_encoder_2/config.json",
                     "tokenizer_2/vocab.json"):
        assert digests[0][relative] == shipped[relative], relative
    pipe = resolve_model(str(tmp_path / "first")).load()
    image = pipe("a red circle on a blue background", num_inference_steps=2, height=64, width=64,
                 output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_the_training_script_is_reproducible_from_its_seed(tmp_path):
    """Two short runs (--quick: a few steps of each part) write identical files; the full run differs only in length."""
    digests = []
    for name in ("first", "second"):
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), "--quick", "--out",
                        str(tmp_path / name)], check=True, capture_output=True, timeout=300)
        made = json.loads((tmp_path / name / "sdopt_model.json").read_text())
        digests.append(made["sha256"])
        assert made["trained"]["recipe"]["unet_steps"] == 3
    assert digests[0] == digests[1]
    # The shipped weights had their last stage (the decoder's tile tuning) run apart, with --from:
    # that path writes the same files as one whole run.
    script = [sys.executable, str(REPO / "scripts" / "make_tiny_model.py"), "--quick"]
    subprocess.run([*script, "--tile-steps", "0", "--out", str(tmp_path / "stages")], check=True,
                   capture_output=True, timeout=300)
    subprocess.run([*script, "--from", str(tmp_path / "stages"), "--out", str(tmp_path / "last")], check=True,
                   capture_output=True, timeout=300)
    assert json.loads((tmp_path / "last" / "sdopt_model.json").read_text())["sha256"] == digests[0]
    shipped = json.loads((TINY_DIR / "sdopt_model.json").read_text())
    assert set(digests[0]) == set(shipped["sha256"])
    for relative in ("tokenizer/vocab.json", "tokenizer/merges.txt", "unet/config.json", "model_index.json"):
        assert digests[0][relative] == shipped["sha256"][relative], relative  # only the weights depend on training


def test_a_random_model_is_built_once_then_loaded_from_its_saved_weights(tmp_path, monkeypatch):
    """sd15-random's path, on the tiny architecture: built on the CPU, saved, then every load reads the files."""
    import torch

    from pytest_sdopt.models import sources as models
    from pytest_sdopt.models.architectures import TINY

    stale = tmp_path / "tiny-seed0-torch1.0-diffusers0.1-transformers4.0"
    stale.mkdir()  # another version's copy: replaced, so the cache holds one
    folder = models.materialize(TINY, tmp_path)
    assert (folder / "model_index.json").is_file() and not stale.exists()
    assert not list(tmp_path.glob(".*partial"))
    assert not list(folder.rglob("*.bin")), "safetensors only"

    def no_second_build(*args, **kwargs):
        raise AssertionError("built again although the saved weights exist")

    monkeypatch.setattr(models, "_build_random", no_second_build)
    assert models.materialize(TINY, tmp_path) == folder
    first, second = models._load_folder(folder, "x"), models._load_folder(folder, "x")
    assert first.unet is not second.unet  # a fresh pipeline each time: no shared state between stacks
    for name, weight in first.unet.state_dict().items():
        assert torch.equal(weight, second.unet.state_dict()[name]), name
    monkeypatch.undo()
    built = models._build_random(TINY, "cpu")  # the same seed on the CPU draws the same weights
    assert torch.equal(built.unet.conv_in.weight, first.unet.conv_in.weight)


PROMPT = """
import json

def test_prompt(sdopt):
    print("PROMPT=" + json.dumps(sdopt.run("fp32").scenario.prompt))
"""


def test_a_run_draws_the_models_own_prompt_unless_one_is_set(run_sdopt, tiny_copy):
    from pytest_sdopt.config.defaults import DEFAULT_PROMPT

    tiny = resolve_model("tiny")
    made = json.loads((TINY_DIR / "sdopt_model.json").read_text())
    assert tiny.default_prompt == made["default_prompt"] != DEFAULT_PROMPT  # a scene the model was trained on
    assert resolve_model(str(tiny_copy)).default_prompt == DEFAULT_PROMPT  # a model that names none
    for args, expected in (((), tiny.default_prompt), (("--sdopt-model", str(tiny_copy)), DEFAULT_PROMPT),
                           (("--sdopt-prompt", "a red circle"), "a red circle")):
        result = run_sdopt(PROMPT, "-s", *args)
        result.assert_outcomes(passed=1)
        assert f"PROMPT={json.dumps(expected)}" in result.stdout.str()


def test_a_relative_model_folder_is_taken_from_the_ini_file_or_the_rootdir_not_the_current_folder(
        pytester, monkeypatch):
    """Run from a subfolder: `models/tiny-copy` exists only under the project, where the ini file is.
    Taken from the current folder it would be no folder, and then an uncached hub id."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copytree(TINY_DIR, pytester.path / "models" / "tiny-copy")
    pytester.makeini("[pytest]\nsdopt_model = models/tiny-copy\n")
    pytester.makepyfile(test_ini="""
        def test_from_ini(sdopt):
            assert sdopt.run("fp32").image.size == (64, 64)
    """, test_marker="""
        import pytest

        @pytest.mark.sdopt(model="./models/tiny-copy")
        def test_from_marker(sdopt):
            assert sdopt.run("fp32").image.size == (64, 64)

        def test_from_keyword(sdopt):
            assert sdopt.run("fp32", model="models/tiny-copy").image.size == (64, 64)
    """)
    elsewhere = pytester.mkdir("elsewhere")
    monkeypatch.chdir(elsewhere)
    quiet = ("-W", "ignore::pytest.PytestAssertRewriteWarning")
    result = pytester.runpytest("-p", "pytest_sdopt", *quiet, *FAST, "--rootdir", str(pytester.path),
                                "-c", str(pytester.path / "tox.ini"), str(pytester.path))
    result.assert_outcomes(passed=3)
    # The same relative name on the command line is the current folder's: none here, so it says so.
    missing = pytester.runpytest("-p", "pytest_sdopt", *quiet, *FAST, "--rootdir", str(pytester.path),
                                 "-c", str(pytester.path / "tox.ini"), "--sdopt-model", "./models/tiny-copy",
                                 str(pytester.path / "test_ini.py"))
    missing.assert_outcomes(failed=1)
    missing.stdout.fnmatch_lines(["*model folder '*elsewhere/models/tiny-copy' does not exist (no such folder)*"])
