"""The training script's shortcuts compute what the shipped pipeline computes (scripts/train_tiny.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from train_tiny import RepeatedContextAttention, TextConditioning  # noqa: E402

from pytest_sdopt.models.architectures import TINY_SD3, build_components  # noqa: E402

IDS = {"bos_token_id": 98, "eos_token_id": 99, "pad_token_id": 99}


def test_folding_the_t5_positions_into_one_gives_sd3s_output_and_gradients():
    """SD3 without T5 sees 256 positions of zeros; training folds them into one position with an
    ln-256 attention bias. Same output and same gradients as the pipeline's 333 positions."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    parts = build_components(TINY_SD3, 0, vocab_size=100, special_token_ids=IDS)
    transformer, encoders = parts["transformer"], [parts["text_encoder"], parts["text_encoder_2"]]
    transformer.requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 98, (2, 77), generator=generator)
    noisy, timesteps = torch.randn(2, 16, 16, 16, generator=generator), torch.tensor([900.0, 100.0])

    def run(folded: bool):
        context, pooled = TextConditioning("sd3", encoders, transformer.config, folded=folded)(ids)
        processor = RepeatedContextAttention(TextConditioning.T5_POSITIONS) if folded else JointAttnProcessor2_0()
        transformer.set_attn_processor(processor)
        transformer.zero_grad()
        out = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=context,
                          pooled_projections=pooled).sample
        out.square().mean().backward()
        grads = {name: p.grad.clone() for name, p in transformer.named_parameters() if p.grad is not None}
        return context.shape[1], out.detach(), grads

    full_positions, full, full_grads = run(folded=False)
    folded_positions, folded, folded_grads = run(folded=True)
    assert (full_positions, folded_positions) == (77 + 256, 77 + 1)
    assert torch.allclose(full, folded, atol=1e-5), (full - folded).abs().max()
    assert full_grads.keys() == folded_grads.keys() and len(full_grads) > 50
    for name, grad in full_grads.items():
        assert torch.allclose(grad, folded_grads[name], atol=1e-5, rtol=1e-4), name
    # A bias of 0 (the folded position counted once) is measurably another function: the bias matters.
    transformer.set_attn_processor(RepeatedContextAttention(1))
    context, pooled = TextConditioning("sd3", encoders, transformer.config, folded=True)(ids)
    with torch.no_grad():
        once = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=context,
                           pooled_projections=pooled).sample
    assert (once - full).abs().max() > 1e-3


def test_sdxl_conditioning_is_both_penultimate_states_and_the_second_encoders_pooled_projection():
    from pytest_sdopt.models.architectures import TINY_XL

    parts = build_components(TINY_XL, 0, vocab_size=100, special_token_ids=IDS)
    encoders = [parts["text_encoder"], parts["text_encoder_2"]]
    ids = torch.randint(0, 98, (2, 77), generator=torch.Generator().manual_seed(0))
    context, pooled = TextConditioning("sdxl", encoders, parts["unet"].config)(ids)
    assert context.shape == (2, 77, TINY_XL.denoiser["cross_attention_dim"])
    second = encoders[1](ids, output_hidden_states=True)
    assert torch.equal(context[..., 32:], second.hidden_states[-2]) and torch.equal(pooled, second.text_embeds)
    assert TextConditioning("sdxl", encoders, parts["unet"].config).unconditional_is_zeros()


def test_the_conditioning_trained_on_is_what_each_pipeline_encodes():
    """The prompt and the empty negative prompt, encoded by the diffusers pipeline and by training."""
    from diffusers import StableDiffusion3Pipeline, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from pytest_sdopt.models.architectures import TINY_XL
    from pytest_sdopt.models.sources import TINY_DIR

    tokenizer = CLIPTokenizer.from_pretrained(TINY_DIR / "tokenizer")
    ids_of = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
              "pad_token_id": tokenizer.pad_token_id}
    prompt = "a red circle on a blue background"
    for arch, cls in ((TINY_XL, StableDiffusionXLPipeline), (TINY_SD3, StableDiffusion3Pipeline)):
        parts = build_components(arch, 0, vocab_size=len(tokenizer), special_token_ids=ids_of)
        extra = {"text_encoder_3": None, "tokenizer_3": None} if arch is TINY_SD3 else {}
        pipe = cls(**parts, tokenizer=tokenizer, tokenizer_2=tokenizer, **extra)
        denoiser = parts["transformer" if arch is TINY_SD3 else "unet"]
        conditioning = TextConditioning(arch.family, [parts["text_encoder"], parts["text_encoder_2"]],
                                        denoiser.config)
        ids = tokenizer([prompt, ""], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        with torch.no_grad():
            context, pooled = conditioning(ids)
            encoded = pipe.encode_prompt(prompt, prompt, **({"prompt_3": prompt} if arch is TINY_SD3 else {}),
                                         device="cpu", do_classifier_free_guidance=True)
        positive, negative, positive_pooled, negative_pooled = encoded
        # SD3 without T5: zeros after the 77 CLIP positions; diffusers 0.42 gives max_sequence_length
        # (256) of them, as trained, diffusers 0.35 tokenizer_max_length (77): compared over the CLIP part.
        clip = slice(0, 77)
        assert torch.allclose(positive[0, clip], context[0, clip], atol=1e-6)
        assert not positive[0, 77:].any() and torch.allclose(positive_pooled[0], pooled[0])
        if conditioning.unconditional_is_zeros():  # SDXL: force_zeros_for_empty_prompt
            assert not negative.any() and not negative_pooled.any()
        else:
            assert torch.allclose(negative[0, clip], context[1, clip], atol=1e-6)
            assert torch.allclose(negative_pooled[0], pooled[1], atol=1e-6)
    if positive.shape[1] == 77 + TextConditioning.T5_POSITIONS:
        assert context.shape[1] == positive.shape[1]


def test_each_recipe_is_the_one_its_shipped_weights_record():
    """RECIPES (scripts/make_tiny_model.py) is what made the shipped weights, field for field: an
    experiment left in the recipe, or weights shipped from another one, fails here."""
    import dataclasses
    import json

    from make_tiny_model import RECIPES
    from train_tiny import Recipe

    from pytest_sdopt.models.architectures import EMBEDDED_ARCHITECTURES

    embedded = Path(__file__).resolve().parent.parent / "pytest_sdopt" / "models" / "embedded"
    for name in EMBEDDED_ARCHITECTURES:
        shipped = json.loads((embedded / name / "sdopt_model.json").read_text())["trained"]["recipe"]
        assert dataclasses.asdict(dataclasses.replace(Recipe(), **RECIPES[name])) == shipped, name
