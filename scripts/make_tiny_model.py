#!/usr/bin/env python
"""Train an embedded model and write it to pytest_sdopt/models/embedded/<name>/.

    python scripts/make_tiny_model.py               # tiny (~45 min on 2 CPU cores); rewrites the shipped files
    python scripts/make_tiny_model.py --model tiny-xl    # the SDXL topology (its VAE is tiny's)
    python scripts/make_tiny_model.py --model tiny-sd3   # the SD3 topology (its own 16-channel VAE)
    python scripts/make_tiny_model.py --out DIR     # write elsewhere
    python scripts/make_tiny_model.py --quick --out DIR   # a few steps: checks the script, draws nothing
    python scripts/make_tiny_model.py --from DIR    # only the last stage, on a model written with --tile-steps 0

`tiny` is SD 1.5's topology at a small width, `tiny-xl` SDXL's and `tiny-sd3` SD3's (without T5)
(pytest_sdopt/models/architectures.py), each trained from a seed on
procedurally drawn, captioned scenes (pytest_sdopt/scenes.py: "a red circle on a blue
background"), VAE included; the colour/shape/background combinations in scenes.HELD_OUT
are never captioned, so tests can ask for scenes the model has not seen. The tokenizer is a
CLIP-style byte-level BPE trained here on a small prompt vocabulary, so the model needs nothing
from the hub. Configs are minimal JSON (no library version stamps); `sdopt_model.json` records
the versions, thread count and recipe that made the weights, the training time and each file's
sha256: the same seed, versions and thread count give the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from pytest_sdopt.models.architectures import EMBEDDED_ARCHITECTURES, TINY, Architecture, build_components  # noqa: E402

if TYPE_CHECKING:
    from train_tiny import Recipe

SEED = 0
DEFAULT_PROMPT = "a yellow triangle on a blue background"  # what the model draws unless told
# Guidance extrapolates from the unconditional prediction, which a model this small learns
# poorly: held-out prompts drawn in the right colours, 5 seeds each, were 40/40 at guidance 1,
# 40/40 at 1.5, 29/40 at 2, 7/40 at 3 and 12/40 at SD 1.5's 7.5 (shapes: 35/40 at 1, 39/40 at
# 1.5). 1.5 keeps classifier-free guidance (a batch of 2 through the UNet, as in real use)
# where it draws best.
DEFAULT_GUIDANCE = 1.5
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MERGES = 600

# Words the tokenizer learns whole: the default prompt, common SD prompt words, and the
# colours / shapes / positions of simple scene prompts.
CORPUS = """
high resolution a an the of on in at with and photograph photo picture image painting drawing
astronaut riding horse man woman person cat dog bird car house tree flower mountain city street
beach sea ocean river lake sky cloud sun moon star forest field garden room table chair window
red green blue yellow orange purple pink brown black white gray grey gold silver colorful
circle square triangle rectangle star line dot shape ring cross heart
left right top bottom center middle corner above below next to small large big tiny huge
background foreground light dark bright night day sunset sunrise morning evening
detailed realistic portrait landscape closeup close up wide angle view style art digital oil
cinematic lighting sharp focus beautiful old new modern vintage simple clean minimal
two three four many one single group pair
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """Byte-level BPE alphabet: printable bytes stand for themselves, the rest get unused code points."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, spare = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + spare)
            spare += 1
    return table


def train_bpe(words: list[str], merges: int) -> list[tuple[str, str]]:
    """Plain BPE on a word list: merge the most frequent adjacent pair, ties broken by the pair itself."""
    alphabet = bytes_to_unicode()
    counts = Counter(words)
    spelled = {}
    for word in counts:
        symbols = [alphabet[b] for b in word.encode()]
        symbols[-1] += "</w>"
        spelled[word] = symbols
    learned: list[tuple[str, str]] = []
    while len(learned) < merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for word, symbols in spelled.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += counts[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        learned.append(best)
        for word, symbols in spelled.items():
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            spelled[word] = merged
    return learned


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path) -> dict[str, int]:
    base = list(bytes_to_unicode().values())
    merges = train_bpe(CORPUS, MERGES)
    tokens = base + [symbol + "</w>" for symbol in base] + ["".join(pair) for pair in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # model_max_length=77 is required: without it the pipeline fails with "int too big to convert".
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    write_json(folder / "tokenizer_config.json",
               {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special})
    write_json(folder / "special_tokens_map.json", special)
    return vocab


def write_model(folder: Path, config: dict, module, weights_name: str) -> None:
    from safetensors.torch import save_file

    write_json(folder / "config.json", config)
    state = {name: tensor.contiguous() for name, tensor in module.state_dict().items()}
    save_file(state, str(folder / weights_name), metadata={"format": "pt"})


_SCHEDULERS = {"sd15": "PNDMScheduler", "sdxl": "EulerDiscreteScheduler", "sd3": "FlowMatchEulerDiscreteScheduler"}
_PIPELINES = {"sd15": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline"}


def text_encoder_classes(arch: Architecture) -> dict[str, str]:
    """Each text encoder's transformers class: SD 1.5 and SDXL read CLIP-L's hidden states only, SD3
    its pooled projection too; the second encoder (SDXL, SD3) always has its projection."""
    first = "CLIPTextModelWithProjection" if arch.family == "sd3" else "CLIPTextModel"
    return {"text_encoder": first, **({"text_encoder_2": "CLIPTextModelWithProjection"} if arch.text_encoder_2 else {})}


def write_pipeline(out: Path, arch: Architecture, parts: dict, vae_config: dict, vocab: dict[str, int],
                   ids: dict[str, int]) -> None:
    denoiser, denoiser_class = (("transformer", "SD3Transformer2DModel") if arch.family == "sd3"
                                else ("unet", "UNet2DConditionModel"))
    write_model(out / denoiser, {"_class_name": denoiser_class, **arch.denoiser}, parts[denoiser],
                "diffusion_pytorch_model.safetensors")
    write_model(out / "vae", {"_class_name": "AutoencoderKL", **vae_config}, parts["vae"],
                "diffusion_pytorch_model.safetensors")
    encoders = text_encoder_classes(arch)
    configs = {"text_encoder": arch.text_encoder, "text_encoder_2": arch.text_encoder_2}
    for name, cls in encoders.items():
        text_config = {"model_type": "clip_text_model", "architectures": [cls], "vocab_size": len(vocab),
                       **configs[name], **ids}
        write_model(out / name, text_config, parts[name], "model.safetensors")
    scheduler = _SCHEDULERS[arch.family]
    write_json(out / "scheduler" / "scheduler_config.json", {"_class_name": scheduler, **arch.scheduler})
    index = {
        "_class_name": _PIPELINES[arch.family],
        "scheduler": ["diffusers", scheduler],
        denoiser: ["diffusers", denoiser_class],
        "vae": ["diffusers", "AutoencoderKL"],
        **{name: ["transformers", cls] for name, cls in encoders.items()},
        **{name.replace("text_encoder", "tokenizer"): ["transformers", "CLIPTokenizer"] for name in encoders},
    }
    if arch.family == "sd15":
        index.update({"feature_extractor": [None, None], "safety_checker": [None, None],
                      "requires_safety_checker": False})
    elif arch.family == "sdxl":
        index.update({"force_zeros_for_empty_prompt": True, "feature_extractor": [None, None],
                      "image_encoder": [None, None]})
    else:  # SD3 without T5, as it commonly runs
        index.update({"text_encoder_3": [None, None], "tokenizer_3": [None, None]})
    write_json(out / "model_index.json", index)


def generate(out: Path, recipe: "Recipe", log=print, trained_before: Path | None = None,
             arch: Architecture = TINY) -> dict:
    """Train every stage, or with `trained_before` (a folder this script wrote) only the last one.

    tiny-xl takes tiny's VAE as shipped (SDXL's VAE is SD's topology with other weights), so its
    UNet learns on the latents tiny's did; tiny and tiny-sd3 train their own."""
    import random
    import shutil
    from dataclasses import asdict

    import diffusers
    import torch
    import transformers
    from train_tiny import encode_pool, train_denoiser, train_vae, tune_decoder_for_tiles
    from transformers import CLIPTokenizer

    started = time.perf_counter()
    vocab = write_tokenizer(out / "tokenizer")
    if arch.text_encoder_2 is not None:
        shutil.copytree(out / "tokenizer", out / "tokenizer_2", dirs_exist_ok=True)
    tokenizer = CLIPTokenizer.from_pretrained(out / "tokenizer")
    ids = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    encoders = list(text_encoder_classes(arch))
    denoiser = "transformer" if arch.family == "sd3" else "unet"
    borrowed_vae = arch.name == "tiny-xl"
    vae_config = dict(arch.vae)
    if trained_before is None:
        parts = build_components(arch, SEED, "cpu", vocab_size=len(vocab), special_token_ids=ids)
        rng, generator = random.Random(SEED), torch.Generator().manual_seed(SEED)
        if borrowed_vae:
            from diffusers import AutoencoderKL

            tiny_vae = REPO / "pytest_sdopt" / "models" / "embedded" / "tiny" / "vae"
            parts["vae"] = AutoencoderKL.from_pretrained(tiny_vae).eval().requires_grad_(False)
            vae_config = {key: parts["vae"].config[key] for key in (*arch.vae, "scaling_factor")}
            vae_loss = None
        else:
            if arch.family == "sd3":
                warm_start_vae(parts["vae"], REPO / "pytest_sdopt" / "models" / "embedded" / "tiny" / "vae", log)
            vae_loss = train_vae(parts["vae"], recipe, rng, generator, log)
        pool = encode_pool(parts["vae"], recipe, rng, generator, shifted=arch.family == "sd3")
        if borrowed_vae:  # tiny's latents, scaled as tiny scales them
            pool.scaling_factor = vae_config["scaling_factor"]
        minutes_before = 0.0
        log(f"latent pool: {len(pool.captions)} images, scaling factor {pool.scaling_factor}, "
            f"shift {pool.shift_factor}")
        vae_config.update(scaling_factor=pool.scaling_factor,
                          **({"shift_factor": pool.shift_factor} if arch.family == "sd3" else {}))
        parts[denoiser], text_encoders, unet_loss = train_denoiser(
            parts[denoiser], [parts[name] for name in encoders], tokenizer, pool, recipe, generator, log,
            family=arch.family)
        parts.update(zip(encoders, text_encoders))
    else:
        parts, before = load_trained(trained_before, recipe)
        vae_config.update(scaling_factor=parts["vae"].config.scaling_factor)
        minutes_before = before["minutes"]
        vae_loss, unet_loss = before["vae_reconstruction_loss"], before["unet_noise_mse"]
    tile_loss = (tune_decoder_for_tiles(parts["vae"], recipe, SEED + 1, log)
                 if recipe.tile_steps and not borrowed_vae else None)
    seconds = time.perf_counter() - started + 60 * minutes_before

    write_pipeline(out, arch, parts, vae_config, vocab, ids)
    hashes = {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*")) if path.is_file() and path.name != "sdopt_model.json"
    }
    trained = {"recipe": asdict(recipe), "minutes": round(seconds / 60, 1),
               "vae_reconstruction_loss": None if vae_loss is None else round(vae_loss, 5),
               "unet_noise_mse": round(unet_loss, 5),
               "tile_reconstruction_loss": None if tile_loss is None else round(tile_loss, 5)}
    if borrowed_vae:
        trained["vae"] = "tiny's, as shipped"
    elif arch.family == "sd3":
        trained["vae"] = "started from tiny's (every weight whose shape matches), then trained"
    facts = {
        "name": arch.name,
        "family": arch.family,
        "seed": SEED,
        "made_by": "scripts/make_tiny_model.py" + ("" if arch is TINY else f" --model {arch.name}"),
        "made_with": {"torch": torch.__version__.split("+")[0], "diffusers": diffusers.__version__,
                      "transformers": transformers.__version__, "threads": torch.get_num_threads()},
        "default_size": list(arch.default_size),
        "default_steps": arch.default_steps,
        "default_prompt": DEFAULT_PROMPT,
        "default_guidance": DEFAULT_GUIDANCE,
        "trained": trained,
        "sha256": hashes,
    }
    if arch is TINY:  # its facts file as it always was, so a retrain reproduces it byte for byte
        del facts["family"]
    write_json(out / "sdopt_model.json", facts)
    return facts


def warm_start_vae(vae, tiny_vae: Path, log) -> None:
    """Start a VAE of tiny's widths from tiny's trained weights where the shapes match.

    Why: on 2 cores the VAE is the slow stage (its convolutions run at full image size: ~1.3 s a
    step on one thread). SD3's VAE is SD's with 16 latent channels and no quant convs, so only
    the encoder's last and the decoder's first convolution start from the seed; a few hundred
    steps relearn them, where training from scratch takes 1500 and the tile stage 3000.
    """
    from safetensors.torch import load_file

    trained = load_file(str(tiny_vae / "diffusion_pytorch_model.safetensors"))
    own = vae.state_dict()
    taken = {name: tensor for name, tensor in trained.items() if name in own and own[name].shape == tensor.shape}
    vae.load_state_dict(taken, strict=False)
    log(f"vae: {len(taken)} of {len(own)} tensors from tiny's VAE")


def load_trained(folder: Path, recipe: "Recipe") -> tuple[dict, dict]:
    """The VAE, UNet and text encoder of a model this script wrote with the same recipe's earlier
    stages, as they were when those stages ended (safetensors round-trip float32 exactly)."""
    from dataclasses import asdict

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    facts = json.loads((folder / "sdopt_model.json").read_text())
    earlier = {name: value for name, value in asdict(recipe).items() if not name.startswith("tile_")}
    stored = {name: value for name, value in facts["trained"]["recipe"].items() if not name.startswith("tile_")}
    if stored != earlier:
        raise SystemExit(f"{folder} was trained with another recipe ({stored}); train from scratch instead")
    if facts["trained"]["recipe"].get("tile_steps"):
        raise SystemExit(f"{folder}'s decoder is already tuned for tiles; --from takes a model written with "
                         "--tile-steps 0 (or before the stage existed)")
    parts = {"vae": AutoencoderKL.from_pretrained(folder / "vae"),
             "unet": UNet2DConditionModel.from_pretrained(folder / "unet"),
             "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder")}
    return parts, facts["trained"]


# What each model trains differently from tiny. Both train tiny's batches of 48 at least 7000
# times: at 4500 of 32 (the two side by side within the hour) neither had learned shapes.
# tiny-sd3: its VAE starts from tiny's (warm_start_vae), so it trains 1200 steps (at 400 its
# decoder turned a blue square on green hollow and green) and tunes for tiles 800; plain noise,
# because flow matching's first step is pure noise (sigma 1), so no low frequency of the image can
# leak into it; 8000 batches, at twice tiny's width (architectures.TINY_SD3), after which it draws
# held-out and trained prompts' shapes 40/40 (at tiny's width, 10000 batches drew one rounded blob
# for "square" and "circle" alike: docs/models.md).
RECIPES = {"tiny": {}, "tiny-xl": {},
           "tiny-sd3": {"unet_steps": 8000, "pyramid_discount": 0.0, "vae_steps": 1200, "tile_steps": 800}}


def main() -> None:
    import torch
    from train_tiny import QUICK, Recipe

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(EMBEDDED_ARCHITECTURES), default="tiny")
    parser.add_argument("--out", type=Path, help="default: pytest_sdopt/models/embedded/<model>")
    parser.add_argument("--quick", action="store_true", help="a few steps of each part: a smoke test of the script")
    parser.add_argument("--from", dest="trained_before", type=Path, metavar="DIR",
                        help="take the VAE and denoiser stages from DIR (written by this script, same recipe) "
                             "and run only the last stage: the decoder's tile fine-tuning")
    parser.add_argument("--tile-steps", type=int, metavar="N", help="steps of the last stage (0: skip it)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads (recorded; the same count gives the same "
                                                    "weights); default: torch's own")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = EMBEDDED_ARCHITECTURES[args.model]
    out = args.out or REPO / "pytest_sdopt" / "models" / "embedded" / arch.name
    recipe = QUICK if args.quick else dataclasses.replace(Recipe(), **RECIPES[arch.name])
    if args.tile_steps is not None:
        recipe = dataclasses.replace(recipe, tile_steps=args.tile_steps)
    facts = generate(out, recipe, log=lambda line: print(line, flush=True), trained_before=args.trained_before,
                     arch=arch)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB) in {facts['trained']['minutes']} min")


if __name__ == "__main__":
    main()
