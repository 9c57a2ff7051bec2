"""Pipeline folders of each Stable Diffusion family in diffusers' own dummy-component layout: small
configs like those of diffusers' fast tests, built from a seed and written with `save_pretrained()`,
as a user's folder would be. The tokenizers are the embedded model's (no hub)."""

from __future__ import annotations

from pathlib import Path

from pytest_sdopt.models.sources import TINY_DIR


def _clip(cls, projection: int | None, seed: int, tokenizer):
    import torch
    from transformers import CLIPTextConfig

    torch.manual_seed(seed)
    config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                            vocab_size=len(tokenizer), max_position_embeddings=77, hidden_act="gelu",
                            projection_dim=projection or 32, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return cls(config).eval()


def _vae(latent_channels: int, seed: int, **extra):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=32, sample_size=128, **extra).eval()


def sd15(folder: Path) -> Path:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY_DIR / "tokenizer")
    torch.manual_seed(0)
    # Cross-attention at the highest resolution too (diffusers' own dummy has none there), so ToMe,
    # which merges only there by default, acts on it.
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                norm_num_groups=32).eval()
    pipe = StableDiffusionPipeline(vae=_vae(4, 0), text_encoder=_clip(CLIPTextModel, None, 0, tokenizer),
                                   tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def sdxl(folder: Path) -> Path:
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY_DIR / "tokenizer")
    torch.manual_seed(0)
    # SDXL's micro-conditioning: the time ids (6 numbers, each embedded to 8) beside the pooled text (32).
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(2, 1),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64,
                                norm_num_groups=32).eval()
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    pipe = StableDiffusionXLPipeline(vae=_vae(4, 0), text_encoder=_clip(CLIPTextModel, None, 0, tokenizer),
                                     text_encoder_2=_clip(CLIPTextModelWithProjection, 32, 0, tokenizer),
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def sd3(folder: Path) -> Path:
    """SD3 without T5 (`text_encoder_3=None`), as SD3 runs commonly are."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(TINY_DIR / "tokenizer")
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                        joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(4, 0, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip(CLIPTextModelWithProjection, 32, 0, tokenizer),
        text_encoder_2=_clip(CLIPTextModelWithProjection, 32, 1, tokenizer),
        text_encoder_3=None, tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=None)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
