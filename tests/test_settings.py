"""Precedence, as tables: run() / check() keyword > @pytest.mark.sdopt > command line > ini > default."""

import pytest

from tests.conftest import FAST, ON_CPU

# (ini, command line, marker, keyword) steps -> the steps the run used; None: not given there.
PRECEDENCE = [
    (None, None, None, None, 10),  # the embedded model's default
    (3, None, None, None, 3),
    (3, 4, None, None, 4),
    (3, 4, 5, None, 5),
    (3, 4, 5, 6, 6),
    (None, None, 5, None, 5),
    (3, None, None, 6, 6),
    (None, 4, None, 6, 6),
]


@pytest.mark.parametrize("ini, cli, marker, keyword, expected", PRECEDENCE)
def test_steps_precedence(pytester, ini, cli, marker, keyword, expected):
    if ini is not None:
        pytester.makeini(f"[pytest]\nsdopt_steps = {ini}\n")
    decorator = f"@pytest.mark.sdopt(steps={marker})" if marker is not None else ""
    call = f"sdopt.run('fp32', steps={keyword})" if keyword is not None else "sdopt.run('fp32')"
    pytester.makepyfile(f"""
        import pytest

        {decorator}
        def test_steps(sdopt):
            result = {call}
            assert result.scenario.steps == {expected}
            # PNDM runs steps + 1 iterations: the setting really reached the pipeline
            assert len(result.step_times_s[0]) == {expected} + 1
    """)
    args = ["-p", "pytest_sdopt", *ON_CPU, "--sdopt-size", "64x64", "--sdopt-repeats", "1", "--sdopt-warmup", "0"]
    if cli is not None:
        args += ["--sdopt-steps", str(cli)]
    pytester.runpytest(*args).assert_outcomes(passed=1)


def test_class_marker_is_overridden_by_the_method_marker(pytester):
    pytester.makepyfile("""
        import pytest

        @pytest.mark.sdopt(seed=7, size="64x64")
        class TestScenario:
            @pytest.mark.sdopt(seed=9)
            def test_seed(self, sdopt):
                result = sdopt.run("fp32", steps=1, repeats=1, warmup=0)
                assert result.scenario.seed == 9 and result.scenario.size == (64, 64)
    """)
    pytester.runpytest("-p", "pytest_sdopt", *ON_CPU).assert_outcomes(passed=1)


def test_ini_values_are_parsed_with_the_same_errors(pytester):
    pytester.makeini("[pytest]\nsdopt_steps = many\n")
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "pytest_sdopt")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*ini option sdopt_steps must be a whole number >= 1, not 'many'*"])


def test_ini_scenario_settings_reach_the_run(pytester):
    pytester.makeini("[pytest]\nsdopt_size = 64x48\nsdopt_seed = 5\nsdopt_prompt = a red circle\nsdopt_guidance = 3\n")
    pytester.makepyfile("""
        def test_scenario(sdopt):
            result = sdopt.run("fp32", steps=1, repeats=1, warmup=0)
            assert result.image.size == (64, 48)
            assert (result.scenario.seed, result.scenario.prompt, result.scenario.guidance) == (5, "a red circle", 3.0)
    """)
    pytester.runpytest("-p", "pytest_sdopt", *ON_CPU).assert_outcomes(passed=1)


# Gates, the same way: (ini, command line, marker, keyword) min_its -> outcome. 1e9 it/s cannot be
# met and 0.001 cannot be missed, so no row depends on how fast this machine is today.
# None: not given there; "None" in a marker or keyword and "off" in ini or on the command line
# switch the gate off at that layer.
GATE_PRECEDENCE = [
    (None, None, None, None, "passed"),  # no min_its by default
    ("1e9", None, None, None, "failed"),
    ("1e9", "0.001", None, None, "passed"),
    ("0.001", "1e9", None, None, "failed"),
    ("1e9", "1e9", "0.001", None, "passed"),
    (None, "0.001", "1e9", None, "failed"),
    ("1e9", "1e9", "1e9", "0.001", "passed"),
    (None, None, "0.001", "1e9", "failed"),
    ("1e9", None, None, "None", "passed"),
    (None, "1e9", "None", None, "passed"),
    ("1e9", "off", None, None, "passed"),
    ("off", None, "1e9", None, "failed"),
]


@pytest.mark.parametrize("ini, cli, marker, keyword, outcome", GATE_PRECEDENCE)
def test_gate_precedence(pytester, ini, cli, marker, keyword, outcome):
    if ini is not None:
        pytester.makeini(f"[pytest]\nsdopt_min_its = {ini}\n")
    decorator = f"@pytest.mark.sdopt(min_its={marker})" if marker is not None else ""
    extra = f", min_its={keyword}" if keyword is not None else ""
    pytester.makepyfile(f"""
        import pytest

        {decorator}
        def test_speed(sdopt):
            sdopt.check(sdopt.run("fp32"), min_ssim=None{extra})
    """)
    args = ["-p", "pytest_sdopt", *FAST]
    if cli is not None:
        args += ["--sdopt-min-its", cli]
    result = pytester.runpytest(*args)
    result.assert_outcomes(**{outcome: 1})
    if outcome == "failed":
        result.stdout.fnmatch_lines(["*FAIL  min_its             measured * it/s, limit >= 1e+09 it/s"])


def test_ini_gates_take_sizes_and_the_reference_takes_a_stack(pytester):
    pytester.makeini("[pytest]\nsdopt_max_host_memory = 1 MB\nsdopt_reference = bf16+sdpa\n")
    pytester.makepyfile("""
        def test_gates(sdopt):
            sdopt.check(sdopt.run("fp32"))
    """)
    result = pytester.runpytest("-p", "pytest_sdopt", *FAST)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*FAIL  max_host_memory     measured * MB, limit <= 1.00 MB",
        "*FAIL  min_ssim            limit >= 0.99 against bf16+sdpa's baseline",
        "*no baseline image of 'bf16+sdpa' for this scenario*",
    ])


@pytest.mark.parametrize("option, value, message", [
    ("--sdopt-max-vram", "5 gigs", "--sdopt-max-vram '5 gigs' has an unknown unit 'gigs': use B, KB, MB, GB*"),
    ("--sdopt-min-ssim", "1.5", "--sdopt-min-ssim must be an SSIM between 0 and 1 (1: identical images), not '1.5'."),
    ("--sdopt-max-its-drop", "150%", "--sdopt-max-its-drop must lie between 0% and 100% (0 and 1), not '150%'."),
    ("--sdopt-reference", "fp64", "--sdopt-reference: unknown optimization 'fp64'*Did you mean 'fp16'?*"),
])
def test_bad_gate_values_are_usage_errors_at_start_up(pytester, option, value, message):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest("-p", "pytest_sdopt", option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*pytest-sdopt: {message}"])


def _session(**values):
    from pytest_sdopt.config.settings import SETTINGS, SessionSettings

    defaults = {setting.name: setting.default for setting in SETTINGS}
    return SessionSettings({**defaults, **values})


def test_gate_defaults_come_from_the_stack_and_the_device():
    from pytest_sdopt.config.settings import OFF
    from pytest_sdopt.config.settings import resolve_gates

    cuda = resolve_gates(_session(), {}, {}, 0.8, "cuda")
    cpu = resolve_gates(_session(), {}, {}, 0.8, "cpu")
    assert (cuda.min_ssim, cuda.max_its_drop, cuda.max_memory_growth, cuda.reference) == (0.8, 0.10, 0.10, "fp32")
    assert cpu.max_its_drop == 0.25
    assert cuda.max_vram is cuda.max_host_memory is cuda.min_its is None
    explicit = resolve_gates(_session(**{"max-its-drop": 0.05}), {"min_ssim": OFF}, {}, 0.8, "cpu")
    assert (explicit.max_its_drop, explicit.min_ssim) == (0.05, None)
