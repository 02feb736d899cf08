"""ImageDataLoaders and aug_transforms: finding, labelling, splitting, batching and augmenting images."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from bundle.images import ResizeSpec, decode_image, image_summary, preprocess
from training.data.augment import Augment, aug_transforms
from training.data.core import DataError
from training.data.images import ImageDataLoaders, SkippedImagesWarning

COLORS = {"black": (20, 20, 20), "grizzly": (140, 90, 40), "teddy": (230, 200, 150)}


def write_image(file: Path, color: tuple[int, int, int], size: tuple[int, int] = (24, 16), noise: int = 0) -> Path:
    """A small image of one colour (plus seeded noise) at ``file``; the format follows the suffix."""
    file.parent.mkdir(parents=True, exist_ok=True)
    arr = np.empty((size[1], size[0], 3), dtype=np.int16)
    arr[:] = color
    if noise:
        arr += np.random.default_rng(abs(hash(file.name)) % 2**32).integers(-noise, noise + 1, arr.shape)
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(file)
    return file


def make_split_folder(root: Path, per_class_train: int = 3, per_class_valid: int = 1) -> Path:
    """bears/train/<class>/*.png and bears/valid/<class>/*.png"""
    for name, color in COLORS.items():
        for i in range(per_class_train):
            write_image(root / "train" / name / f"{name}{i}.png", color)
        for i in range(per_class_valid):
            write_image(root / "valid" / name / f"{name}{i}.jpg", color)
    return root


def make_class_folder(root: Path, per_class: int = 5) -> Path:
    """bears/<class>/*.png, no split folders."""
    for name, color in COLORS.items():
        for i in range(per_class):
            write_image(root / name / f"{name}{i}.png", color)
    return root


def quietly(build, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedImagesWarning)  # a clean fixture must not warn
        return build(*args, **kwargs)


@pytest.fixture
def bears(tmp_path: Path) -> Path:
    return make_split_folder(tmp_path / "bears")


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.images[:120] * 255 / 16).astype(np.uint8), data.target[:120]


# ---- from_folder ------------------------------------------------------------------------------------


def test_from_folder_uses_the_train_and_valid_folders(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    assert dls.vocab == ["black", "grizzly", "teddy"]
    assert dls.task == "classification" and dls.c == 3 and dls.input_kind == "image"
    assert len(dls.train_items) == 9 and len(dls.valid_items) == 3
    assert all(p.parent.parent.name == "train" for p in dls.train_items)
    assert all(p.parent.parent.name == "valid" for p in dls.valid_items)


def test_from_folder_labels_each_image_by_its_parent_folder(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    assert dls.valid_labels == [p.parent.name for p in dls.valid_items]
    assert dls.train_labels == [p.parent.name for p in dls.train_items]


def test_from_folder_splits_at_random_by_valid_pct(tmp_path):
    root = make_class_folder(tmp_path / "bears", per_class=10)
    dls = quietly(ImageDataLoaders.from_folder, root, valid_pct=0.2, size=8)
    assert len(dls.valid_items) == 6 and len(dls.train_items) == 24
    assert not set(dls.valid_items) & set(dls.train_items)


def test_from_folder_random_split_is_reproducible_with_a_seed(tmp_path):
    root = make_class_folder(tmp_path / "bears", per_class=10)
    first = quietly(ImageDataLoaders.from_folder, root, valid_pct=0.2, seed=7, size=8)
    again = quietly(ImageDataLoaders.from_folder, root, valid_pct=0.2, seed=7, size=8)
    other = quietly(ImageDataLoaders.from_folder, root, valid_pct=0.2, seed=8, size=8)
    assert first.valid_items == again.valid_items
    assert first.valid_items != other.valid_items


def test_from_folder_with_valid_pct_ignores_existing_split_folders(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, valid_pct=0.25, size=8)
    assert len(dls.valid_items) == 3 and len(dls.train_items) == 9
    assert dls.vocab == ["black", "grizzly", "teddy"]


def test_label_func_names_the_class(tmp_path):
    for i in range(4):
        write_image(tmp_path / "pets" / f"cat_{i}.png", (200, 0, 0))
        write_image(tmp_path / "pets" / f"dog_{i}.png", (0, 0, 200))
    dls = quietly(ImageDataLoaders.from_folder, tmp_path / "pets", valid_pct=0.25, label_func=pet_kind, size=8)
    assert dls.vocab == ["cat", "dog"]


def pet_kind(file: Path) -> str:
    return file.name.split("_")[0]


def test_unreadable_and_non_image_files_are_skipped_with_one_warning(bears):
    (bears / "train" / "teddy" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (bears / "train" / "teddy" / "notes.txt").write_text("field notes")
    good = bears / "train" / "black" / "black0.png"
    (bears / "valid" / "black" / "cut.png").write_bytes(good.read_bytes()[:60])
    with pytest.warns(SkippedImagesWarning) as record:
        dls = ImageDataLoaders.from_folder(bears, size=8)
    assert len(record) == 1
    message = str(record[0].message)
    assert "skipped 3 of 15 files" in message and "broken.jpg" in message
    assert len(dls.train_items) == 9 and len(dls.valid_items) == 3


def test_an_image_that_breaks_after_loading_never_crashes_an_epoch(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8, bs=4)
    dls.train_items[0].write_bytes(b"gone bad")
    with pytest.warns(SkippedImagesWarning, match="using another image"):
        batches = list(dls.train)
    assert sum(len(y) for _, y in batches) == 8  # 9 items, drop_last with bs=4
    assert all(x.shape[1:] == (3, 8, 8) for x, _ in batches)


def test_hidden_files_are_ignored_silently(bears):
    (bears / "train" / "black" / ".DS_Store").write_bytes(b"\x00\x01")
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    assert len(dls.train_items) == 9


# ---- data errors ------------------------------------------------------------------------------------


def test_a_missing_path_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageDataLoaders.from_folder(tmp_path / "nowhere")


def test_a_folder_without_images_is_a_data_error(tmp_path):
    (tmp_path / "empty" / "grizzly").mkdir(parents=True)
    with pytest.raises(DataError, match="no readable images found"):
        ImageDataLoaders.from_folder(tmp_path / "empty")


def test_a_single_class_is_a_data_error(tmp_path):
    for i in range(4):
        write_image(tmp_path / "bears" / "grizzly" / f"{i}.png", COLORS["grizzly"])
    with pytest.raises(DataError, match="only one class 'grizzly'"):
        ImageDataLoaders.from_folder(tmp_path / "bears")


def test_an_empty_validation_folder_is_a_data_error(bears):
    for file in (bears / "valid").rglob("*.jpg"):
        file.unlink()
    with pytest.raises(DataError, match="validation folder"):
        ImageDataLoaders.from_folder(bears)


def test_a_tiny_valid_pct_still_puts_one_image_in_validation(tmp_path):
    root = make_class_folder(tmp_path / "bears", per_class=2)
    dls = quietly(ImageDataLoaders.from_folder, root, valid_pct=0.01, size=8)
    assert len(dls.valid_items) == 1 and len(dls.train_items) == 5


@pytest.mark.parametrize("valid_pct", [0.0, 1.0, -0.1])
def test_a_valid_pct_outside_zero_to_one_is_a_data_error(tmp_path, valid_pct):
    root = make_class_folder(tmp_path / "bears", per_class=2)
    with pytest.raises(DataError, match="valid_pct"):
        ImageDataLoaders.from_folder(root, valid_pct=valid_pct)


def test_a_valid_column_with_no_true_rows_is_a_data_error(tmp_path):
    df = csv_fixture(tmp_path)
    df["is_valid"] = False
    with pytest.raises(DataError, match="validation split is empty"):
        ImageDataLoaders.from_df(df, tmp_path, folder="images", suffix=".png", valid_col="is_valid")


@pytest.mark.parametrize(
    "options, problem",
    [
        ({"method": "stretch"}, "unknown resize method"),
        ({"pad_mode": "wrap"}, "unknown pad_mode"),
        ({"size": 0}, "size"),
    ],
)
def test_bad_loading_options_are_data_errors(bears, options, problem):
    with pytest.raises(DataError, match=problem):
        ImageDataLoaders.from_folder(bears, **options)


def test_a_given_vocab_fixes_the_classes_and_their_order(bears):
    vocab = ["teddy", "panda", "grizzly", "black"]
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8, vocab=vocab)
    assert dls.vocab == vocab and dls.c == 4
    assert all(vocab[int(dls.valid_ds[i][1])] == label for i, label in enumerate(dls.valid_labels))


def test_labels_outside_a_given_vocab_are_a_data_error(bears):
    with pytest.raises(DataError, match="labels not in the given vocab: teddy"):
        ImageDataLoaders.from_folder(bears, vocab=["black", "grizzly"])


# ---- from_csv / from_df / from_lists ----------------------------------------------------------------


def csv_fixture(root: Path) -> pd.DataFrame:
    rows = []
    for name, color in COLORS.items():
        for j in range(3):
            write_image(root / "images" / f"{name}_{j}.png", color)
            tags = f"{name} bear" if j else ""  # the first image of each class has no tags
            rows.append({"fname": f"{name}_{j}", "label": name, "tags": tags, "is_valid": j == 0})
    return pd.DataFrame(rows)


def test_from_csv_reads_names_and_labels_and_splits_by_a_valid_column(tmp_path):
    csv_fixture(tmp_path).to_csv(tmp_path / "labels.csv", index=False)
    dls = quietly(
        ImageDataLoaders.from_csv,
        tmp_path,
        folder="images",
        suffix=".png",
        label_col="label",
        valid_col="is_valid",
        size=8,
    )
    assert dls.task == "classification" and dls.vocab == ["black", "grizzly", "teddy"]
    assert sorted(p.name for p in dls.valid_items) == ["black_0.png", "grizzly_0.png", "teddy_0.png"]
    assert len(dls.train_items) == 6


def test_from_csv_with_label_delim_is_multilabel_with_multi_hot_targets(tmp_path):
    csv_fixture(tmp_path).to_csv(tmp_path / "labels.csv", index=False)
    dls = quietly(
        ImageDataLoaders.from_csv,
        tmp_path,
        folder="images",
        suffix=".png",
        label_col="tags",
        label_delim=" ",
        valid_pct=0.3,
        size=8,
        bs=4,
    )
    assert dls.task == "multilabel"
    assert dls.vocab == ["bear", "black", "grizzly", "teddy"]
    _, y = dls.one_batch()
    assert y.dtype == torch.float32 and y.shape == (4, 4)
    labels = dict(zip([p.stem for p in dls.train_items + dls.valid_items], dls.train_labels + dls.valid_labels))
    assert labels["teddy_1"] == ["teddy", "bear"] and labels["teddy_0"] == []


def test_from_csv_skips_rows_whose_file_is_missing_with_a_warning(tmp_path):
    df = csv_fixture(tmp_path)
    df.loc[len(df)] = {"fname": "ghost", "label": "teddy", "tags": "", "is_valid": False}
    with pytest.warns(SkippedImagesWarning, match="skipped 1 of 10"):
        dls = ImageDataLoaders.from_df(df, tmp_path, folder="images", suffix=".png", valid_col="is_valid", size=8)
    assert len(dls.train_items) == 6


def test_from_df_takes_columns_by_position(tmp_path):
    df = csv_fixture(tmp_path)
    df["fname"] = "images/" + df["fname"] + ".png"
    dls = quietly(ImageDataLoaders.from_df, df, tmp_path, fn_col=0, label_col=1, valid_pct=0.34, seed=1, size=8)
    assert len(dls.valid_items) == 3 and dls.vocab == ["black", "grizzly", "teddy"]


def test_from_lists_pairs_files_with_labels(tmp_path):
    files = [write_image(tmp_path / f"{i}.png", (10 * i, 0, 0)).name for i in range(6)]
    dls = quietly(ImageDataLoaders.from_lists, tmp_path, files, ["odd" if i % 2 else "even" for i in range(6)], size=8)
    assert dls.vocab == ["even", "odd"] and len(dls.valid_items) == 1


# ---- from_arrays ------------------------------------------------------------------------------------


def test_from_arrays_takes_grayscale_digits(digits):
    images, labels = digits
    dls = ImageDataLoaders.from_arrays(images, labels, size=16, bs=8)
    assert dls.vocab == [str(d) for d in range(10)]  # numbers in numeric order: index == digit
    x, y = dls.one_batch()
    assert x.dtype == torch.uint8 and x.shape == (8, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])  # gray to RGB
    assert y.dtype == torch.int64
    assert len(dls.valid_items) == 24


def test_from_arrays_takes_rgb_arrays(digits):
    images, labels = digits
    rgb = np.stack([images, images // 2, images // 4], axis=-1)
    dls = ImageDataLoaders.from_arrays(rgb, labels, size=8, method="squish")
    pixels, _ = dls.valid_ds[0]
    assert pixels.shape == (3, 8, 8) and pixels[0].sum() > pixels[2].sum()


def test_from_arrays_rejects_float_pixels(digits):
    images, labels = digits
    with pytest.raises(DataError, match="must be uint8"):
        ImageDataLoaders.from_arrays(images.astype(np.float32) / 255, labels)


def test_from_arrays_needs_one_label_per_image(digits):
    images, labels = digits
    with pytest.raises(DataError, match="120 images but 119 labels"):
        ImageDataLoaders.from_arrays(images, labels[:-1])


# ---- batches and preprocessing ----------------------------------------------------------------------


def test_batches_are_uint8_pixels_and_int64_targets_at_the_requested_size(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=(10, 14), bs=4)
    x, y = dls.one_batch()
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 10, 14)
    assert y.dtype == torch.int64 and y.shape == (4,)
    assert dls.size == (10, 14) and dls.resize_spec == ResizeSpec(10, 14, "crop", "reflection")


def test_targets_index_the_vocab(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    for i, label in enumerate(dls.valid_labels):
        assert dls.vocab[int(dls.valid_ds[i][1])] == label


@pytest.mark.parametrize("method", ["crop", "squish", "pad"])
def test_validation_pixels_equal_the_services_preprocessing(tmp_path, method):
    for name, color in COLORS.items():
        write_image(tmp_path / "train" / name / "a.png", color, size=(40, 30), noise=40)
        write_image(tmp_path / "valid" / name / "a.jpg", color, size=(300, 200), noise=40)
    dls = quietly(ImageDataLoaders.from_folder, tmp_path, size=(12, 16), method=method, pad_mode="zeros")
    for i, file in enumerate(dls.valid_items):
        expected = preprocess(file.read_bytes(), ResizeSpec(12, 16, method, "zeros"))
        pixels, _ = dls.valid_ds[i]
        assert np.array_equal(pixels.numpy(), expected)
        assert np.array_equal(dls.valid_ds[i][0].numpy(), expected)  # the cached copy too


def test_training_uses_a_random_crop_instead_of_the_centre(tmp_path):
    for name, color in COLORS.items():
        write_image(tmp_path / "train" / name / "a.png", color, size=(60, 12), noise=60)
        write_image(tmp_path / "valid" / name / "a.png", color, size=(60, 12), noise=60)
    dls = quietly(ImageDataLoaders.from_folder, tmp_path, size=12)
    torch.manual_seed(0)
    crops = {bytes(dls.train_ds[0][0].numpy()) for _ in range(6)}
    assert len(crops) > 1
    assert dls.train_ds[0][0].shape == (3, 12, 12)


def test_min_scale_gives_random_resized_crops_of_the_right_size(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=(8, 6), aug=aug_transforms(min_scale=0.35), bs=3)
    x, _ = dls.one_batch()
    assert x.shape == (3, 3, 8, 6) and x.dtype == torch.uint8


def test_augmentation_changes_training_pixels_but_never_validation(tmp_path):
    for name, color in COLORS.items():
        write_image(tmp_path / "train" / name / "a.png", color, size=(16, 16), noise=60)
        write_image(tmp_path / "valid" / name / "a.png", color, size=(16, 16), noise=60)
    aug = aug_transforms(p_affine=1.0, p_lighting=1.0)
    plain = quietly(ImageDataLoaders.from_folder, tmp_path, size=16)
    augmented = quietly(ImageDataLoaders.from_folder, tmp_path, size=16, aug=aug)
    assert not torch.equal(augmented.train_ds[0][0], plain.train_ds[0][0])
    assert torch.equal(augmented.valid_ds[0][0], plain.valid_ds[0][0])


def test_stats_are_per_channel_mean_and_std_in_unit_range(tmp_path):
    for name in ("red", "blue"):
        for i in range(2):
            write_image(tmp_path / name / f"{i}.png", (255, 0, 0) if name == "red" else (0, 0, 255))
    dls = quietly(ImageDataLoaders.from_folder, tmp_path, valid_pct=0.5, seed=3, size=8)
    mean, std = dls.stats()
    train_reds = sum(label == "red" for label in dls.train_labels) / len(dls.train_labels)
    assert mean == pytest.approx((train_reds, 0.0, 1 - train_reds))
    assert std[1] == pytest.approx(0.0)
    assert all(0.0 <= s <= 0.5 for s in std)


def test_image_summaries_describe_each_validation_image(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    summaries = dls.image_summaries("valid")
    assert len(summaries) == 3
    first = dls.valid_items[0].read_bytes()
    assert summaries[0] == image_summary(decode_image(first, target=dls.resize_spec))  # as the service decodes
    assert len(dls.image_summaries("train")) == 9


def test_valid_items_show_as_the_model_sees_them(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=(8, 10))
    assert dls.valid_ds.image(0).size == (10, 8)


# ---- encode_items and the exported copy -------------------------------------------------------------


def test_encode_items_accepts_paths_bytes_pil_images_and_arrays(tmp_path, bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    file = write_image(tmp_path / "query.png", (90, 160, 30), size=(30, 20), noise=50)
    data = file.read_bytes()
    pil = Image.open(io.BytesIO(data))
    array = np.asarray(Image.open(file))
    (pixels,) = dls.encode_items([file, str(file), data, pil, array])
    expected = torch.from_numpy(preprocess(data, dls.resize_spec))
    assert pixels.dtype == torch.uint8 and pixels.shape == (5, 3, 8, 8)
    for row in pixels:
        assert torch.equal(row, expected)


def test_encode_items_takes_a_grayscale_array(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    (pixels,) = dls.encode_items([np.full((20, 20), 77, dtype=np.uint8)])
    assert (pixels == 77).all()


def test_encode_items_rejects_what_is_not_an_image(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8)
    with pytest.raises(DataError, match="cannot encode an item of type int"):
        dls.encode_items([42])
    with pytest.raises(DataError, match="does not exist"):
        dls.encode_items([bears / "missing.png"])


def test_new_empty_pickles_without_data_and_still_encodes(tmp_path, bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8, method="pad", aug=aug_transforms())
    stats = dls.stats()
    buffer = io.BytesIO()
    torch.save(dls.new_empty(), buffer)
    buffer.seek(0)
    empty = torch.load(buffer, weights_only=False)
    assert empty.train is None and empty.valid is None and empty.train_ds is None
    assert empty.vocab == dls.vocab and empty.resize_spec == dls.resize_spec and empty.stats() == stats
    file = dls.valid_items[0]
    assert torch.equal(empty.encode_items([file])[0], dls.encode_items([file])[0])
    with pytest.raises(DataError, match="holds no data"):
        _ = empty.valid_items


def test_the_whole_dataloaders_pickles_with_its_data(bears):
    dls = quietly(ImageDataLoaders.from_folder, bears, size=8, aug=aug_transforms(min_scale=0.5), bs=3)
    list(dls.valid)  # fill the validation cache, which must not be pickled
    buffer = io.BytesIO()
    torch.save(dls, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    x, y = restored.one_batch()
    assert x.shape == (3, 3, 8, 8) and restored.valid_items == dls.valid_items


# ---- aug_transforms ---------------------------------------------------------------------------------


def random_image(height: int = 20, width: int = 28) -> torch.Tensor:
    return torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("size", [(20, 28), (28, 20), (7, 7)])
def test_augment_keeps_shape_and_dtype(size):
    aug = aug_transforms(mult=2.0, p_affine=1.0, p_lighting=1.0, flip_vert=True, min_zoom=0.8)
    out = aug(random_image(*size))
    assert out.dtype == torch.uint8 and out.shape == (3, *size)


def test_augment_is_reproducible_with_a_seeded_generator():
    aug = aug_transforms(p_affine=1.0, p_lighting=1.0)
    image = random_image()
    first = aug(image, generator=torch.Generator().manual_seed(5))
    again = aug(image, generator=torch.Generator().manual_seed(5))
    other = aug(image, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_augment_is_reproducible_with_torch_manual_seed():
    aug = aug_transforms(p_affine=1.0, p_lighting=1.0)
    image = random_image()
    torch.manual_seed(11)
    first = [aug(image) for _ in range(3)]
    torch.manual_seed(11)
    again = [aug(image) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_augment_without_flip_never_mirrors_the_image():
    aug = aug_transforms(do_flip=False, max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0)
    image = random_image()
    generator = torch.Generator().manual_seed(0)
    assert all(torch.equal(aug(image, generator), image) for _ in range(20))


def test_augment_with_flip_mirrors_about_half_the_time():
    aug = aug_transforms(max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0)
    image = random_image()
    generator = torch.Generator().manual_seed(0)
    flips = sum(torch.equal(aug(image, generator), image.flip(-1)) for _ in range(40))
    assert 8 <= flips <= 32


def test_rotation_and_zoom_fill_corners_by_reflection_not_black():
    aug = aug_transforms(max_rotate=30, min_zoom=0.7, max_zoom=1.0, max_warp=0.3, max_lighting=0, p_affine=1.0)
    white = torch.full((3, 24, 32), 255, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    assert all((aug(white, generator) == 255).all() for _ in range(10))


def test_lighting_changes_brightness_within_its_range():
    aug = aug_transforms(do_flip=False, max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0.2, p_lighting=1.0)
    gray = torch.full((3, 8, 8), 100, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    levels = [float(aug(gray, generator).float().mean()) for _ in range(20)]
    assert min(levels) >= 80 - 1 and max(levels) <= 120 + 1 and max(levels) - min(levels) > 5


def test_augment_rejects_bad_settings_and_inputs():
    with pytest.raises(ValueError, match="p_affine"):
        Augment(p_affine=1.5)
    with pytest.raises(ValueError, match="min_zoom"):
        Augment(min_zoom=1.2, max_zoom=1.1)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        aug_transforms()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_augment_pickles():
    aug = aug_transforms(min_scale=0.5)
    restored = torch.load(_saved(aug), weights_only=False)
    image = random_image()
    assert torch.equal(restored(image, torch.Generator().manual_seed(1)), aug(image, torch.Generator().manual_seed(1)))
    assert restored.random_resized_crop


def _saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer
