"""The sdopt fixture, driven the way users drive it: real pytest sessions on the embedded model."""

from tests.conftest import CPU_STACKS


def test_every_cpu_stack_draws_an_image_of_the_requested_size(run_sdopt):
    result = run_sdopt(f"""
        import pytest

        @pytest.mark.parametrize("stack", {list(CPU_STACKS)!r})
        def test_stack(sdopt, stack):
            result = sdopt.run(stack)
            assert [image.size for image in result.images] == [(64, 64)]
            assert result.device == "cpu"
            assert result.its > 0
    """)
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("skipped", 0) == len(CPU_STACKS) and "failed" not in outcomes
    # Only an API this diffusers lacks may skip one (group_offload before diffusers 0.36), or an optimization
    # that this diffusers already applies (sdpa, where AttnProcessor2_0 is the default), never a crash.
    skips = [line for line in result.stdout.lines if line.startswith("SKIPPED")]
    assert len(skips) == outcomes.get("skipped", 0)
    assert all(("which this diffusers (" in line and ") lacks" in line)
               or "sdpa changed nothing: every attention layer already used AttnProcessor2_0" in line for line in skips)


def test_compile_runs_on_cpu(run_sdopt):
    result = run_sdopt("""
        def test_compile(sdopt):
            result = sdopt.run("compile", warmup=1)
            assert result.image.size == (64, 64)
            assert result.stack == "compile"
    """)
    result.assert_outcomes(passed=1)


def test_stacks_that_cannot_run_here_skip_with_the_precise_reason(run_sdopt):
    result = run_sdopt("""
        import pytest

        @pytest.mark.parametrize("stack", ["xformers", "fp16+model_cpu_offload", "sequential_cpu_offload",
                                           "unet_resident_offload"])
        def test_stack(sdopt, stack):
            sdopt.run(stack)
    """)
    result.assert_outcomes(skipped=4)
    result.stdout.fnmatch_lines_random([
        "SKIPPED*test_downstream.py:*stack 'fp16+model_cpu_offload' cannot run here: model_cpu_offload needs a "
        "CUDA device (this run is on cpu)",
        "SKIPPED*stack 'xformers' cannot run here: xformers needs xformers, but xformers is not installed "
        "(pip install xformers)",
        "SKIPPED*stack 'sequential_cpu_offload' cannot run here: sequential_cpu_offload needs a CUDA device*",
        "SKIPPED*stack 'unet_resident_offload' cannot run here: unet_resident_offload needs a CUDA device*",
    ])


def test_strict_turns_those_skips_into_failures(run_sdopt):
    result = run_sdopt("""
        def test_offload(sdopt):
            sdopt.run("model_cpu_offload")
    """, "--sdopt-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*model_cpu_offload needs a CUDA device*--sdopt-strict makes this a failure*"])


def test_same_stack_and_scenario_draw_the_same_image_every_time(run_sdopt):
    result = run_sdopt("""
        import numpy as np
        import pytest

        @pytest.mark.parametrize("stack", ["fp32", "tome", "fp16+vae_tiling"])
        def test_deterministic(sdopt, stack):
            first = sdopt.run(stack, repeats=2)
            second = sdopt.run(stack)
            assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
            other_seed = sdopt.run(stack, seed=2)
            assert not np.array_equal(np.asarray(first.image), np.asarray(other_seed.image))
    """)
    result.assert_outcomes(passed=3)


def test_run_result_holds_timings_and_environment(run_sdopt):
    result = run_sdopt("""
        def test_fields(sdopt):
            result = sdopt.run("fp32", repeats=3, warmup=1)
            pipe = sdopt.pipeline("fp32")
            pipe.scheduler.set_timesteps(2)
            iterations = len(pipe.scheduler.timesteps)  # PNDM runs steps + 1 iterations
            assert len(result.step_times_s) == 3
            assert all(len(times) == iterations for times in result.step_times_s)
            assert all(t > 0 for times in result.step_times_s for t in times)
            assert result.total_s > min(sum(times) for times in result.step_times_s)
            assert result.scenario.size == (64, 64) and result.scenario.steps == 2
            for package in ("python", "torch", "diffusers", "transformers", "accelerate", "tomesd"):
                assert result.env[package], package
            assert result.env["xformers"] is None and result.env["device_name"]
            assert result.peak_host_bytes > 50 * 2**20  # at least torch itself is resident
            assert result.peak_vram_bytes is None and result.peak_device_bytes is None  # CPU: not measured
            assert sdopt.results == [result]
    """)
    result.assert_outcomes(passed=1)


def test_pipelines_are_fresh_no_state_leaks_between_stacks(run_sdopt):
    result = run_sdopt("""
        import torch

        def test_fresh(sdopt):
            merged = sdopt.pipeline("fp16+tome+attention_slicing")
            plain = sdopt.pipeline("fp32")
            assert merged is not plain and merged.unet is not plain.unet
            assert merged.unet.dtype == torch.float16 and plain.unet.dtype == torch.float32
            assert hasattr(merged.unet, "_tome_info") and not hasattr(plain.unet, "_tome_info")
            merged_procs = {type(p).__name__ for p in merged.unet.attn_processors.values()}
            plain_procs = {type(p).__name__ for p in plain.unet.attn_processors.values()}
            assert merged_procs == {"SlicedAttnProcessor"} and "SlicedAttnProcessor" not in plain_procs
    """)
    result.assert_outcomes(passed=1)


def test_a_bad_stack_name_fails_the_test_listing_valid_names(run_sdopt):
    result = run_sdopt("""
        def test_typo(sdopt):
            sdopt.run("fp16+vae_tilling")
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*unknown optimization 'vae_tilling'*Did you mean 'vae_tiling'?*Valid names: fp32, fp16*"])
    assert "INTERNALERROR" not in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_a_conflicting_stack_is_a_usage_error_naming_the_conflict(run_sdopt):
    result = run_sdopt("""
        def test_conflict(sdopt):
            sdopt.pipeline("fp16+bf16")
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*stack 'fp16+bf16' combines fp16 and bf16, which conflict*Keep one of them*"])


def test_an_unknown_marker_or_run_keyword_names_the_valid_ones(run_sdopt):
    result = run_sdopt("""
        import pytest

        @pytest.mark.sdopt(stepz=3)
        def test_marker(sdopt):
            sdopt.run("fp32")

        def test_keyword(sdopt):
            sdopt.run("fp32", sizes="64x64")
    """)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random([
        "*@pytest.mark.sdopt got unknown keyword(s) stepz: neither an sdopt setting nor an argument of "
        "StableDiffusionPipeline.__call__. Did you mean 'stepz' -> 'steps'? sdopt settings: model, device, prompt, seed, "
        "size*",
        "*sdopt.run got unknown keyword(s) sizes: neither an sdopt setting nor an argument of *Did you mean "
        "'sizes' -> 'size'? sdopt settings: model*",
    ])


def test_bad_command_line_values_are_usage_errors_not_internal_errors(run_sdopt):
    result = run_sdopt("def test_nothing(): pass", "--sdopt-size", "100x100")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*pytest-sdopt: --sdopt-size 100x100 is not usable*multiples of 8*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_missing_explicit_device_fails_instead_of_skipping(run_sdopt):
    # CUDA is made absent at the torch.cuda boundary, so the test means the same on a machine with a GPU.
    result = run_sdopt("""
        import torch

        def test_gpu(sdopt, monkeypatch):
            monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
            sdopt.run("fp16", device="cuda")
    """)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*device 'cuda' asks for CUDA, but torch.cuda.is_available() is False*"])
