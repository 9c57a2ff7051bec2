"""Precedence, as a table: run() keyword > @pytest.mark.sdopt > command line > ini > default."""

import pytest

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
    args = ["-p", "pytest_sdopt", "--sdopt-size", "64x64", "--sdopt-repeats", "1", "--sdopt-warmup", "0"]
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
    pytester.runpytest("-p", "pytest_sdopt").assert_outcomes(passed=1)


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
    pytester.runpytest("-p", "pytest_sdopt").assert_outcomes(passed=1)
