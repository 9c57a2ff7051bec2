#!/usr/bin/env python
"""Regenerate the embedded `tiny` model: pytest_sdopt/embedded/tiny/, byte for byte.

    python scripts/make_tiny_model.py            # rewrite the shipped files
    python scripts/make_tiny_model.py --out DIR  # write elsewhere (the tests compare the two)

The weights are seeded random (see pytest_sdopt/architectures.py for the topology). The
tokenizer is a CLIP-style byte-level BPE trained here on a small prompt vocabulary, so the
model needs nothing from the hub. Configs are written as minimal JSON (no library version
stamps), so the same torch and diffusers produce identical files; `sdopt_model.json` records
which versions made them and each file's sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pytest_sdopt.architectures import TINY, build_components  # noqa: E402

SEED = 0
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


def generate(out: Path) -> None:
    import diffusers
    import torch
    import transformers

    vocab = write_tokenizer(out / "tokenizer")
    ids = {"bos_token_id": vocab[BOS], "eos_token_id": vocab[EOS], "pad_token_id": vocab[EOS]}
    parts = build_components(TINY, SEED, "cpu", vocab_size=len(vocab), special_token_ids=ids)

    write_model(out / "unet", {"_class_name": "UNet2DConditionModel", **TINY.unet}, parts["unet"],
                "diffusion_pytorch_model.safetensors")
    write_model(out / "vae", {"_class_name": "AutoencoderKL", **TINY.vae}, parts["vae"],
                "diffusion_pytorch_model.safetensors")
    text_config = {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"],
                   "vocab_size": len(vocab), **TINY.text_encoder, **ids}
    write_model(out / "text_encoder", text_config, parts["text_encoder"], "model.safetensors")
    write_json(out / "scheduler" / "scheduler_config.json", {"_class_name": "PNDMScheduler", **TINY.scheduler})
    write_json(out / "model_index.json", {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    })
    hashes = {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*")) if path.is_file() and path.name != "sdopt_model.json"
    }
    write_json(out / "sdopt_model.json", {
        "name": TINY.name,
        "seed": SEED,
        "made_by": "scripts/make_tiny_model.py",
        "made_with": {"torch": torch.__version__.split("+")[0], "diffusers": diffusers.__version__,
                      "transformers": transformers.__version__},
        "default_size": list(TINY.default_size),
        "default_steps": TINY.default_steps,
        "sha256": hashes,
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "pytest_sdopt" / "embedded" / "tiny")
    args = parser.parse_args()
    generate(args.out)
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
