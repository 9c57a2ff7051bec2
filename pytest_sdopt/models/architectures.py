"""The Stable Diffusion topologies pytest-sdopt builds itself: the embedded `tiny` (SD 1.5) and the
published architectures with random weights, `sd15-random`, `sdxl-random` (SDXL base) and
`sd3-random` (SD3 medium without T5).

All are described as plain config dicts (no torch at import) and built by one function, so
the embedded model's generator script and the random loaders cannot drift apart.
Components are seeded one by one, as diffusers' own fast tests do, so each part's weights
depend only on the seed and its own config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# SD 1.5's scheduler as published (PNDM, scaled-linear betas).
SD15_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

_SD_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
_SD_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def _sd_unet(channels: tuple[int, ...], layers: int, cross_attention_dim: int, sample_size: int, heads: int = 8,
             norm_groups: int = 32) -> dict[str, Any]:
    """SD 1.5's UNet topology: cross-attention on the three highest-resolution levels.
    (`attention_head_dim` is, as in SD 1.5's own config, the number of heads.)"""
    return {"sample_size": sample_size, "in_channels": 4, "out_channels": 4, "down_block_types": _SD_DOWN,
            "up_block_types": _SD_UP, "block_out_channels": channels, "layers_per_block": layers,
            "cross_attention_dim": cross_attention_dim, "attention_head_dim": heads, "norm_num_groups": norm_groups}


def _sd_vae(channels: tuple[int, ...], layers: int, norm_groups: int, sample_size: int) -> dict[str, Any]:
    """SD's VAE topology: four levels, so latents are 1/8 of the image, with 4 channels."""
    return {"in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4, "block_out_channels": channels, "layers_per_block": layers,
            "latent_channels": 4, "norm_num_groups": norm_groups, "sample_size": sample_size}


def _sdxl_unet(channels: tuple[int, ...], heads: tuple[int, ...], transformer_layers: tuple[int, ...],
               cross_attention_dim: int, time_embed_dim: int, pooled_dim: int, sample_size: int,
               norm_groups: int = 32, layers: int = 2) -> dict[str, Any]:
    """SDXL's UNet topology: three levels, no attention at the highest resolution, linear
    projections, and micro-conditioning on the pooled text beside six embedded time ids."""
    return {"sample_size": sample_size, "in_channels": 4, "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "block_out_channels": channels, "layers_per_block": layers, "attention_head_dim": heads,
            "transformer_layers_per_block": transformer_layers, "cross_attention_dim": cross_attention_dim,
            "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": time_embed_dim,
            "projection_class_embeddings_input_dim": 6 * time_embed_dim + pooled_dim, "norm_num_groups": norm_groups}


def _sd3_transformer(layers: int, heads: int, head_dim: int, joint_attention_dim: int, pooled_dim: int,
                     sample_size: int, pos_embed_max_size: int) -> dict[str, Any]:
    """SD3's MMDiT: joint blocks over patch-2 tokens of a 16-channel latent."""
    return {"sample_size": sample_size, "patch_size": 2, "in_channels": 16, "num_layers": layers,
            "attention_head_dim": head_dim, "num_attention_heads": heads, "joint_attention_dim": joint_attention_dim,
            "caption_projection_dim": heads * head_dim, "pooled_projection_dim": pooled_dim, "out_channels": 16,
            "pos_embed_max_size": pos_embed_max_size}


def _clip_text(hidden: int, intermediate: int, layers: int, heads: int, act: str = "quick_gelu") -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": 77, "hidden_act": act,
            "projection_dim": hidden}


# CLIP ViT-L/14's text tower (SD 1.5; SDXL's and SD3's first encoder) and OpenCLIP ViT-bigG/14's
# (SDXL's and SD3's second, with its 1280-d projection), as published.
CLIP_L = {"vocab_size": 49408, **_clip_text(hidden=768, intermediate=3072, layers=12, heads=12)}
CLIP_G = {"vocab_size": 49408, **_clip_text(hidden=1280, intermediate=5120, layers=32, heads=20, act="gelu")}

# SDXL base's scheduler as published (Euler, scaled-linear betas, leading timesteps).
SDXL_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon", "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}  # flow matching, as published


@dataclass(frozen=True)
class Architecture:
    """Configs of one SD topology, plus the defaults its pipeline runs with.

    `family`: "sd15" (UNet, one CLIP text encoder, PNDM), "sdxl" (UNet with pooled-text and
    time-id conditioning, a second CLIP text encoder with projection, Euler) or "sd3" (an
    SD3Transformer2DModel, two CLIP text encoders with projection and no T5, a 16-channel VAE,
    flow-matching Euler). `denoiser`: the UNet's or the transformer's config."""

    name: str
    denoiser: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # transformers.CLIPTextConfig keyword arguments
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD15_SCHEDULER))
    default_steps: int = 20
    family: str = "sd15"
    text_encoder_2: dict[str, Any] | None = None  # SDXL, SD3: the second CLIP, with projection

    @property
    def unet(self) -> dict[str, Any]:
        assert self.family != "sd3", f"{self.name} has a transformer, not a UNet"
        return self.denoiser

    @property
    def default_size(self) -> tuple[int, int]:
        """Image size the pipeline uses when none is given: the denoiser's sample size times the VAE factor."""
        side = self.denoiser["sample_size"] * 2 ** (len(self.vae["block_out_channels"]) - 1)
        return side, side


# The SD 1.5 topology at a small width: 4-level VAE (latents at 1/8), cross-attention on the
# three highest-resolution UNet levels (so attention slicing, SDPA and ToMe act on it), and a
# 2-layer CLIP text encoder. ~8 MB of fp32 weights; a 128x128 image in 10 steps takes ~0.25 s
# on a 2-core CPU. The VAE's sample_size (64) is below the default image size on purpose:
# VAE tiling then really tiles. At this width SD 1.5's 8 heads and 32 norm groups would mean
# 4-dim heads and one channel per group (an instance norm, which erases the flat colours the
# model must draw), so the UNet has 2 heads and 8 groups: trained, it learns what it cannot with those.
TINY = Architecture(
    name="tiny",
    denoiser=_sd_unet((32, 32, 64, 64), layers=1, cross_attention_dim=32, sample_size=16, heads=2, norm_groups=8),
    vae=_sd_vae((16, 32, 32, 32), layers=1, norm_groups=16, sample_size=64),
    text_encoder=_clip_text(hidden=32, intermediate=64, layers=2, heads=4),
    default_steps=10,
)

# SDXL's topology at tiny's width: three UNet levels with no attention at the highest resolution
# (one transformer layer at the middle level, two at the lowest, as SDXL's 1/2/10), linear
# projections, 64-d cross-attention from two CLIP encoders (32 + 32, read at their penultimate
# layer) and the micro-conditioning on the pooled text of the second (32-d projection) and six
# time ids (6 x 8); SD's VAE layout (SDXL's VAE differs from SD's only in its weights: tiny-xl
# uses tiny's) and SDXL's Euler scheduler.
TINY_XL = Architecture(
    name="tiny-xl",
    denoiser=_sdxl_unet((32, 48, 64), heads=(2, 2, 2), transformer_layers=(1, 1, 2), cross_attention_dim=64,
                        time_embed_dim=8, pooled_dim=32, sample_size=16, norm_groups=8, layers=1),
    vae=TINY.vae,
    text_encoder=_clip_text(hidden=32, intermediate=64, layers=2, heads=4),
    text_encoder_2=_clip_text(hidden=32, intermediate=64, layers=2, heads=4, act="gelu"),
    scheduler=SDXL_SCHEDULER,
    default_steps=10,
    family="sdxl",
)

# SD3's topology at twice tiny's width: an MMDiT of 3 joint blocks (4 heads of 32; at tiny's
# width of 64, with 4 or 8 blocks, it drew one rounded blob for "square" and "circle" alike),
# patch 2 on a 16-channel latent, 64-d joint attention (the two CLIPs' 32 + 32, so no padding; the 256
# positions T5 would fill are zeros, as in SD3 without T5), 64-d pooled text; a 16-channel VAE
# with no quant convs, its latents shifted and scaled; flow-matching Euler with SD3's shift 3.
TINY_SD3 = Architecture(
    name="tiny-sd3",
    denoiser=_sd3_transformer(layers=3, heads=4, head_dim=32, joint_attention_dim=64, pooled_dim=64, sample_size=16,
                              pos_embed_max_size=32),
    vae={**TINY.vae, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False},
    text_encoder=_clip_text(hidden=32, intermediate=64, layers=2, heads=4),
    text_encoder_2=_clip_text(hidden=32, intermediate=64, layers=2, heads=4, act="gelu"),
    scheduler=SD3_SCHEDULER,
    default_steps=10,
    family="sd3",
)
EMBEDDED_ARCHITECTURES = {arch.name: arch for arch in (TINY, TINY_XL, TINY_SD3)}

# The published SD 1.5 architecture: UNet2DConditionModel defaults with 768-d cross-attention,
# the SD VAE, CLIP ViT-L/14's text tower. 859.52 M + 83.65 M + 123.06 M parameters.
SD15 = Architecture(
    name="sd15-random",
    denoiser=_sd_unet((320, 640, 1280, 1280), layers=2, cross_attention_dim=768, sample_size=64),
    vae=_sd_vae((128, 256, 512, 512), layers=2, norm_groups=32, sample_size=512),
    text_encoder=CLIP_L,
    default_steps=20,
)

# SDXL base 1.0: a 3-level UNet (no attention at the highest resolution; 1, 2 and 10 transformer
# layers per block), 2048-d cross-attention (768 + 1280), 5, 10 and 20 heads of 64 channels, and
# micro-conditioning on the pooled text (1280) and six time ids (6 x 256): 2,567,463,684
# parameters; the SD VAE (83,653,863); CLIP-L (123,060,480) and CLIP-G with projection
# (694,659,840). Default 1024x1024, as published; 30 steps.
SDXL = Architecture(
    name="sdxl-random",
    denoiser=_sdxl_unet((320, 640, 1280), heads=(5, 10, 20), transformer_layers=(1, 2, 10), cross_attention_dim=2048,
                        time_embed_dim=256, pooled_dim=1280, sample_size=128),
    vae={**_sd_vae((128, 256, 512, 512), layers=2, norm_groups=32, sample_size=1024), "scaling_factor": 0.13025,
         "force_upcast": True},
    text_encoder=CLIP_L,
    text_encoder_2=CLIP_G,
    scheduler=SDXL_SCHEDULER,
    default_steps=30,
    family="sdxl",
)

# SD3 medium without T5 (text_encoder_3=None, as SD3 commonly runs): an MMDiT of 24 joint blocks,
# 24 heads of 64, patch 2 on a 16-channel latent, 4096-d joint attention (the CLIPs' embeddings
# padded to T5's width), 2048-d pooled text: 2,028,328,000 parameters; a 16-channel VAE
# (83,819,683); CLIP-L with projection (123,650,304) and CLIP-G with projection (694,659,840).
# Default 1024x1024; 28 steps.
SD3 = Architecture(
    name="sd3-random",
    denoiser=_sd3_transformer(layers=24, heads=24, head_dim=64, joint_attention_dim=4096, pooled_dim=2048,
                              sample_size=128, pos_embed_max_size=192),
    vae={**_sd_vae((128, 256, 512, 512), layers=2, norm_groups=32, sample_size=1024), "latent_channels": 16,
         "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False, "use_post_quant_conv": False},
    text_encoder=CLIP_L,
    text_encoder_2=CLIP_G,
    scheduler=SD3_SCHEDULER,
    default_steps=28,
    family="sd3",
)
RANDOM = {arch.name: arch for arch in (SD15, SDXL, SD3)}


def build_components(arch: Architecture, seed: int, device: Any = "cpu", vocab_size: int | None = None,
                     special_token_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """Seeded UNet, VAE, text encoder and scheduler of `arch`, created directly on `device`.

    `device="meta"` builds the shapes only (instant, no memory), which is how the tests check
    the SD 1.5 parameter counts. The tokenizer is not built here: both architectures use the
    embedded tokenizer files.
    """
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, PNDMScheduler,
                           SD3Transformer2DModel, UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(config: dict[str, Any]) -> Any:
        config = dict(config)
        if vocab_size is not None and "vocab_size" not in config:
            config["vocab_size"] = vocab_size
        config.update(special_token_ids or {})
        return CLIPTextConfig(**config)

    # SD 1.5 reads CLIP-L's hidden states; SD3 its projection too (the pooled text).
    first_text = CLIPTextModelWithProjection if arch.family == "sd3" else CLIPTextModel
    denoiser, denoiser_class = (("transformer", SD3Transformer2DModel) if arch.family == "sd3"
                                else ("unet", UNet2DConditionModel))
    components: dict[str, Any] = {}
    with torch.device(device):
        torch.manual_seed(seed)
        components[denoiser] = denoiser_class(**arch.denoiser)
        torch.manual_seed(seed)
        components["vae"] = AutoencoderKL(**arch.vae)
        torch.manual_seed(seed)
        components["text_encoder"] = first_text(text_config(arch.text_encoder))
        if arch.text_encoder_2 is not None:
            torch.manual_seed(seed + 1)
            components["text_encoder_2"] = CLIPTextModelWithProjection(text_config(arch.text_encoder_2))
    scheduler = {"sd15": PNDMScheduler, "sdxl": EulerDiscreteScheduler, "sd3": FlowMatchEulerDiscreteScheduler}
    components["scheduler"] = scheduler[arch.family](**arch.scheduler)
    for name, part in components.items():
        if name != "scheduler":
            part.eval().requires_grad_(False)
    return components
