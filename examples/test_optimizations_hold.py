"""A downstream repo's test file, as DESIGN §1 writes it (the gates arrive with sdopt.check).

Run: pytest -p pytest_sdopt examples/   (the embedded model, on CPU, offline)
"""

import numpy as np
import pytest

STACKS = ["fp16", "fp16+vae_tiling", "fp16+tome", "bf16+sdpa", "attention_slicing"]


@pytest.mark.parametrize("stack", STACKS)
def test_optimizations_hold(sdopt, stack):
    result = sdopt.run(stack)  # seeded, warm-up then measured runs
    assert result.image.size == result.scenario.size
    assert result.its > 0
    pixels = np.asarray(result.image)
    assert pixels.std() > 0, f"{stack} drew a flat image"


def test_reference_is_deterministic(sdopt):
    first, second = sdopt.run("fp32"), sdopt.run("fp32")
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
