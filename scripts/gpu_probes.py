#!/usr/bin/env python3
"""The parts of scripts/gpu_check.sh that are Python: its preflight, three probes of open questions
on `sd15-random`, and the summary of everything the check wrote.

    gpu_probes.py preflight                       exit 0, 3 (no CUDA GPU) or 4 (a package missing)
    gpu_probes.py precision  --out DIR --work W   (a) fp16/bf16 vs fp32: NaN/inf, or divergence?
    gpu_probes.py sdpa       --out DIR --work W   (b) which SDPA kernel runs, default vs explicit `sdpa`
    gpu_probes.py vae-tiling --out DIR --work W   (c) fp16 at 1024x1024, peak VRAM with/without vae_tiling
    gpu_probes.py summary    --out DIR --parts F  the findings as text (DIR/summary.txt and stdout)

Each probe adds its section to DIR/probes.json (one file, however many probes ran), with the
seconds it took and, where it failed, the error. `sd15-random` is loaded as the plugin loads it,
from W/results/models (built there once, on the CPU, with seeded random weights); stacks are
applied with the plugin's own registry, so a probe measures what a matrix run measures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NO_GPU_EXIT, MISSING_EXIT = 3, 4
# What the plugin and tests/test_cuda.py import (module, pip name); nvidia-ml-py and xformers are optional.
REQUIRED = (("torch", "torch"), ("diffusers", "diffusers"), ("transformers", "transformers"),
            ("accelerate", "accelerate"), ("tomesd", "tomesd"), ("skimage", "scikit-image"), ("scipy", "scipy"),
            ("psutil", "psutil"), ("filelock", "filelock"), ("safetensors", "safetensors"), ("PIL", "pillow"),
            ("numpy", "numpy"), ("huggingface_hub", "huggingface_hub"), ("pytest", "pytest"))
OPTIONAL = (("pynvml", "nvidia-ml-py", "no NVML figures (peak_device_bytes), its test skips"),
            ("xformers", "xformers", "the xformers stack skips"))
PROBES_FILE = "probes.json"
SEED = 1
# What the probes run on; tests/test_gpu_check.py sets these to run them through on a CPU (the
# embedded model, small sizes, the allocator faked at the torch.cuda boundary).
DEVICE = "cuda:0"
MODEL = "sd15-random"
CUDA: Any = None  # stands in for torch.cuda in the memory tracker; None: torch.cuda
PRECISION_CASES = ((512, 7.5), (512, 1.0), (256, 7.5))  # (size, guidance)
PRECISION_STEPS = 20
SDPA_SIZE, SDPA_STEPS = 512, 10  # SDPA_STEPS: the timed call's (the profiled one makes 2)
TILING_SIZE, TILING_STEPS = 1024, 4
# Attention as the profiler names it: ATen's SDPA entry points and the unfused path's pieces.
ATTENTION_OPS = ("aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention",
                 "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
                 "aten::_scaled_dot_product_attention_math", "aten::_flash_attention_forward",
                 "aten::_efficient_attention_forward", "aten::baddbmm", "aten::bmm", "aten::softmax",
                 "aten::_softmax")
ATTENTION_KERNEL = re.compile(r"flash|fmha|attention|efficient|cudnn.*sdpa|softmax", re.I)


# --- preflight ------------------------------------------------------------------------------


def preflight() -> int:
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - any failure to import is the same finding
        print(f"gpu_check: torch is not importable ({type(exc).__name__}: {exc}); nothing was run. Install the "
              f"CUDA build of torch for this machine, then run the check again.")
        return MISSING_EXIT
    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        print(f"gpu_check: no CUDA GPU: torch.cuda.is_available() is False (torch {torch.__version__}, {build}); "
              f"nothing was run. Run it on a machine with an NVIDIA GPU and a CUDA build of torch.")
        return NO_GPU_EXIT
    missing = []
    for module, pip_name in REQUIRED[1:]:
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001
            missing.append(f"{pip_name} ({type(exc).__name__}: {exc})")
    if missing:
        print("gpu_check: missing Python packages: " + "; ".join(missing) + ". Nothing was run. Install them "
              "(pip install -e '.[test]'), or where no registry can be reached, carry their wheels and put them "
              "on PYTHONPATH (pip install --no-index --no-deps --target DIR WHEELS/*.whl; export PYTHONPATH=DIR).")
        return MISSING_EXIT
    for module, pip_name, without in OPTIONAL:
        try:
            __import__(module)
        except Exception:  # noqa: BLE001
            print(f"gpu_check: {pip_name} is not installed: {without}.")
    props = torch.cuda.get_device_properties(0)
    print(f"gpu_check: {torch.cuda.device_count()} CUDA device(s); cuda:0 is {props.name}, "
          f"{props.total_memory / 2**30:.1f} GiB; torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"diffusers {_version('diffusers')}, transformers {_version('transformers')}")
    return 0


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


# --- shared by the probes -------------------------------------------------------------------


def record(out: Path, name: str, section: dict[str, Any]) -> None:
    """Add one probe's section to OUT/probes.json (written atomically; the probes run one at a time)."""
    path = out / PROBES_FILE
    document = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    document[name] = section
    handle = tempfile.NamedTemporaryFile("w", dir=out, prefix=f".{PROBES_FILE}.", delete=False, encoding="utf-8")
    with handle:
        json.dump(document, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(handle.name, path)


def model(work: Path) -> Any:
    """MODEL as the plugin resolves it, sd15-random's weights saved under WORK/results/models."""
    from pytest_sdopt.models.sources import resolve_model

    return resolve_model(MODEL, cache=work / "results" / "models")


def gpu() -> Any:
    import torch

    return torch.device(DEVICE)


def pipeline(source: Any, stack: str, device: Any) -> Any:
    """A fresh pipeline of `source` with `stack` applied by the plugin's registry, placed on `device`."""
    from pytest_sdopt.stacks import parse_stack

    pipe = source.load()
    parse_stack(stack).apply(pipe, device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe: Any, source: Any, size: int, steps: int, guidance: float, **extra: Any) -> Any:
    """One seeded call the way the plugin's runner makes it (initial latents from a CPU generator)."""
    import torch

    torch.manual_seed(SEED)
    generator = torch.Generator("cpu").manual_seed(SEED)
    with torch.inference_mode():
        return pipe(prompt=source.default_prompt, width=size, height=size, num_inference_steps=steps,
                    guidance_scale=guidance, generator=generator, **extra)


def peak_bytes(device: Any, work: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, dict[str, int]]:
    """`work(*args, **kwargs)`'s result and the allocator's peaks during it (the plugin's CudaMemoryTracker)."""
    from pytest_sdopt.measure.memory import CudaMemoryTracker

    tracker = CudaMemoryTracker(device, cuda=CUDA)
    tracker.start()
    try:
        value = work(*args, **kwargs)
    finally:
        tracker.stop()
    return value, {name: int(v) for name, v in tracker.peaks().items() if v is not None}


def synchronize(device: Any) -> None:
    from pytest_sdopt.measure.devices import synchronize as wait

    wait(device)


def release() -> None:
    """After the caller dropped its references: collect, and hand the allocator's cache back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- (a) precision: NaN/inf, or divergence of random weights? --------------------------------


def probe_precision(work: Path) -> dict[str, Any]:
    """fp16 and bf16 against fp32 on sd15-random: per step the latents' non-finite count, largest
    magnitude and distance from fp32's latents of the same step; the decoded image's non-finite
    values; SSIM to fp32's image, also with the half-precision latents decoded by fp32's VAE (which
    tells the UNet's share from the VAE's); fp16 once more with the math SDPA kernel (whether the
    fused kernels are the cause). 512x512 at guidance 7.5 and 1.0, and 256x256 (where a CPU read
    SSIM 0.9995 for bf16)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pytest_sdopt.checks.similarity import compare

    device = gpu()
    source = model(work)
    pipes = {stack: pipeline(source, stack, device) for stack in ("fp32", "fp16", "bf16")}
    fp32_vae = pipes["fp32"].vae
    found: dict[str, Any] = {"model": source.name, "steps": PRECISION_STEPS, "cases": []}
    for index, (size, guidance) in enumerate(PRECISION_CASES):
        reference: dict[str, Any] = {}
        runs = [(stack, None) for stack in pipes] + ([("fp16", "math")] if index == 0 else [])
        for stack, kernel in runs:
            trace = _StepTrace(reference.get("latents"))
            if kernel == "math":
                with sdpa_kernel(SDPBackend.MATH):
                    latents = call(pipes[stack], source, size, PRECISION_STEPS, guidance, output_type="latent",
                                   callback_on_step_end=trace).images
            else:
                latents = call(pipes[stack], source, size, PRECISION_STEPS, guidance, output_type="latent",
                               callback_on_step_end=trace).images
            image, decoded_non_finite = _decode(pipes[stack], latents)
            row: dict[str, Any] = {"size": size, "guidance": guidance, "stack": stack,
                                   "sdpa_kernel": kernel or "default", **trace.summary(),
                                   "decoded_non_finite": decoded_non_finite}
            if stack == "fp32":
                reference = {"latents": trace.latents, "image": image}
                row["ssim_to_fp32"] = 1.0
            else:
                fp32_decoded, _ = _decode(pipes["fp32"], latents.to(torch.float32), vae=fp32_vae)
                row["ssim_to_fp32"] = round(compare(image, reference["image"]).ssim, 4)
                row["ssim_to_fp32_with_fp32_vae"] = round(compare(fp32_decoded, reference["image"]).ssim, 4)
            found["cases"].append(row)
    found["verdict"] = _precision_verdict(found["cases"])
    return found


class _StepTrace:
    """callback_on_step_end: what the latents look like after each step (kept on the CPU, small)."""

    def __init__(self, reference: list[Any] | None):
        self.reference = reference
        self.latents: list[Any] = []
        self.non_finite: list[int] = []
        self.abs_max: list[float] = []
        self.distance: list[float] = []

    def __call__(self, pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        import torch

        latents = kwargs["latents"].detach().float()
        finite = torch.isfinite(latents)
        self.non_finite.append(int((~finite).sum()))
        self.abs_max.append(float(latents[finite].abs().max()) if finite.any() else float("nan"))
        here = latents.cpu()
        self.latents.append(here)
        if self.reference is not None and step < len(self.reference):
            theirs = self.reference[step]
            self.distance.append(float((here - theirs).norm() / theirs.norm().clamp_min(1e-12)))
        return kwargs

    def summary(self) -> dict[str, Any]:
        first_bad = next((i for i, n in enumerate(self.non_finite) if n), None)
        apart = next((i for i, d in enumerate(self.distance) if d > 0.5), None)
        return {"non_finite_latents_per_step": self.non_finite, "first_non_finite_step": first_bad,
                "latents_abs_max_per_step": [_finite(v, 3) for v in self.abs_max],
                "relative_distance_to_fp32_per_step": [_finite(d, 4) for d in self.distance],
                "first_step_over_0.5_from_fp32": apart}


def _finite(value: float, digits: int) -> float | None:
    """Rounded, or None for NaN/inf (which plain JSON cannot hold)."""
    import math

    return round(value, digits) if math.isfinite(value) else None


def _decode(pipe: Any, latents: Any, vae: Any = None) -> tuple[Any, int]:
    """Decode as the pipeline does; also count the decoded tensor's non-finite values."""
    import torch

    vae = vae or pipe.vae
    with torch.inference_mode():
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    non_finite = int((~torch.isfinite(decoded)).sum())
    image = pipe.image_processor.postprocess(decoded.float(), output_type="pil")[0]
    return image, non_finite


def _precision_verdict(cases: list[dict[str, Any]]) -> str:
    half = [c for c in cases if c["stack"] != "fp32"]
    if any(c["first_non_finite_step"] is not None or c["decoded_non_finite"] for c in half):
        bad = sorted({f"{c['stack']} {c['size']}px cfg {c['guidance']:g}" for c in half
                      if c["first_non_finite_step"] is not None or c["decoded_non_finite"]})
        return "non-finite values: " + ", ".join(bad)
    low = [c for c in half if c["ssim_to_fp32"] < 0.9]
    if not low:
        return "finite and close to fp32 everywhere (SSIM >= 0.9): the 0.05 did not reproduce"
    return ("finite everywhere; images apart from fp32 (SSIM < 0.9) in: "
            + ", ".join(f"{c['stack']} {c['size']}px cfg {c['guidance']:g} ({c['ssim_to_fp32']:.4f}, "
                        f"fp32 VAE {c.get('ssim_to_fp32_with_fp32_vae', float('nan')):.4f}, "
                        f"sdpa {c['sdpa_kernel']})" for c in low)
            + ": divergence, not NaN/inf")


# --- (b) sdpa: which kernel runs, default vs explicit ------------------------------------------


def probe_sdpa(work: Path) -> dict[str, Any]:
    """fp32 on sd15-random at 512x512, guidance 7.5: the attention processors in place, the ATen
    attention ops and the CUDA kernels the profiler saw in a 2-step call, and the peak VRAM and
    seconds of a SDPA_STEPS-step call, for diffusers' default processors and for the explicit `sdpa`
    stack (in the H200's matrix it ran at 0.65x fp32's speed with 0.87 GB more)."""
    from pytest_sdopt.core.errors import StackUnsupported

    device = gpu()
    source = model(work)
    found: dict[str, Any] = {"model": source.name, "size": SDPA_SIZE, "backends": _sdp_backends()}
    for variant, stack in (("default", "fp32"), ("explicit sdpa", "sdpa")):
        try:
            pipe = pipeline(source, stack, device)
        except StackUnsupported as exc:  # the explicit processors are already the default here
            found[variant] = {"stack": stack, "skipped": str(exc)}
            continue
        entry: dict[str, Any] = {"stack": stack, "processors": _processors(pipe)}
        call(pipe, source, SDPA_SIZE, 2, 7.5, output_type="latent")  # warm-up: cuDNN / cuBLAS choices
        synchronize(device)
        started = time.perf_counter()
        _, entry["peak"] = peak_bytes(device, call, pipe, source, SDPA_SIZE, SDPA_STEPS, 7.5, output_type="latent")
        entry["timed_steps"], entry["timed_seconds"] = SDPA_STEPS, round(time.perf_counter() - started, 3)
        entry.update(_profiled(pipe, source, device))
        found[variant] = entry
        del pipe
        release()
    found["verdict"] = _sdpa_verdict(found)
    return found


def _sdp_backends() -> dict[str, Any]:
    import torch

    backends = torch.backends.cuda
    names = ("flash_sdp_enabled", "mem_efficient_sdp_enabled", "math_sdp_enabled", "cudnn_sdp_enabled")
    return {name: getattr(backends, name)() for name in names if hasattr(backends, name)}


def _processors(pipe: Any) -> dict[str, dict[str, int]]:
    from collections import Counter

    counts = {}
    for part in ("unet", "vae"):
        module = getattr(pipe, part, None)
        processors = getattr(module, "attn_processors", None) or {}
        counts[part] = dict(Counter(type(p).__name__ for p in processors.values()))
    return counts


def _profiled(pipe: Any, source: Any, device: Any) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile, supported_activities

    activities = [a for a in (ProfilerActivity.CPU, ProfilerActivity.CUDA) if a in supported_activities()]
    with profile(activities=activities) as prof:
        call(pipe, source, SDPA_SIZE, 2, 7.5, output_type="latent")
        synchronize(device)
    return profile_rows([(e.key, e.count, _device_us(e)) for e in prof.key_averages()])


def _device_us(event: Any) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        value = getattr(event, name, None)
        if value is not None:
            return float(value)
    return 0.0


def profile_rows(rows: list[tuple[str, int, float]]) -> dict[str, Any]:
    """From (name, calls, self device µs) rows: the ATen attention ops called, the kernels that look
    like attention, and the top kernels by device time."""
    ops = {name: calls for name, calls, _ in rows if name in ATTENTION_OPS}
    kernels = sorted(((name, calls, us) for name, calls, us in rows if us > 0 and not name.startswith("aten::")),
                     key=lambda row: -row[2])
    attention = [{"kernel": name[:160], "calls": calls, "device_ms": round(us / 1000, 3)}
                 for name, calls, us in kernels if ATTENTION_KERNEL.search(name)]
    top = [{"kernel": name[:160], "calls": calls, "device_ms": round(us / 1000, 3)} for name, calls, us in kernels[:12]]
    return {"attention_ops": ops, "attention_kernels": attention, "top_kernels": top}


def _sdpa_verdict(found: dict[str, Any]) -> str:
    parts = []
    for variant in ("default", "explicit sdpa"):
        entry = found.get(variant) or {}
        if "skipped" in entry:
            parts.append(f"{variant}: {entry['skipped']}")
            continue
        ops = ", ".join(f"{name} x{calls}" for name, calls in entry.get("attention_ops", {}).items()) or "none"
        kernels = ", ".join(k["kernel"][:60] for k in entry.get("attention_kernels", [])[:3]) or "none seen"
        peak = entry.get("peak", {}).get("peak_vram_bytes")
        figures = f"; peak {peak / 1e9:.2f} GB, {entry.get('timed_seconds')} s / {entry.get('timed_steps')} steps"
        parts.append(f"{variant}: ops {ops}; kernels {kernels}" + (figures if peak else ""))
    return " | ".join(parts)


# --- (c) vae tiling at 1024x1024 ---------------------------------------------------------------


def probe_vae_tiling(work: Path) -> dict[str, Any]:
    """fp16 at 1024x1024 (4 steps; denoising memory does not grow with steps), with and without
    vae_tiling: the allocator's peak while denoising and while decoding (tiling acts on the decode).
    Published, SD 1.5 on an RTX 3090 (whole process): 7.6 GB untiled, 5.1 GB tiled."""
    from pytest_sdopt.checks.similarity import compare

    device = gpu()
    source = model(work)
    found: dict[str, Any] = {"model": source.name, "size": TILING_SIZE, "steps": TILING_STEPS,
                             "published_gb": {"fp16": 7.6, "fp16+vae_tiling": 5.1}}
    images = {}
    for stack in ("fp16", "fp16+vae_tiling"):
        pipe = pipeline(source, stack, device)
        call(pipe, source, TILING_SIZE, 1, 7.5, output_type="latent")  # warm-up
        output, denoise = peak_bytes(device, call, pipe, source, TILING_SIZE, TILING_STEPS, 7.5, output_type="latent")
        latents = output.images
        (image, non_finite), decode = peak_bytes(device, _decode, pipe, latents)
        images[stack] = image
        found[stack] = {"denoise_peak": denoise, "decode_peak": decode, "decoded_non_finite": non_finite,
                        "peak_vram_bytes": max(denoise["peak_vram_bytes"], decode["peak_vram_bytes"])}
        del pipe, output, latents
        release()
    found["ssim_tiled_to_untiled"] = round(compare(images["fp16+vae_tiling"], images["fp16"]).ssim, 4)
    untiled, tiled = found["fp16"]["peak_vram_bytes"], found["fp16+vae_tiling"]["peak_vram_bytes"]
    ratio = f"{tiled / untiled:.2f}x" if untiled else "n/a"
    found["verdict"] = (f"peak {untiled / 1e9:.2f} GB -> {tiled / 1e9:.2f} GB with vae_tiling ({ratio}; "
                        f"published 7.6 -> 5.1 GB, 0.67x)")
    return found


PROBES = {"precision": probe_precision, "sdpa": probe_sdpa, "vae-tiling": probe_vae_tiling}


def run_probe(name: str, out: Path, work: Path) -> int:
    started = time.monotonic()
    try:
        section = PROBES[name](work)
        status = 0
    except Exception as exc:  # noqa: BLE001 - the probe's failure is its finding; the next part still runs
        section = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
        status = 1
    section["seconds"] = round(time.monotonic() - started, 1)
    record(out, name, section)
    print(f"probe {name}: " + (section.get("verdict", "done") if status == 0 else f"FAILED: {section['error']}"))
    return status


# --- the summary -----------------------------------------------------------------------------


def matrix_lines(path: Path) -> list[str]:
    """One line per run of a results JSON: stack, outcome, it/s, peak VRAM, SSIM to the reference."""
    if not path.is_file():
        return [f"  ({path.name} was not written)"]
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError) as exc:
        return [f"  ({path.name} is unreadable: {exc})"]
    if not runs:
        return [f"  ({path.name} holds no runs: the session stopped before its first)"]
    lines = [f"  {'stack':<24} {'outcome':<8} {'it/s':>8} {'peak VRAM':>10} {'SSIM':>7}  note"]
    for run in runs:
        figures = run.get("figures") or {}
        its = f"{figures['its']:.2f}" if figures.get("its") else "-"
        vram = f"{figures['peak_vram_bytes'] / 1e9:.2f} GB" if figures.get("peak_vram_bytes") else "-"
        ssim = f"{run['ssim']:.4f}" if run.get("ssim") is not None else "-"
        failed = [g["gate"] for g in run.get("gates", []) if g.get("status") == "FAIL"]
        note = run.get("skip_reason") or run.get("note") or (("FAIL: " + ", ".join(failed)) if failed else "")
        lines.append(f"  {run['stack']:<24} {run['outcome']:<8} {its:>8} {vram:>10} {ssim:>7}  {note or ''}".rstrip())
    return lines


def probe_lines(path: Path) -> list[str]:
    document = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    lines = []
    for name in PROBES:
        section = document.get(name)
        if section is None:
            lines.append(f"  {name}: no result (did not run, or ran out of its time)")
        elif "error" in section:
            lines.append(f"  {name}: FAILED after {section.get('seconds')} s: {section['error']}")
        else:
            lines.append(f"  {name} ({section.get('seconds')} s): {section.get('verdict')}")
    return lines


def environment(out: Path) -> list[str]:
    """The versions and device the matrices ran on, as the plugin's table heads them."""
    from pytest_sdopt.results.summary import environment_line

    lines = []
    for name in ("tiny-matrix.json", "sd15-random-matrix.json"):
        try:
            line = environment_line(json.loads((out / name).read_text(encoding="utf-8"))["runs"])
        except (OSError, ValueError, KeyError):
            continue
        if line and line not in lines:
            lines.append(line)
    return lines


def summary(out: Path, parts_file: Path) -> int:
    parts = []
    if parts_file.is_file():
        for line in parts_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                name, status, seconds, budget, note = (line.split("\t") + [""] * 5)[:5]
                parts.append((name, status, seconds, budget, note))
    lines = [f"gpu_check findings in {out}"] + [f"  {line}" for line in environment(out)]
    lines += ["", f"{'part':<20} {'status':<8} {'seconds':>7} {'budget':>6}  note"]
    lines += [f"{n:<20} {s:<8} {sec:>7} {b:>6}  {note}".rstrip() for n, s, sec, b, note in parts]
    lines += ["", "embedded model (tiny) on CUDA against the shipped CPU baselines (tiny-matrix.json):"]
    lines += matrix_lines(out / "tiny-matrix.json")
    lines += ["", "sd15-random on CUDA, SSIM against this run's fp32 (sd15-random-matrix.json):"]
    lines += matrix_lines(out / "sd15-random-matrix.json")
    lines += ["", "probes (probes.json):"]
    lines += probe_lines(out / PROBES_FILE)
    failed = [n for n, s, *_ in parts if s != "pass"]
    lines += ["", f"{len(parts) - len(failed)} of {len(parts)} parts passed"
              + (f"; not passed: {', '.join(failed)}" if failed else "")]
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["preflight", *PROBES, "summary"])
    parser.add_argument("--out", type=Path, help="the findings folder")
    parser.add_argument("--work", type=Path, help="scratch folder (the sd15-random model is saved under it)")
    parser.add_argument("--parts", type=Path, help="summary: the parts' statuses, one tab-separated line each")
    args = parser.parse_args(argv)
    if args.what == "preflight":
        return preflight()
    if args.out is None:
        parser.error(f"{args.what} needs --out")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "summary":
        return summary(args.out, args.parts or args.out / "parts.tsv")
    if args.work is None:
        parser.error(f"{args.what} needs --work")
    return run_probe(args.what, args.out, args.work)


if __name__ == "__main__":
    sys.exit(main())
