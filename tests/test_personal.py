"""Personal style: StyleProfile statistics on hand-made posts, JSON round trip, few-shot retrieval and its
place in the caption prompt, zero-shot tags against a float64 NumPy log-likelihood of the model's logits and
against the C core's cross-entropy, the personal adapter stacked on the shared one against merging, and bad
input."""

from __future__ import annotations

import numpy as np
import pytest

import captionaura as ca
from captionaura.personal import (PersonalCaptioner, StyleProfile, emojis, load_posts, stack_adapters, tag_prompt,
                                  train_personal_adapter, zero_shot_tags)
from captionaura.trainer import collate

SETTINGS = ca.GenerationConfig(max_new_tokens=5, min_new_tokens=5, do_sample=False, eos_token_id=[])

POSTS = [
    "Golden hour at the beach 🌅🌊 #sunset #beach #travel",
    "coffee first. #coffee",
    "WOW what a view!!! 😍 #Travel #mountains",
    "quiet morning in the city",
    "   ",
    "Remember this? 👨‍👩‍👧 #throwback #travel",
]


def test_profile_statistics_of_hand_made_posts():
    p = StyleProfile.from_posts(POSTS)
    assert p.num_posts == 5 and p.posts[1] == "coffee first. #coffee"  # the blank post is skipped
    assert p.hashtag_counts == {"travel": 3, "sunset": 1, "beach": 1, "coffee": 1, "mountains": 1, "throwback": 1}
    assert list(p.hashtag_counts)[0] == "travel" and p.favourite_hashtags(1) == ["travel"]
    assert p.hashtag_rate == 4 / 5 and p.hashtags_per_post == 8 / 5
    # 🌅 🌊 😍 and the family (three people joined by zero-width joiners: one emoji)
    assert p.emoji_counts == {"🌅": 1, "🌊": 1, "😍": 1, "👨‍👩‍👧": 1}
    assert p.emoji_rate == 3 / 5 and p.emojis_per_post == 4 / 5
    assert p.lowercase_ratio == 2 / 5
    assert p.exclamation_rate == 1 / 5 and p.question_rate == 1 / 5 and p.final_period_rate == 0.0
    # words: golden hour at the beach | coffee first | wow what a view | quiet morning in the city | remember this
    assert p.mean_words == 18 / 5
    assert p.mean_chars == sum(len(s.strip()) for s in POSTS) / 5
    assert p.tones == {"poetic": 1, "calm": 1, "excited": 1, "nostalgic": 1}
    assert emojis("flags 🇫🇷🇯🇵, keycap 1️⃣, thumbs 👍🏽 ☀️") == ["🇫🇷", "🇯🇵", "1️⃣", "👍🏽", "☀️"]


def test_profile_round_trips_through_json(tmp_path):
    p = StyleProfile.from_posts(POSTS)
    assert StyleProfile.from_dict(p.to_dict()) == p
    path = tmp_path / "style.json"
    p.save(path)
    assert StyleProfile.load(path) == p
    assert [f.name for f in tmp_path.iterdir()] == ["style.json"]  # written through a temp file, renamed
    with pytest.raises(ValueError, match="unknown style profile fields"):
        StyleProfile.from_dict({**p.to_dict(), "colour": 1})


def test_retrieval_orders_posts_by_word_overlap():
    p = StyleProfile.from_posts(["city lights at night #city", "waves on the beach #beach #sea",
                                 "a quiet beach at sunrise", "coffee and croissants"])
    # query words {sun, on, the, beach}: Jaccard 2/7 (waves on the beach, beach, sea), 1/8 (a quiet beach ...)
    assert p.retrieve("sun on the beach", k=3) == ["waves on the beach #beach #sea", "a quiet beach at sunrise",
                                                   "city lights at night #city"]
    assert p.retrieve("nothing in common", k=2) == ["city lights at night #city", "waves on the beach #beach #sea"]
    assert p.retrieve("coffee", k=0) == []


def test_style_and_language_go_into_the_prompt(captioner):
    image = np.random.default_rng(3).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    profile = StyleProfile.from_posts(POSTS)
    caption = captioner.caption(image, generation=SETTINGS, style=profile, language="fr", num_examples=2)
    draft = captioner.caption(image, generation=SETTINGS)
    examples = profile.retrieve(draft, 2)
    text = "\n".join(["Write a short caption for this image.",
                      "Write it the way this person writes captions.", "Their captions:",
                      *[f"- {e}" for e in examples], f"Their style: {profile.summary()}.",
                      "Write the caption in French."])
    assert caption == captioner.caption(image, prompt=text, generation=SETTINGS)
    assert "#travel" in profile.summary() and "about 4 words" in profile.summary()
    personal = PersonalCaptioner(captioner, profile=profile)  # no adapters: the profile alone
    assert personal.caption(image, generation=SETTINGS, language="fr", num_examples=2) == caption


# ---- zero-shot tags ------------------------------------------------------------------------------------
def reference_log_likelihood(model, image, question, template, label) -> tuple[float, int]:
    """Σ log softmax(logits)[next token] over the label's continuation, in float64, from model.forward."""
    head, tail = template.split("{label}")
    tok = model.processor.tokenizer
    batch = model.processor(images=[image], messages=[{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": question}]}])
    prompt = list(np.asarray(batch.input_ids)[0]) + tok.encode(head.rstrip(" "), add_special_tokens=False)
    cont = tok.encode(" " + label + tail, add_special_tokens=False)
    ids = np.asarray([prompt + cont], np.int32)
    logits = model.forward(ids, pixel_values=batch.pixel_values, spatial_shapes=batch.spatial_shapes,
                           pixel_attention_mask=batch.pixel_attention_mask).logits[0].astype(np.float64)
    total = 0.0
    for j, token in enumerate(cont):
        row = logits[len(prompt) + j - 1]
        total += row[token] - (row.max() + np.log(np.sum(np.exp(row - row.max()))))
    return total, len(cont)


def test_zero_shot_scores_are_the_models_log_likelihood(captioner):
    image = np.random.default_rng(4).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    labels = ["calm", "joyful", "very dramatic", "moody"]
    question, template = "Describe the mood of this image in one word.", "The mood is {label}."
    for normalize in (True, False):
        scores = zero_shot_tags(captioner, image, labels, template=template, question=question, normalize=normalize)
        assert sorted(s.label for s in scores) == sorted(labels)
        assert [s.score for s in scores] == sorted((s.score for s in scores), reverse=True)
        for s in scores:
            ll, n = reference_log_likelihood(captioner, image, question, template, s.label)
            assert s.num_tokens == n
            assert s.log_likelihood == pytest.approx(ll, rel=1e-5, abs=1e-4)
            assert s.score == pytest.approx(ll / n if normalize else ll, rel=1e-5, abs=1e-4)
    # and against the C core's cross-entropy: loss over the label tokens = −mean log-likelihood
    prompt, batch, space, tail = tag_prompt(captioner, image, question, template)
    cont = np.asarray(captioner.processor.tokenizer.encode(space + "moody" + tail, add_special_tokens=False))
    ids = np.concatenate([prompt, cont]).astype(np.int32)[None]
    labels_ids = np.full_like(ids, -100)
    labels_ids[0, prompt.size:] = cont
    loss = captioner.loss_and_grad(ids, labels_ids, pixel_values=batch.pixel_values,
                                   spatial_shapes=batch.spatial_shapes,
                                   pixel_attention_mask=batch.pixel_attention_mask, train_vision=False)
    moody = next(s for s in scores if s.label == "moody")
    assert -loss * cont.size == pytest.approx(moody.log_likelihood, rel=1e-5)


# ---- personal adapter ----------------------------------------------------------------------------------
def test_personal_adapter_on_top_of_the_shared_one_equals_merging(captioner, tiny_captioner_dir, tmp_path):
    image = np.random.default_rng(5).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Caption:"}]}]
    base = captioner.forward(images=[image], messages=messages).logits
    # two adapters with random A and B: the shared one on attention, the personal one on every projection
    shared_cfg = ca.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    personal_cfg = ca.LoraConfig(r=2, lora_alpha=6, target_modules="all-linear", init_lora_weights=False)
    for name, cfg, seed in (("shared", shared_cfg, 1), ("personal", personal_cfg, 2)):
        captioner.text.add_lora(cfg, seed=seed)
        for view in captioner.text.lora_parameters().values():
            view *= 10.0  # big enough to move the logits clearly
        captioner.text.save_adapter(tmp_path / name)
        captioner.text.remove_lora()
    # reference: a fresh copy with the shared adapter folded into its weights, then the personal adapter
    merged = ca.Lfm2VlModel.from_pretrained(tiny_captioner_dir)
    merged.text.load_adapter(tmp_path / "shared")
    merged.text.merge_lora()
    shared_only = merged.forward(images=[image], messages=messages).logits
    merged.text.load_adapter(tmp_path / "personal")
    expected = merged.forward(images=[image], messages=messages).logits

    personal = PersonalCaptioner(captioner, tmp_path / "shared", tmp_path / "personal")
    got = captioner.forward(images=[image], messages=messages).logits
    assert captioner.text.lora_config.r == 6
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)
    assert np.abs(expected - shared_only).max() > 1e-2 and np.abs(shared_only - base).max() > 1e-2
    personal.close()
    np.testing.assert_array_equal(captioner.forward(images=[image], messages=messages).logits, base)
    # one adapter alone is a plain load
    stack_adapters(captioner, tmp_path / "shared", None)
    np.testing.assert_allclose(captioner.forward(images=[image], messages=messages).logits, shared_only,
                               atol=2e-4, rtol=1e-4)
    captioner.text.remove_lora()
    with pytest.raises(ValueError, match="shared adapter, a personal adapter or both"):
        stack_adapters(captioner, None, None)


def test_personal_adapter_trains_on_top_of_the_shared_one_and_leaves_the_base_intact(captioner, tmp_path):
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (250, 200, 0)]
    rng = np.random.default_rng(0)
    images = [np.clip(np.full((48, 64, 3), c) + rng.normal(0, 8, (48, 64, 3)), 0, 255).astype(np.uint8)
              for c in colours]
    posts = ["red glow ✨ #mood", "green calm 🌿 #nature", "blue hour 💙 #sky", "sunny yellow ☀️ #summer"]
    examples = [captioner.caption_example(image, post) for image, post in zip(images, posts)]
    batch = collate(examples, captioner.text.config.pad_token_id or 0)

    def user_loss():
        return captioner.loss_and_grad(**batch, train_vision=False)

    captioner.text.add_lora(ca.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False), seed=3)
    captioner.text.save_adapter(tmp_path / "shared")
    shared_loss = user_loss()
    captioner.text.remove_lora()
    before = {k: v.copy() for k, v in captioner.text.parameters().items()}
    training = ca.TrainingConfig(max_steps=20, batch_size=4, progressbar=False,
                                 optimizer=ca.AdamWConfig(lr=3e-2, weight_decay=0.0))
    history = train_personal_adapter(captioner, examples, ca.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
                                     tmp_path / "me", shared_adapter=tmp_path / "shared", training=training)
    assert len(history) == 20 and captioner.text.lora_config is None
    # training started from base + shared (the new adapter's B = 0), and the base came back bit for bit
    assert history[0]["loss"] == pytest.approx(shared_loss, rel=1e-5)
    for name, value in captioner.text.parameters().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    personal = PersonalCaptioner(captioner, tmp_path / "shared", tmp_path / "me")
    # the stacked adapters reproduce the state training ended in: the user's captions are now likely
    assert user_loss() == pytest.approx(history[-1]["loss"], rel=0.5)
    assert user_loss() < 0.3 * shared_loss
    personal.close()


# ---- posts files and bad input -------------------------------------------------------------------------
def test_posts_csv_in_the_instagram_layout(tmp_path):
    path = tmp_path / "instagram.csv"
    path.write_text('Image File,Caption\nimg/1.jpg,"sun, sea and sand ☀️ #beach"\nimg/2.jpg,\n'
                    'img/3.jpg,"two\nlines #city"\n', encoding="utf-8")
    assert load_posts(path) == ["sun, sea and sand ☀️ #beach", "two\nlines #city"]
    assert StyleProfile.from_csv(path).hashtag_counts == {"beach": 1, "city": 1}
    assert load_posts(path, column="Image File") == ["img/1.jpg", "img/2.jpg", "img/3.jpg"]


def test_bad_posts_are_clear_errors(tmp_path, captioner):
    with pytest.raises(ValueError, match="no posts"):
        StyleProfile.from_posts([])
    with pytest.raises(ValueError, match="no posts"):
        StyleProfile.from_posts(["", "  "])
    with pytest.raises(TypeError, match="list of captions"):
        StyleProfile.from_posts("one caption")
    with pytest.raises(TypeError, match="strings"):
        StyleProfile.from_posts(["ok", 3])
    no_caption = tmp_path / "posts.csv"
    no_caption.write_text("id,likes,image\n1,20,a.jpg\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"posts.csv has no caption column.*\['id', 'likes', 'image'\]"):
        load_posts(no_caption)
    with pytest.raises(ValueError, match=r"no column 'text'; columns found: \['id', 'likes', 'image'\]"):
        load_posts(no_caption, column="text")
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ValueError, match="empty.csv is empty"):
        load_posts(empty)
    header_only = tmp_path / "header.csv"
    header_only.write_text("caption\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no captions"):
        load_posts(header_only)
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_posts(tmp_path / "nope.csv")
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="labels"):
        zero_shot_tags(captioner, image, [])
    with pytest.raises(ValueError, match="exactly once"):
        zero_shot_tags(captioner, image, ["calm"], template="no placeholder")
    with pytest.raises(ValueError, match="language"):
        captioner.caption(image, generation=SETTINGS, language="  ")
