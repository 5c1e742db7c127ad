"""Produce aura-tiny, captionaura's built-in LFM2-VL: a byte-level BPE tokenizer trained on AuraScenes captions,
an LFM2-VL of a few million parameters (SigLIP2 vision tower + projector + LFM2 text model) pretrained from
scratch on the public split by captionaura's own C core (loss_and_grad of every parameter + AdamW with warmup
and cosine decay), and its held-out caption scores (BLEU-1..4, CIDEr-D, ROUGE-L of greedy captions).

    python scripts/make_aura_tiny.py                      # the packaged model (about 20-30 min on 2 cores)
    python scripts/make_aura_tiny.py --steps 5 --public-images 32 --out /tmp/t   # a smoke run

Everything is drawn from ``--seed`` (data, tokenizer, initialisation, batch order), so a run on the same
machine with the same ``--threads`` (default 1, the packaged run's) writes the same bytes. The folder is written to a temporary sibling and
renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tokenizers import Tokenizer as HfTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm.auto import tqdm

import captionaura as ca
import captionaura.metrics as cm
from captionaura.data import STYLES, AuraScenes, style_caption
from captionaura.processor import ImageProcessorConfig, Lfm2VlProcessor, Tokenizer
from captionaura.vl import DEFAULT_CAPTION_PROMPT

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "python" / "captionaura" / "assets" / "aura-tiny"
IMAGE_SIZE = 128
#: the request of the styled pretraining pairs (see CaptionPairs)
POST_PROMPT = "Write a social media post about this image."

#: special tokens, in id order: LFM2-VL's names for everything the chat template and the processor emit
SPECIAL_TOKENS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>",
                  "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>", "<|image_split|>"]

#: LFM2-VL's chat template (lfm2.md §4.8): BOS, then <|im_start|>role\n content <|im_end|>\n per message
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


# ---------------------------------------------------------------------------------------------------------
# tokenizer
def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 byte alphabet, so any text, emoji included, encodes) trained on `texts`, with the
    special tokens first and LFM2-VL's tokenizer_config (BOS from the template, <|im_end|> ends a turn)."""
    hf = HfTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf.train_from_iterator(texts, trainer)
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for i, t in enumerate(SPECIAL_TOKENS)}
    config = {"add_bos_token": True, "add_eos_token": False, "added_tokens_decoder": added,
              "bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>",
              "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 1024,
              "padding_side": "right", "tokenizer_class": "PreTrainedTokenizerFast",
              "extra_special_tokens": {"image_token": "<image>", "image_start_token": "<|image_start|>",
                                       "image_end_token": "<|image_end|>"}}
    return Tokenizer(hf, config, CHAT_TEMPLATE)


def tokenizer_texts(examples: Sequence[Any], seed: int) -> list[str]:
    """What the tokenizer learns from: the public captions, each also rewritten in one of the world's personal
    styles (emoji-rich, hashtag-heavy, poetic, terse lowercase, enthusiastic), and the two requests, so the
    styles' emoji and hashtags get tokens of their own for personalisation."""
    rng = np.random.default_rng([seed, 7])
    styles = [s for s in STYLES if s != "plain"]
    texts = [DEFAULT_CAPTION_PROMPT, POST_PROMPT] * 100
    for ex in examples:
        for caption in ex.captions:
            style = styles[rng.integers(len(styles))]
            texts += [caption, style_caption(caption, ex.scene, style)]
    return texts


# ---------------------------------------------------------------------------------------------------------
# model
def aura_tiny_config(vocab_size: int, image_token_id: int, pad_id: int, bos_id: int, eos_id: int) -> dict:
    """The LFM2-VL config of aura-tiny (transformers-native layout): a 3-layer 128-wide SigLIP2 tower on 8x8 patches
    of 16 px, pixel unshuffle to 16 image tokens, a 512->256->192 projector, and a 6-layer LFM2 (4 short-conv,
    2 attention layers, hidden 192)."""
    text = {
        "model_type": "lfm2", "vocab_size": vocab_size, "hidden_size": 192, "intermediate_size": 768,
        "num_hidden_layers": 6, "num_attention_heads": 6, "num_key_value_heads": 2,
        "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention"],
        "max_position_embeddings": 512, "norm_eps": 1e-5, "rope_parameters": {"rope_theta": 10000.0,
                                                                              "rope_type": "default"},
        "conv_bias": False, "conv_L_cache": 3, "block_multiple_of": 32, "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": True, "tie_word_embeddings": True, "initializer_range": 0.02,
        "pad_token_id": pad_id, "bos_token_id": bos_id, "eos_token_id": eos_id, "use_cache": True,
    }
    vision = {
        "model_type": "siglip2_vision_model", "hidden_size": 128, "intermediate_size": 512,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_channels": 3, "patch_size": 16,
        "num_patches": (IMAGE_SIZE // 16) ** 2, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh",
        "attention_dropout": 0.0, "vision_use_head": False,
    }
    return {
        "architectures": ["Lfm2VlForConditionalGeneration"], "model_type": "lfm2_vl", "dtype": "float32",
        "image_token_id": image_token_id, "downsample_factor": 2, "vision_feature_layer": -1,
        "projector_hidden_size": 256, "projector_hidden_act": "gelu", "projector_bias": True,
        "projector_use_layernorm": True, "tie_word_embeddings": True, "text_config": text, "vision_config": vision,
    }


def image_config() -> ImageProcessorConfig:
    """One 128x128 image = 8x8 patches = 16 image tokens; no tiling, no thumbnail. Other sizes are resized to
    about 128x128 pixels (min = max = 16 tokens), keeping their aspect ratio."""
    tokens = (IMAGE_SIZE // 32) ** 2
    return ImageProcessorConfig(do_image_splitting=False, use_thumbnail=False, min_image_tokens=tokens,
                                max_image_tokens=tokens, tile_size=IMAGE_SIZE, max_num_patches=4 * tokens)


def generation_config(tokenizer: Tokenizer) -> dict:
    return {"max_new_tokens": 48, "do_sample": False, "num_beams": 1,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


class CaptionPairs:
    """Every (image, reference caption) pair of a split as a training example, built when asked (the image's
    tiles and the tokens of its chat prompt + caption), so the split need not be preprocessed up front.

    A ``post_fraction`` of the pairs become social-media posts instead: the caption rewritten in one of the
    world's personal styles, drawn at random, asked for with ``POST_PROMPT``. The public model so learns every
    style's words, emoji and hashtags, but not whose style is whose: following one user's style is left to
    federated and personal fine-tuning."""

    def __init__(self, model: ca.Lfm2VlModel, examples: Sequence[Any], post_fraction: float = 0.0,
                 seed: int = 0) -> None:
        self.model, self.examples = model, examples
        rng = np.random.default_rng([seed, 11])
        styles = [s for s in STYLES if s != "plain"]
        self.pairs = [(i, j, styles[rng.integers(len(styles))] if rng.random() < post_fraction else None)
                      for i, ex in enumerate(examples) for j in range(len(ex.captions))]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        i, j, style = self.pairs[int(k)]
        ex = self.examples[i]
        if style is None:
            return self.model.caption_example(ex.image, ex.captions[j])
        return self.model.caption_example(ex.image, style_caption(ex.captions[j], ex.scene, style),
                                          prompt=POST_PROMPT)


def evaluate(model: ca.Lfm2VlModel, examples: Sequence[Any], progressbar: bool = False) -> tuple[dict, list[str]]:
    """BLEU-1..4, CIDEr-D, ROUGE-L of greedy captions against the reference captions."""
    captions = [model.caption(ex.image) for ex in tqdm(examples, desc="captioning", disable=not progressbar)]
    result = cm.evaluate({i: ex.captions for i, ex in enumerate(examples)},
                         {i: c if c.strip() else "empty" for i, c in enumerate(captions)})
    return result.scores, captions


# ---------------------------------------------------------------------------------------------------------
def write_folder(model: ca.Lfm2VlModel, out: Path, gen: dict, metrics: dict, recipe: dict) -> None:
    """The checkpoint folder, written beside `out` and renamed over it (an old folder is replaced whole)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        model.save_pretrained(tmp)
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        (tmp / "metrics.json").write_text(json.dumps({"heldout": metrics, "recipe": recipe}, indent=2) + "\n")
        (tmp / "README.md").write_text(readme(model, metrics, recipe))
        for f in tmp.iterdir():  # temp files are private (0600/0700); a shipped checkpoint is world-readable
            f.chmod(0o644)
        tmp.chmod(0o755)
        old = out.parent / f".{out.name}.old"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def readme(model: ca.Lfm2VlModel, metrics: dict, recipe: dict) -> str:
    scores = "\n".join(f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, float))
    return f"""# aura-tiny

captionaura's built-in LFM2-VL ({model.num_parameters():,} parameters: vision tower + projector
{model.vision.num_parameters():,}, LFM2 text model {model.text.num_parameters():,}), pretrained from scratch on
the public split of the procedural AuraScenes world by captionaura's own C core. Asked for a caption
("Write a short caption for this image.") it writes a plain one; asked for a post ("Write a social media post
about this image.") it writes in one of the world's personal styles, not knowing whose: following one person's
style is what federated and personal fine-tuning teach it. Not a general captioner: it knows AuraScenes only.
Load it with `captionaura.load_default()`.

Produced by `python scripts/make_aura_tiny.py` with:

```json
{json.dumps(recipe, indent=2)}
```

Held-out AuraScenes images ({metrics.get("images")} images, greedy captions, COCO caption metrics):

| metric | score |
|---|---|
{scores}
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--public-images", type=int, default=6000)
    p.add_argument("--heldout-images", type=int, default=200)
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--post-fraction", type=float, default=0.3,
                   help="share of training pairs that are styled social-media posts (see CaptionPairs)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 5%% of --steps)")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--eval-every", type=int, default=0, help="caption 48 held-out images every N steps (0: never)")
    p.add_argument("--checkpoint-dir", type=str, default=None,
                   help="save resumable checkpoints here every --eval-every steps (and resume from them)")
    p.add_argument("--threads", type=int, default=1,
                   help="C core threads (1: the packaged run's setting; floating-point sums depend on it)")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = ca.get_num_threads()
    ca.set_num_threads(args.threads)
    try:
        return make(args)
    finally:
        ca.set_num_threads(threads)


def make(args: argparse.Namespace) -> dict:
    progress = not args.no_progress
    started = time.time()
    world = AuraScenes(seed=args.seed, image_size=IMAGE_SIZE)
    public = world.public_split(args.public_images, progressbar=progress)
    heldout = world.heldout_split(args.heldout_images)
    print(f"data: {len(public)} public images ({sum(len(e.captions) for e in public)} captions), "
          f"{len(heldout)} held-out images", flush=True)

    tokenizer = train_tokenizer(tokenizer_texts(public, args.seed), args.vocab_size)
    print(f"tokenizer: byte-level BPE, {tokenizer.vocab_size} tokens", flush=True)
    config = aura_tiny_config(tokenizer.vocab_size, tokenizer.token_to_id("<image>"), tokenizer.pad_token_id,
                              tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = ca.Lfm2VlModel.from_config(config, seed=args.seed)
    model.processor = Lfm2VlProcessor(image_config(), tokenizer)
    gen = generation_config(tokenizer)
    model.generation_config = ca.GenerationConfig.from_dict(gen)
    print(f"model: {model.num_parameters():,} parameters (vision + projector {model.vision.num_parameters():,}, "
          f"text {model.text.num_parameters():,})", flush=True)

    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)
    optimizer = ca.AdamWConfig(lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay, max_grad_norm=1.0)
    training = ca.TrainingConfig(max_steps=args.steps, batch_size=args.batch_size, optimizer=optimizer,
                                 lr_scheduler="cosine", warmup_steps=warmup, seed=args.seed, train_vision=True,
                                 eval_every=args.eval_every or None, progressbar=progress,
                                 save_every=(args.eval_every or None) if args.checkpoint_dir else None,
                                 output_dir=args.checkpoint_dir)
    probe = heldout[:48]

    def eval_fn(m: ca.Lfm2VlModel) -> dict:
        scores, captions = evaluate(m, probe)
        tqdm.write(f"  held-out probe: CIDEr {scores['CIDEr']:.3f} BLEU-4 {scores['Bleu_4']:.3f} | "
                   f"{captions[0]!r} vs {probe[0].captions[0]!r}")
        return scores

    pairs = CaptionPairs(model, public, args.post_fraction, args.seed)
    trainer = ca.Trainer(model, pairs, training, eval_fn=eval_fn if args.eval_every else None)
    history = trainer.train(resume=bool(args.checkpoint_dir))
    train_seconds = time.time() - started
    print(f"trained {args.steps} steps: loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}", flush=True)

    scores, captions = evaluate(model, heldout, progressbar=progress)
    metrics = {**{k: round(float(v), 4) for k, v in scores.items()}, "images": len(heldout),
               "examples": [{"caption": c, "reference": ex.captions[0]} for c, ex in zip(captions[:5], heldout)]}
    recipe = {"seed": args.seed, "public_images": args.public_images, "heldout_images": args.heldout_images,
              "vocab_size": tokenizer.vocab_size, "post_fraction": args.post_fraction, "steps": args.steps,
              "batch_size": args.batch_size,
              "lr": args.lr, "warmup_steps": warmup, "schedule": "cosine", "weight_decay": args.weight_decay,
              "betas": list(optimizer.betas), "max_grad_norm": optimizer.max_grad_norm,
              "parameters": model.num_parameters(), "final_train_loss": round(history[-1]["loss"], 4),
              "wall_seconds": round(train_seconds), "threads": ca.get_num_threads()}
    write_folder(model, args.out, gen, metrics, recipe)
    print("held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)
    for c, ex in zip(captions[:5], heldout):
        print(f"  {c!r}  |  {ex.captions[0]!r}")
    print(f"wrote {args.out} ({sum(f.stat().st_size for f in args.out.iterdir()) / 1e6:.2f} MB) "
          f"in {time.time() - started:.0f} s", flush=True)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
