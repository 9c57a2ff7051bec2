"""pytest_sdopt_register_optimizations (hookspecs.py): a downstream conftest registers its own optimization."""

import pytest

from pytest_sdopt.stacks import REGISTRY

SLICED_VAE = """
from pytest_sdopt.stacks import Effect, OptimizationSpec, Phase


def slice_the_vae(pipe, ctx):
    pipe.vae.enable_slicing()


def pytest_sdopt_register_optimizations(config):
    return [OptimizationSpec("our_vae_slicing", Phase.VAE, "our own VAE slicing", 0.98, slice_the_vae,
                             effect=Effect(lambda pipe: pipe.vae.use_slicing,
                                           lambda before: f"changed nothing: use_slicing stayed {before}"))]
"""


def test_a_registered_optimization_stacks_runs_and_joins_the_matrix_then_leaves(run_sdopt, pytester):
    pytester.makeconftest(SLICED_VAE)
    result = run_sdopt("""
        def test_it(sdopt):
            result = sdopt.run("our_vae_slicing+fp16")
            assert result.stack == "fp16+our_vae_slicing"  # placed in its phase, after the precision
    """)
    result.assert_outcomes(passed=1)
    assert "our_vae_slicing" not in REGISTRY  # the in-process session took it away again

    matrix = pytester.runpytest("-p", "pytest_sdopt", "--sdopt-matrix", "--collect-only", "-q")
    matrix.stdout.fnmatch_lines(["*sdopt-matrix::our_vae_slicing*"])
    assert "our_vae_slicing" not in REGISTRY


def test_a_registered_optimization_that_changes_nothing_skips_with_its_own_words(run_sdopt, pytester):
    pytester.makeconftest(SLICED_VAE.replace("pipe.vae.enable_slicing()", "pass"))
    result = run_sdopt("""
        def test_it(sdopt):
            sdopt.run("our_vae_slicing")
    """)
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*our_vae_slicing*changed nothing: use_slicing stayed False*"])


@pytest.mark.parametrize("edit, message", [
    (('"our_vae_slicing", Phase.VAE', '"fp16", Phase.VAE'), "*an optimization named 'fp16', which is taken*"),
    (("effect=Effect(", "effect=None and Effect("), "*'our_vae_slicing' without an effect*"),
    (('"our_vae_slicing", Phase.VAE', '"our+slicing", Phase.VAE'), "*named 'our+slicing': a name is one word*"),
])
def test_a_bad_registration_is_a_usage_error_at_start_up(pytester, edit, message):
    pytester.makeconftest(SLICED_VAE.replace(*edit))
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "pytest_sdopt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pytest-sdopt: pytest_sdopt_register_optimizations registered {message}"])
