import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_sdopt.core.errors import SdoptUsageError
from pytest_sdopt.stacks import REGISTRY, Phase, parse_stack


@pytest.mark.parametrize("text, canonical", [
    ("fp16", "fp16"),
    ("tome:0.3+vae_tiling+fp16", "fp16+vae_tiling+tome:0.3"),
    ("compile+channels_last+sdpa+bf16", "bf16+sdpa+channels_last+compile"),
    ("fp32+vae_tiling", "vae_tiling"),  # fp32 is what every stack starts from
    ("tome:0.5", "tome"),  # the default ratio is not spelled out
    (" fp16 + tome ", "fp16+tome"),
    ("layerwise_fp8+fp16", "fp16+layerwise_fp8"),
])
def test_stacks_apply_in_phase_order_whatever_the_spelling(text, canonical):
    assert parse_stack(text).name == canonical


def test_every_registered_name_parses_alone_and_phases_are_monotonic():
    phases = [spec.phase for spec in REGISTRY.values()]
    assert phases == sorted(phases)
    assert {spec.phase for spec in REGISTRY.values()} == set(Phase)
    for name in REGISTRY:
        assert parse_stack(name).name == name


def test_the_registry_has_every_name_of_the_contract():
    assert set(REGISTRY) == {
        "fp32", "fp16", "bf16", "vae_tiling", "vae_slicing", "xformers", "sdpa", "attention_slicing",
        "sequential_cpu_offload", "model_cpu_offload", "unet_resident_offload", "tome", "layerwise_fp8",
        "group_offload", "channels_last", "compile",
    }


@pytest.mark.parametrize("text, fragment", [
    ("fp16+bf16", "combines fp16 and bf16, which conflict: both set the precision"),
    ("model_cpu_offload+sequential_cpu_offload", "both set the offload"),
    ("sdpa+xformers", "both set the attention"),
    ("tome+tome:0.3", "names tome twice"),
    ("fp1", "unknown optimization 'fp1'.*Did you mean 'fp16'"),
    ("fp16+bogus", "unknown optimization 'bogus'.*Valid names: fp32, fp16"),
    ("fp16:2", "takes no parameter"),
    ("tome:1.5", "between 0 and 1"),
    ("tome:abc", "between 0 and 1"),
    ("fp16++tome", "empty name"),
    ("", "optimization names joined by"),
])
def test_bad_stacks_name_the_problem(text, fragment):
    with pytest.raises(SdoptUsageError, match=fragment):
        parse_stack(text)


def test_default_min_ssim_is_the_loosest_of_the_stack():
    assert parse_stack("fp16+tome").default_min_ssim == REGISTRY["tome"].default_min_ssim
    assert parse_stack("fp32").default_min_ssim == 0.99


@pytest.mark.parametrize("stack, device_type, reason", [
    ("xformers", "cpu", "xformers is not installed"),
    ("model_cpu_offload", "cpu", "needs a CUDA device (this run is on cpu)"),
    ("sequential_cpu_offload", "mps", "needs a CUDA device (this run is on mps)"),
    ("fp16+unet_resident_offload", "cpu", "unet_resident_offload needs a CUDA device"),
])
def test_unmet_requirements_are_found_before_loading(stack, device_type, reason):
    unmet = parse_stack(stack).unmet_requirement(device_type)
    assert unmet is not None and reason in str(unmet)


def test_cpu_stacks_have_no_unmet_requirement():
    for stack in ("fp32", "fp16+vae_tiling+tome", "bf16+sdpa", "group_offload", "layerwise_fp8"):
        assert parse_stack(stack).unmet_requirement("cpu") is None
    assert parse_stack("model_cpu_offload").unmet_requirement("cuda") is None


@given(st.lists(st.sampled_from(sorted(REGISTRY)), min_size=1, max_size=5, unique=True), st.randoms())
def test_order_of_spelling_never_changes_the_stack(names, rnd):
    try:
        first = parse_stack("+".join(names))
    except SdoptUsageError as exc:
        assert "conflict" in str(exc)
        return
    shuffled = list(names)
    rnd.shuffle(shuffled)
    assert parse_stack("+".join(shuffled)) == first


# Random text alone almost never spells a stack, so half the examples are built from the
# registry's names, tome ratios in and out of range, stray spaces and empty parts: both branches
# (a valid stack, a usage error) are then exercised on every run.
STACK_PART = st.one_of(st.sampled_from([*REGISTRY, "", " ", "fp16 ", "FP16", "tome:", "tome:x", "fp16:0.3"]),
                       st.one_of(st.floats(-0.5, 1.5), st.floats()).map(lambda value: f"tome:{value!r}"),
                       st.text(max_size=8))
STACK_TEXT = st.one_of(st.text(max_size=40), st.lists(STACK_PART, min_size=1, max_size=4).map("+".join))


@given(STACK_TEXT)
def test_stack_parser_only_ever_raises_usage_errors(text):
    """Any text either parses into a stack whose canonical name means exactly that stack again,
    or raises SdoptUsageError with a message; any other exception fails (hypothesis re-raises it)."""
    try:
        stack = parse_stack(text)
    except SdoptUsageError as exc:
        assert str(exc).strip(), f"an empty usage error for {text!r}"
        return
    assert stack.optimizations, f"{text!r} parsed into an empty stack"
    assert all(opt.spec.name in REGISTRY for opt in stack.optimizations)
    again = parse_stack(stack.name)
    # The same name and the same parameters: a name that rounded tome's ratio would give two
    # different stacks one baseline.
    assert again.name == stack.name
    assert [(opt.spec.name, opt.value) for opt in again.optimizations] == \
           [(opt.spec.name, opt.value) for opt in stack.optimizations]
