"""The bad-input table: each row is a real pytest session with one mistake in it, and the one
clear message and exit status it must give. None may end in INTERNALERROR or a bare traceback."""

from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import FAST

USAGE, FAILED = pytest.ExitCode.USAGE_ERROR, pytest.ExitCode.TESTS_FAILED

RUN = "def test_it(sdopt):\n    sdopt.run({stack!r})\n"
CHECK = "def test_it(sdopt):\n    sdopt.check(sdopt.run('fp32'))\n"

# (id, extra command-line args, test file source, exit status, a line of the message)
TABLE = [
    ("unknown stack", (), RUN.format(stack="vae_tilling"), FAILED,
     "*unknown optimization 'vae_tilling' in stack 'vae_tilling'. Did you mean 'vae_tiling'? Valid names: *"),
    ("conflicting stack", (), RUN.format(stack="fp16+bf16"), FAILED,
     "*stack 'fp16+bf16' combines fp16 and bf16, which conflict: both set the precision (fp32, fp16, bf16). "
     "Keep one of them."),
    ("byte size in words", ("--sdopt-max-vram", "five gigs"), CHECK, USAGE,
     "*--sdopt-max-vram must be a byte count such as \"5.1 GB\", \"5100MB\", \"4.75GiB\" or an int of bytes, "
     "not 'five gigs'."),
    ("negative byte size", ("--sdopt-max-host-memory=-1GB",), CHECK, USAGE,
     "*--sdopt-max-host-memory must be a byte count such as*not '-1GB'."),
    ("zero byte size", (), "import pytest\n@pytest.mark.sdopt(max_vram=0)\n" + CHECK, FAILED,
     "*@pytest.mark.sdopt(max_vram=...) must be more than zero bytes, not 0."),
    ("min_ssim above 1", ("--sdopt-min-ssim", "1.5"), CHECK, USAGE,
     "*--sdopt-min-ssim must be an SSIM between 0 and 1 (1: identical images), not '1.5'."),
    ("min_ssim below 0 in a check", (), "def test_it(sdopt):\n    sdopt.check(sdopt.run('fp32'), min_ssim=-0.1)\n",
     FAILED, "*sdopt.check(min_ssim=...) must be an SSIM between 0 and 1 (1: identical images), not -0.1."),
    ("size not WxH", ("--sdopt-size", "100x"), CHECK, USAGE,
     "*--sdopt-size must be WIDTHxHEIGHT such as 512x512, not '100x'."),
    ("size not a multiple of 8", ("--sdopt-size", "60x64"), CHECK, USAGE,
     "*--sdopt-size 60x64 is not usable: width and height must be positive multiples of 8*"),
    ("zero steps", ("--sdopt-steps", "0"), CHECK, USAGE, "*--sdopt-steps must be a whole number >= 1, not 0."),
    ("missing model folder", ("--sdopt-model", "./no-such-model"), CHECK, FAILED,
     "*model folder '*/no-such-model' does not exist (no such folder). A relative folder is taken from*"),
    ("hub id not cached", ("--sdopt-model", "nobody/no-such-model"), CHECK, FAILED,
     "*model 'nobody/no-such-model' is no folder (none at '*nobody/no-such-model') and, as a hub id, not in the local "
     "Hugging Face cache*"),
    ("unknown marker keyword", (), "import pytest\n@pytest.mark.sdopt(max_ram='1GB')\n" + CHECK, FAILED,
     "*@pytest.mark.sdopt got unknown keyword(s) max_ram: neither an sdopt setting nor an argument of "
     "StableDiffusionPipeline.__call__. Did you mean 'max_ram' -> 'max_vram'? sdopt settings: *"),
    ("results dir under a file", ("--sdopt-results-dir", "a-file/results"), CHECK, USAGE,
     "*--sdopt-results-dir '*a-file/results' cannot be created: '*a-file' is a file. Choose another folder."),
    ("unknown matrix stack", ("--sdopt-matrix=fp32,bf17",), CHECK, USAGE,
     "*--sdopt-matrix: unknown optimization 'bf17' in stack 'bf17'. Did you mean 'bf16'?*"),
]


@pytest.mark.parametrize("args, source, status, message", [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_bad_input(pytester, monkeypatch, args, source, status, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(pytester.path / "hf-home"))  # an empty cache
    (pytester.path / "a-file").write_text("not a folder")
    pytester.makepyfile(test_bad=source)
    result = pytester.runpytest("-p", "pytest_sdopt", "-W", "ignore::pytest.PytestAssertRewriteWarning", *FAST, *args)
    assert result.ret == status
    output = result.stdout.lines + result.stderr.lines
    pytester_lines = pytest.LineMatcher(output)
    pytester_lines.fnmatch_lines([message])
    text = "\n".join(output)
    assert "INTERNALERROR" not in text and "Traceback" not in text
    assert "During handling of the above exception" not in text  # each error printed once, not as a chain


def test_a_folder_that_is_not_a_pipeline(pytester, tmp_path):
    (tmp_path / "empty").mkdir()
    pytester.makepyfile(test_bad=CHECK)
    result = pytester.runpytest("-p", "pytest_sdopt", *FAST, "--sdopt-model", str(tmp_path / "empty"))
    assert result.ret == FAILED
    result.stdout.fnmatch_lines(["*sdopt: model folder '*empty' is not a diffusers pipeline: it has no "
                                 "model_index.json. Point --sdopt-model at the folder that `save_pretrained()` wrote."])


def _recorded(pytester) -> Path:
    pytester.makepyfile(test_bad=CHECK)
    pytester.runpytest("-p", "pytest_sdopt", *FAST, "--sdopt-update-baselines").assert_outcomes(passed=1)
    return next((pytester.path / "baselines").rglob("fp32.png"))


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n garbage"), "*the baseline image *fp32.png cannot be read*"),
    (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "*the baseline image *fp32.png cannot be read*"),
    (lambda p: Image.new("L", (64, 64)).save(p), "*the baseline image *fp32.png is in mode 'L', not RGB*"),
    (lambda p: Image.new("RGB", (64, 32)).save(p), "*the baseline image is 64x32 but this run drew 64x64*"),
    (lambda p: p.with_suffix(".json").write_text("{oops"), "*the stored metrics *fp32.json cannot be read*"),
], ids=["corrupt png", "truncated png", "wrong mode", "wrong size", "corrupt metrics"])
def test_damaged_baselines_fail_the_test_and_name_the_repair(pytester, damage, message):
    damage(_recorded(pytester))
    result = pytester.runpytest("-p", "pytest_sdopt", *FAST)
    assert result.ret == FAILED
    result.stdout.fnmatch_lines([message])
    assert "INTERNALERROR" not in result.stdout.str() and "Traceback" not in result.stdout.str()


def test_a_read_only_folder_is_refused_at_start_up(tmp_path, monkeypatch):
    """Run as root, permissions do not stop a write, so the check's answer is faked at os.access."""
    import os

    from pytest_sdopt.core.errors import SdoptUsageError
    from pytest_sdopt.config.settings import _check_writable

    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SdoptUsageError, match=r"--sdopt-json '.*out' is not writable here \('.*' is read-only to "
                                              r"this user\)\. Choose a folder you can write"):
        _check_writable(tmp_path / "out", "--sdopt-json")


def test_an_unknown_device_is_a_usage_error_listing_the_valid_forms(pytester):
    result = pytester.runpytest("-p", "pytest_sdopt", "--sdopt-device", "gpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sdopt-device 'gpu' is not a device: use auto, cpu, cuda, cuda:N (e.g. cuda:0) or mps."])
    pytester.makeini("[pytest]\nsdopt_device = cuda:x\n")
    assert pytester.runpytest("-p", "pytest_sdopt").ret == pytest.ExitCode.USAGE_ERROR


READ_ONLY_SCENARIO = """
import errno
import os
import tempfile

import pytest

_real = tempfile.NamedTemporaryFile


def _refused(*args, dir=None, **kwargs):
    # What the OS answers for a read-only scenario folder (faked: as root, permissions stop no write).
    if dir is not None and os.path.basename(os.path.dirname(str(dir))) == "tiny":
        raise PermissionError(errno.EACCES, "Permission denied", os.path.join(str(dir), ".scenario.json.x.tmp"))
    return _real(*args, dir=dir, **kwargs)


@pytest.fixture(autouse=True)
def _read_only_scenario_folder(monkeypatch):
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", _refused)
"""


def test_a_read_only_scenario_folder_is_an_error_naming_it(pytester):
    pytester.makeconftest(READ_ONLY_SCENARIO)
    pytester.makepyfile(test_a="""
        def test_a(sdopt):
            sdopt.check(sdopt.run("fp32"))
    """)
    result = pytester.runpytest("-p", "pytest_sdopt", *FAST, "--sdopt-update-baselines")
    assert result.ret == FAILED
    result.stdout.fnmatch_lines(["*sdopt: cannot write baselines into '*baselines/tiny/64x64-2steps-*': permission "
                                 "denied. Make that folder writable*--sdopt-baseline-dir*"])
    text = result.stdout.str()
    assert "Traceback" not in text and "PermissionError" not in text and "INTERNALERROR" not in text
    assert "During handling of the above exception" not in text  # one error, not a chain of them


def test_a_misspelt_sdopt_mark_is_a_warning_naming_sdopt(pytester):
    pytester.makepyfile(test_a="""
        import pytest

        @pytest.mark.sdpot(max_host_memory="1MB")
        def test_typo():
            pass

        @pytest.mark.slow_io
        def test_other_mark():
            pass
    """)
    result = pytester.runpytest("-p", "pytest_sdopt", "-W", "ignore::pytest.PytestUnknownMarkWarning")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_a.py:*SdoptWarning: @pytest.mark.sdpot is not @pytest.mark.sdopt: its keywords "
                                 "are ignored*Did you mean @pytest.mark.sdopt?*--strict-markers*"])
    assert "slow_io is not" not in result.stdout.str()  # an unrelated mark is pytest's business, not ours
    # With --strict-markers pytest itself refuses the unknown mark: the README's recommendation.
    assert pytester.runpytest("-p", "pytest_sdopt", "--strict-markers").ret == pytest.ExitCode.INTERRUPTED


def test_the_misspelling_check_knows_sdopt_from_other_marks():
    from pytest_sdopt.config.settings import misspelled_marker

    for typo in ("sdpot", "sdop", "sd_opt", "sdopts", "Sdopt"):
        assert misspelled_marker([typo], []) == typo
    for fine in ("sdopt", "slow", "stop", "parametrize", "skipif", "cuda", "xfail"):
        assert misspelled_marker([fine], []) is None
    assert misspelled_marker(["sdpot"], ["sdpot"]) is None  # a mark the project registered is its own
