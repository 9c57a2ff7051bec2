"""An optimization that changes nothing on a pipeline is not a pass: `Stack.apply` raises
StackUnsupported with what it found, and the fixture skips (or, strict, fails) with that reason.

Real diffusers objects throughout: the embedded `tiny` and a small random pipeline laid out like
diffusers' own test models, whose highest resolution has no attention (so tomesd merges nothing).
"""

from __future__ import annotations

import re
from pathlib import Path

import accelerate
import numpy as np
import pytest
import tomesd
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, XFormersAttnProcessor

from pytest_sdopt.core.errors import StackUnsupported
from pytest_sdopt.models.sources import resolve_model
from pytest_sdopt.stacks import REGISTRY, parse_stack
from pytest_sdopt.stacks.token_merging import tome_merging_blocks
from pytest_sdopt.config.defaults import REFERENCE

CPU = torch.device("cpu")
TOME_AT_TOP_ONLY = ("tome changed nothing on this model: no attention at its highest resolution, where tomesd "
                    "merges (max_downsample=1); all 4 of its transformer blocks are at downsample 2")


def tiny():
    return resolve_model("tiny").load()


def apply(stack: str, pipe) -> None:
    parse_stack(stack).apply(pipe, CPU)


@pytest.fixture(scope="module")
def no_top_attention(tmp_path_factory) -> Path:
    """The embedded model with a UNet like diffusers' test models: attention only at the lower
    level (DownBlock2D then CrossAttnDownBlock2D), saved as a user's folder would be."""
    parts = tiny().components
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=parts["text_encoder"].config.hidden_size, attention_head_dim=2, norm_num_groups=8)
    pipe = StableDiffusionPipeline(vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
                                   unet=unet, scheduler=parts["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    folder = tmp_path_factory.mktemp("models") / "no-top-attention"
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


# --- tome: merges only at downsample <= max_downsample ---------------------------------------


def test_tome_on_a_unet_without_attention_at_its_highest_resolution_changed_nothing(no_top_attention):
    pipe = resolve_model(str(no_top_attention)).load()
    with pytest.raises(StackUnsupported) as raised:
        apply("tome", pipe)
    assert raised.value.optimization == "tome"
    assert str(raised.value) == TOME_AT_TOP_ONLY


def test_tome_with_a_ratio_names_the_ratio(no_top_attention):
    with pytest.raises(StackUnsupported, match=r"^tome:0\.3 changed nothing on this model: no attention at its "):
        apply("fp16+tome:0.3", resolve_model(str(no_top_attention)).load())


def test_tome_on_the_embedded_model_acts_at_its_highest_resolution():
    pipe = tiny()
    apply("tome", pipe)  # no StackUnsupported
    merging, downsample = tome_merging_blocks(pipe)
    assert merging == ["down_blocks.0.attentions.0.transformer_blocks.0",
                       "up_blocks.3.attentions.0.transformer_blocks.0", "up_blocks.3.attentions.1.transformer_blocks.0"]
    assert sorted(downsample.values()) == [1, 1, 1, 2, 2, 2, 4, 4, 4, 8]


@pytest.mark.parametrize("latent_side", [16, 8])
@pytest.mark.parametrize("model", ["tiny", "no_top_attention"])
def test_the_blocks_predicted_to_merge_are_the_ones_tomesd_merges_in(model, latent_side, request, monkeypatch):
    """The prediction against tomesd itself: one UNet forward, counting the blocks that really merge."""
    pipe = tiny() if model == "tiny" else resolve_model(str(request.getfixturevalue("no_top_attention"))).load()
    tomesd.apply_patch(pipe, ratio=0.5)
    merged = []
    real = tomesd.merge.bipartite_soft_matching_random2d

    def counting(metric, *args, **kwargs):
        merged.append(metric.shape[1])
        return real(metric, *args, **kwargs)

    monkeypatch.setattr(tomesd.merge, "bipartite_soft_matching_random2d", counting)
    torch.manual_seed(0)
    latents = torch.randn(1, 4, latent_side, latent_side)
    context = torch.randn(1, 77, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        pipe.unet(latents, 10, context)
    merging, _ = tome_merging_blocks(pipe)
    assert len(merged) == len(merging) == (3 if model == "tiny" else 0)
    assert set(merged) <= {latent_side * latent_side}  # only the highest resolution's tokens


def test_a_tome_run_on_that_model_skips_with_the_reason(run_sdopt, no_top_attention):
    result = run_sdopt("""
        def test_tome(sdopt):
            sdopt.run("tome")
    """, "--sdopt-model", str(no_top_attention))
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED*stack 'tome' cannot run here: {TOME_AT_TOP_ONLY}"])


def test_strict_makes_that_run_fail_with_the_reason(run_sdopt, no_top_attention):
    result = run_sdopt("""
        def test_tome(sdopt):
            sdopt.run("tome")
    """, "--sdopt-model", str(no_top_attention), "--sdopt-strict")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*stack 'tome' cannot run here: {TOME_AT_TOP_ONLY} "
                                 "(--sdopt-strict makes this a failure)*"])


# --- every other optimization: acts on tiny, and a forced no-op names what it found -------------


def _to(dtype):
    def prepare(pipe):
        for part in (pipe.vae, pipe.text_encoder, pipe.unet):
            torch.nn.Module.to(part, dtype=dtype)

    return prepare


def _classic_attention(pipe):
    for part in (pipe.unet, pipe.vae):
        part.set_attn_processor(AttnProcessor())


def _channels_last(pipe):
    for part in (pipe.unet, pipe.vae):
        part.to(memory_format=torch.channels_last)


def _skip_every_layer(pipe):
    pipe.unet._skip_layerwise_casting_patterns = (".*",)  # diffusers' own skip list, matching every layer


def _processors(pipe, part):
    return {type(p).__name__ for p in getattr(pipe, part).attn_processors.values()}


def _hook_names(pipe):
    return {hook for _component, _module, hook in REGISTRY["group_offload"].effect.take(pipe)}


# stack, how to see on tiny that it acted, how to make it a no-op, the reason (a regex) it then gives
CASES = {
    "fp16": (lambda p: p.unet.dtype == p.vae.dtype == p.text_encoder.dtype == torch.float16, _to(torch.float16),
             r"fp16 changed nothing: vae, text_encoder, unet already held float16 weights"),
    "bf16": (lambda p: p.unet.dtype == torch.bfloat16, _to(torch.bfloat16),
             r"bf16 changed nothing: vae, text_encoder, unet already held bfloat16 weights"),
    "layerwise_fp8": (lambda p: torch.float8_e4m3fn in {w.dtype for w in p.unet.parameters()}, _skip_every_layer,
                      r"layerwise_fp8 changed nothing: no UNet weight is stored in float8 after it \(diffusers' "
                      r"layerwise casting skipped every layer\)"),
    "attention_slicing": (lambda p: _processors(p, "unet") == {"SlicedAttnProcessor"},
                          lambda p: p.enable_attention_slicing("auto"),
                          r"attention_slicing changed nothing: the attention layers already used, and still use, "
                          r"unet: SlicedAttnProcessor\(slice_size=1\) \(20\); vae: AttnProcessor2_0 \(2\)"),
    "vae_tiling": (lambda p: p.vae.use_tiling is True, lambda p: p.vae.enable_tiling(),
                   r"vae_tiling changed nothing: the VAE already decoded in tiles \(vae.use_tiling was already True\)"),
    "vae_slicing": (lambda p: p.vae.use_slicing is True, lambda p: p.vae.enable_slicing(),
                    r"vae_slicing changed nothing: the VAE already decoded one image at a time "
                    r"\(vae.use_slicing was already True\)"),
    "group_offload": (lambda p: _hook_names(p) == {"group_offloading"}, lambda p: apply("group_offload", p),
                      r"group_offload changed nothing: the pipeline already had the same hooks, "
                      r"group_offloading \(\d+\)"),
    # Needs CUDA to run, but its apply function works on the CPU: enough to see its hooks.
    "unet_resident_offload": (lambda p: _hook_names(p) == {"OnloadWhileRunning"},
                              lambda p: apply("unet_resident_offload", p),
                              r"unet_resident_offload changed nothing: the pipeline already had the same hooks, "
                              r"OnloadWhileRunning \(2\)"),
    "channels_last": (lambda p: p.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
                      and not p.unet.conv_in.weight.is_contiguous(), _channels_last,
                      r"channels_last changed nothing: all \d+ convolution weights of the UNet and VAE were "
                      r"already channels-last"),
    "compile": (lambda p: p.unet._compiled_call_impl is not None, lambda p: p.unet.compile(),
                r"compile changed nothing: the denoiser was already compiled"),
}


def skip_where_this_diffusers_lacks_the_api(stack, pipe):
    """CI also runs the oldest diffusers pyproject.toml admits, which has no group offloading."""
    if stack == "group_offload" and not hasattr(pipe, "enable_group_offload"):
        pytest.skip("this diffusers has no pipe.enable_group_offload()")


@pytest.mark.parametrize("stack", list(CASES))
def test_each_optimization_acts_on_the_embedded_model(stack):
    acted, _prepare, _reason = CASES[stack]
    pipe = tiny()
    skip_where_this_diffusers_lacks_the_api(stack, pipe)
    assert not acted(pipe)  # else this case could not tell an effect from none
    apply(stack, pipe)  # no StackUnsupported
    assert acted(pipe)


@pytest.mark.parametrize("stack", list(CASES))
def test_each_optimization_that_changed_nothing_says_what_it_found(stack):
    _acted, prepare, reason = CASES[stack]
    pipe = tiny()
    skip_where_this_diffusers_lacks_the_api(stack, pipe)
    prepare(pipe)
    with pytest.raises(StackUnsupported) as raised:
        apply(stack, pipe)
    assert raised.value.optimization == stack
    assert re.fullmatch(reason, str(raised.value)), str(raised.value)


def test_sdpa_acts_where_attention_used_the_classic_processor():
    pipe = tiny()
    _classic_attention(pipe)
    apply("sdpa", pipe)  # no StackUnsupported
    assert _processors(pipe, "unet") == _processors(pipe, "vae") == {"AttnProcessor2_0"}


def test_sdpa_changed_nothing_on_the_embedded_model_with_this_diffusers():
    """This diffusers already gives every attention layer AttnProcessor2_0 (torch >= 2): sdpa skips."""
    pipe = tiny()
    assert _processors(pipe, "unet") == _processors(pipe, "vae") == {"AttnProcessor2_0"}
    with pytest.raises(StackUnsupported, match=r"^sdpa changed nothing: every attention layer already used "
                                               r"AttnProcessor2_0 \(20 in the unet, 2 in the vae\)$"):
        apply("sdpa", pipe)


def test_that_sdpa_skip_is_honest_the_image_is_the_same_bit_for_bit():
    def draw(pipe):
        return pipe("a yellow triangle", height=64, width=64, num_inference_steps=2, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images

    as_loaded = tiny()
    as_loaded.set_progress_bar_config(disable=True)
    explicit = tiny()
    explicit.set_progress_bar_config(disable=True)
    for part in (explicit.unet, explicit.vae):
        part.set_attn_processor(AttnProcessor2_0())
    assert np.array_equal(draw(as_loaded), draw(explicit))


def test_the_attention_effect_sees_xformers_processors():
    """xformers needs CUDA and the package; its processor class can still be set, to see it counted."""
    effect = REGISTRY["xformers"].effect
    pipe = tiny()
    before = effect.take(pipe)
    assert effect.missing(pipe, before) is not None
    pipe.unet.set_attn_processor(XFormersAttnProcessor())
    assert effect.missing(pipe, before) is None


def test_the_offloads_effect_sees_accelerates_hooks():
    """model_cpu_offload and sequential_cpu_offload need CUDA; the hooks they add are accelerate's."""
    for name, offload in [("model_cpu_offload", lambda p: accelerate.cpu_offload_with_hook(p.unet, "cpu")),
                          ("sequential_cpu_offload", lambda p: accelerate.cpu_offload(p.unet, "cpu"))]:
        effect = REGISTRY[name].effect
        pipe = tiny()
        before = effect.take(pipe)
        assert effect.missing(pipe, before) == "changed nothing: it registered no offload hook on any component"
        offload(pipe)
        assert effect.missing(pipe, before) is None, name


def test_every_optimization_but_the_reference_declares_its_effect():
    assert [name for name, spec in REGISTRY.items() if spec.effect is None] == [REFERENCE]


def test_an_effect_that_cannot_read_its_state_does_not_judge():
    pipe = tiny()
    pipe.vae = None  # no VAE: the flag's snapshot is None, so vae_tiling's own check decides
    effect = REGISTRY["vae_tiling"].effect
    assert effect.missing(pipe, effect.take(pipe)) is None
