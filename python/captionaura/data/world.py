"""`AuraScenes`: the seeded world that hands out captioned images, splits, users and videos."""

from __future__ import annotations

import functools

import numpy as np
from tqdm.auto import tqdm

from captionaura.data.captions import reference_captions
from captionaura.data.example import CaptionExample
from captionaura.data.scenes import SCENE_KINDS, SceneSpec, render_scene, sample_scene
from captionaura.data.users import NAMES, STYLES, User, styled_example
from captionaura.data.videos import Video, make_video

#: Held-out examples start at this index, so public and held-out index ranges never meet.
HELDOUT_OFFSET = 1_000_000_000
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 128, 512
#: Users' examples live above this index, in blocks of EXAMPLES_PER_USER per (seed, user).
USER_OFFSET = 2_000_000_000
USERS_PER_SEED, EXAMPLES_PER_USER = 10_000, 100_000
SIGNATURE_SUFFIXES = ("snaps", "shots", "diary", "moments")


class AuraScenes:
    """A procedural image-caption dataset: ``example(i)`` is a pure function of ``(seed, i)``.

    >>> world = AuraScenes(seed=0, image_size=128)
    >>> ex = world.example(0)          # CaptionExample(image (128, 128, 3) uint8, >= 5 captions, scene)
    """

    def __init__(self, seed: int = 0, image_size: int = 128, captions_per_image: int = 6) -> None:
        if not isinstance(image_size, (int, np.integer)) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {image_size!r}")
        if captions_per_image < 5:
            raise ValueError(f"captions_per_image must be at least 5, got {captions_per_image}")
        if int(seed) < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.seed = int(seed)
        self.image_size = int(image_size)
        self.captions_per_image = int(captions_per_image)

    def _rng(self, stream: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, int(index)])

    def _stream(self, kind: str | None) -> int:
        """Independent random streams for unconstrained examples (0) and for each forced scene kind."""
        if kind is None:
            return 0
        if kind not in SCENE_KINDS:
            raise ValueError(f"unknown scene kind {kind!r}; choose one of {SCENE_KINDS}")
        return 1 + SCENE_KINDS.index(kind)

    def scene(self, index: int, kind: str | None = None) -> SceneSpec:
        """The ground truth of example ``index`` (``kind`` forces the scene kind, as users' preferences do)."""
        if index < 0:
            raise ValueError(f"example index must be non-negative, got {index}")
        return sample_scene(self._rng(self._stream(kind), index), kind)

    def image(self, index: int, kind: str | None = None) -> np.ndarray:
        """The (image_size, image_size, 3) uint8 picture of example ``index``."""
        spec = self.scene(index, kind)
        return render_scene(spec, self.image_size, self._rng(100 + self._stream(kind), index))

    def example(self, index: int, kind: str | None = None, *, lazy: bool = False) -> CaptionExample:
        """Example ``index``: its image, reference captions and scene, identical on every call and machine.

        ``lazy=True`` draws the image whenever ``.image`` is read instead of holding it (for large splits).
        """
        spec = self.scene(index, kind)
        captions = reference_captions(spec, self._rng(200 + self._stream(kind), index), self.captions_per_image)
        image_id = (kind or "any", int(index))
        if lazy:
            return CaptionExample(captions=captions, scene=spec, image_id=image_id,
                                  loader=functools.partial(self.image, int(index), kind))
        return CaptionExample(image=self.image(index, kind), captions=captions, scene=spec, image_id=image_id)

    def examples(self, start: int, count: int, kind: str | None = None, *, lazy: bool = False,
                 progressbar: bool = False) -> list[CaptionExample]:
        """Examples ``start .. start + count - 1``."""
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        indices = tqdm(range(start, start + count), desc="AuraScenes", disable=not progressbar)
        return [self.example(i, kind, lazy=lazy) for i in indices]

    def public_split(self, n: int, *, lazy: bool = False, progressbar: bool = False) -> list[CaptionExample]:
        """The first ``n`` public examples (indices 0 ..), the pretraining data."""
        if not 0 <= n < HELDOUT_OFFSET:
            raise ValueError(f"public split size must be in 0..{HELDOUT_OFFSET - 1}, got {n}")
        return self.examples(0, n, lazy=lazy, progressbar=progressbar)

    def heldout_split(self, n: int, *, lazy: bool = False, progressbar: bool = False) -> list[CaptionExample]:
        """``n`` held-out examples from an index range the public split never reaches."""
        if n < 0:
            raise ValueError(f"held-out split size must be non-negative, got {n}")
        return self.examples(HELDOUT_OFFSET, n, lazy=lazy, progressbar=progressbar)

    def users(self, n_users: int, train_per_user: int, test_per_user: int, seed: int = 0, *,
              posts_per_user: int = 20, concentration: float = 0.3,
              styles: tuple[str, ...] = STYLES, progressbar: bool = False) -> list[User]:
        """``n_users`` users with their own style and scene preferences, and private examples.

        User ``u`` gets ``styles[u % len(styles)]`` (every style appears once there are as many users) and
        scene preferences drawn from a symmetric Dirichlet(``concentration``) over the scene kinds (small values:
        each user mostly sees a few kinds; the users' data are non-IID). Each example's kind is drawn from those
        preferences, its image comes from an index range of its own (disjoint from the public and held-out
        splits, and between users), and its captions are its references rewritten in the user's style.
        """
        if n_users < 1 or train_per_user < 0 or test_per_user < 0 or posts_per_user < 0:
            raise ValueError("n_users must be positive and the per-user counts non-negative, got "
                             f"{n_users}, {train_per_user}, {test_per_user}, {posts_per_user}")
        if n_users > USERS_PER_SEED:
            raise ValueError(f"at most {USERS_PER_SEED} users per seed, got {n_users}")
        per_user = train_per_user + test_per_user + posts_per_user
        if per_user > EXAMPLES_PER_USER:
            raise ValueError(f"at most {EXAMPLES_PER_USER} examples per user, got {per_user}")
        unknown = [s for s in styles if s not in STYLES]
        if unknown or not styles:
            raise ValueError(f"unknown caption style(s) {unknown}; choose from {STYLES}")
        if concentration <= 0:
            raise ValueError(f"concentration must be positive, got {concentration}")
        users = []
        for u in tqdm(range(n_users), desc="AuraScenes users", disable=not progressbar):
            rng = np.random.default_rng([self.seed, 300, int(seed), u])
            prefs = rng.dirichlet(np.full(len(SCENE_KINDS), float(concentration)))
            name = NAMES[u % len(NAMES)] + (str(u // len(NAMES)) if u >= len(NAMES) else "")
            style = styles[u % len(styles)]
            signature = f"#{name}{SIGNATURE_SUFFIXES[u % len(SIGNATURE_SUFFIXES)]}"
            base = USER_OFFSET + (int(seed) * USERS_PER_SEED + u) * EXAMPLES_PER_USER
            kinds = rng.choice(len(SCENE_KINDS), size=per_user, p=prefs)
            examples = [styled_example(self.example(base + j, SCENE_KINDS[k]), style, signature)
                        for j, k in enumerate(kinds)]
            posts = [ex.captions[0] for ex in examples[train_per_user + test_per_user:]]
            users.append(User(name=name, style=style,
                              preferences={k: float(p) for k, p in zip(SCENE_KINDS, prefs)},
                              train=examples[:train_per_user],
                              test=examples[train_per_user:train_per_user + test_per_user],
                              posts=posts, signature=signature))
        return users

    def video(self, kind: str, frames: int = 24, seed: int = 0, fps: float = 8.0) -> Video:
        """Clip number ``seed`` of ``kind`` ("sunset", "balloon", "rain", "boat"): frames at this world's image
        size, the ground-truth context sentence and a caption per frame."""
        return make_video(self.seed, kind, frames=frames, seed=seed, image_size=self.image_size, fps=fps)
