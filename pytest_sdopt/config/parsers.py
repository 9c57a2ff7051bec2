"""Parsers for the units users type: image sizes, byte sizes, counts. One error style for all.

Each parser accepts the string a user typed on the command line or in an ini file, and the
native value a marker or keyword argument may pass (an int, a tuple), and raises
`SdoptUsageError` with the accepted forms when it cannot make sense of it.
"""

from __future__ import annotations

import math
import re

from pytest_sdopt.core.errors import SdoptUsageError

_WXH = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)\s*$")
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


def parse_image_size(value: object, what: str = "size") -> tuple[int, int]:
    """`"512x512"`, `(512, 512)` or `512` (square) -> (width, height), each a positive multiple of 8."""
    if isinstance(value, bool):
        raise SdoptUsageError(f"{what} must be WIDTHxHEIGHT such as 512x512, not {value!r}.")
    if isinstance(value, int):
        width = height = value
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(type(v) is int for v in value):
        width, height = value
    elif isinstance(value, str) and (match := _WXH.match(value)):
        width, height = int(match.group(1)), int(match.group(2))
    else:
        raise SdoptUsageError(f"{what} must be WIDTHxHEIGHT such as 512x512, not {value!r}.")
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise SdoptUsageError(
            f"{what} {width}x{height} is not usable: width and height must be positive multiples "
            f"of 8 (the VAE works on 1/8-size latents), e.g. 512x512."
        )
    return width, height


def parse_int(value: object, what: str, minimum: int) -> int:
    """A whole number >= minimum, from an int or its decimal string."""
    if isinstance(value, bool):
        raise SdoptUsageError(f"{what} must be a whole number >= {minimum}, not {value!r}.")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise SdoptUsageError(f"{what} must be a whole number >= {minimum}, not {value!r}.") from None
    if not isinstance(value, int) or value < minimum:
        raise SdoptUsageError(f"{what} must be a whole number >= {minimum}, not {value!r}.")
    return value


def parse_float(value: object, what: str, minimum: float | None = None) -> float:
    """A finite number (>= minimum when given), from a number or its string."""
    if isinstance(value, bool):
        raise SdoptUsageError(f"{what} must be a number, not {value!r}.")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SdoptUsageError(f"{what} must be a number, not {value!r}.") from None
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise SdoptUsageError(f"{what} must be a finite number{bound}, not {value!r}.")
    return number


def parse_byte_size(value: object, what: str = "size") -> int:
    """`"5.1 GB"`, `"5100MB"`, `"4.75GiB"` or an int of bytes -> bytes (decimal and binary units)."""
    forms = 'a byte count such as "5.1 GB", "5100MB", "4.75GiB" or an int of bytes'
    if isinstance(value, bool):
        raise SdoptUsageError(f"{what} must be {forms}, not {value!r}.")
    if isinstance(value, int):
        number, unit = float(value), ""
    elif isinstance(value, str) and (match := _BYTES.match(value)):
        number, unit = float(match.group(1)), match.group(2).lower()
        if unit not in _BYTE_UNITS:
            raise SdoptUsageError(
                f"{what} {value!r} has an unknown unit {match.group(2)!r}: use B, KB, MB, GB, TB "
                f"(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)."
            )
    else:
        raise SdoptUsageError(f"{what} must be {forms}, not {value!r}.")
    size = round(number * _BYTE_UNITS[unit])
    if size <= 0:
        raise SdoptUsageError(f"{what} must be more than zero bytes, not {value!r}.")
    return size


def parse_fraction(value: object, what: str, maximum: float | None = 1.0) -> float:
    """`"10%"`, `"10 %"` or `0.1` -> 0.1: a relative tolerance, from 0 up to `maximum` (100% unless set;
    None: no upper bound, for growth that may exceed double)."""
    forms = 'a percentage such as "10%" or a fraction such as 0.1'
    if isinstance(value, bool):
        raise SdoptUsageError(f"{what} must be {forms}, not {value!r}.")
    if isinstance(value, (int, float)):
        fraction = float(value)
    elif isinstance(value, str):
        text = value.strip()
        percent = text.endswith("%")
        try:
            fraction = float(text[:-1] if percent else text) / (100 if percent else 1)
        except ValueError:
            raise SdoptUsageError(f"{what} must be {forms}, not {value!r}.") from None
    else:
        raise SdoptUsageError(f"{what} must be {forms}, not {value!r}.")
    if not math.isfinite(fraction) or fraction < 0 or (maximum is not None and fraction > maximum):
        bound = f"between 0% and {maximum:.0%} (0 and {maximum:g})" if maximum is not None else "0% or more"
        raise SdoptUsageError(f"{what} must lie {bound}, not {value!r}.")
    return fraction


def parse_ssim(value: object, what: str) -> float:
    """An SSIM limit: a number between 0 and 1 (1 means identical images)."""
    limit = parse_float(value, what)
    if not 0 <= limit <= 1:
        raise SdoptUsageError(f"{what} must be an SSIM between 0 and 1 (1: identical images), not {value!r}.")
    return limit


def format_bytes(size: int) -> str:
    """Bytes in the decimal units users write gates in: 5100000000 -> "5.10 GB"."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(size) >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"


THRESHOLD_METRICS = {
    "its": "it/s may drop by at most this fraction (its:5%)",
    "vram": "peak VRAM may grow by at most this fraction (vram:5%)",
    "host": "peak host memory may grow by at most this fraction (host:10%)",
    "ssim": "SSIM between the old and new image may fall at most this far below 1 (ssim:0.02)",
}


def parse_threshold(text: object, what: str = "--fail") -> tuple[str, float]:
    """`its:5%`, `vram:5%`, `host:10%`, `ssim:0.02` -> (metric, limit)."""
    forms = "METRIC:LIMIT with METRIC one of its, vram, host, ssim, e.g. its:5% or ssim:0.02"
    if not isinstance(text, str) or text.count(":") != 1:
        raise SdoptUsageError(f"{what} takes {forms}, not {text!r}.")
    metric, limit = (part.strip() for part in text.split(":"))
    if metric not in THRESHOLD_METRICS:
        raise SdoptUsageError(f"{what} {text!r}: unknown metric {metric!r}; {forms}.")
    if metric == "ssim":
        if limit.endswith("%"):
            raise SdoptUsageError(f"{what} {text!r}: an SSIM drop is a number between 0 and 1 such as 0.02, "
                                  f"not a percentage.")
        return metric, parse_ssim(limit, f"{what} {text!r}")
    return metric, parse_fraction(limit, f"{what} {text!r}", maximum=1.0 if metric == "its" else None)


def shown(path: "Path | str", base: "Path | str | None" = None) -> str:
    """A path relative to `base` (the working directory) when it lies inside it: short enough to paste."""
    from pathlib import Path

    try:
        return str(Path(path).resolve().relative_to(Path(base or Path.cwd()).resolve()))
    except ValueError:
        return str(path)
