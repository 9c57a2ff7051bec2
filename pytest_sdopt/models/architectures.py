"""The two Stable Diffusion 1.5 topologies pytest-sdopt builds itself: `tiny` and `sd15-random`.

Both are described as plain config dicts (no torch at import) and built by one function, so
the embedded model's generator script and the `sd15-random` loader cannot drift apart.
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


def _clip_text(hidden: int, intermediate: int, layers: int, heads: int) -> dict[str, Any]:
    return {"hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
            "num_attention_heads": heads, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
            "projection_dim": hidden}


@dataclass(frozen=True)
class Architecture:
    """Configs of one SD topology, plus the defaults its pipeline runs with."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # transformers.CLIPTextConfig keyword arguments
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD15_SCHEDULER))
    default_steps: int = 20

    @property
    def default_size(self) -> tuple[int, int]:
        """Image size the pipeline uses when none is given: UNet sample size times the VAE factor."""
        side = self.unet["sample_size"] * 2 ** (len(self.vae["block_out_channels"]) - 1)
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
    unet=_sd_unet((32, 32, 64, 64), layers=1, cross_attention_dim=32, sample_size=16, heads=2, norm_groups=8),
    vae=_sd_vae((16, 32, 32, 32), layers=1, norm_groups=16, sample_size=64),
    text_encoder=_clip_text(hidden=32, intermediate=64, layers=2, heads=4),
    default_steps=10,
)

# The published SD 1.5 architecture: UNet2DConditionModel defaults with 768-d cross-attention,
# the SD VAE, CLIP ViT-L/14's text tower. 859.52 M + 83.65 M + 123.06 M parameters.
SD15 = Architecture(
    name="sd15-random",
    unet=_sd_unet((320, 640, 1280, 1280), layers=2, cross_attention_dim=768, sample_size=64),
    vae=_sd_vae((128, 256, 512, 512), layers=2, norm_groups=32, sample_size=512),
    text_encoder={"vocab_size": 49408, **_clip_text(hidden=768, intermediate=3072, layers=12, heads=12)},
    default_steps=20,
)


def build_components(arch: Architecture, seed: int, device: Any = "cpu", vocab_size: int | None = None,
                     special_token_ids: dict[str, int] | None = None) -> dict[str, Any]:
    """Seeded UNet, VAE, text encoder and scheduler of `arch`, created directly on `device`.

    `device="meta"` builds the shapes only (instant, no memory), which is how the tests check
    the SD 1.5 parameter counts. The tokenizer is not built here: both architectures use the
    embedded tokenizer files.
    """
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = dict(arch.text_encoder)
    if vocab_size is not None and "vocab_size" not in text_config:
        text_config["vocab_size"] = vocab_size
    text_config.update(special_token_ids or {})

    components: dict[str, Any] = {}
    with torch.device(device):
        torch.manual_seed(seed)
        components["unet"] = UNet2DConditionModel(**arch.unet)
        torch.manual_seed(seed)
        components["vae"] = AutoencoderKL(**arch.vae)
        torch.manual_seed(seed)
        components["text_encoder"] = CLIPTextModel(CLIPTextConfig(**text_config))
    components["scheduler"] = PNDMScheduler(**arch.scheduler)
    for name in ("unet", "vae", "text_encoder"):
        components[name].eval().requires_grad_(False)
    return components
