"""Users of the AuraScenes world: personal caption styles and non-IID scene preferences.

A user's caption of an image is the image's reference captions rewritten in the user's style. Style choices
are tied to the scene's content, never drawn at random (a beach always brings 🌊 and #beachlife), so a model
can learn them from a few examples: that is what personalisation has to pick up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from captionaura.data.example import CaptionExample
from captionaura.data.scenes import SCENE_KINDS, SceneSpec

STYLES = ("plain", "emoji-rich", "hashtag-heavy", "poetic", "terse-lowercase", "enthusiastic")

SCENE_EMOJI = {"beach": "🌊", "city": "🏙️", "forest": "🌲", "mountains": "🏔️", "snow": "❄️", "night sky": "🌌",
               "desert": "🏜️", "lake": "🏞️", "field": "🌾", "harbour": "⚓"}
OBJECT_EMOJI = {"boat": "⛵", "tree": "🌳", "house": "🏠", "car": "🚗", "balloon": "🎈", "bird": "🐦",
                "dog": "🐕", "person": "🚶", "umbrella": "⛱️", "tent": "⛺"}
TIME_EMOJI = {"morning": "🌅", "midday": "☀️", "sunset": "🌇", "night": "🌙"}
WEATHER_EMOJI = {"clear": "", "cloudy": "☁️", "rainy": "🌧️", "snowy": "🌨️", "foggy": "🌫️"}

SCENE_TAGS = {"beach": ("#beachlife", "#ocean"), "city": ("#citylife", "#streetphotography"),
              "forest": ("#forestwalk", "#naturelovers"), "mountains": ("#mountainview", "#hiking"),
              "snow": ("#winterwonderland", "#snowday"), "night sky": ("#stargazing", "#nightsky"),
              "desert": ("#desertlife", "#dunes"), "lake": ("#lakeside", "#calmwaters"),
              "field": ("#countryside", "#meadow"), "harbour": ("#harbourlife", "#sailing")}
TIME_TAGS = {"morning": "#morningvibes", "midday": "#daytime", "sunset": "#goldenhour", "night": "#nightphotography"}
WEATHER_TAGS = {"clear": "#clearsky", "cloudy": "#cloudy", "rainy": "#rainyday", "snowy": "#snowfall",
                "foggy": "#foggy"}

POETIC_OPENERS = {"morning": "Soft morning light", "midday": "Beneath the high bright sun",
                  "sunset": "As the golden light fades", "night": "Under the quiet moon"}
POETIC_CLOSERS = {"beach": "where the waves whisper", "city": "while the city hums", "forest": "where old trees dream",
                  "mountains": "where the peaks touch the sky", "snow": "in a hush of white",
                  "night sky": "where the stars keep watch", "desert": "where the sands drift",
                  "lake": "by the still water", "field": "where the grass sways", "harbour": "where the tides rest"}
ENTHUSIASTIC_OPENERS = ("Wow!", "Look at this!", "Amazing!")
TERSE_DROP = {"a", "an", "the", "there", "is", "are", "of", "this", "picture", "with", "scene"}
NAMES = ("ana", "ben", "chloe", "dev", "emma", "farid", "gia", "hugo", "ines", "jon", "kemi", "leo", "maya",
         "nico", "olga", "pablo", "quinn", "rosa", "sami", "tara")


def _bare(caption: str) -> str:
    """The caption without its capital and full stop, for embedding into another sentence."""
    caption = caption.strip().rstrip(".!")
    return caption[0].lower() + caption[1:] if caption else caption


def style_caption(caption: str, spec: SceneSpec, style: str, signature: str = "") -> str:
    """``caption`` (a reference caption of ``spec``) rewritten in ``style``; deterministic in its inputs.

    ``signature`` is the user's own hashtag, appended by the hashtag-heavy style.
    """
    main = spec.objects[0]
    if style == "plain":
        return caption
    if style == "emoji-rich":
        emojis = [SCENE_EMOJI[spec.kind], OBJECT_EMOJI[main.name], TIME_EMOJI[spec.time_of_day],
                  WEATHER_EMOJI[spec.weather]]
        return f"{caption} {''.join(e for e in emojis if e)}"
    if style == "hashtag-heavy":
        tags = [*SCENE_TAGS[spec.kind], TIME_TAGS[spec.time_of_day], WEATHER_TAGS[spec.weather],
                "#" + main.plural] + ([signature] if signature else [])
        return f"{caption} {' '.join(tags)}"
    if style == "poetic":
        return f"{POETIC_OPENERS[spec.time_of_day]}, {_bare(caption)}, {POETIC_CLOSERS[spec.kind]}."
    if style == "terse-lowercase":
        words = re.findall(r"[a-z]+", caption.lower())
        return " ".join(w for w in words if w not in TERSE_DROP)
    if style == "enthusiastic":
        opener = ENTHUSIASTIC_OPENERS[SCENE_KINDS.index(spec.kind) % len(ENTHUSIASTIC_OPENERS)]
        return f"{opener} {caption[:-1]}! So beautiful!"
    raise ValueError(f"unknown caption style {style!r}; choose one of {STYLES}")


@dataclass
class User:
    """A user with a caption ``style``, scene ``preferences`` (kind -> probability), private ``train`` and
    ``test`` examples captioned in that style, and ``posts``: past captions of other images, for profiling."""

    name: str
    style: str
    preferences: dict[str, float]
    train: list[CaptionExample] = field(repr=False)
    test: list[CaptionExample] = field(repr=False)
    posts: list[str] = field(repr=False)
    signature: str = ""

    @property
    def favourite_kinds(self) -> list[str]:
        """Scene kinds by decreasing preference."""
        return sorted(self.preferences, key=lambda k: -self.preferences[k])


def styled_example(example: CaptionExample, style: str, signature: str = "") -> CaptionExample:
    """The same image, its reference captions rewritten in ``style``."""
    captions = list(dict.fromkeys(style_caption(c, example.scene, style, signature) for c in example.captions))
    return CaptionExample(image=example.image, captions=captions, scene=example.scene, image_id=example.image_id)
