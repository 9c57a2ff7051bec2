"""What a run changes in the user's test process, and how it is put back.

sdopt runs inside the user's process, beside their own tests. Two things it does would outlast it:
- Seeding. Every pipeline call seeds the global torch generator (tomesd forks it, runner.py), and
  the machine's reference workload (machine.py) and sd15-random's weights seed it too.
  `rng_states_kept` puts back the global random states around each run and each pipeline handed
  out (torch's CPU generator, CUDA's, numpy's, `random`'s), so the user's next draw is the one it
  would have been without sdopt.
- `gc.freeze()`, which keeps full collections short (`freeze_what_lives_on`). It moves every
  object alive at the time out of the cyclic collector's sight, the user's included, so it is
  undone (`unfreeze`) when the session ends.

torch and numpy are imported only when a run asks: importing the plugin imports neither.
"""

from __future__ import annotations

import gc
import random
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

_FROZEN: list[bool] = []  # holds True while this plugin's gc.freeze() is in force (a list: no `global`)


@contextmanager
def rng_states_kept(device: Any, cuda: Any = None) -> Iterator[None]:
    """The global random states as they were before, whatever the block draws or seeds.

    `cuda` stands in for torch.cuda (tests fake that boundary). CUDA's generators are read only
    where CUDA is running or the run is on CUDA: reading them starts CUDA, which a CPU run must not
    do. Before CUDA starts, torch.manual_seed only queues a seed for its start, replacing one the
    user queued; that queue is put back instead.
    """
    import numpy  # a dependency of diffusers, so always there when a run is
    import torch

    cuda = torch.cuda if cuda is None else cuda
    python_state, numpy_state, cpu_state = random.getstate(), numpy.random.get_state(), torch.random.get_rng_state()
    cuda_states = queued = None
    if cuda.is_available() and (cuda.is_initialized() or getattr(device, "type", None) == "cuda"):
        if not cuda.is_initialized():
            cuda.init()  # a CUDA run starts CUDA anyway; first, so the states kept include the seeds the user queued
        cuda_states = cuda.get_rng_state_all()
    else:
        tracker = getattr(cuda, "_lazy_seed_tracker", None)  # torch's queue of seeds for CUDA's start
        queued = (tracker, dict(vars(tracker))) if tracker is not None else None
    try:
        yield
    finally:
        random.setstate(python_state)
        numpy.random.set_state(numpy_state)
        torch.random.set_rng_state(cpu_state)
        if cuda_states is not None:
            cuda.set_rng_state_all(cuda_states)
        if queued is not None:
            vars(queued[0]).update(queued[1])


def freeze_what_lives_on(watched: list[weakref.ref] | None) -> None:
    """Once a session, after its first run's pipeline is gone: move every object alive then (torch's,
    diffusers' and transformers' modules and classes, ~450,000 objects) out of the cyclic
    collector's sight with gc.freeze(), so later full collections (group offload's, Python's own
    during calls, pytest's at the session's end) walk only what later runs create. In a tiny
    matrix those collections were 1.3 s of a 5.7 s harness. Nothing a run makes is frozen: it
    happens only when no watched pipeline is alive, after a full collection, so no garbage is
    frozen either; objects frozen are still freed by reference counting.

    Not where something is frozen already: gc.unfreeze() cannot tell whose objects it thaws, so a
    process that froze its own (a server that forks workers) is left as it was."""
    if _FROZEN or not watched or any(ref() is not None for ref in watched) or gc.get_freeze_count():
        return
    gc.collect()
    gc.freeze()
    _FROZEN.append(True)


def unfreeze() -> None:
    """At the session's end: what `freeze_what_lives_on` froze is back in the collector's sight
    (the user's objects among it), and a later session in this process freezes afresh."""
    if _FROZEN:
        _FROZEN.clear()
        gc.unfreeze()
