"""The main job on the built-in default (`captionaura demo`, `make demo`).

The packaged aura-tiny captioner describes AuraScenes photos plainly. Each demo user has a caption style of
their own (emoji-rich, hashtag-heavy, poetic, terse lowercase, ...), favourite scenes, and private photos
that never leave their device. The demo:

1. provisions one kit per client (CA, TLS server certificate, node-authentication keys);
2. scores the base model on every user's held-out photos against that user's own captions, asked with its plain
   request and with the user's request (a few of their posts and a summary of their style);
3. federates one shared LoRA adapter over the users for several rounds, with secure aggregation, so the
   server only ever sees the sum of the adapter updates;
4. personalises: each user fine-tunes a copy of the shared adapter on their own photos (it stays on the
   device);
5. reports BLEU-1..4, CIDEr-D and ROUGE-L per user for base, federated and federated + personal, sample
   captions side by side, and captions a synthetic video with and without its context;
6. writes ``report.json`` and ``report.png`` (loss per round, CIDEr per user) to the output folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from captionaura._io import write_json_atomic
from captionaura.data import STYLES, AuraScenes, User, write_video
from captionaura.federated import FederatedClient, SecAggConfig, Simulation, provision
from captionaura.generate import GenerationConfig
from captionaura.lora import LoraConfig
from captionaura.metrics import evaluate
from captionaura.optim import AdamWConfig
from captionaura.personal import PersonalCaptioner, StyleProfile, train_personal_adapter
from captionaura.trainer import TrainingConfig
from captionaura.vl import Lfm2VlModel

METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "ROUGE_L")
# "plain": the base model asked its own plain request (a reference row); the other stages all get the user's
# request (their posts and style), so they differ only in the adapters
STAGES = ("plain", "base", "federated", "personal")
STAGE_LABELS = {"plain": "base, plain request", "base": "base, user's request", "federated": "federated",
                "personal": "federated + personal"}


@dataclass
class DemoConfig:
    """Sizes of the demo run; the defaults take a few minutes on 2 CPU cores."""

    clients: int = 4
    rounds: int = 8
    local_steps: int = 10
    personal_steps: int = 6
    batch_size: int = 8
    train_per_user: int = 16
    test_per_user: int = 6
    lora_rank: int = 8
    learning_rate: float = 4e-3
    personal_learning_rate: float = 2e-3
    style_examples: int = 3  # the user's posts shown in the prompt
    secure_aggregation: bool = True
    video: bool = True
    samples: int = 2
    seed: int = 0
    out_dir: str = "demo_output"
    model: str | None = None  # a checkpoint folder; default: the packaged aura-tiny
    progressbar: bool = True

    def __post_init__(self) -> None:
        for name in ("clients", "rounds", "local_steps", "batch_size", "train_per_user", "test_per_user",
                     "lora_rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.personal_steps < 0 or self.samples < 0:
            raise ValueError("personal_steps and samples must be >= 0")
        if self.secure_aggregation and self.clients < 2:
            raise ValueError("secure aggregation needs at least 2 clients")


def _load_model(path: str | None) -> Lfm2VlModel:
    if path is not None:
        return Lfm2VlModel.from_pretrained(path)
    from captionaura.default import load_default

    return load_default()


def _examples(model: Lfm2VlModel, user: User, prompt: str) -> list[dict[str, np.ndarray]]:
    return [model.caption_example(ex.image, caption, prompt=prompt) for ex in user.train for caption in ex.captions]


def _score(model: Lfm2VlModel, user: User, prompt: str | None, generation: GenerationConfig
           ) -> tuple[dict[str, float], list[str]]:
    captions = [model.caption(ex.image, prompt=prompt, generation=generation) for ex in user.test]
    refs = {i: list(ex.captions) for i, ex in enumerate(user.test)}
    # an empty caption scores zero; the toolkit would refuse it
    cands = {i: c if c.strip() else "." for i, c in enumerate(captions)}
    return dict(evaluate(refs, cands).scores), captions


def _table(rows: dict[str, dict[str, dict[str, float]]]) -> str:
    head = f"{'user':<22}{'model':<12}" + "".join(f"{m:>9}" for m in METRICS)
    lines = [head, "-" * len(head)]
    for user, stages in rows.items():
        for stage in STAGES:
            if stage in stages:
                lines.append(f"{user:<22}{stage:<12}" + "".join(f"{stages[stage][m]:>9.3f}" for m in METRICS))
    return "\n".join(lines)


def _plot(path: Path, history: list[dict], scores: dict[str, dict[str, dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_cider) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["round"] for r in history], [r["train_loss"] for r in history], marker="o")
    ax_loss.set(xlabel="round", ylabel="mean client train loss", title="Federated LoRA training")
    ax_loss.xaxis.set_major_locator(MaxNLocator(integer=True))
    users = list(scores)
    width = 0.8 / len(STAGES)
    for k, stage in enumerate(STAGES):
        values = [scores[u].get(stage, {}).get("CIDEr", 0.0) for u in users]
        ax_cider.bar(np.arange(len(users)) + (k - (len(STAGES) - 1) / 2) * width, values, width,
                     label=STAGE_LABELS[stage])
    ax_cider.set_xticks(np.arange(len(users)), users, rotation=20, ha="right")
    ax_cider.set(ylabel="CIDEr-D", title="Held-out CIDEr-D per user")
    ax_cider.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def _video_section(model: Lfm2VlModel, world: AuraScenes, out: Path, generation: GenerationConfig) -> dict[str, Any]:
    video = world.video("sunset", seed=1)
    path = out / "sunset.mp4"
    write_video(path, video.frames, video.fps)
    last = video.frames[-1]
    plain = model.caption(last, generation=generation)
    with_context = model.caption(last, video=str(path), context_mode="captions", generation=generation,
                                 results_dir=str(out / "video"))
    return {"video": str(path), "context": video.context, "without_context": plain, "with_context": with_context}


def run_demo(config: DemoConfig | None = None) -> dict[str, Any]:
    """Run the demo end to end; print the tables and return the report (also written to ``out_dir``)."""
    cfg = config or DemoConfig()
    start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = _load_model(cfg.model)
    generation = GenerationConfig(max_new_tokens=40, do_sample=False,
                                  eos_token_id=model.processor.tokenizer.token_to_id("<|im_end|>"))
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters "
          f"({'packaged aura-tiny' if cfg.model is None else cfg.model})")

    world = AuraScenes(seed=cfg.seed)
    # every user writes in a style of their own (the base model already writes the plain one)
    users = world.users(cfg.clients, train_per_user=cfg.train_per_user, test_per_user=cfg.test_per_user,
                        seed=cfg.seed, styles=tuple(s for s in STYLES if s != "plain"))
    profiles = {u.name: StyleProfile.from_posts(u.posts) for u in users}
    # the user's caption request: a few of their posts and a summary of their style, the same in training and use
    prompts = {u.name: model.caption_prompt(style=profiles[u.name], num_examples=cfg.style_examples).text
               for u in users}
    provision([u.name for u in users], "127.0.0.1:9092", out / "kits")
    print(f"provisioned {len(users)} client kits under {out / 'kits'} (CA, server TLS, node keys): "
          + ", ".join(f"{u.name} ({u.style})" for u in users))

    scores: dict[str, dict[str, dict[str, float]]] = {u.name: {} for u in users}
    samples: dict[str, dict[str, list[str]]] = {u.name: {} for u in users}

    def score_all(stage: str) -> None:
        for user in tqdm(users, desc=f"evaluating {stage}", disable=not cfg.progressbar, leave=False):
            prompt = None if stage == "plain" else prompts[user.name]
            scores[user.name][stage], captions = _score(model, user, prompt, generation)
            samples[user.name][stage] = captions[: cfg.samples]

    score_all("plain")
    score_all("base")

    clients = [FederatedClient(u.name, _examples(model, u, prompts[u.name])) for u in users]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, target_modules="all-linear")
    secagg = None
    if cfg.secure_aggregation:
        max_examples = max(len(c.train) for c in clients)
        secagg = SecAggConfig(threshold=max(2, math.ceil(2 * len(clients) / 3)), clipping_range=4.0,
                              max_weight=float(max_examples))
    optimizer = AdamWConfig(lr=cfg.learning_rate, weight_decay=0.0, max_grad_norm=1.0)
    sim = Simulation(model, clients, lora, rounds=cfg.rounds, local_steps=cfg.local_steps,
                     batch_size=cfg.batch_size, optimizer=optimizer, secure_aggregation=secagg,
                     output_dir=str(out / "federated"), seed=cfg.seed, progressbar=cfg.progressbar)
    history = [asdict(r) for r in sim.run()]
    shared = out / "federated" / "adapter"
    model.text.save_adapter(shared)
    score_all("federated")
    model.text.remove_lora()

    for user, client in zip(users, clients):
        if not cfg.personal_steps:
            break
        personal = out / "personal" / user.name  # stays on the user's device
        training = TrainingConfig(max_steps=cfg.personal_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                                  optimizer=AdamWConfig(lr=cfg.personal_learning_rate, weight_decay=0.0,
                                                        max_grad_norm=1.0), progressbar=False)
        train_personal_adapter(model, client.train, lora, personal, shared_adapter=shared, training=training,
                               seed=cfg.seed)
        captioner = PersonalCaptioner(model, shared, personal, profiles[user.name])
        try:
            scores[user.name]["personal"], captions = _score(model, user, prompts[user.name], generation)
        finally:
            captioner.close()
        samples[user.name]["personal"] = captions[: cfg.samples]

    print("\nHeld-out captions scored against each user's own references")
    print(_table(scores))
    print("\nSample captions (held-out photos)")
    for user in users:
        for k in range(min(cfg.samples, len(user.test))):
            print(f"\n  {user.name} ({user.style}), reference: {user.test[k].captions[0]}")
            for stage in STAGES:
                if stage in samples[user.name]:
                    print(f"    {stage:<10} {samples[user.name][stage][k]}")

    video = None
    if cfg.video:
        video = _video_section(model, world, out, generation)
        print(f"\nVideo {video['video']} (ground truth: {video['context']})\n"
              f"  without context: {video['without_context']}\n  with context:    {video['with_context']}")

    report = {
        "config": asdict(cfg),
        "users": [{"name": u.name, "style": u.style, "preferences": u.preferences} for u in users],
        "scores": scores,
        "samples": samples,
        "history": history,
        "bytes_per_round": {"sent": history[-1]["bytes_sent"], "received": history[-1]["bytes_received"]},
        "video": video,
        "seconds": time.perf_counter() - start,
    }
    write_json_atomic(out / "report.json", report)
    _plot(out / "report.png", history, scores)
    print(f"\nreport: {out / 'report.json'}, plot: {out / 'report.png'} ({report['seconds']:.0f} s)")
    return report
