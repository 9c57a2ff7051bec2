# examples/test_optimizations_hold.py; in your repo, e.g. tests/test_sd_optimizations.py
import pytest


@pytest.mark.sdopt(max_vram="5.1 GB")  # on a CPU run it shows as not applicable, never as a pass
@pytest.mark.parametrize("stack", ["fp16", "fp16+vae_tiling", "fp16+tome"])
def test_optimizations_hold(sdopt, stack):
    result = sdopt.run(stack)  # seeded, warm-up then measured runs
    gates = {"min_ssim": 0.85}  # vae_tiling's own floor: tiles drift at their seams
    if result.device.startswith("cuda"):
        gates["min_its"] = 19.0  # SD 1.5 in fp16 on an RTX 3090: a speed floor is one GPU's figure
    sdopt.check(result, **gates)  # all gates at once, one clear message


def test_reference_matches_its_baseline(sdopt):
    """fp32 against its own stored image: catches a diffusers or torch upgrade that changes the reference."""
    assert sdopt.check(sdopt.run("fp32")).ssim is not None
