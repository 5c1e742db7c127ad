"""Client data on disk: one ``<client>.npz`` per client, read by `captionaura train` and by a Flower site.

The file holds the client's training examples and optionally held-out ones, as ``<split>.<index>.<field>``
arrays (split ``train`` or ``eval``, index 0, 1, ...):

- ``input_ids``, ``labels`` (int32, (T,); labels −100 where unscored) and optionally ``attention_mask``;
- for an image captioner's examples (`Lfm2VlModel.caption_example`) also the image's tiles:
  ``pixel_values`` (float32, (tiles, patches, patch_dim)), ``spatial_shapes`` (int64, (tiles, 2): each tile's
  patch rows and columns) and ``pixel_attention_mask`` (int32, (tiles, patches)).

Files are compressed (tiles come padded to the processor's patch budget), written to a temp file and
renamed, and validated from the arrays' headers when opened; examples are then read one at a time when
training asks for them (`ClientExamples`), so a client's photos are never all in memory.
`check_client_data` refuses, before any round, data that the model cannot train on.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from captionaura._io import atomic_write
from captionaura.federated.simulation import FederatedClient
from captionaura.model import Lfm2Model
from captionaura.trainer import PIXEL_KEYS, Example
from captionaura.vl import Lfm2VlModel

TOKEN_FIELDS = ("input_ids", "labels", "attention_mask")
FIELDS = TOKEN_FIELDS + PIXEL_KEYS
SPLITS = ("train", "eval")
_DTYPES = {"input_ids": np.int32, "labels": np.int32, "attention_mask": np.int32, "pixel_values": np.float32,
           "spatial_shapes": np.int64, "pixel_attention_mask": np.int32}

Shapes = dict[str, tuple[tuple[int, ...], np.dtype]]  # field -> (shape, dtype) of one example


def _check_example(where: str, shapes: Shapes) -> None:
    """One example's fields agree: token arrays of one length, all three pixel arrays or none, tiles that
    match their masks and spatial shapes, numbers of the right kind."""
    unknown = sorted(set(shapes) - set(FIELDS))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; a client data file holds {list(FIELDS)}")
    for field in ("input_ids", "labels"):
        if field not in shapes:
            raise ValueError(f"{where}: no {field}")
    for field, (_, dtype) in shapes.items():
        wanted = np.floating if field == "pixel_values" else np.integer
        if not (np.issubdtype(dtype, wanted) or (field == "pixel_attention_mask" and dtype == np.bool_)):
            raise ValueError(f"{where}: {field} has dtype {dtype}, expected {'floats' if wanted is np.floating else 'integers'}")
    tokens = shapes["input_ids"][0]
    if len(tokens) != 1 or tokens[0] == 0:
        raise ValueError(f"{where}: input_ids must be a non-empty 1-D array, got shape {tokens}")
    for field in ("labels", "attention_mask"):
        if field in shapes and shapes[field][0] != tokens:
            raise ValueError(f"{where}: {field} has shape {shapes[field][0]}, input_ids {tokens}")
    present = [k for k in PIXEL_KEYS if k in shapes]
    if not present:
        return
    if len(present) != len(PIXEL_KEYS):
        missing = sorted(set(PIXEL_KEYS) - set(present))
        raise ValueError(f"{where}: has {present} but not {missing}; an image example needs all of {list(PIXEL_KEYS)}")
    tiles = shapes["pixel_values"][0]
    if len(tiles) != 3 or tiles[0] == 0:
        raise ValueError(f"{where}: pixel_values must be (tiles, patches, patch_dim), got shape {tiles}")
    if shapes["pixel_attention_mask"][0] != tiles[:2]:
        raise ValueError(f"{where}: pixel_attention_mask has shape {shapes['pixel_attention_mask'][0]}, "
                         f"pixel_values {tiles}: expected {tiles[:2]}")
    if shapes["spatial_shapes"][0] != (tiles[0], 2):
        raise ValueError(f"{where}: spatial_shapes has shape {shapes['spatial_shapes'][0]}, expected "
                         f"{(tiles[0], 2)} for {tiles[0]} tile(s)")


def save_client_data(path: str | os.PathLike, train: Sequence[Example],
                     eval: Sequence[Example] | None = None) -> None:
    """Write one client's examples (token ids and labels, and an image captioner's tiles: everything
    `Lfm2VlModel.caption_example` returns) to a compressed .npz, atomically (temp file, then rename)."""
    arrays: dict[str, np.ndarray] = {}
    for split, examples in (("train", train), ("eval", eval or [])):
        for i, ex in enumerate(examples):
            where = f"{split} example {i}"
            unknown = sorted(set(ex) - set(FIELDS))
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {unknown}; a client data file holds {list(FIELDS)}")
            values = {k: np.asarray(v) for k, v in ex.items()}
            _check_example(where, {k: (v.shape, v.dtype) for k, v in values.items()})
            for key, value in values.items():
                arrays[f"{split}.{i}.{key}"] = value.astype(_DTYPES[key], copy=False)
    _images_everywhere_or_nowhere(str(path), {k.rsplit(".", 1)[0] for k in arrays},
                                  {k.rsplit(".", 1)[0] for k in arrays if k.endswith(".pixel_values")})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(p) as f:
        np.savez_compressed(f, **arrays)


def _images_everywhere_or_nowhere(path: str, examples: set[str], with_images: set[str]) -> None:
    if with_images and with_images != examples:
        plain = sorted(examples - with_images)
        raise ValueError(f"{path}: some examples have images and some ({', '.join(plain[:3])}"
                         f"{', ...' if len(plain) > 3 else ''}) do not")


def _headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Every array's (shape, dtype) from its .npy header, without reading the data."""
    out = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    raise ValueError(f"{path}: unexpected member {info.filename!r}")
                with archive.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(f)
                out[info.filename[: -len(".npy")]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable client data file (.npz): {err}") from None
    return out


class ClientExamples(Sequence[Example]):
    """One split of a client data file as a sequence of examples, each read from disk when indexed (for a
    training batch), so that only the batch's tiles are in memory. The file stays open after the first read:
    opening it parses the archive's whole directory, which per example made an epoch quadratic in its size."""

    def __init__(self, path: Path, split: str, shapes: list[Shapes]) -> None:
        self.path, self.split, self.shapes = path, split, shapes
        self._data: Any = None  # the open NpzFile

    def _open(self) -> Any:
        if self._data is None:
            self._data = np.load(self.path)
        return self._data

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None

    def __getstate__(self) -> dict[str, Any]:  # an open file does not travel (pickling, processes)
        return {**self.__dict__, "_data": None}

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def has_images(self) -> bool:
        return bool(self.shapes) and "pixel_values" in self.shapes[0]

    def _keys(self, index: int, fields: Sequence[str] | None) -> dict[str, str]:
        names = self.shapes[index] if fields is None else [f for f in fields if f in self.shapes[index]]
        return {f: f"{self.split}.{index}.{f}" for f in names}

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # IndexError past the end, negative indices as lists have them
        data = self._open()
        return {field: data[key] for field, key in self._keys(i, None).items()}

    def read(self, fields: Sequence[str]) -> Iterator[dict[str, np.ndarray]]:
        """Only `fields` of every example, in order (e.g. token ids, not tiles)."""
        data = self._open()
        for i in range(len(self)):
            yield {field: data[key] for field, key in self._keys(i, fields).items()}


def load_client_data(path: str | os.PathLike, client_id: int | str | None = None) -> FederatedClient:
    """Open a file written by `save_client_data` (checked from its headers; examples are read when used).
    The client id defaults to the file's stem."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"client data file {p} does not exist")
    grouped: dict[str, dict[int, Shapes]] = {split: {} for split in SPLITS}
    for key, header in _headers(p).items():
        parts = key.split(".", 2)
        if len(parts) != 3 or parts[0] not in SPLITS or not parts[1].isdigit():
            raise ValueError(f"{p}: unexpected array {key!r} (expected <train|eval>.<index>.<field>)")
        grouped[parts[0]].setdefault(int(parts[1]), {})[parts[2]] = header
    splits = {}
    for split, examples in grouped.items():
        if sorted(examples) != list(range(len(examples))):
            missing = sorted(set(range(max(examples, default=-1) + 1)) - set(examples))
            raise ValueError(f"{p}: {split} examples {missing[:5]} are missing")
        for i, shapes in examples.items():
            _check_example(f"{p}: {split} example {i}", shapes)
        splits[split] = ClientExamples(p, split, [examples[i] for i in range(len(examples))])
    _images_everywhere_or_nowhere(str(p), {f"{s}.{i}" for s in SPLITS for i in grouped[s]},
                                  {f"{s}.{i}" for s in SPLITS for i, e in grouped[s].items() if "pixel_values" in e})
    return FederatedClient(p.stem if client_id is None else client_id, splits["train"], splits["eval"] or None)


def load_clients(data_dir: str | os.PathLike) -> list[FederatedClient]:
    """Every ``*.npz`` in `data_dir`, sorted by name, as clients 0, 1, ... (ids by position, so they match
    the partition ids Flower SuperNodes are started with)."""
    files = sorted(Path(data_dir).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no client data (*.npz) in {data_dir}")
    return [load_client_data(f, client_id=i) for i, f in enumerate(files)]


def check_client_data(model: Lfm2Model | Lfm2VlModel, client: FederatedClient) -> None:
    """Refuse, before any round, examples `model` cannot train on: image tiles for a text-only LFM2, none for
    an image captioner, tiles of another patch size, spatial shapes the downsampling cannot split, masks
    that disagree with the spatial shapes, or ``<image>`` tokens that do not match the tiles' features.
    Reads the token ids, spatial shapes and masks, never the pixels."""
    for split, examples in (("train", client.train), ("eval", client.eval or [])):
        lazy = isinstance(examples, ClientExamples)
        rows = examples.read(("input_ids",) + PIXEL_KEYS[1:]) if lazy else iter(examples)
        for i, ex in enumerate(rows):
            if lazy:
                header = examples.shapes[i].get("pixel_values")
                tiles = header[0] if header is not None else None
            else:
                tiles = np.shape(ex["pixel_values"]) if "pixel_values" in ex else None
            _check_for_model(f"client {client.client_id}: {split} example {i}", model, ex, tiles)


def _check_for_model(where: str, model: Lfm2Model | Lfm2VlModel, ex: Example,
                     tiles: tuple[int, ...] | None) -> None:
    if not isinstance(model, Lfm2VlModel):
        if tiles is not None:
            raise ValueError(f"{where} has image tiles, but the model is a text-only LFM2: federate an "
                             "image captioner from an LFM2-VL checkpoint")
        return
    if tiles is None:
        raise ValueError(f"{where} has no image tiles, but the model is an image captioner (LFM2-VL): write "
                         "its examples with Lfm2VlModel.caption_example(image, caption)")
    config = model.vision.config
    if tiles[2] != config.patch_dim:
        raise ValueError(f"{where}: tiles of {tiles[2]} values per patch, the model's vision tower takes "
                         f"{config.patch_dim} ({config.num_channels} channels x {config.patch_size}^2)")
    shapes = np.asarray(ex["spatial_shapes"]).astype(np.int64)
    mask = np.asarray(ex["pixel_attention_mask"]).astype(np.int64)
    f = config.downsample_factor
    if (shapes < 1).any() or (shapes % f).any():
        raise ValueError(f"{where}: spatial_shapes {shapes.tolist()} are not positive multiples of the "
                         f"model's downsample_factor {f}")
    if (mask.sum(axis=1) != shapes.prod(axis=1)).any():
        raise ValueError(f"{where}: pixel_attention_mask marks {mask.sum(axis=1).tolist()} patches, "
                         f"spatial_shapes {shapes.tolist()} say {shapes.prod(axis=1).tolist()}")
    features = int(shapes.prod(axis=1).sum()) // (f * f)
    tokens = int((np.asarray(ex["input_ids"]) == model.image_token_id).sum())
    if tokens != features:
        raise ValueError(f"{where}: {tokens} <image> tokens but its tiles give {features} image features "
                         "(examples made with another processor or model?)")
