"""sdopt leaves the user's process as it found it: the global random states after every run, and
nothing frozen out of the cyclic collector's sight after the session (pytest_sdopt/isolation.py)."""

import gc
import random
import weakref

import numpy as np
import pytest
import torch

from pytest_sdopt.measure import isolation

RNG = """
import random

import numpy as np
import torch


def states():
    queued = getattr(torch.cuda, "_lazy_seed_tracker", None)  # seeds torch keeps for CUDA's start
    kind, keys, *position = np.random.get_state()
    return (random.getstate(), (kind, keys.tolist(), *position), torch.random.get_rng_state().tolist(),
            list(queued.get_calls()) if queued is not None else None)


def test_runs_leave_the_random_states_as_they_were(sdopt):
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    before = states()
    sdopt.run("tome")  # seeded calls, and tomesd forks the global generator
    sdopt.pipeline("fp16")
    assert states() == before
    draws = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert draws == (random.random(), np.random.rand(), torch.rand(1).item())
"""


def test_a_run_leaves_the_global_random_states_as_they_were(run_sdopt):
    run_sdopt(RNG).assert_outcomes(passed=1)


class FakeCuda:
    """torch.cuda's random-state boundary: what rng_states_kept may call, recorded."""

    def __init__(self, initialized: bool):
        self.initialized = initialized
        self.states = ["device 0 state", "device 1 state"]
        self.calls = []
        self._lazy_seed_tracker = type("Tracker", (), {})()
        self._lazy_seed_tracker.call_order = ["the user's seed"]

    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def init(self):
        self.calls.append("init")
        self.initialized = True

    def get_rng_state_all(self):
        self.calls.append("get")
        return list(self.states)

    def set_rng_state_all(self, states):
        self.calls.append("set")
        self.states = list(states)


def test_cuda_states_running_before_a_run_are_put_back():
    cuda = FakeCuda(initialized=True)
    with isolation.rng_states_kept(torch.device("cpu"), cuda=cuda):
        cuda.states = ["seeded by the run"] * 2
    assert cuda.states == ["device 0 state", "device 1 state"] and cuda.calls == ["get", "set"]


def test_a_cuda_run_starts_cuda_before_keeping_its_states_so_the_users_queued_seed_is_among_them():
    cuda = FakeCuda(initialized=False)
    with isolation.rng_states_kept(torch.device("cuda", 0), cuda=cuda):
        cuda.states = ["seeded by the run"] * 2
    assert cuda.calls == ["init", "get", "set"] and cuda.states == ["device 0 state", "device 1 state"]


def test_a_cpu_run_never_starts_cuda_and_puts_back_the_seed_queued_for_its_start():
    cuda = FakeCuda(initialized=False)
    with isolation.rng_states_kept(torch.device("cpu"), cuda=cuda):
        cuda._lazy_seed_tracker.call_order = ["the run's seed"]  # what torch.manual_seed does before CUDA starts
    assert cuda.calls == [] and not cuda.initialized  # reading CUDA's states would have started it
    assert cuda._lazy_seed_tracker.call_order == ["the user's seed"]


def test_the_states_are_put_back_when_the_run_fails_too():
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    with pytest.raises(RuntimeError), isolation.rng_states_kept(torch.device("cpu")):
        torch.manual_seed(0)
        random.seed(0)
        np.random.seed(0)
        raise RuntimeError("a failed run")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_the_freeze_lasts_only_the_session(run_sdopt):
    """The freeze happens (its speed-up stays) and is undone by the session's end: an in-process
    session, like any process that runs pytest.main and goes on."""
    before = gc.get_freeze_count()
    result = run_sdopt(f"""
        import gc

        def test_a_run(sdopt):
            sdopt.run("fp32")
            assert gc.get_freeze_count() > {before}  # frozen once the first pipeline was gone
    """)
    result.assert_outcomes(passed=1)
    assert gc.get_freeze_count() == before
    assert not isolation._FROZEN  # the next session in this process freezes afresh


def test_a_process_that_froze_its_own_objects_is_left_as_it_was(monkeypatch):
    """gc.unfreeze() thaws every frozen object, so sdopt neither freezes over nor thaws a user's freeze."""
    events = []
    monkeypatch.setattr(isolation, "_FROZEN", [])
    monkeypatch.setattr(gc, "get_freeze_count", lambda: 1000)  # the user's own gc.freeze()
    monkeypatch.setattr(gc, "freeze", lambda: events.append("freeze"))
    monkeypatch.setattr(gc, "unfreeze", lambda: events.append("unfreeze"))
    gone = weakref.ref(type("Plain", (), {})())  # a run's pipeline, already freed
    isolation.freeze_what_lives_on([gone])
    isolation.unfreeze()
    assert events == []
    monkeypatch.setattr(gc, "get_freeze_count", lambda: 0)  # nothing frozen: sdopt's own, then undone
    isolation.freeze_what_lives_on([gone])
    isolation.unfreeze()
    isolation.unfreeze()  # a second session end thaws nothing more
    assert events == ["freeze", "unfreeze"]
