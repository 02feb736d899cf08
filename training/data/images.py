"""Image DataLoaders: find and label image files, split them, and batch uint8 pixels.

Validation and inference run exactly ``bundle.images`` (decode, deterministic
resize, CHW layout), the code the service runs, so a model is validated on the
pixels it will be served. Training swaps the centre crop for a random (or
random-resized) crop and then applies an optional :class:`Augment`.

Unreadable files are found once at construction (a cheap PIL open + verify)
and skipped with one warning; a file that still fails to decode later is
replaced by another item of the split, with a warning, so it never crashes an
epoch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from bundle.images import (
    DEFAULT_MAX_PIXELS,
    ResizeSpec,
    decode_image,
    image_summary,
    preprocess,
    resize,
    to_chw,
    to_rgb,  # the service's RGB conversion (alpha over white), so in-memory images match served bytes
)
from training.data.augment import Augment
from training.data.core import DataError, DataLoaders, read_csv
from training.data.image_files import (
    IMAGE_EXTENSIONS,
    UNREADABLE,
    Item,
    SkippedImagesWarning,
    describe_item,
    existing_dir,
    parent_name,
    readable_images,
    walk_files,
    warn_skipped,
)
from training.data.labels import (
    Label,
    bool_column,
    column_name,
    fixed_vocab,
    infer_vocab,
    label_targets,
    parse_labels,
    random_split,
)

RESIZE_METHODS = ("crop", "squish", "pad")
PAD_MODES = ("reflection", "zeros")
DEFAULT_CACHE_BYTES = 256 * 2**20  # validation pixels kept in memory per dataset


class ImageDataset(Dataset):
    """Items, their targets and the per-item pipeline of one split.

    ``train=True`` uses a random crop (random-resized when the augmentation
    asks for ``min_scale < 1``) and the augmentation; otherwise the exact
    validation preprocessing, cached in memory up to ``cache_bytes``.
    """

    def __init__(
        self,
        items: Sequence[Item],
        labels: Sequence[Label],
        targets: np.ndarray,
        spec: ResizeSpec,
        train: bool,
        aug: Augment | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.items = list(items)
        self.labels = list(labels)
        self.targets = targets
        self.spec = spec
        self.train = train
        self.aug = aug if train else None
        self.max_pixels = max_pixels
        self.cache_bytes = cache_bytes
        use_rrc = self.aug is not None and self.aug.random_resized_crop and spec.method == "crop"
        self._random_resized_crop = (
            v2.RandomResizedCrop((spec.height, spec.width), scale=(self.aug.min_scale, 1.0)) if use_rrc else None
        )
        self._cache: dict[int, np.ndarray] = {}
        self._cached_bytes = 0
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.items)
        for offset in range(n):
            j = (index + offset) % n
            if j in self._bad:
                continue
            try:
                pixels = self._train_pixels(j) if self.train else self.pixels(j)
            except UNREADABLE as exc:
                self._bad.add(j)
                warnings.warn(
                    f"cannot read image {describe_item(self.items[j])}: {exc}; using another image in its place",
                    SkippedImagesWarning,
                    stacklevel=2,
                )
                continue
            return pixels, torch.as_tensor(self.targets[j])
        raise DataError(f"none of the {n} images in this split can be read")

    def decoded(self, index: int, target: ResizeSpec | None = None) -> Image.Image:
        """The upright RGB image, before resizing (JPEG draft-decoded when ``target`` is given)."""
        item = self.items[index]
        if isinstance(item, np.ndarray):
            return array_to_image(item)
        return decode_image(item.read_bytes(), self.max_pixels, target=target)

    def image(self, index: int) -> Image.Image:
        """The image as the model sees it in validation (for showing results)."""
        return resize(self.decoded(index, self.spec), self.spec)

    def pixels(self, index: int) -> torch.Tensor:
        """Validation preprocessing: uint8 [3, H, W], identical to ``bundle.images.preprocess``."""
        cached = self._cache.get(index)
        if cached is None:
            cached = to_chw(self.image(index))
            if self._cached_bytes + cached.nbytes <= self.cache_bytes:
                self._cache[index] = cached
                self._cached_bytes += cached.nbytes
        return torch.from_numpy(cached.copy())

    def _train_pixels(self, index: int) -> torch.Tensor:
        spec = self.spec
        if self._random_resized_crop is not None:
            img = self._random_resized_crop(self.decoded(index, _rrc_draft_target(spec, self.aug.min_scale)))
        elif spec.method == "crop":
            img = _random_crop(self.decoded(index, spec), spec)
        else:
            img = resize(self.decoded(index, spec), spec)
        pixels = torch.from_numpy(to_chw(img))
        return self.aug(pixels) if self.aug is not None else pixels

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # the cache is rebuilt on demand; never pickle it
        state["_cache"] = {}
        state["_cached_bytes"] = 0
        return state


class ImageDataLoaders(DataLoaders):
    """Train/validation loaders of ``(pixels uint8 [B,3,H,W], target)`` batches.

    Build with :meth:`from_folder`, :meth:`from_csv`, :meth:`from_df`,
    :meth:`from_lists` or :meth:`from_arrays`. Every constructor takes the
    loading options ``size`` (int or (height, width)), ``method``
    (crop|squish|pad), ``pad_mode`` (reflection|zeros), ``aug`` (an
    :class:`Augment` or None), ``bs``, ``num_workers``, ``max_pixels`` and
    ``cache_bytes``; and ``vocab`` to fix the classes and their order (e.g.
    fine-tuning an exported model on new data).
    """

    input_kind = "image"

    def __init__(
        self,
        train_ds: ImageDataset,
        valid_ds: ImageDataset,
        task: str,
        vocab: list[str],
        bs: int = 64,
        num_workers: int = 0,
    ) -> None:
        train = DataLoader(train_ds, batch_size=bs, shuffle=True, drop_last=len(train_ds) > bs, num_workers=num_workers)
        valid = DataLoader(valid_ds, batch_size=bs, shuffle=False, num_workers=num_workers)
        super().__init__(train, valid, task, vocab)
        self.train_ds: ImageDataset | None = train_ds
        self.valid_ds: ImageDataset | None = valid_ds
        self.resize_spec: ResizeSpec = valid_ds.spec
        self.max_pixels = valid_ds.max_pixels
        self.aug = train_ds.aug
        self.bs = bs
        self.mean_std: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None

    # ---- constructors -------------------------------------------------------------------------

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        train: str = "train",
        valid: str = "valid",
        valid_pct: float | None = None,
        seed: int = 42,
        label_func: Callable[[Path], str] | None = None,
        **options: Any,
    ) -> ImageDataLoaders:
        """Label each image by its parent folder (or ``label_func``).

        Uses the ``path/train`` and ``path/valid`` folders when both exist and
        ``valid_pct`` is None; otherwise every image under ``path`` split at
        random (``valid_pct`` defaults to 0.2) with ``seed``.
        """
        root = existing_dir(path)
        label = label_func or parent_name
        max_pixels = options.get("max_pixels", DEFAULT_MAX_PIXELS)
        if valid_pct is None and (root / train).is_dir() and (root / valid).is_dir():
            train_files, train_bad = readable_images(walk_files(root / train), max_pixels)
            valid_files, valid_bad = readable_images(walk_files(root / valid), max_pixels)
            warn_skipped(train_bad + valid_bad, len(train_files) + len(valid_files) + len(train_bad) + len(valid_bad))
            if not train_files:
                raise DataError(f"no readable images in the training folder {root / train}")
            if not valid_files:
                raise DataError(f"no readable images in the validation folder {root / valid}")
            return cls._build(
                train_files, [label(f) for f in train_files], valid_files, [label(f) for f in valid_files], **options
            )
        files, bad = readable_images(walk_files(root), max_pixels)
        warn_skipped(bad, len(files) + len(bad))
        if not files:
            raise DataError(f"no readable images found under {root} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        train_idx, valid_idx = random_split(len(files), 0.2 if valid_pct is None else valid_pct, seed)
        return cls._build_split(files, [label(f) for f in files], train_idx, valid_idx, **options)

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        csv_fname: str = "labels.csv",
        fn_col: int | str = 0,
        label_col: int | str = 1,
        valid_col: int | str | None = None,
        label_delim: str | None = None,
        folder: str | None = None,
        suffix: str = "",
        valid_pct: float = 0.2,
        seed: int = 42,
        **options: Any,
    ) -> ImageDataLoaders:
        """Read file names and labels from ``path/csv_fname``; see :meth:`from_df`."""
        root = existing_dir(path)
        csv_path = root / csv_fname
        if not csv_path.is_file():
            raise DataError(f"label file {csv_path} does not exist")
        return cls.from_df(
            read_csv(csv_path),
            root,
            fn_col,
            label_col,
            valid_col,
            label_delim,
            folder,
            suffix,
            valid_pct,
            seed,
            **options,
        )

    @classmethod
    def from_df(
        cls,
        df: pd.DataFrame,
        path: str | Path = ".",
        fn_col: int | str = 0,
        label_col: int | str = 1,
        valid_col: int | str | None = None,
        label_delim: str | None = None,
        folder: str | None = None,
        suffix: str = "",
        valid_pct: float = 0.2,
        seed: int = 42,
        **options: Any,
    ) -> ImageDataLoaders:
        """File names (relative to ``path/folder``, plus ``suffix``) and labels from a DataFrame.

        ``label_delim`` makes it multi-label (labels split on it; an empty
        cell means no label). ``valid_col`` is a boolean column marking the
        validation rows; without it rows are split at random by ``valid_pct``.
        """
        root = existing_dir(path)
        base = root / folder if folder else root
        fn_name, label_name = column_name(df, fn_col), column_name(df, label_col)
        files = [base / f"{name}{suffix}" for name in df[fn_name].astype(str)]
        labels = parse_labels(df[label_name].tolist(), label_delim, label_name)
        is_valid = bool_column(df, column_name(df, valid_col)) if valid_col is not None else None
        readable, bad = readable_images(files, options.get("max_pixels", DEFAULT_MAX_PIXELS))
        warn_skipped(bad, len(files))
        readable_set = set(readable)
        keep = [i for i, f in enumerate(files) if f in readable_set]
        if not keep:
            raise DataError(
                f"none of the {len(files)} files named in column {fn_name!r} is a readable image under {base}"
            )
        if is_valid is None:
            train_pos, valid_pos = random_split(len(keep), valid_pct, seed)
            train_idx, valid_idx = [keep[i] for i in train_pos], [keep[i] for i in valid_pos]
        else:
            train_idx = [i for i in keep if not is_valid[i]]
            valid_idx = [i for i in keep if is_valid[i]]
        return cls._build_split(files, labels, train_idx, valid_idx, **options)

    @classmethod
    def from_lists(
        cls,
        path: str | Path,
        fnames: Sequence[str | Path],
        labels: Sequence[Any],
        valid_pct: float = 0.2,
        seed: int = 42,
        label_delim: str | None = None,
        **options: Any,
    ) -> ImageDataLoaders:
        """Files (relative to ``path``) with their labels, split at random."""
        if len(fnames) != len(labels):
            raise DataError(f"{len(fnames)} file names but {len(labels)} labels")
        df = pd.DataFrame({"fname": [str(f) for f in fnames], "label": list(labels)})
        return cls.from_df(df, path, 0, 1, None, label_delim, None, "", valid_pct, seed, **options)

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray | Sequence[np.ndarray],
        labels: Sequence[Any],
        valid_pct: float = 0.2,
        seed: int = 42,
        label_delim: str | None = None,
        **options: Any,
    ) -> ImageDataLoaders:
        """In-memory uint8 images, [N, H, W] grayscale or [N, H, W, 3] RGB, split at random."""
        arrays = [_check_array(np.asarray(a), f"image {i}") for i, a in enumerate(images)]
        if not arrays:
            raise DataError("no images given")
        if len(arrays) != len(labels):
            raise DataError(f"{len(arrays)} images but {len(labels)} labels")
        parsed = parse_labels(list(labels), label_delim, "labels")
        train_idx, valid_idx = random_split(len(arrays), valid_pct, seed)
        return cls._build_split(arrays, parsed, train_idx, valid_idx, **options)

    @classmethod
    def _build_split(
        cls,
        items: Sequence[Item],
        labels: Sequence[Label],
        train_idx: Sequence[int],
        valid_idx: Sequence[int],
        **options: Any,
    ) -> ImageDataLoaders:
        """``_build`` from one list of items and labels and the positions of each split."""
        return cls._build(
            [items[i] for i in train_idx],
            [labels[i] for i in train_idx],
            [items[i] for i in valid_idx],
            [labels[i] for i in valid_idx],
            **options,
        )

    @classmethod
    def _build(
        cls,
        train_items: Sequence[Item],
        train_labels: Sequence[Label],
        valid_items: Sequence[Item],
        valid_labels: Sequence[Label],
        *,
        size: int | tuple[int, int] = 224,
        method: str = "crop",
        pad_mode: str = "reflection",
        aug: Augment | None = None,
        bs: int = 64,
        num_workers: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        vocab: Sequence[str] | None = None,
    ) -> ImageDataLoaders:
        if not train_items:
            raise DataError("the training split is empty")
        if not valid_items:
            raise DataError("the validation split is empty")
        if bs < 1:
            raise DataError(f"batch size must be at least 1, got {bs}")
        spec = _resize_spec(size, method, pad_mode)
        multilabel = any(isinstance(label, list) for label in list(train_labels) + list(valid_labels))
        labels = list(train_labels) + list(valid_labels)
        vocab = infer_vocab(labels, multilabel) if vocab is None else fixed_vocab(vocab, labels, multilabel)
        index = {name: i for i, name in enumerate(vocab)}
        datasets = [
            ImageDataset(
                items,
                labels,
                label_targets(labels, index, multilabel),
                spec,
                train=is_train,
                aug=aug,
                max_pixels=max_pixels,
                cache_bytes=cache_bytes,
            )
            for items, labels, is_train in ((train_items, train_labels, True), (valid_items, valid_labels, False))
        ]
        task = "multilabel" if multilabel else "classification"
        return cls(datasets[0], datasets[1], task, vocab, bs=bs, num_workers=num_workers)

    # ---- what the learner, export and interpretation read -----------------------------------

    @property
    def size(self) -> tuple[int, int]:
        return self.resize_spec.height, self.resize_spec.width

    @property
    def method(self) -> str:
        return self.resize_spec.method

    @property
    def pad_mode(self) -> str:
        return self.resize_spec.pad_mode

    @property
    def train_items(self) -> list[Item]:
        return self._dataset("train").items

    @property
    def valid_items(self) -> list[Item]:
        return self._dataset("valid").items

    @property
    def train_labels(self) -> list[Label]:
        return self._dataset("train").labels

    @property
    def valid_labels(self) -> list[Label]:
        return self._dataset("valid").labels

    def stats(self, n: int = 512, seed: int = 0) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """Per-channel (mean, std) in 0..1 of up to ``n`` training images, validation-preprocessed.

        The result is kept (``mean_std``) so an exported, data-free copy still has it.
        """
        if self.train_ds is None:
            if self.mean_std is None:
                raise DataError("this DataLoaders holds no data and no stats were computed before it was emptied")
            return self.mean_std
        ds = self.train_ds
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
        total = np.zeros(3)
        total_sq = np.zeros(3)
        count = 0
        for i in sample:
            try:
                pixels = ds.pixels(int(i)).numpy().reshape(3, -1).astype(np.float64) / 255.0
            except UNREADABLE:
                continue
            total += pixels.sum(axis=1)
            total_sq += (pixels**2).sum(axis=1)
            count += pixels.shape[1]
        if count == 0:
            raise DataError("none of the sampled training images can be read")
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        self.mean_std = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
        return self.mean_std

    def encode_items(self, items: Sequence[Any]) -> tuple[torch.Tensor]:
        """Paths, bytes, PIL images or uint8 arrays (HW or HWC) -> ``(uint8 [N,3,H,W],)``.

        Validation preprocessing, the same as the service applies.
        """
        if isinstance(items, (str, Path, bytes, Image.Image, np.ndarray)) and not (
            isinstance(items, np.ndarray) and items.ndim == 4
        ):
            items = [items]  # one item given on its own
        if len(items) == 0:
            raise DataError("no items to encode")
        return (torch.from_numpy(np.stack([self._encode_one(item) for item in items])),)

    def _encode_one(self, item: Any) -> np.ndarray:
        spec = self.resize_spec
        if isinstance(item, (str, Path)):
            file = Path(item)
            if not file.is_file():
                raise DataError(f"image file {file} does not exist")
            return preprocess(file.read_bytes(), spec, self.max_pixels)
        if isinstance(item, (bytes, bytearray, memoryview)):
            return preprocess(bytes(item), spec, self.max_pixels)
        if isinstance(item, Image.Image):
            # a PIL image still carries its EXIF orientation; the service would apply it to the bytes
            return to_chw(resize(to_rgb(ImageOps.exif_transpose(item)), spec))
        if isinstance(item, np.ndarray):
            return to_chw(resize(array_to_image(_check_array(item, "image")), spec))
        raise DataError(
            f"cannot encode an item of type {type(item).__name__}: give a path, bytes, a PIL image or a uint8 array"
        )

    def image_summaries(self, split: str = "valid") -> list[dict[str, float]]:
        """``bundle.images.image_summary`` of each readable image in the split, before resizing.

        Images are decoded as validation and the service decode them (JPEG
        draft mode for the target size), so the reference matches what the
        service measures.
        """
        ds = self._dataset(split)
        summaries = []
        for i in range(len(ds)):
            try:
                summaries.append(image_summary(ds.decoded(i, ds.spec)))
            except UNREADABLE:
                continue
        return summaries

    def new_empty(self) -> ImageDataLoaders:
        """Drop the datasets; keep the resize spec, vocab, stats and augmentation settings."""
        empty = super().new_empty()
        empty.train_ds = None
        empty.valid_ds = None
        return empty

    def _dataset(self, split: str) -> ImageDataset:
        if split not in ("train", "valid"):
            raise DataError(f"unknown split {split!r}: use 'train' or 'valid'")
        ds = self.train_ds if split == "train" else self.valid_ds
        if ds is None:
            raise DataError("this DataLoaders holds no data (exported learner)")
        return ds


# ---- pixels --------------------------------------------------------------------------------------


def _resize_spec(size: int | tuple[int, int], method: str, pad_mode: str) -> ResizeSpec:
    if method not in RESIZE_METHODS:
        raise DataError(f"unknown resize method {method!r}: use {', '.join(RESIZE_METHODS)}")
    if pad_mode not in PAD_MODES:
        raise DataError(f"unknown pad_mode {pad_mode!r}: use {', '.join(PAD_MODES)}")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise DataError(f"size must be a positive int or (height, width), got {size!r}")
    return ResizeSpec(height=height, width=width, method=method, pad_mode=pad_mode)


def _check_array(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(f"{what} must be uint8 pixels (0-255), got {array.dtype}; scale and cast it first")
    if array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4)):
        return array
    raise DataError(f"{what} must be [H, W] or [H, W, 1|3|4], got shape {array.shape}")


def array_to_image(array: np.ndarray) -> Image.Image:
    """A uint8 [H, W] or [H, W, 1|3|4] array -> RGB PIL image (alpha composed as the service does)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def _random_crop(img: Image.Image, spec: ResizeSpec) -> Image.Image:
    """The training twin of ``bundle.images.resize`` with method "crop": same scale, random offset."""
    w, h = img.size
    tw, th = spec.width, spec.height
    scale = max(tw / w, th / h)
    nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR) if (nw, nh) != (w, h) else img
    left = int(torch.randint(0, nw - tw + 1, ()))
    top = int(torch.randint(0, nh - th + 1, ()))
    return img.crop((left, top, left + tw, top + th))


def _rrc_draft_target(spec: ResizeSpec, min_scale: float) -> ResizeSpec:
    """A JPEG draft size that keeps enough pixels for the smallest random-resized crop.

    The crop covers at least ``sqrt(0.75 * min_scale)`` of the image along
    each side (area >= min_scale, aspect ratio within 3/4..4/3), so a square
    target that much larger than the output still covers it.
    """
    side = math.ceil(max(spec.height, spec.width) / math.sqrt(0.75 * min_scale))
    return ResizeSpec(height=side, width=side, method="crop")
