"""AuraScenes: a procedural, seeded, offline image-caption world.

Every example is a pure function of ``(seed, index)``: a :class:`SceneSpec` is sampled (scene kind, time of
day, weather, one or two groups of objects with a colour, a count of 1-3, a position and a size), rendered
with Pillow drawing into an RGB image, and described by at least five reference captions written from
templates and synonyms. Captions only state what the spec says and the renderer draws (counts, colours,
positions, time, weather), so a small captioning model can learn to read them off the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SCENE_KINDS = ("beach", "city", "forest", "mountains", "snow", "night sky", "desert", "lake", "field", "harbour")
TIMES_OF_DAY = ("morning", "midday", "sunset", "night")
WEATHERS = ("clear", "cloudy", "rainy", "snowy", "foggy")
POSITIONS = ("left", "centre", "right")
SIZES = ("small", "large")
TIME_WEIGHTS = (0.3, 0.35, 0.2, 0.15)  # morning, midday, sunset, night

#: Object colours: names and the RGB the renderer paints (kept far apart so they stay nameable at 128x128).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "blue": (30, 70, 230), "green": (30, 170, 40), "yellow": (250, 220, 20),
    "orange": (250, 130, 10), "purple": (140, 40, 190), "pink": (250, 120, 190), "white": (245, 245, 245),
    "black": (20, 20, 20), "brown": (120, 70, 30),
}

#: Which objects each scene may hold.
SCENE_OBJECTS: dict[str, tuple[str, ...]] = {
    "beach": ("boat", "umbrella", "person", "dog", "bird", "balloon"),
    "city": ("car", "house", "person", "dog", "balloon", "umbrella"),
    "forest": ("tree", "tent", "person", "dog", "bird"),
    "mountains": ("tent", "tree", "bird", "balloon", "person"),
    "snow": ("tree", "house", "person", "dog", "tent"),
    "night sky": ("house", "tree", "tent", "balloon"),
    "desert": ("tent", "car", "person", "balloon", "bird"),
    "lake": ("boat", "tree", "house", "bird", "person"),
    "field": ("tree", "house", "dog", "person", "balloon", "car"),
    "harbour": ("boat", "house", "bird", "person", "balloon"),
}

#: Weather each scene allows (snow falls only where it is cold; the night sky is clear).
SCENE_WEATHER: dict[str, tuple[str, ...]] = {
    "beach": ("clear", "cloudy", "rainy", "foggy"),
    "city": ("clear", "cloudy", "rainy", "foggy", "snowy"),
    "forest": ("clear", "cloudy", "rainy", "foggy", "snowy"),
    "mountains": ("clear", "cloudy", "foggy", "snowy"),
    "snow": ("clear", "cloudy", "snowy", "foggy"),
    "night sky": ("clear",),
    "desert": ("clear", "cloudy"),
    "lake": ("clear", "cloudy", "rainy", "foggy"),
    "field": ("clear", "cloudy", "rainy", "foggy"),
    "harbour": ("clear", "cloudy", "rainy", "foggy"),
}

SKY_OBJECTS = {"bird", "balloon"}
WATER_OBJECTS = {"boat"}
WATER_SCENES = {"beach": (0.56, 0.70), "lake": (0.58, 0.84), "harbour": (0.56, 1.0)}
HORIZON = 0.56

#: Object width and height in units of the size's scale (a fraction of the image side).
OBJECT_SHAPE = {"boat": (0.9, 0.7), "tree": (0.75, 1.3), "house": (0.85, 0.95), "car": (0.9, 0.55),
                "balloon": (0.7, 1.05), "bird": (0.9, 0.6), "dog": (0.9, 0.7), "person": (0.5, 1.3),
                "umbrella": (0.9, 1.0), "tent": (0.9, 0.8)}
SIZE_SCALE = {"small": 0.09, "large": 0.16}


@dataclass(frozen=True)
class SceneObject:
    """One group of identical objects: ``count`` (1-3) ``colour`` ``name``s at ``position``."""

    name: str
    colour: str
    count: int
    position: str
    size: str

    @property
    def plural(self) -> str:
        return PLURALS.get(self.name, self.name + "s")


@dataclass(frozen=True)
class SceneSpec:
    """Ground truth of one AuraScenes image."""

    kind: str
    time_of_day: str
    weather: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------
def _background_rgb(kind: str, time: str, where: str) -> np.ndarray:
    """The colour behind an object placed in the sky, on water or on the ground (for the contrast check)."""
    if where == "sky":
        return np.array(SKY_GRADIENTS[time][1], float)
    if where == "water":
        return np.array(WATER_RGB, float) * LIGHT[time]
    return np.array(GROUND_RGB[kind], float) * LIGHT[time]


def _object_place(name: str) -> str:
    if name in SKY_OBJECTS:
        return "sky"
    if name in WATER_OBJECTS:
        return "water"
    return "ground"


def sample_scene(rng: np.random.Generator, kind: str | None = None) -> SceneSpec:
    """Draw a scene: kind (or the one given), time, weather and one or two object groups at distinct places."""
    kind = kind if kind is not None else SCENE_KINDS[rng.integers(len(SCENE_KINDS))]
    if kind not in SCENE_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; choose one of {SCENE_KINDS}")
    time = "night" if kind == "night sky" else TIMES_OF_DAY[rng.choice(len(TIMES_OF_DAY), p=TIME_WEIGHTS)]
    weathers = SCENE_WEATHER[kind] if time != "night" else ("clear", "cloudy") if kind != "night sky" else ("clear",)
    weather = weathers[rng.integers(len(weathers))]
    n_groups = 1 + int(rng.random() < 0.6)
    names = list(rng.permutation(SCENE_OBJECTS[kind])[:n_groups])
    positions = list(rng.permutation(POSITIONS)[:n_groups])
    groups = []
    for name, position in zip(names, positions):
        count = int(rng.integers(1, 4))
        size = "small" if count == 3 else SIZES[rng.integers(2)]
        place = _object_place(name)
        backs = [_background_rgb(kind, time, place)]
        if place == "ground" and kind in ("lake", "harbour"):  # people on the pier, trees by the shore
            backs.append(_background_rgb(kind, time, "water"))
        backs += [np.array(rgb, float) * LIGHT[time] for rgb in SCENERY_RGB.get(kind, ())]
        allowed = [c for c, rgb in COLOURS.items()
                   if min(np.abs(np.array(rgb, float) - back).sum() for back in backs) > 200
                   and c not in NATURAL_CLASH.get(name, ())
                   and not (c == "white" and weather in ("rainy", "snowy"))]  # white reads as rain or snow
        colour = allowed[rng.integers(len(allowed))]
        groups.append(SceneObject(str(name), colour, count, str(position), size))
    return SceneSpec(kind, time, weather, tuple(groups))


# Colours that would read as something else: a white balloon or bird as a cloud, a white shirt as a snowman,
# a black tree as a shadow.
NATURAL_CLASH = {"balloon": ("white",), "bird": ("white",), "tree": ("black",), "person": ("white",)}

# ---------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------
SKY_GRADIENTS = {  # (top, horizon)
    "morning": ((110, 170, 235), (250, 215, 170)),
    "midday": ((40, 110, 220), (150, 200, 245)),
    "sunset": ((60, 40, 110), (250, 120, 50)),
    "night": ((5, 8, 30), (25, 35, 80)),
}
LIGHT = {"morning": 0.95, "midday": 1.0, "sunset": 0.75, "night": 0.35}
WATER_RGB = (40, 110, 170)
GROUND_RGB = {
    "beach": (235, 210, 150), "city": (95, 95, 100), "forest": (30, 90, 35), "mountains": (110, 125, 90),
    "snow": (235, 240, 248), "night sky": (40, 60, 40), "desert": (225, 180, 100), "lake": (70, 150, 60),
    "field": (120, 190, 70), "harbour": (130, 120, 110),
}

#: Scenery drawn behind objects besides sky, water and ground (buildings, road, pier, hills, pine trees).
SCENERY_RGB = {"city": ((70, 75, 90), (60, 60, 65)), "harbour": ((110, 80, 50),), "forest": ((20, 70, 30),),
               "mountains": ((120, 120, 135),), "night sky": ((30, 50, 30),), "desert": ((210, 160, 85),)}


def _lerp(a, b, t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def _shade(rgb, factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in rgb)


class _Canvas:
    """Pillow drawing in normalised coordinates (0..1 on both axes)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.img = Image.new("RGB", (size, size))
        self.draw = ImageDraw.Draw(self.img)

    def px(self, v: float) -> int:
        return int(round(v * self.size))

    def box(self, x0, y0, x1, y1) -> list[int]:
        return [self.px(x0), self.px(y0), max(self.px(x1), self.px(x0)), max(self.px(y1), self.px(y0))]

    def rect(self, x0, y0, x1, y1, fill) -> None:
        self.draw.rectangle(self.box(x0, y0, x1, y1), fill=fill)

    def ellipse(self, x0, y0, x1, y1, fill) -> None:
        self.draw.ellipse(self.box(x0, y0, x1, y1), fill=fill)

    def poly(self, pts, fill) -> None:
        self.draw.polygon([(self.px(x), self.px(y)) for x, y in pts], fill=fill)

    def line(self, pts, fill, width: float) -> None:
        self.draw.line([(self.px(x), self.px(y)) for x, y in pts], fill=fill, width=max(1, self.px(width)))


@dataclass
class Look:
    """The continuous rendering parameters a scene's time and weather stand for (videos interpolate them)."""

    sky_top: tuple[float, float, float]
    sky_horizon: tuple[float, float, float]
    light: float  # multiplies ground and scenery colours
    sun: tuple[float, float, float, tuple[int, int, int]] | None  # x, y, radius, colour
    stars: float = 0.0  # fraction of the star field shown
    moon: bool = False
    lit_windows: bool = False
    clouds: float = 0.0  # cloud banks shown, 0..1
    dark_clouds: bool = False
    precipitation: str = "clear"  # "rainy" or "snowy" draw streaks or flakes
    precipitation_amount: float = 1.0
    fog: float = 0.0  # blend weight of the fog veil

    @classmethod
    def of(cls, spec: SceneSpec) -> Look:
        time, weather = spec.time_of_day, spec.weather
        top, horizon = SKY_GRADIENTS[time]
        return cls(sky_top=top, sky_horizon=horizon, light=LIGHT[time], sun=SUNS.get(time),
                   stars=(1.0 if spec.kind == "night sky" else 0.35) if time == "night" else 0.0,
                   moon=time == "night", lit_windows=time == "night",
                   clouds=1.0 if weather in ("cloudy", "rainy") else 0.0, dark_clouds=weather == "rainy",
                   precipitation=weather if weather in ("rainy", "snowy") else "clear",
                   fog=0.38 if weather == "foggy" else 0.0)


SUNS = {"morning": (0.2, 0.3, 0.07, (255, 235, 150)), "midday": (0.5, 0.1, 0.06, (255, 250, 210)),
        "sunset": (0.5, 0.5, 0.09, (255, 90, 30))}
FOG_RGB = (200, 202, 208)
N_STARS = 70


def _draw_sky(cv: _Canvas, look: Look, rng: np.random.Generator) -> None:
    n = cv.px(HORIZON) + 1
    for y in range(n):
        cv.draw.line([(0, y), (cv.size, y)], fill=_lerp(look.sky_top, look.sky_horizon, y / max(n - 1, 1)))
    stars = rng.random((N_STARS, 3))  # drawn always, so the scenery after it is the same with or without stars
    for x, y, r in stars[:int(round(look.stars * N_STARS))]:
        y, r = y * (HORIZON - 0.05), 0.004 + 0.004 * r
        cv.ellipse(x - r, y - r, x + r, y + r, (255, 255, 230))
    if look.moon:
        cv.ellipse(0.72, 0.07, 0.84, 0.19, (240, 240, 215))
        cv.ellipse(0.755, 0.05, 0.865, 0.16, _lerp(look.sky_top, look.sky_horizon, 0.1))  # crescent bite
    if look.sun is not None:
        x, y, r, rgb = look.sun
        cv.ellipse(x - r, y - r, x + r, y + r, rgb)


def _draw_ground(cv: _Canvas, kind: str, look: Look, rng: np.random.Generator) -> None:
    light = look.light
    ground = _shade(GROUND_RGB[kind], light)
    if kind == "mountains":
        for x0, w, h in ((-0.1, 0.6, 0.3), (0.3, 0.6, 0.36), (0.65, 0.55, 0.26)):
            peak = (x0 + w / 2, HORIZON - h)
            cv.poly([(x0, HORIZON + 0.01), peak, (x0 + w, HORIZON + 0.01)], _shade((120, 120, 135), light))
            cv.poly([peak, (peak[0] - w * 0.12, peak[1] + h * 0.25), (peak[0] + w * 0.12, peak[1] + h * 0.25)],
                    _shade((245, 245, 250), light))
    if kind == "city":
        x = -0.02
        while x < 1.0:
            w, h = 0.07 + 0.06 * rng.random(), 0.12 + 0.2 * rng.random()
            cv.rect(x, HORIZON - h, x + w, HORIZON, _shade((70, 75, 90), light))
            for wy in np.arange(HORIZON - h + 0.02, HORIZON - 0.02, 0.04):
                for wx in np.arange(x + 0.015, x + w - 0.02, 0.03):
                    lit = (255, 230, 120) if rng.random() < 0.6 and look.lit_windows else _shade((150, 170, 190), light)
                    cv.rect(wx, wy, wx + 0.012, wy + 0.015, lit)
            x += w + 0.005
    if kind == "forest":
        for i in range(14):
            x = i / 13 + 0.03 * (rng.random() - 0.5)
            cv.poly([(x - 0.05, HORIZON + 0.01), (x, HORIZON - 0.16 - 0.06 * rng.random()), (x + 0.05, HORIZON + 0.01)],
                    _shade((20, 70, 30), light))
    if kind == "desert":
        cv.rect(0, HORIZON, 1, 1, ground)
        for x0 in (-0.3, 0.35):
            cv.ellipse(x0, HORIZON - 0.05, x0 + 0.9, HORIZON + 0.12, _shade((210, 160, 85), light))
        return
    if kind == "night sky":
        cv.rect(0, HORIZON, 1, 1, ground)
        cv.ellipse(-0.3, HORIZON - 0.08, 0.6, HORIZON + 0.2, _shade((30, 50, 30), 1.0))
        return
    cv.rect(0, HORIZON, 1, 1, ground)
    if kind in WATER_SCENES:
        y0, y1 = WATER_SCENES[kind]
        cv.rect(0, y0, 1, y1, _shade(WATER_RGB, light))
        for _ in range(12):  # ripples
            x, y = rng.random(), y0 + (y1 - y0) * rng.random()
            cv.line([(x, y), (x + 0.05, y)], _shade((120, 170, 210), light), 0.006)
        if kind == "harbour":
            cv.rect(0.0, 0.88, 1.0, 0.93, _shade((110, 80, 50), light))  # pier
            for px in np.arange(0.05, 1.0, 0.15):
                cv.rect(px, 0.93, px + 0.02, 1.0, _shade((90, 65, 40), light))
    if kind == "city":
        cv.rect(0, 0.8, 1, 0.88, _shade((60, 60, 65), light))  # road
        for x in np.arange(0.02, 1, 0.12):
            cv.rect(x, 0.835, x + 0.06, 0.845, _shade((230, 230, 230), light))
    if kind == "field":
        for y in np.arange(HORIZON + 0.04, 1, 0.06):
            cv.line([(0, y), (1, y)], _shade((100, 165, 60), light), 0.006)
    if kind == "snow":
        cv.ellipse(-0.2, HORIZON - 0.06, 0.5, HORIZON + 0.08, _shade((250, 250, 255), light))


def _draw_object(cv: _Canvas, name: str, cx: float, base: float, s: float, rgb) -> None:
    """One object whose bottom centre is at (cx, base), scale ``s``."""
    w, h = OBJECT_SHAPE[name][0] * s, OBJECT_SHAPE[name][1] * s
    x0, x1, y0 = cx - w / 2, cx + w / 2, base - h
    dark = _shade(rgb, 0.6)
    if name == "boat":
        cv.poly([(x0, base - h * 0.5), (x1, base - h * 0.5), (x1 - w * 0.15, base), (x0 + w * 0.15, base)], rgb)
        cv.rect(cx - w * 0.03, y0, cx + w * 0.03, base - h * 0.5, (90, 60, 30))
        cv.poly([(cx + w * 0.05, y0), (cx + w * 0.05, base - h * 0.55), (cx + w * 0.4, base - h * 0.55)], (250, 250, 250))
    elif name == "tree":
        cv.rect(cx - w * 0.1, base - h * 0.35, cx + w * 0.1, base, (100, 60, 25))
        cv.ellipse(x0, y0, x1, base - h * 0.25, rgb)
    elif name == "house":
        cv.rect(x0 + w * 0.05, y0 + h * 0.4, x1 - w * 0.05, base, rgb)
        cv.poly([(x0 - w * 0.05, y0 + h * 0.42), (cx, y0), (x1 + w * 0.05, y0 + h * 0.42)], dark)
        cv.rect(cx - w * 0.1, base - h * 0.3, cx + w * 0.1, base, (70, 45, 25))
    elif name == "car":
        cv.rect(x0, base - h * 0.75, x1, base - h * 0.2, rgb)
        cv.poly([(x0 + w * 0.2, base - h * 0.75), (x0 + w * 0.32, y0), (x1 - w * 0.3, y0),
                 (x1 - w * 0.15, base - h * 0.75)], rgb)
        cv.rect(x0 + w * 0.36, y0 + h * 0.1, x1 - w * 0.34, base - h * 0.78, (180, 220, 240))
        for wx in (x0 + w * 0.25, x1 - w * 0.25):
            cv.ellipse(wx - h * 0.22, base - h * 0.44, wx + h * 0.22, base, (25, 25, 25))
    elif name == "balloon":
        cv.ellipse(x0, y0, x1, y0 + h * 0.72, rgb)
        cv.line([(cx - w * 0.2, y0 + h * 0.68), (cx - w * 0.1, base - h * 0.1)], (60, 40, 20), 0.004)
        cv.line([(cx + w * 0.2, y0 + h * 0.68), (cx + w * 0.1, base - h * 0.1)], (60, 40, 20), 0.004)
        cv.rect(cx - w * 0.13, base - h * 0.14, cx + w * 0.13, base, (120, 75, 35))
    elif name == "bird":
        cv.poly([(x0, y0), (cx, base - h * 0.6), (cx, base)], rgb)
        cv.poly([(x1, y0), (cx, base - h * 0.6), (cx, base)], rgb)
        cv.ellipse(cx - w * 0.2, base - h * 0.6, cx + w * 0.2, base, rgb)
    elif name == "dog":
        cv.ellipse(x0 + w * 0.1, y0 + h * 0.3, x1 - w * 0.15, base - h * 0.3, rgb)
        cv.ellipse(x1 - w * 0.32, y0, x1, y0 + h * 0.45, rgb)
        for lx in (x0 + w * 0.2, x0 + w * 0.35, x1 - w * 0.4, x1 - w * 0.28):
            cv.rect(lx, base - h * 0.4, lx + w * 0.08, base, rgb)
    elif name == "person":
        skin = (230, 185, 150)
        cv.ellipse(cx - w * 0.35, y0, cx + w * 0.35, y0 + h * 0.24, skin)
        cv.rect(x0, y0 + h * 0.25, x1, base - h * 0.35, rgb)
        cv.rect(x0 + w * 0.08, base - h * 0.36, cx - w * 0.05, base, (40, 40, 70))
        cv.rect(cx + w * 0.05, base - h * 0.36, x1 - w * 0.08, base, (40, 40, 70))
    elif name == "umbrella":
        cv.rect(cx - w * 0.04, y0 + h * 0.3, cx + w * 0.04, base, (90, 90, 90))
        cv.draw.pieslice(cv.box(x0, y0, x1, y0 + h * 0.7), 180, 360, fill=rgb)
    elif name == "tent":
        cv.poly([(x0, base), (cx, y0), (x1, base)], rgb)
        cv.poly([(cx - w * 0.13, base), (cx, y0 + h * 0.45), (cx + w * 0.13, base)], dark)
    else:  # pragma: no cover - SCENE_OBJECTS only names drawable objects
        raise ValueError(f"no drawing for object {name!r}")


def _slot_x(position: str, count: int, k: int) -> float:
    centre = {"left": 1 / 6, "centre": 0.5, "right": 5 / 6}[position]
    spacing = {1: 0.0, 2: 0.18, 3: 0.115}[count]  # leaves 4+ pixel gaps at 128
    return centre + (k - (count - 1) / 2) * spacing


def _object_base(kind: str, name: str, k: int) -> float:
    """The baseline (bottom y) of the k-th object of a group; sky objects bob a little so they don't align."""
    if name == "bird":
        return 0.33 + 0.04 * (k % 2)
    if name == "balloon":
        return 0.45 - 0.04 * (k % 2)
    if name == "boat":
        y0, y1 = WATER_SCENES.get(kind, (HORIZON, 0.8))
        return y0 + 0.75 * (y1 - y0) if kind != "harbour" else 0.8
    if kind == "city" and name == "car":
        return 0.87
    if kind == "harbour":
        return 0.9
    return 0.9 if kind not in WATER_SCENES else 0.96


def _draw_clouds(cv: _Canvas, look: Look, rng: np.random.Generator) -> None:
    """Cloud banks (``look.clouds`` of the five): light for a cloudy sky, dark grey for rain."""
    cloud = _shade((150, 150, 160) if look.dark_clouds else (225, 225, 232), max(look.light, 0.5))
    banks = ((0.15, 0.08), (0.45, 0.05), (0.8, 0.09), (0.62, 0.15), (0.3, 0.16))
    jitter = rng.random(len(banks))
    for (cx, cy), dx0 in list(zip(banks, jitter))[:int(round(look.clouds * len(banks)))]:
        cx += 0.04 * (dx0 - 0.5)
        for dx, dy, r in ((-0.07, 0.01, 0.06), (0.0, -0.02, 0.08), (0.08, 0.01, 0.06)):
            cv.ellipse(cx + dx - r, cy + dy - r * 0.7, cx + dx + r, cy + dy + r * 0.7, cloud)


def _draw_precipitation(cv: _Canvas, weather: str, rng: np.random.Generator, amount: float = 1.0) -> None:
    """Rain streaks or snowflakes over the whole picture; ``amount`` scales how many (videos ramp it up)."""
    if weather == "rainy":
        for _ in range(int(cv.size * 0.9 * amount)):
            x, y = rng.random(), rng.random()
            cv.line([(x, y), (x - 0.015, y + 0.05)], (190, 200, 225), 0.004)
    elif weather == "snowy":
        for _ in range(int(cv.size * 1.2 * amount)):
            x, y, r = rng.random(), rng.random(), 0.004 + 0.005 * rng.random()
            cv.ellipse(x - r, y - r, x + r, y + r, (252, 252, 255))


#: One drawn object: name, centre x, baseline y, scale, RGB.
Placement = tuple[str, float, float, float, tuple[int, int, int]]


def placements(spec: SceneSpec) -> list[Placement]:
    """Where the renderer draws each object of ``spec``: ground objects first, sky objects on top."""
    out = []
    for group in sorted(spec.objects, key=lambda g: g.name in SKY_OBJECTS):
        for k in range(group.count):
            out.append((group.name, _slot_x(group.position, group.count, k), _object_base(spec.kind, group.name, k),
                        SIZE_SCALE[group.size], COLOURS[group.colour]))
    return out


def render(kind: str, look: Look, objects: list[Placement], size: int, scenery_rng: np.random.Generator,
           weather_rng: np.random.Generator) -> np.ndarray:
    """Draw a scene of ``kind`` under ``look`` with ``objects``. ``scenery_rng`` places the fixed details
    (stars, ripples, buildings), ``weather_rng`` the rain, snow and grain (fresh per video frame)."""
    cv = _Canvas(size)
    _draw_sky(cv, look, scenery_rng)
    _draw_ground(cv, kind, look, scenery_rng)
    _draw_clouds(cv, look, scenery_rng)
    for name, cx, base, scale, rgb in objects:
        _draw_object(cv, name, cx, base, scale, rgb)
    _draw_precipitation(cv, look.precipitation, weather_rng, look.precipitation_amount)
    img = cv.img
    if look.fog > 0:
        img = Image.blend(img, Image.new("RGB", img.size, FOG_RGB), look.fog)
    arr = np.asarray(img, dtype=np.int16)
    noise = weather_rng.integers(-4, 5, size=arr.shape, dtype=np.int16)  # sensor-like grain
    return np.clip(arr + noise, 0, 255).astype(np.uint8)


def render_scene(spec: SceneSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``spec`` into a (size, size, 3) uint8 image; ``rng`` only places scenery details (stars, ripples)."""
    return render(spec.kind, Look.of(spec), placements(spec), size, rng, rng)


PLURALS = {"person": "people", "bird": "birds", "umbrella": "umbrellas"}
