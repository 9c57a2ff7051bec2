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
    post_quant = vae.post_quant_conv  # None in SD3's VAE
    trained = [*vae.decoder.parameters(), *(post_quant.parameters() if post_quant is not None else ())]
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
    shift_factor: float = 0.0  # SD3: the latents' mean, subtracted before scaling (0: SD 1.5 and SDXL)


@torch.no_grad()
def encode_pool(vae: Any, recipe: Recipe, rng: random.Random, generator: torch.Generator,
                shifted: bool = False) -> LatentPool:
    """The training scenes' latent distributions, encoded once; `shifted` (SD3): the latents'
    mean becomes the VAE's shift_factor, and the scaling factor is taken after it."""
    scenes = [rng.choice(training_scenes()) for _ in range(recipe.pool)]
    means, stds = [], []
    for start in range(0, len(scenes), 64):
        posterior = vae.encode(images_of(scenes[start:start + 64], rng)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    mean, std = torch.cat(means), torch.cat(stds)
    sample = mean + std * torch.randn(mean.shape, generator=generator)
    # Rounded, so the config file is byte-stable across runs that agree to float precision.
    shift = float(f"{sample.mean().item():.5g}") if shifted else 0.0
    scaling = float(f"{1.0 / (sample - shift).std().item():.5g}")
    return LatentPool(mean, std, [scene.caption for scene in scenes], scaling, shift)


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


class RepeatedContextAttention:
    """SD3's joint attention, computed with the T5 positions folded into one.

    Without T5 the pipeline gives the transformer 256 positions of zeros after the 77 CLIP ones.
    The text stream has no position embedding, so those 256 are identical at every layer, and
    attention to 256 identical keys is attention to one of them with its logit raised by ln 256.
    Training on 77 + 1 positions with that bias computes the same function of the weights (so the
    same loss and gradients: checked to float precision in tests/test_train_tiny.py) at about a
    third of the cost. Used only in training; the shipped model runs diffusers' own processor.
    """

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 *args: Any, **kwargs: Any) -> Any:
        batch, image_positions = hidden_states.shape[:2]

        def split_heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        query, key, value = (split_heads(attn.to_q(hidden_states)), split_heads(attn.to_k(hidden_states)),
                             split_heads(attn.to_v(hidden_states)))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        text_query, text_key, text_value = (split_heads(attn.add_q_proj(encoder_hidden_states)),
                                            split_heads(attn.add_k_proj(encoder_hidden_states)),
                                            split_heads(attn.add_v_proj(encoder_hidden_states)))
        if attn.norm_added_q is not None:
            text_query = attn.norm_added_q(text_query)
        if attn.norm_added_k is not None:
            text_key = attn.norm_added_k(text_key)
        query, key, value = (torch.cat(pair, dim=2) for pair in
                             ((query, text_query), (key, text_key), (value, text_value)))
        bias = query.new_zeros(key.shape[2])
        bias[-1] = self.log_copies  # the one position that stands for all the T5 ones
        mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=bias[None, :])
        mixed = mixed.transpose(1, 2).reshape(batch, -1, query.shape[1] * query.shape[-1])
        image, text = mixed[:, :image_positions], mixed[:, image_positions:]
        if not attn.context_pre_only:
            text = attn.to_add_out(text)
        return attn.to_out[1](attn.to_out[0](image)), text


class TextConditioning:
    """What a family's pipeline hands its denoiser for a batch of token ids, computed as the
    pipeline computes it, and the unconditional input its classifier-free guidance uses.

    sd15: CLIP's last hidden state; the unconditional input is the empty prompt's.
    sdxl: both CLIPs' penultimate hidden states side by side, the second's pooled projection and
    the time ids of an unscaled, uncropped image at the training size; the unconditional input is
    zeros (SDXL's `force_zeros_for_empty_prompt`).
    sd3: the same two hidden states, padded to the joint-attention width and followed by the zeros
    that stand for T5 (max_sequence_length positions), the two pooled projections side by side; the
    unconditional input is the empty prompt's.
    """

    T5_POSITIONS = 256  # StableDiffusion3Pipeline's default max_sequence_length

    def __init__(self, family: str, encoders: list[Any], denoiser_config: Any, folded: bool = False):
        self.family, self.encoders, self.config = family, encoders, denoiser_config
        # folded: the T5 positions as one (RepeatedContextAttention), not T5_POSITIONS
        self.t5_positions = 1 if folded else self.T5_POSITIONS

    def __call__(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.family == "sd15":
            return self.encoders[0](ids)[0], None
        outputs = [encoder(ids, output_hidden_states=True) for encoder in self.encoders]
        context = torch.cat([output.hidden_states[-2] for output in outputs], dim=-1)
        if self.family == "sdxl":
            return context, outputs[-1][0]
        width = self.config.joint_attention_dim
        context = F.pad(context, (0, width - context.shape[-1]))
        context = torch.cat([context, context.new_zeros(len(ids), self.t5_positions, width)], dim=1)
        return context, torch.cat([output[0] for output in outputs], dim=-1)

    def unconditional_is_zeros(self) -> bool:
        return self.family == "sdxl"


def _denoiser_output(denoiser: Any, family: str, noisy: torch.Tensor, timesteps: torch.Tensor,
                     context: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
    if family == "sd15":
        return denoiser(noisy, timesteps, context).sample
    if family == "sdxl":
        side = noisy.shape[-1] * 8
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], dtype=noisy.dtype).repeat(len(noisy), 1)
        return denoiser(noisy, timesteps, context, added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    return denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=context,
                    pooled_projections=pooled).sample


def train_denoiser(denoiser: Any, text_encoders: list[Any], tokenizer: Any, pool: LatentPool, recipe: Recipe,
                   generator: torch.Generator, log: Callable[[str], None],
                   family: str = "sd15") -> tuple[Any, list[Any], float]:
    """Denoiser and text encoders together; returns their EMA copies and the final loss.

    sd15 and sdxl: epsilon prediction on SD 1.5's noise schedule (SDXL's is the same), min-SNR
    weighted. sd3: rectified flow as SD3 trains it: the noisy latent is (1 - sigma) x + sigma noise,
    the target the velocity noise - x, sigma drawn logit-normal and shifted by the scheduler's shift,
    the transformer told sigma x 1000.
    """
    from diffusers import DDPMScheduler

    from pytest_sdopt.models.architectures import SD3_SCHEDULER

    schedule = {k: SD15_SCHEDULER[k] for k in ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")}
    noising = DDPMScheduler(**schedule)
    alphas = noising.alphas_cumprod
    snr = alphas / (1 - alphas)
    weights = torch.clamp(snr, max=recipe.min_snr_gamma) / snr  # min-SNR-gamma for epsilon prediction
    shift = SD3_SCHEDULER["shift"]

    captions = sorted(set(pool.captions))
    index = {caption: i for i, caption in enumerate(captions)}
    ids = tokenizer([*captions, ""], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    empty = len(captions)
    caption_of = torch.tensor([index[c] for c in pool.captions])
    conditioning = TextConditioning(family, text_encoders, denoiser.config, folded=family == "sd3")
    if family == "sd3":
        from diffusers.models.attention_processor import JointAttnProcessor2_0

        denoiser.set_attn_processor(RepeatedContextAttention(TextConditioning.T5_POSITIONS))

    modules = [denoiser, *text_encoders]
    for module in modules:
        module.train().requires_grad_(True)
    if recipe.word_codes:
        for text_encoder in text_encoders:
            make_words_independent(text_encoder)
    trained = [p for module in modules for p in module.parameters() if p.requires_grad]
    stage = Stage("unet" if family != "sd3" else "dit", trained, recipe.unet_lr,
                  recipe.unet_steps, log, "noise mse" if family != "sd3" else "velocity mse", weight_decay=0.01,
                  window=100)
    ema = Ema(modules, recipe.ema_decay)
    for _ in range(recipe.unet_steps):
        pick = torch.randint(len(pool.captions), (recipe.unet_batch,), generator=generator)
        latents = pool.means[pick] + pool.stds[pick] * torch.randn(pool.means[pick].shape, generator=generator)
        latents = (latents - pool.shift_factor) * pool.scaling_factor
        chosen = caption_of[pick].clone()
        dropped = torch.rand(recipe.unet_batch, generator=generator) < recipe.uncond_probability
        if not conditioning.unconditional_is_zeros():
            chosen[dropped] = empty
        # Drawn in this order (timesteps, then noise) so that `tiny` retrains to the same weights.
        if family == "sd3":
            u = torch.sigmoid(torch.randn(recipe.unet_batch, generator=generator))
            sigmas = (shift * u / (1 + (shift - 1) * u))[:, None, None, None]
        else:
            timesteps = torch.randint(noising.config.num_train_timesteps, (recipe.unet_batch,), generator=generator)
        noise = pyramid_noise(tuple(latents.shape), generator, recipe.pyramid_discount)
        context, pooled = conditioning(ids[chosen])
        if conditioning.unconditional_is_zeros():
            keep = (~dropped).to(context.dtype)
            context = context * keep[:, None, None]
            pooled = pooled * keep[:, None]
        if family == "sd3":
            noisy = (1 - sigmas) * latents + sigmas * noise
            predicted = _denoiser_output(denoiser, family, noisy, sigmas.flatten() * 1000, context, pooled)
            per_sample = F.mse_loss(predicted, noise - latents, reduction="none").mean(dim=(1, 2, 3))
            loss = per_sample.mean()
        else:
            noisy = noising.add_noise(latents, noise, timesteps)
            predicted = _denoiser_output(denoiser, family, noisy, timesteps, context, pooled)
            per_sample = F.mse_loss(predicted, noise, reduction="none").mean(dim=(1, 2, 3))
            loss = (per_sample * weights[timesteps]).mean()
        stage.step(loss, per_sample.mean().item())
        ema.update()
    denoiser_ema, *text_ema = ema.shadow
    if family == "sd3":
        denoiser_ema.set_attn_processor(JointAttnProcessor2_0())
    return denoiser_ema.eval(), [module.eval() for module in text_ema], stage.mean
