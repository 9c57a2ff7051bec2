"""The versions and hardware a run happened on: what a result (and later a baseline) is keyed by."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

PACKAGES = ("torch", "diffusers", "transformers", "accelerate", "tomesd", "xformers")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version through NVML, when nvidia-ml-py and a driver are present."""
    from pytest_sdopt.measure.memory import nvml_error, open_nvml

    nvml = open_nvml()
    if nvml is None:
        return None
    try:
        version = nvml.nvmlSystemGetDriverVersion()
    except nvml_error(nvml):  # NVML's own error types: no version to report
        return None
    return version.decode() if isinstance(version, bytes) else str(version)


def describe(device: Any) -> dict[str, Any]:
    """Versions of python and the stack's packages, plus the device's name (and driver for CUDA)."""
    env: dict[str, Any] = {"python": platform.python_version(), "platform": sys.platform}
    env.update({name: package_version(name) for name in PACKAGES})
    if device.type == "cuda":
        import torch

        env["device_name"] = torch.cuda.get_device_name(device)
        env["driver"] = gpu_driver_version()
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = cpu_model()
    return env
