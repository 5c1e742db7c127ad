"""Reference captions for a :class:`SceneSpec`: templates x synonyms, every wording true to the spec.

Each caption names the first object group with its count and colour (the facts a model must read off the
pixels), and adds its position, the place, the time of day, the weather or the second group, in different
orders and words. Vocabulary stays small (about two hundred words) so a tiny model can learn it.
"""

from __future__ import annotations

import numpy as np

from captionaura.data.scenes import SceneObject, SceneSpec

COUNT_WORDS = {2: "two", 3: "three"}
POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "to the left"),
    "centre": ("in the centre", "in the middle", "in the center"),
    "right": ("on the right", "on the right side", "to the right"),
}
SCENE_PLACES = {  # prepositional phrases: where it happens
    "beach": ("on the beach", "at the beach", "by the sea"),
    "city": ("in the city", "on a city street", "in town"),
    "forest": ("in the forest", "in the woods", "among the pine trees"),
    "mountains": ("in the mountains", "below the mountain peaks", "in a mountain valley"),
    "snow": ("on a snowy plain", "in a snowy landscape", "on the fresh snow"),
    "night sky": ("under the stars", "under a starry sky", "beneath the starry night sky"),
    "desert": ("in the desert", "among the sand dunes", "on the desert sand"),
    "lake": ("by the lake", "at the lake", "on the lakeside"),
    "field": ("in a grassy field", "in a meadow", "on the grass"),
    "harbour": ("in the harbour", "at the port", "by the pier"),
}
SCENE_NOUNS = {  # noun phrases: what the picture shows
    "beach": ("a sandy beach", "a beach", "the seaside"),
    "city": ("a city street", "a city", "a street in town"),
    "forest": ("a forest", "a pine forest", "the woods"),
    "mountains": ("the mountains", "a mountain valley", "snowy mountain peaks"),
    "snow": ("a snowy landscape", "a snowy plain", "a field of snow"),
    "night sky": ("a starry night sky", "a night full of stars", "a sky full of stars"),
    "desert": ("a desert", "the sand dunes", "a sandy desert"),
    "lake": ("a lake", "a calm lake", "a lakeside"),
    "field": ("a grassy field", "a meadow", "an open field"),
    "harbour": ("a harbour", "a port", "a harbour with a pier"),
}
TIME_PHRASES = {
    "morning": ("in the morning", "in the early morning", "early in the day"),
    "midday": ("at midday", "at noon", "in the middle of the day"),
    "sunset": ("at sunset", "at dusk", "as the sun goes down"),
    "night": ("at night", "in the night", "late at night"),
}
TIME_ADJECTIVES = {"morning": ("morning",), "midday": ("midday", "daytime"), "sunset": ("sunset", "evening"),
                   "night": ("night", "nighttime")}
WEATHER_PHRASES = {
    "clear": ("under a clear sky", "with a clear sky above"),
    "cloudy": ("under a cloudy sky", "under heavy clouds", "with clouds overhead"),
    "rainy": ("in the rain", "while it rains", "in heavy rain"),
    "snowy": ("while snow falls", "in falling snow", "during a snowfall"),
    "foggy": ("in the fog", "in thick fog", "in the mist"),
}
WEATHER_ADJECTIVES = {"clear": ("clear",), "cloudy": ("cloudy", "overcast"), "rainy": ("rainy", "wet"),
                      "snowy": ("snowy",), "foggy": ("foggy", "misty")}
# (singular verb, plural verb, participles)
VERBS = {
    "boat": ("floats", "float", ("floating", "sailing")),
    "tree": ("stands", "stand", ("standing", "growing")),
    "house": ("stands", "stand", ("standing",)),
    "car": ("is parked", "are parked", ("parked",)),
    "balloon": ("floats", "float", ("floating", "flying")),
    "bird": ("flies", "fly", ("flying", "soaring")),
    "dog": ("plays", "play", ("playing", "standing")),
    "person": ("stands", "stand", ("standing", "waiting")),
    "umbrella": ("stands", "stand", ("standing", "open")),
    "tent": ("is pitched", "are pitched", ("pitched", "set up")),
}
MIN_WORDS, MAX_WORDS = 8, 20


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def count_word(count: int, next_word: str, rng: np.random.Generator | None = None) -> str:
    """'a'/'an'/'one' for a single object (randomly, when an rng is given), else 'two'/'three'."""
    if count > 1:
        return COUNT_WORDS[count]
    article = "an" if next_word[0] in "aeiou" else "a"
    return "one" if rng is not None and rng.random() < 0.25 else article


def object_phrase(group: SceneObject, rng: np.random.Generator) -> str:
    """'two small red boats', 'an orange tent', 'one large blue car', 'two people in red' ..."""
    words = [group.size] if rng.random() < 0.3 else []
    noun = group.name if group.count == 1 else group.plural
    if group.name == "person":  # the colour is the clothes'
        words += [noun, "in", group.colour]
    else:
        words += [group.colour, noun]
    return " ".join([count_word(group.count, words[0], rng)] + words)


def _verb(group: SceneObject) -> str:
    return VERBS[group.name][0 if group.count == 1 else 1]


def _is_are(group: SceneObject) -> str:
    return "is" if group.count == 1 else "are"


def _finish(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + "."


def reference_captions(spec: SceneSpec, rng: np.random.Generator, n: int = 6) -> list[str]:
    """At least five (``n``) distinct captions of ``spec``, each 8-20 words, each true to it."""
    g1 = spec.objects[0]
    g2 = spec.objects[1] if len(spec.objects) > 1 else None
    kind, time, weather = spec.kind, spec.time_of_day, spec.weather

    def pos(g: SceneObject) -> str:
        return _pick(rng, POSITION_PHRASES[g.position])

    def place() -> str:
        return _pick(rng, SCENE_PLACES[kind])

    def when() -> str:
        return _pick(rng, TIME_PHRASES[time])

    def sky() -> str:
        return _pick(rng, WEATHER_PHRASES[weather])

    def ving(g: SceneObject) -> str:
        return _pick(rng, VERBS[g.name][2])

    def second() -> str:  # the other group, or the weather when there is none
        return f"and {object_phrase(g2, rng)} {pos(g2)}" if g2 else sky()

    templates = (
        lambda: f"{object_phrase(g1, rng)} {ving(g1)} {pos(g1)} {place()} {when()}",
        lambda: f"{object_phrase(g1, rng)} {_verb(g1)} {pos(g1)} {place()} {sky()}",
        lambda: f"a {_pick(rng, WEATHER_ADJECTIVES[weather])} {_pick(rng, TIME_ADJECTIVES[time])} scene "
                f"{place()} with {object_phrase(g1, rng)} {pos(g1)}",
        lambda: f"{object_phrase(g1, rng)} {pos(g1)} {second()} {place()}",
        lambda: f"{when()}, {object_phrase(g1, rng)} {_verb(g1)} {pos(g1)} {place()}",
        lambda: f"there {_is_are(g1)} {object_phrase(g1, rng)} {pos(g1)} {place()} {sky()}",
        lambda: f"{_pick(rng, SCENE_NOUNS[kind])} {when()} with {object_phrase(g1, rng)} {ving(g1)} {pos(g1)}",
        lambda: f"a picture of {_pick(rng, SCENE_NOUNS[kind])} with {object_phrase(g1, rng)} {pos(g1)}",
        lambda: f"{object_phrase(g1, rng)} {pos(g1)} {second()} {when()}",
    )
    captions: list[str] = []
    order = rng.permutation(len(templates))
    for attempt in range(4 * len(templates)):
        text = _finish(templates[order[attempt % len(templates)]]())
        if MIN_WORDS <= len(text.split()) <= MAX_WORDS and text not in captions:
            captions.append(text)
        if len(captions) == n:
            break
    if len(captions) < min(n, 5):  # pragma: no cover - the templates give far more than five wordings
        raise RuntimeError(f"only {len(captions)} distinct captions for {spec}")
    return captions
