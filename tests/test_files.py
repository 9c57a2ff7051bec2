"""core/files.py: the one module that makes path components and writes files atomically."""

import os
import stat

import pytest

from pytest_sdopt.checks.baselines import model_key, stack_key
from pytest_sdopt.checks.similarity import artifact_folder
from pytest_sdopt.core.files import MAX_NAME, atomic_write, atomic_write_text, safe_name


def test_a_name_keeps_what_is_portable_and_replaces_the_rest():
    assert safe_name("fp16+tome-0.3") == "fp16+tome-0.3"
    assert safe_name("a/b c:d") == "a_b_c_d"
    assert safe_name("test_x[fp16,sdpa]", allowed="[],") == "test_x[fp16,sdpa]"


def test_two_long_names_that_share_their_start_never_share_a_folder():
    first, second = "x" * 200 + "[fp16]", "x" * 200 + "[bf16]"
    assert len(safe_name(first)) == len(safe_name(second)) == MAX_NAME
    assert safe_name(first) != safe_name(second)
    assert safe_name(first) == safe_name(first)  # the same text, the same folder, every run


def test_stored_baseline_keys_are_spelt_as_before():
    # Renaming a stored key would orphan every baseline recorded under it.
    assert model_key("org/name") == "org--name"
    assert stack_key("fp16+tome:0.3") == "fp16+tome-0.3"


def test_artifact_folders_keep_a_test_id_readable(tmp_path):
    folder = artifact_folder(tmp_path, "tests/test_a.py::test_x[fp16]", "tome:0.3", run=2)
    assert folder == tmp_path / "tests_test_a.py--test_x[fp16]" / "tome-0.3.run2"


def test_an_atomic_write_replaces_the_file_whole_and_gets_the_usual_mode(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not the temporary file's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "image.png"
    target.write_bytes(b"old")

    def fails(handle):
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fails)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["image.png"]
