"""GPU-only code paths exercised on CPU: unet_resident_offload's hooks, and the step clock (CUDA events faked)."""

import numpy as np
import pytest
import torch

from pytest_sdopt.measure.clocks import CudaEventMarks
from pytest_sdopt.models.sources import resolve_model
from pytest_sdopt.stacks.offload import keep_unet_resident
from pytest_sdopt.measure.runner import StepClock

EXEC, IDLE = torch.device("cpu"), "cpu"  # same place, told apart by type: the boundary we fake


def _draw(pipe):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(1)
    return np.asarray(pipe("a red circle", height=64, width=64, num_inference_steps=1, generator=generator).images[0])


def test_unet_resident_offload_moves_only_the_idle_parts_and_changes_no_pixel():
    reference = _draw(resolve_model("tiny").load())
    pipe = resolve_model("tiny").load()
    moves = []
    for name in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, name)
        original = module.to

        def spy(*args, _name=name, _original=original, **kwargs):
            moves.append((_name, "exec" if isinstance(args[0], torch.device) else "idle"))
            return _original(*args, **kwargs)

        module.to = spy
    keep_unet_resident(pipe, EXEC, IDLE)
    assert pipe._execution_device == EXEC  # diffusers reads the hook's execution_device
    moves.clear()

    image = _draw(pipe)

    assert np.array_equal(image, reference)
    assert ("unet", "exec") not in moves and ("unet", "idle") not in moves  # the UNet never moves
    text_moves = [where for name, where in moves if name == "text_encoder"]
    assert text_moves and text_moves == ["exec", "idle"] * (len(text_moves) // 2)  # back after every forward
    vae_moves = [where for name, where in moves if name == "vae"]
    assert vae_moves[0] == "exec" and vae_moves[-1] == "idle"  # visits only for decode


def test_step_clock_times_steps_from_the_end_of_prompt_encoding():
    clock = StepClock(torch.device("cpu"))
    clock.call_start, clock.encoded_at, clock.step_ends = 10.0, 10.5, [11.0, 11.25, 11.75]
    assert clock.step_times() == [0.5, 0.25, 0.5]
    clock.encoded_at = None  # no text encoder: steps count from the call's start
    assert clock.step_times()[0] == 1.0


class FakeCuda:
    """The torch.cuda boundary CudaEventMarks uses: a GPU timeline in ms that the test advances."""

    def __init__(self):
        self.gpu_ms, self.synchronized = 0.0, 0
        self.streams = []
        cuda = self

        class Event:
            def __init__(self, enable_timing=False):
                assert enable_timing
                self.at_ms = None

            def record(self, stream):
                cuda.streams.append(stream)
                self.at_ms = cuda.gpu_ms

            def elapsed_time(self, other):
                return other.at_ms - self.at_ms

        self.Event = Event

    def current_stream(self, device):
        return f"stream of {device}"

    def synchronize(self, device):
        self.synchronized += 1


def test_on_cuda_the_step_clock_marks_steps_with_events_and_never_stalls_the_queue():
    cuda = FakeCuda()
    clock = StepClock("cuda:1", marks=CudaEventMarks("cuda:1", cuda))
    with clock.watching(object()):  # no text encoder: steps count from the call's start
        cuda.gpu_ms = 250.0
        clock.on_step_end(None, 0, None, {})
        cuda.gpu_ms = 300.0
        clock.on_step_end(None, 1, None, {})
        assert cuda.synchronized == 1  # the start's only: marking a step waits for nothing
        end = clock.stop()

    assert cuda.synchronized == 2 and end >= clock.call_start
    assert clock.step_times() == pytest.approx([0.25, 0.05])
    assert set(cuda.streams) == {"stream of cuda:1"}  # on the run's device, not the current one
