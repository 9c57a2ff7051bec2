import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.config.parsers import (format_bytes, parse_byte_size, parse_float, parse_fraction, parse_image_size, parse_int, parse_ssim, parse_threshold)


@pytest.mark.parametrize("value, expected", [
    ("512x512", (512, 512)), (" 768 X 512 ", (768, 512)), ((64, 128), (64, 128)), (256, (256, 256)),
])
def test_image_size_forms(value, expected):
    assert parse_image_size(value) == expected


@pytest.mark.parametrize("value, fragment", [
    ("512", "WIDTHxHEIGHT"), ("0x512", "positive multiples of 8"), ("-8x8", "WIDTHxHEIGHT"),
    ("100x100", "positive multiples of 8"), ("axb", "WIDTHxHEIGHT"), (True, "WIDTHxHEIGHT"), ((1.5, 2), "WIDTHxHEIGHT"),
])
def test_image_size_rejects_with_the_accepted_form(value, fragment):
    with pytest.raises(SdoptUsageError, match=fragment):
        parse_image_size(value, "--sdopt-size")


@pytest.mark.parametrize("value, expected", [
    ("5.1 GB", 5_100_000_000), ("5100MB", 5_100_000_000), ("4.75GiB", int(4.75 * 2**30)), (1234, 1234), ("10", 10),
])
def test_byte_sizes(value, expected):
    assert parse_byte_size(value) == expected


@pytest.mark.parametrize("value, fragment", [
    ("five gigs", "byte count"), ("-1 GB", "byte count"), ("0", "more than zero"), ("3 parsecs", "unknown unit"),
    (2.5, "byte count"), (False, "byte count"),
])
def test_byte_size_rejects(value, fragment):
    with pytest.raises(SdoptUsageError, match=fragment):
        parse_byte_size(value, "max_vram")


@pytest.mark.parametrize("value", ["x", "1.5", -1, True, None])
def test_int_rejects(value):
    with pytest.raises(SdoptUsageError, match="whole number >= 0"):
        parse_int(value, "--sdopt-seed", 0)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "x", None])
def test_float_rejects(value):
    with pytest.raises(SdoptUsageError):
        parse_float(value, "--sdopt-guidance", 0.0)


@given(st.text(max_size=30))
def test_image_size_never_raises_anything_but_a_usage_error(text):
    try:
        width, height = parse_image_size(text)
    except SdoptUsageError as exc:
        assert "WIDTHxHEIGHT" in str(exc) or "multiples of 8" in str(exc)
    else:
        assert width > 0 and height > 0 and width % 8 == 0 and height % 8 == 0


@given(st.integers(1, 4096), st.integers(1, 4096))
def test_image_size_round_trips(width, height):
    text = f"{width * 8}x{height * 8}"
    assert parse_image_size(text) == (width * 8, height * 8)


@given(st.text(max_size=20))
def test_byte_size_never_raises_anything_but_a_usage_error(text):
    try:
        assert parse_byte_size(text) > 0
    except SdoptUsageError:
        pass


@given(st.floats(0.001, 1e6), st.sampled_from(["KB", "MB", "GB", "KiB", "MiB", "GiB"]))
def test_byte_size_units_scale(number, unit):
    factor = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    text = f"{number:.3f} {unit}"
    assert parse_byte_size(text) == round(float(f"{number:.3f}") * factor)


@pytest.mark.parametrize("text, expected", [("10%", 0.1), ("10 %", 0.1), (" 2.5% ", 0.025), ("0.1", 0.1), (0.25, 0.25),
                                            (0, 0.0), ("100%", 1.0)])
def test_fractions_take_percentages_and_plain_fractions(text, expected):
    assert parse_fraction(text, "tolerance") == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "ten", "-5%", "150%", "1.5", True, "5%%", None])
def test_bad_fractions_name_the_accepted_forms(text):
    with pytest.raises(SdoptUsageError, match=r"tolerance must (be a percentage such as \"10%\"|lie between 0% and 100%)"):
        parse_fraction(text, "tolerance")


@given(st.floats(min_value=0, max_value=100, allow_nan=False))
def test_any_percentage_in_range_parses_to_its_fraction(percent):
    assert parse_fraction(f"{percent}%", "t") == pytest.approx(percent / 100)


@pytest.mark.parametrize("value", ["1.01", -0.1, "x", float("nan")])
def test_ssim_limits_lie_between_zero_and_one(value):
    with pytest.raises(SdoptUsageError):
        parse_ssim(value, "min_ssim")
    assert parse_ssim("0.95", "min_ssim") == 0.95


@pytest.mark.parametrize("size, text", [(5_100_000_000, "5.10 GB"), (485_060_000, "485.06 MB"), (1500, "1.50 kB"),
                                        (12, "12 B")])
def test_bytes_are_shown_in_the_decimal_units_gates_are_written_in(size, text):
    assert format_bytes(size) == text
    assert abs(parse_byte_size(text.replace(" ", ""), "size") - size) <= size * 0.005


@pytest.mark.parametrize("text, expected", [("its:5%", ("its", 0.05)), ("vram:5%", ("vram", 0.05)),
                                            ("host:150%", ("host", 1.5)), (" ssim : 0.02", ("ssim", 0.02))])
def test_thresholds_name_a_metric_and_its_limit(text, expected):
    metric, limit = parse_threshold(text)
    assert (metric, limit) == (expected[0], pytest.approx(expected[1]))


@pytest.mark.parametrize("text, message", [
    ("its", "takes METRIC:LIMIT"), ("speed:5%", "unknown metric 'speed'"), ("its:150%", "between 0% and 100%"),
    ("ssim:2%", "not a percentage"), ("ssim:1.5", "an SSIM between 0 and 1"), ("vram:-1%", "0% or more"),
])
def test_bad_thresholds_say_what_is_wrong(text, message):
    with pytest.raises(SdoptUsageError, match=re.escape(message)):
        parse_threshold(text)


@given(st.sampled_from(["its", "vram", "host"]), st.integers(min_value=0, max_value=100))
def test_any_percentage_threshold_round_trips(metric, percent):
    assert parse_threshold(f"{metric}:{percent}%") == (metric, pytest.approx(percent / 100))
