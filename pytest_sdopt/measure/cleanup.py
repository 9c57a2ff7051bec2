"""Releasing what a finished run held, so the next run's figures start clean."""

from __future__ import annotations

import gc
import sys
import weakref
from typing import Any

from pytest_sdopt.measure.isolation import freeze_what_lives_on
from pytest_sdopt.measure.memory import return_freed_memory_to_the_os


def watch(pipe: Any) -> list[weakref.ref]:
    """Weak references to a pipeline and its components, to tell whether releasing it worked."""
    parts = [pipe, *getattr(pipe, "components", {}).values()]
    refs = []
    for part in parts:
        try:
            refs.append(weakref.ref(part))
        except TypeError:  # None, strings: nothing to free
            pass
    return refs


def release_memory(watched: list[weakref.ref] | None = None, full: bool = False) -> None:
    """Drop what a finished run held, so the next test's figures start clean.

    A full gc.collect() walks every object torch and diffusers created (~0.2 s here, a third of
    a tiny matrix's harness time, benchmarks/matrix_floor.py), and reference counting alone frees
    most pipelines. So the full collection runs only when a watched pipeline is still alive
    (a reference cycle: group offload's hooks, layerwise casting), or when `full` asks (after an
    out-of-memory error, which may leave a half-built pipeline nobody watched); otherwise the
    young generations are enough for what the test itself left.
    """
    if full or any(ref() is not None for ref in watched or ()):
        gc.collect()
    else:
        gc.collect(1)
    freeze_what_lives_on(watched)
    torch = sys.modules.get("torch")  # never import torch just to clean up
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return_freed_memory_to_the_os()
