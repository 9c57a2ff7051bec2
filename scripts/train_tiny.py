"""The training loops behind scripts/make_tiny_model.py: the VAE first, then UNet and text encoder.

Everything is drawn from seeded generators (scenes and jitter from `random.Random`, noise and
timesteps from `torch.Generator`), so the same seed, versions and thread count give the same
weights. Runs on a 2-core CPU: the VAE learns flat colours and sharp edges in minutes, and the
UNet trains on a pool of latents encoded once, so the VAE's encoder is not run per step.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_sdopt.models.architectures import SD15_SCHEDULER  # noqa: E402
from pytest_sdopt.models.scenes import Scene, draw, training_scenes  # noqa: E402

SIZE = 128  # the model's default image size: the UNet learns where things go at this size


@dataclass(frozen=True)
class Recipe:
    """How long and how hard each part trains; `quick` is a smoke test of the script."""

    vae_steps: int = 1500
    vae_batch: int = 12
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    pool: int = 12000  # training images encoded once for the UNet
    unet_steps: int = 7000
    unet_batch: int = 48
    unet_lr: float = 1e-3
    word_codes: bool = True  # the text encoder's layers left as identities: see make_words_independent
    uncond_probability: float = 0.1  # captions dropped, so classifier-free guidance has an unconditional model
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    pyramid_discount: float = 0.8  # low-frequency noise added at each coarser scale (0: plain noise)
    tile_steps: int = 3000  # the decoder, fine-tuned on latent crops so VAE tiling decodes cleanly
    tile_batch: int = 12
    tile_lr: float = 1e-3


QUICK = Recipe(vae_steps=3, vae_batch=2, pool=16, unet_steps=3, unet_batch=4, tile_steps=3, tile_batch=2)
# Latent crop sides for the decoder's last stage: diffusers' tiled decode cuts 8-latent tiles with
# a stride of 6, so a 16-latent image decodes as tiles 8 and 4 latents wide; whole images too.
TILE_SIDES = (4, 4, 6, 8, 8, 12, 16)


def images_of(scenes: list[Scene], rng: random.Random) -> torch.Tensor:
    import numpy as np

    pixels = np.stack([draw(scene, SIZE, rng) for scene in scenes])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def pyramid_noise(shape: tuple[int, ...], generator: torch.Generator, discount: float) -> torch.Tensor:
    """Gaussian noise plus noise drawn at every coarser scale (2x, 4x, ... down to 1x1), renormalised.

    Why: SD 1.5's schedule leaves ~9% of the image in the latent at the first sampling step. A
    scene's background colour and the shape's place are its lowest frequencies, and through
    plain noise they stay readable there, so the model learns to read them off the noise instead
    of the prompt, and at sampling time copies whatever the random start suggests. Noise with
    as much power at low frequencies hides them, so only the prompt can say them.
    """
    batch, channels, height, width = shape
    noise = torch.randn(shape, generator=generator)
    scale, size = 1.0, min(height, width)
    while size > 1 and discount > 0:
        size //= 2
        scale *= discount
        coarse = torch.randn((batch, channels, max(1, height * size // min(height, width)),
                              max(1, width * size // min(height, width))), generator=generator)
        noise = noise + scale * F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    return noise / noise.std(dim=(1, 2, 3), keepdim=True)


def cosine_schedule(step: int, steps: int, warmup: int, floor: float = 0.1) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Stage:
    """One training stage's optimiser, warm-up + cosine learning rate, gradient clipping and
    progress line: the part every stage shares."""

    def __init__(self, name: str, parameters: Any, lr: float, steps: int, log: Callable[[str], None],
                 reading: str, weight_decay: float = 0.0, window: int = 50):
        self.parameters = list(parameters)
        self.optimizer = torch.optim.AdamW(self.parameters, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay)
        warmup = max(1, steps // 20)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: cosine_schedule(step, steps, warmup))
        self.name, self.steps, self.log, self.reading, self.window = name, steps, log, reading, window
        self.done, self.recent, self.started = 0, [], time.perf_counter()

    def step(self, loss: torch.Tensor, reading: float) -> None:
        """Back-propagate `loss` and update; `reading` is the figure the progress line averages."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.done += 1
        self.recent = (self.recent + [reading])[-self.window:]
        if self.done % 100 == 0 or self.done == self.steps:
            self.log(f"{self.name:<5} {self.done:5d}/{self.steps}  {self.reading} {self.mean:.4f}  "
                     f"{time.perf_counter() - self.started:.0f} s")

    @property
    def mean(self) -> float:
        """The reading averaged over the last `window` steps."""
        return sum(self.recent) / len(self.recent)


def train_vae(vae: Any, recipe: Recipe, rng: random.Random, generator: torch.Generator,
              log: Callable[[str], None]) -> float:
    """Reconstruction (MSE + L1) with a light KL term, on freshly drawn training scenes."""
    scenes = training_scenes()
    vae.train().requires_grad_(True)
    stage = Stage("vae", vae.parameters(), recipe.vae_lr, recipe.vae_steps, log, "reconstruction")
    for _ in range(recipe.vae_steps):
        images = images_of([rng.choice(scenes) for _ in range(recipe.vae_batch)], rng)
        posterior = vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        rebuilt = vae.decode(latents).sample
        reconstruction = F.mse_loss(rebuilt, images) + F.l1_loss(rebuilt, images)
        loss = reconstruction + recipe.kl_weight * posterior.kl().mean()
        stage.step(loss, reconstruction.item())
    vae.eval().requires_grad_(False)
    return stage.mean


def tune_decoder_for_tiles(vae: Any, recipe: Recipe, seed: int, log: Callable[[str], None]) -> float:
    """Fine-tune the decoder on random crops of latents, so a tile decodes like the whole image.

    Trained on whole 16x16 latents only, the decoder's group norms saw whole-image statistics:
    VAE tiling's 8- and 4-latent tiles then came out as garbage at the edges (SSIM 0.45 against
    the untiled image). The encoder stays frozen, so the latents the UNet learned are unchanged.
    Its own seed: the stage draws the same crops whether it follows training or a saved model.
    """
    rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
    scenes = training_scenes()
    vae.requires_grad_(False)
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.decoder.train()
    for parameter in trained:
        parameter.requires_grad_(True)
    stage = Stage("tiles", trained, recipe.tile_lr, recipe.tile_steps, log, "reconstruction")
    for _ in range(recipe.tile_steps):
        images = images_of([rng.choice(scenes) for _ in range(recipe.tile_batch)], rng)
        with torch.no_grad():
            posterior = vae.encode(images).latent_dist
            latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        side = latents.shape[-1]
        height, width = rng.choice(TILE_SIDES), rng.choice(TILE_SIDES)
        top, left = rng.randrange(side - height + 1), rng.randrange(side - width + 1)
        scale = images.shape[-1] // side
        target = images[:, :, top * scale:(top + height) * scale, left * scale:(left + width) * scale]
        rebuilt = vae.decode(latents[:, :, top:top + height, left:left + width]).sample
        loss = F.mse_loss(rebuilt, target) + F.l1_loss(rebuilt, target)
        stage.step(loss, loss.item())
    vae.eval().requires_grad_(False)
    return stage.mean


@dataclass
class LatentPool:
    means: torch.Tensor  # N x 4 x 16 x 16, unscaled
    stds: torch.Tensor
    captions: list[str]
    scaling_factor: float  # 1 / std of the latents: what the pipeline multiplies them by


@torch.no_grad()
def encode_pool(vae: Any, recipe: Recipe, rng: random.Random, generator: torch.Generator) -> LatentPool:
    scenes = [rng.choice(training_scenes()) for _ in range(recipe.pool)]
    means, stds = [], []
    for start in range(0, len(scenes), 64):
        posterior = vae.encode(images_of(scenes[start:start + 64], rng)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    mean, std = torch.cat(means), torch.cat(stds)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    # Rounded, so the config file is byte-stable across runs that agree to float precision.
    scaling = float(f"{1.0 / sample.std().item():.5g}")
    return LatentPool(mean, std, [scene.caption for scene in scenes], scaling)


class Ema:
    """Exponential moving average of parameters; the shipped weights are the average's."""

    def __init__(self, modules: list[Any], decay: float):
        self.modules, self.decay, self.steps = modules, decay, 0
        self.shadow = [copy.deepcopy(module).requires_grad_(False) for module in modules]

    @torch.no_grad()
    def update(self) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        for module, shadow in zip(self.modules, self.shadow):
            for live, average in zip(module.parameters(), shadow.parameters()):
                average.lerp_(live, 1 - decay)


def make_words_independent(text_encoder: Any) -> None:
    """Turn the text encoder's transformer layers into identities (residual branches zeroed) and
    freeze them: each position's output is then its word's embedding plus its position's, so
    "red" in the colour slot and "circle" in the shape slot mean the same whatever else the
    caption says.

    Why: trained freely on 82 captions, the layers learn whole captions. The positions after the
    last word (the padding, most of the 77) each summarise the caption, and the UNet read the
    shape from that summary, so for a held-out caption (a colour pair it had seen with other
    shapes) it drew one of those shapes whatever the prompt named (10/40, chance). The layers
    still run, so the topology and the work per call are SD's.
    """
    # transformers 5 dropped the `text_model` wrapper that 4.x puts around the encoder.
    for layer in getattr(text_encoder, "text_model", text_encoder).encoder.layers:
        for branch_out in (layer.self_attn.out_proj, layer.mlp.fc2):
            torch.nn.init.zeros_(branch_out.weight)
            torch.nn.init.zeros_(branch_out.bias)
        layer.requires_grad_(False)


def train_denoiser(unet: Any, text_encoder: Any, tokenizer: Any, pool: LatentPool, recipe: Recipe,
                   generator: torch.Generator, log: Callable[[str], None]) -> tuple[Any, Any, float]:
    """UNet and text encoder together, epsilon prediction on SD 1.5's noise schedule, min-SNR
    weighted; returns the EMA copies and the final loss."""
    from diffusers import DDPMScheduler

    schedule = {k: SD15_SCHEDULER[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    noising = DDPMScheduler(**schedule)
    alphas = noising.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=recipe.min_snr_gamma) / snr  # min-SNR-gamma for epsilon prediction

    captions = sorted(set(pool.captions))
    index = {caption: i for i, caption in enumerate(captions)}
    ids = tokenizer([*captions, ""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty = len(captions)
    caption_of = torch.tensor([index[c] for c in pool.captions])

    modules = [unet, text_encoder]
    for module in modules:
        module.train().requires_grad_(True)
    if recipe.word_codes:
        make_words_independent(text_encoder)
    trained = [p for module in modules for p in module.parameters() if p.requires_grad]
    stage = Stage("unet", trained, recipe.unet_lr,
                  recipe.unet_steps, log, "noise mse", weight_decay=0.01, window=100)
    ema = Ema(modules, recipe.ema_decay)
    for _ in range(recipe.unet_steps):
        pick = torch.randint(len(pool.captions), (recipe.unet_batch,), generator=generator)
        latents = pool.means[pick] + pool.stds[pick] * torch.randn(pool.means[pick].shape, generator=generator)
        latents = latents * pool.scaling_factor
        chosen = caption_of[pick].clone()
        chosen[torch.rand(recipe.unet_batch, generator=generator) < recipe.uncond_probability] = empty
        timesteps = torch.randint(noising.config.num_train_timesteps, (recipe.unet_batch,), generator=generator)
        noise = pyramid_noise(tuple(latents.shape), generator, recipe.pyramid_discount)
        noisy = noising.add_noise(latents, noise, timesteps)
        context = text_encoder(ids[chosen])[0]
        predicted = unet(noisy, timesteps, context).sample
        per_sample = F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * weights[timesteps]).mean()
        stage.step(loss, per_sample.mean().item())
        ema.update()
    unet_ema, text_ema = ema.shadow
    return unet_ema.eval(), text_ema.eval(), stage.mean
