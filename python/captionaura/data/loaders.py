"""Real caption datasets as lists of :class:`CaptionExample` (images loaded lazily, captions grouped per image).

Layouts read:

* Instagram, the Kaggle "Instagram Images with Captions" dataset: ``instagram_data/captions_csv.csv`` with the
  header ``Sr No,Image File,Caption``, ``Image File`` a path relative to the CSV's folder without extension
  (``img/insta1`` for ``img/insta1.jpg``); its second part ``instagram_data2/captions_csv2.csv`` has the same
  three columns but no header row (``header=False``).
* COCO captions JSON (``captions_train2017.json``): ``images`` (``id``, ``file_name``) and ``annotations``
  (``image_id``, ``caption``).
* Flickr8k's ``Flickr8k.token.txt``: lines ``<name>.jpg#<k><TAB><caption>``.
* A folder of images with ``captions.csv`` (``file_name,caption``; more captions as ``caption_0``,
  ``caption_1`` ... columns or repeated rows) or ``captions.jsonl`` (``{"file_name": ..., "caption": ...}`` or
  ``"captions": [...]`` per line).

Bad input raises a clear error: FileNotFoundError for a missing file or image, ValueError for missing columns or
keys, malformed lines, an image without captions (unless ``skip_empty=True``), an unreadable image (at once
with ``verify=True``, else when ``.image`` is first read, as :class:`captionaura.ImageLoadError`). Real dumps
have flaws (Flickr8k's token file names a few images that are not in the archive, some Instagram rows have no
caption): ``skip_missing=True`` and ``skip_empty=True`` drop those entries instead.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from captionaura.data.example import CaptionExample
from captionaura.image import ImageLoadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
PathLike = str | os.PathLike[str]


def _require_file(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _require_dir(path: PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found (or not a folder): {path}")
    return path


def _verify_image(path: Path) -> None:
    """Read the image header (no pixel decoding), so an unreadable file fails while loading the dataset."""
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as err:  # Pillow raises many types for bad files: UnidentifiedImageError, SyntaxError ...
        raise ImageLoadError(f"unreadable image {path}: {err}") from None


def _build(groups: dict[Path, list[str]], source: str, skip_empty: bool, skip_missing: bool,
           verify: bool) -> list[CaptionExample]:
    examples = []
    for path, captions in groups.items():
        captions = [c.strip() for c in captions if c and c.strip()]
        if not captions:
            if skip_empty:
                continue
            raise ValueError(f"{source}: image {path} has an empty caption list (pass skip_empty=True to drop it)")
        if not path.is_file():
            if skip_missing:
                continue
            raise FileNotFoundError(f"{source} references a missing image: {path} (pass skip_missing=True to "
                                    "drop such entries)")
        if verify:
            _verify_image(path)
        examples.append(CaptionExample(captions=captions, path=path, image_id=path.name))
    if not examples:
        raise ValueError(f"{source}: no captioned images")
    return examples


def _resolve_image(root: Path, name: str) -> Path:
    """``root / name``, or with an image extension appended when ``name`` has none (Kaggle Instagram)."""
    path = root / name
    if path.suffix.lower() in IMAGE_EXTENSIONS or path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        if path.with_name(path.name + ext).is_file():
            return path.with_name(path.name + ext)
    return path.with_name(path.name + ".jpg")  # reported as missing by _build


def _read_csv(path: Path, header: bool, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of ``path`` as dicts; with ``header=False`` the columns are ``columns`` by position."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            first = next(reader)
        except StopIteration:
            raise ValueError(f"{path}: empty CSV file") from None
        names = [c.strip() for c in first] if header else list(columns)
        rows = [] if header else [first]
        rows.extend(reader)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; found {names}")
    out = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(names):
            row = row + [""] * (len(names) - len(row))
        out.append(dict(zip(names, row)))
    return out


def load_instagram(csv_path: PathLike, image_root: PathLike | None = None, *, header: bool = True,
                   skip_empty: bool = False, skip_missing: bool = False,
                   verify: bool = False) -> list[CaptionExample]:
    """The Kaggle "Instagram Images with Captions" layout: columns ``Image File`` and ``Caption``.

    ``image_root`` defaults to the CSV's folder; ``header=False`` reads the headerless ``captions_csv2.csv``
    (columns ``Sr No, Image File, Caption`` by position). Rows naming the same image are grouped.
    """
    path = _require_file(csv_path, "Instagram captions CSV")
    root = _require_dir(image_root if image_root is not None else path.parent, "Instagram image folder")
    columns = ("Sr No", "Image File", "Caption") if not header else ("Image File", "Caption")
    groups: dict[Path, list[str]] = {}
    for row in _read_csv(path, header, columns):
        name = row["Image File"].strip()
        if not name:
            raise ValueError(f"{path}: a row has an empty 'Image File' (caption {row['Caption'][:40]!r})")
        groups.setdefault(_resolve_image(root, name), []).append(row["Caption"])
    return _build(groups, str(path), skip_empty, skip_missing, verify)


def load_coco(annotations_path: PathLike, image_dir: PathLike, *, skip_empty: bool = False,
              skip_missing: bool = False, verify: bool = False) -> list[CaptionExample]:
    """COCO captions JSON: ``images`` (``id``, ``file_name``) and ``annotations`` (``image_id``, ``caption``)."""
    path = _require_file(annotations_path, "COCO captions JSON")
    root = _require_dir(image_dir, "COCO image folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images' and 'annotations'")
    missing = [k for k in ("images", "annotations") if k not in data]
    if missing:
        raise ValueError(f"{path}: missing key(s) {', '.join(repr(k) for k in missing)}")
    by_id: dict[object, Path] = {}
    for i, image in enumerate(data["images"]):
        lacking = [k for k in ("id", "file_name") if k not in image]
        if lacking:
            raise ValueError(f"{path}: images[{i}] lacks {', '.join(repr(k) for k in lacking)}")
        by_id[image["id"]] = root / image["file_name"]
    groups: dict[Path, list[str]] = {p: [] for p in by_id.values()}
    for i, ann in enumerate(data["annotations"]):
        lacking = [k for k in ("image_id", "caption") if k not in ann]
        if lacking:
            raise ValueError(f"{path}: annotations[{i}] lacks {', '.join(repr(k) for k in lacking)}")
        if ann["image_id"] not in by_id:
            raise ValueError(f"{path}: annotations[{i}] refers to image_id {ann['image_id']!r}, not in 'images'")
        groups[by_id[ann["image_id"]]].append(str(ann["caption"]))
    return _build(groups, str(path), skip_empty, skip_missing, verify)


def load_flickr8k(token_path: PathLike, image_dir: PathLike, *, skip_empty: bool = False,
                  skip_missing: bool = False, verify: bool = False) -> list[CaptionExample]:
    """Flickr8k's ``Flickr8k.token.txt``: ``<name>.jpg#<k><TAB><caption>`` per line, five per image."""
    path = _require_file(token_path, "Flickr8k token file")
    root = _require_dir(image_dir, "Flickr8k image folder")
    groups: dict[Path, list[str]] = {}
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            key, tab, caption = line.rstrip("\n").partition("\t")
            name, hash_, k = key.rpartition("#")
            if not tab or not hash_ or not k.strip().isdigit() or not name:
                raise ValueError(f"{path}:{lineno}: expected '<image>#<k><TAB><caption>', got {line.strip()[:80]!r}")
            groups.setdefault(root / name, []).append(caption)
    return _build(groups, str(path), skip_empty, skip_missing, verify)


def _folder_rows_jsonl(path: Path) -> Iterable[tuple[str, list[str]]]:
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise ValueError(f"{path}:{lineno}: missing key 'file_name'")
            if "caption" not in row and "captions" not in row:
                raise ValueError(f"{path}:{lineno}: missing key 'caption' (or 'captions')")
            captions = row.get("captions", [row.get("caption")])
            if isinstance(captions, str) or not isinstance(captions, list):
                raise ValueError(f"{path}:{lineno}: 'captions' must be a list of strings")
            yield str(row["file_name"]), [str(c) for c in captions if c is not None]


def _folder_rows_csv(path: Path) -> Iterable[tuple[str, list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        names = next(csv.reader(f), None) or []
    names = [n.strip() for n in names]
    caption_cols = [n for n in names if n == "caption" or n.startswith("caption_")]
    missing = [c for c in ("file_name",) if c not in names] + ([] if caption_cols else ["caption"])
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; found {names}")
    for row in _read_csv(path, True, ("file_name",)):
        yield row["file_name"], [row[c] for c in caption_cols]


def load_folder(folder: PathLike, *, skip_empty: bool = False, skip_missing: bool = False,
                verify: bool = False) -> list[CaptionExample]:
    """A folder of images with ``captions.csv`` or ``captions.jsonl`` naming each image's ``file_name``."""
    root = _require_dir(folder, "image folder")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.rglob("*") if p.is_file()):
        raise ValueError(f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
    if (root / "captions.jsonl").is_file():
        source, rows = root / "captions.jsonl", _folder_rows_jsonl(root / "captions.jsonl")
    elif (root / "captions.csv").is_file():
        source, rows = root / "captions.csv", _folder_rows_csv(root / "captions.csv")
    else:
        raise FileNotFoundError(f"image folder {root} has no captions.csv or captions.jsonl")
    groups: dict[Path, list[str]] = {}
    for name, captions in rows:
        if not name.strip():
            raise ValueError(f"{source}: a row has an empty 'file_name'")
        groups.setdefault(root / name.strip(), []).extend(captions)
    return _build(groups, str(source), skip_empty, skip_missing, verify)
