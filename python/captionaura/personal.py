"""Personal caption style: what a user's own posts look like, shown to the model, plus a personal adapter.

Three ways a user's style reaches a caption, all on the device:

* ``StyleProfile.from_posts(captions)`` measures the posts (hashtag vocabulary and frequency, emoji use and
  favourites, length, casing, punctuation, tone words from a small lexicon) and keeps them; captioning with
  ``model.caption(image, style=profile)`` retrieves the ``k`` posts most similar to the current context
  (:meth:`StyleProfile.retrieve`, word overlap) and renders them as few-shot examples with a one-line summary of
  the style in the prompt (:meth:`StyleProfile.prompt_text`), so the model itself sees the style;
* a **personal adapter** (a LoRA trained on the user's posts, never sent anywhere) applied on top of the
  **shared adapter** that federated training produces (:class:`PersonalCaptioner`, :func:`stack_adapters`);
* mood and aesthetic tags by the model's own likelihood of each candidate label (:func:`zero_shot_tags`).

A personal adapter trains on top of the shared one (:func:`train_personal_adapter`: the shared adapter folded
into the weights while a fresh adapter trains on the user's examples), so it is a delta relative to base +
shared, which is exactly what :func:`stack_adapters` applies later without touching the base weights. After
``federated.Simulation.run()`` the language model holds the shared adapter: ``model.text.save_adapter(dir)``.
"""

from __future__ import annotations

import csv
import os
import re
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from captionaura._io import read_json, write_json_atomic

if TYPE_CHECKING:  # pragma: no cover
    from captionaura.lora import LoraConfig
    from captionaura.trainer import TrainingConfig
    from captionaura.vl import Lfm2VlModel

#: one emoji: a pictograph (or a pair of regional-indicator flags, or a keycap), with its variation selector,
#: skin tone and zero-width-joiner continuations counted as the same emoji
_PICTO = "[\U0001F000-\U0001FAFF\u2600-\u27BF\u2B00-\u2BFF\u2300-\u23FF\u3030\u303D\u3297\u3299]"
_MODS = "[\uFE0F\U0001F3FB-\U0001F3FF]*"
EMOJI_RE = re.compile(f"(?:[\U0001F1E6-\U0001F1FF]{{2}}|[0-9#*]\uFE0F?\u20E3|{_PICTO}{_MODS}(?:\u200D{_PICTO}{_MODS})*)")
HASHTAG_RE = re.compile(r"#(\w+)")
WORD_RE = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")

#: tone → words that signal it (lowercase); a post counts for a tone when it uses one of them
TONE_LEXICON: dict[str, tuple[str, ...]] = {
    "joyful": ("happy", "joy", "fun", "love", "loving", "smile", "smiling", "yay", "best", "amazing", "awesome",
               "great", "lovely", "delight", "cheerful"),
    "calm": ("calm", "quiet", "peace", "peaceful", "still", "gentle", "soft", "slow", "serene", "relax",
             "relaxing", "cozy", "tranquil"),
    "poetic": ("golden", "whisper", "whispers", "dream", "dreams", "dreaming", "glow", "glows", "dance",
               "dances", "sky", "light", "shadow", "shadows", "eternal", "silver", "embrace", "soul"),
    "excited": ("wow", "omg", "incredible", "epic", "finally", "insane", "unreal", "can't", "wait"),
    "nostalgic": ("remember", "memories", "memory", "throwback", "miss", "again", "once", "old", "back",
                  "childhood"),
    "gloomy": ("grey", "gray", "gloomy", "rain", "rainy", "cold", "dark", "tired", "lonely", "sad"),
}

CAPTION_COLUMNS = ("caption", "captions", "text", "post", "posts", "description")

LANGUAGES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian",
             "pt": "Portuguese", "nl": "Dutch", "sv": "Swedish", "pl": "Polish", "tr": "Turkish",
             "ru": "Russian", "ja": "Japanese", "zh": "Chinese", "ko": "Korean", "ar": "Arabic", "hi": "Hindi"}


def emojis(text: str) -> list[str]:
    """The emoji in ``text``, in order (multi-code-point emoji as one item)."""
    return EMOJI_RE.findall(text)


def hashtags(text: str) -> list[str]:
    """The hashtags of ``text``, lowercased, without the ``#``."""
    return [h.lower() for h in HASHTAG_RE.findall(text)]


def words(text: str) -> list[str]:
    """Lowercase words of ``text`` (letters and inner apostrophes; hashtags and emoji excluded)."""
    return [w.lower() for w in WORD_RE.findall(HASHTAG_RE.sub(" ", text))]


def language_name(language: str) -> str:
    """A language code ("fr", "pt-BR") → its English name ("French", "Portuguese"); anything else (a name such
    as "Brazilian Portuguese") is used as given."""
    if not isinstance(language, str) or not language.strip():
        raise ValueError(f"language must be a non-empty string, got {language!r}")
    code = re.split(r"[-_]", language.strip().lower())[0]
    return LANGUAGES.get(code, language.strip())


# =========================================================================================================
# the style profile
# =========================================================================================================
@dataclass
class StyleProfile:
    """Statistics of a user's captions, and the captions themselves (for few-shot retrieval).

    Rates are fractions of posts: ``emoji_rate`` (posts with at least one emoji), ``hashtag_rate``,
    ``lowercase_ratio`` (posts with letters, none of them uppercase, over posts with letters),
    ``exclamation_rate`` (posts with "!"), ``question_rate``, ``ellipsis_rate`` ("..." or "…"),
    ``final_period_rate`` (posts ending with "."). ``emojis_per_post`` and ``hashtags_per_post`` are means over
    all posts; ``mean_words`` counts words (hashtags and emoji excluded), ``mean_chars`` characters.
    ``hashtag_counts`` / ``emoji_counts`` are most-common-first; ``tones`` counts posts using a word of each
    ``TONE_LEXICON`` tone."""

    posts: list[str]
    num_posts: int = 0
    mean_words: float = 0.0
    mean_chars: float = 0.0
    hashtag_counts: dict[str, int] = field(default_factory=dict)
    hashtag_rate: float = 0.0
    hashtags_per_post: float = 0.0
    emoji_counts: dict[str, int] = field(default_factory=dict)
    emoji_rate: float = 0.0
    emojis_per_post: float = 0.0
    lowercase_ratio: float = 0.0
    exclamation_rate: float = 0.0
    question_rate: float = 0.0
    ellipsis_rate: float = 0.0
    final_period_rate: float = 0.0
    tones: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_posts(cls, captions: Sequence[str]) -> "StyleProfile":
        """Measure a list of caption strings (empty strings are skipped; at least one post must remain)."""
        if isinstance(captions, str):
            raise TypeError("from_posts takes a list of captions, not one string")
        posts = [unicodedata.normalize("NFC", c).strip() for c in captions
                 if isinstance(c, str) and c.strip()]
        bad = [c for c in captions if not isinstance(c, str)]
        if bad:
            raise TypeError(f"posts must be strings, got {type(bad[0]).__name__}")
        if not posts:
            raise ValueError("no posts: a style profile needs at least one non-empty caption")
        n = len(posts)
        tags = [hashtags(p) for p in posts]
        emo = [emojis(p) for p in posts]
        lettered = [p for p in posts if any(ch.isalpha() for ch in p)]
        tone_counts = {tone: sum(1 for p in posts if set(words(p)) & set(vocab))
                       for tone, vocab in TONE_LEXICON.items()}
        return cls(
            posts=posts, num_posts=n,
            mean_words=sum(len(words(p)) for p in posts) / n,
            mean_chars=sum(len(p) for p in posts) / n,
            hashtag_counts=dict(Counter(t for ts in tags for t in ts).most_common()),
            hashtag_rate=sum(1 for ts in tags if ts) / n,
            hashtags_per_post=sum(len(ts) for ts in tags) / n,
            emoji_counts=dict(Counter(e for es in emo for e in es).most_common()),
            emoji_rate=sum(1 for es in emo if es) / n,
            emojis_per_post=sum(len(es) for es in emo) / n,
            lowercase_ratio=(sum(1 for p in lettered if p == p.lower()) / len(lettered)) if lettered else 0.0,
            exclamation_rate=sum(1 for p in posts if "!" in p) / n,
            question_rate=sum(1 for p in posts if "?" in p) / n,
            ellipsis_rate=sum(1 for p in posts if "..." in p or "…" in p) / n,
            final_period_rate=sum(1 for p in posts if p.endswith(".")) / n,
            tones={t: c for t, c in sorted(tone_counts.items(), key=lambda kv: -kv[1]) if c},
        )

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str], column: str | None = None) -> "StyleProfile":
        """A profile of the captions in a CSV file (see :func:`load_posts`)."""
        return cls.from_posts(load_posts(path, column))

    # -- (de)serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StyleProfile":
        if not isinstance(data, dict) or not isinstance(data.get("posts"), list):
            raise ValueError("a style profile dict needs a 'posts' list")
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown style profile fields: {unknown}")
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the profile as JSON (atomically)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "StyleProfile":
        return cls.from_dict(read_json(path, "style profile"))

    # -- use in prompts ------------------------------------------------------------------------------
    def favourite_hashtags(self, n: int = 5) -> list[str]:
        return list(self.hashtag_counts)[:n]

    def favourite_emojis(self, n: int = 3) -> list[str]:
        return list(self.emoji_counts)[:n]

    def retrieve(self, context: str, k: int = 3) -> list[str]:
        """The ``k`` posts most similar to ``context``: Jaccard overlap of their word + hashtag sets with the
        context's words, ties kept in the posts' order (so with no overlap at all, the first posts)."""
        if k <= 0:
            return []
        query = set(words(context)) | set(hashtags(context))

        def similarity(post: str) -> float:
            tokens = set(words(post)) | set(hashtags(post))
            union = tokens | query
            return len(tokens & query) / len(union) if union else 0.0

        order = sorted(range(len(self.posts)), key=lambda i: -similarity(self.posts[i]))
        return [self.posts[i] for i in order[:k]]

    def summary(self) -> str:
        """One line describing the style, for the prompt."""
        notes = [f"about {max(1, round(self.mean_words))} words"]
        if self.lowercase_ratio >= 0.5:
            notes.append("all lowercase")
        if self.emoji_rate >= 0.3:
            notes.append("emoji such as " + " ".join(self.favourite_emojis()))
        if self.hashtag_rate >= 0.3:
            notes.append("hashtags such as " + " ".join("#" + h for h in self.favourite_hashtags()))
        if self.exclamation_rate >= 0.3:
            notes.append("exclamation marks")
        if self.tones:
            notes.append(f"a {next(iter(self.tones))} tone")
        return ", ".join(notes)

    def prompt_text(self, examples: Sequence[str]) -> str:
        """The style part of a caption prompt: the retrieved example posts and the summary."""
        lines = ["Write it the way this person writes captions."]
        if examples:
            lines.append("Their captions:")
            lines.extend(f"- {e}" for e in examples)
        lines.append(f"Their style: {self.summary()}.")
        return "\n".join(lines)


def load_posts(path: str | os.PathLike[str], column: str | None = None) -> list[str]:
    """The captions of a CSV file with a header (e.g. the Kaggle "Instagram Images with Captions" layout,
    column ``Caption``): the ``column`` given, else the first header among ``CAPTION_COLUMNS``
    (case-insensitive). Empty cells are skipped. Missing columns and empty files raise ``ValueError`` naming
    the file and the columns found."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"posts CSV not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        found = [h for h in (reader.fieldnames or []) if h is not None]
        if not found:
            raise ValueError(f"posts CSV {path} is empty (no header row)")
        if column is not None:
            if column not in found:
                raise ValueError(f"posts CSV {path} has no column {column!r}; columns found: {found}")
            name = column
        else:
            lower = {h.strip().lower(): h for h in found}
            name = next((lower[c] for c in CAPTION_COLUMNS if c in lower), None)
            if name is None:
                raise ValueError(f"posts CSV {path} has no caption column (one of {list(CAPTION_COLUMNS)}); "
                                 f"columns found: {found}")
        posts = [row[name].strip() for row in reader if row.get(name) and row[name].strip()]
    if not posts:
        raise ValueError(f"posts CSV {path} has no captions in column {name!r}")
    return posts


# =========================================================================================================
# zero-shot tags by the model's own likelihood
# =========================================================================================================
MOOD_LABELS = ("calm", "joyful", "melancholic", "dramatic", "romantic", "mysterious", "energetic", "nostalgic")
AESTHETIC_LABELS = ("minimalist", "vintage", "vibrant", "moody", "pastel", "cinematic", "natural", "urban")
DEFAULT_TAG_QUESTION = "Describe the mood of this image in one word."
DEFAULT_TAG_TEMPLATE = "The mood is {label}."
AESTHETIC_QUESTION = "Describe the aesthetic of this image in one word."
AESTHETIC_TEMPLATE = "The aesthetic is {label}."


@dataclass
class TagScore:
    label: str
    score: float            # the ranking score: log-likelihood, per token with normalize=True
    log_likelihood: float   # Σ log p(continuation token | image, prompt, previous tokens)
    num_tokens: int


def tag_prompt(model: "Lfm2VlModel", image: Any, question: str, template: str):
    """(prompt ids with the image tokens, processor batch, answer prefix text, continuation suffix) of the
    scoring prompt: the user turn (image + ``question``), then the assistant's answer ``template`` whose
    ``{label}`` part (with the space before it) is the scored continuation."""
    if model.processor is None:
        raise ValueError("zero-shot tags need the checkpoint's processor")
    if template.count("{label}") != 1:
        raise ValueError(f"template must contain {{label}} exactly once, got {template!r}")
    head, tail = template.split("{label}")
    space = " " if head.endswith(" ") else ""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    batch = model.processor(images=[image], messages=messages)
    tok = model.processor.tokenizer
    head_ids = np.asarray(tok.encode(head.rstrip(" "), add_special_tokens=False), np.int64)
    prompt = np.concatenate([np.asarray(batch.input_ids)[0], head_ids]).astype(np.int32)
    return prompt, batch, space, tail


def zero_shot_tags(model: "Lfm2VlModel", image: Any, labels: Sequence[str] = MOOD_LABELS,
                   template: str = DEFAULT_TAG_TEMPLATE, question: str = DEFAULT_TAG_QUESTION,
                   normalize: bool = True) -> list[TagScore]:
    """Rank candidate ``labels`` for ``image`` by the model's own likelihood, no extra model.

    Each label's score is Σ log p of the continuation tokens (``" " + label + rest of template``, tokenised on
    their own and appended to the prompt) given the image, the question and the answer's beginning; with
    ``normalize`` the sum is divided by the token count (so long labels are not penalised for length). The
    image is encoded once and all labels are scored in one batched forward. Best first. Aesthetic tags:
    ``labels=AESTHETIC_LABELS, question=AESTHETIC_QUESTION, template=AESTHETIC_TEMPLATE``."""
    labels = [str(label) for label in labels]
    if not labels or any(not label.strip() for label in labels):
        raise ValueError("labels must be a non-empty list of non-empty strings")
    prompt, batch, space, tail = tag_prompt(model, image, question, template)
    tok = model.processor.tokenizer
    continuations = [np.asarray(tok.encode(space + label + tail, add_special_tokens=False), np.int32)
                     for label in labels]
    T = prompt.size + max(c.size for c in continuations)
    ids = np.zeros((len(labels), T), np.int32)
    mask = np.zeros((len(labels), T), np.int32)
    for b, cont in enumerate(continuations):
        ids[b, : prompt.size] = prompt
        ids[b, prompt.size: prompt.size + cont.size] = cont
        mask[b, : prompt.size + cont.size] = 1
    positions, features = model._features(prompt[None], batch.pixel_values, batch.spatial_shapes,
                                          batch.pixel_attention_mask, train=False)
    rows = np.concatenate([positions + b * T for b in range(len(labels))]).astype(np.int32)
    logits = model.text.forward(ids, mask, features=(rows, np.concatenate([features] * len(labels)))).logits
    out = []
    for b, cont in enumerate(continuations):
        # logits at position t predict token t+1: the continuation is predicted from prompt.size-1 onwards
        pred = logits[b, prompt.size - 1: prompt.size - 1 + cont.size].astype(np.float64)
        peak = pred.max(axis=1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(pred - peak).sum(axis=1))
        ll = float(np.sum(pred[np.arange(cont.size), cont] - log_norm))
        out.append(TagScore(labels[b], ll / cont.size if normalize else ll, ll, int(cont.size)))
    return sorted(out, key=lambda s: -s.score)


# =========================================================================================================
# personal adapter on top of the shared one
# =========================================================================================================
def stack_adapters(model: "Lfm2VlModel", shared: str | os.PathLike[str] | None,
                   personal: str | os.PathLike[str] | None) -> None:
    """Load the shared (federated) and the personal LoRA adapter folders into ``model.text`` as ONE adapter
    computing both deltas: for every module, ``s_s B_s A_s x + s_p B_p A_p x = [s_s B_s | s_p B_p] [A_s; A_p] x``,
    an adapter of rank r_s + r_p with scaling 1 over the union of both adapters' modules (zero blocks where one
    adapter has no module). The base weights are untouched; ``model.text.remove_lora()`` undoes it."""
    from captionaura import _core
    from captionaura.lora import ADAPTER_WEIGHTS_NAME, LoraConfig, peft_key

    folders = [Path(p) for p in (shared, personal) if p is not None]
    if not folders:
        raise ValueError("give a shared adapter, a personal adapter or both")
    if len(folders) == 1:
        model.text.load_adapter(folders[0])
        return
    parts = []
    for folder in folders:
        config = LoraConfig.from_pretrained(folder)
        if config.modules_to_save:
            raise NotImplementedError(f"adapter {folder} has modules_to_save; only pure LoRA adapters stack")
        weights = folder / ADAPTER_WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"no {ADAPTER_WEIGHTS_NAME} in {folder}")
        model.text.add_lora(config)  # resolves the adapter's modules on this model
        modules = [m["module"] for m in model.text.lora_modules()]
        tensors = _core.safetensors_load(str(weights))
        expected = set(model.text.lora_parameters())
        if set(tensors) != expected:
            model.text.remove_lora()
            raise KeyError(f"adapter {folder} does not fit this model: keys differ from the expected "
                           f"{len(expected)} LoRA tensors")
        parts.append((config, modules, tensors))
    model.text.remove_lora()
    union = sorted({m for _, modules, _ in parts for m in modules})
    rank = sum(config.r for config, _, _ in parts)
    stacked = LoraConfig(r=rank, lora_alpha=rank, target_modules="^(" + "|".join(map(re.escape, union)) + ")$")
    model.text.add_lora(stacked)
    target = model.text.lora_parameters()
    for view in target.values():
        view[...] = 0.0
    offset = 0
    for config, modules, tensors in parts:
        for module in modules:
            A = target[peft_key(module, "lora_A")]
            B = target[peft_key(module, "lora_B")]
            A[offset: offset + config.r] = tensors[peft_key(module, "lora_A")]
            B[:, offset: offset + config.r] = config.scaling * tensors[peft_key(module, "lora_B")]
        offset += config.r


def train_personal_adapter(model: "Lfm2VlModel", examples: Sequence[dict], lora: "LoraConfig",
                           out: str | os.PathLike[str], shared_adapter: str | os.PathLike[str] | None = None,
                           training: "TrainingConfig | None" = None, seed: int = 0) -> list[dict]:
    """Train a user's personal adapter on their own caption examples (``model.caption_example(image, caption)``)
    on top of ``shared_adapter`` and save it to ``out``; returns the training history.

    The shared adapter is folded into the weights of its modules for the duration (W += s·B·A), a fresh
    ``lora`` adapter trains on the result (``Trainer``), and afterwards the base weights are restored bit for bit
    and the adapters removed, so the saved adapter is a delta relative to base + shared: exactly what
    :func:`stack_adapters` / :class:`PersonalCaptioner` apply later."""
    from captionaura.trainer import Trainer, TrainingConfig

    text = model.text
    saved: dict[str, np.ndarray] = {}
    try:
        if shared_adapter is not None:
            text.load_adapter(shared_adapter)
            params = text.parameters()
            saved = {f"{m['module']}.weight": params[f"{m['module']}.weight"].copy() for m in text.lora_modules()}
            text.merge_lora()
        text.add_lora(lora, seed=seed)
        config = training or TrainingConfig(max_steps=50, batch_size=4, progressbar=False, seed=seed)
        history = Trainer(model, examples, config).train()
        text.save_adapter(out)
    finally:
        if text.lora_config is not None:
            text.remove_lora()
        params = text.parameters()
        for name, weight in saved.items():
            params[name][...] = weight
    return history


class PersonalCaptioner:
    """A user's on-device captioner: the shared base model, the federated ``shared_adapter`` and the user's
    ``personal_adapter`` (folders, either may be None) stacked on it (:func:`stack_adapters`), and the user's
    ``profile`` for few-shot style. Only the shared adapter ever takes part in federated rounds; the personal
    adapter and the profile stay on the device."""

    def __init__(self, model: "Lfm2VlModel", shared_adapter: str | os.PathLike[str] | None = None,
                 personal_adapter: str | os.PathLike[str] | None = None,
                 profile: StyleProfile | None = None) -> None:
        self.model = model
        self.shared_adapter = shared_adapter
        self.personal_adapter = personal_adapter
        self.profile = profile
        if shared_adapter is not None or personal_adapter is not None:
            stack_adapters(model, shared_adapter, personal_adapter)

    def caption(self, image: Any, **kwargs: Any) -> Any:
        """``model.caption`` with the user's style profile (unless ``style=`` is given)."""
        kwargs.setdefault("style", self.profile)
        return self.model.caption(image, **kwargs)

    def tags(self, image: Any, labels: Sequence[str] = MOOD_LABELS, **kwargs: Any) -> list[TagScore]:
        return zero_shot_tags(self.model, image, labels, **kwargs)

    def close(self) -> None:
        """Take the adapters off the model (it is shared with other users in a simulation)."""
        if self.model.text.lora_config is not None:
            self.model.text.remove_lora()
