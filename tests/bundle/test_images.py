"""bundle.images: the deterministic decode and resize that training validation and the service share."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bundle.images import (
    ImageError,
    ImageTooLarge,
    ResizeSpec,
    decode_image,
    image_summary,
    plain_png_pixels,
    preprocess,
    resize,
    to_chw,
)

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(img: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def three_bands(width: int = 30, height: int = 10) -> Image.Image:
    """Vertical red | green | blue bands, each a third of the width."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    third = width // 3
    arr[:, :third] = RED
    arr[:, third : 2 * third] = GREEN
    arr[:, 2 * third :] = BLUE
    return Image.fromarray(arr)


def row_ramp(width: int, height: int) -> Image.Image:
    """Each row one gray level (10, 20, 30, ...), to see which rows padding copies."""
    rows = (np.arange(height, dtype=np.uint8) + 1) * 10
    return Image.fromarray(np.repeat(rows[:, None], width, axis=1)).convert("RGB")


def smooth_photo(width: int, height: int) -> Image.Image:
    """A smooth colour gradient: JPEG compresses it faithfully, so decoders can be compared."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    arr = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin(x / 40) * np.cos(y / 30)], axis=-1)
    return Image.fromarray(arr.astype(np.uint8))


# ---- resize ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["crop", "squish", "pad"])
def test_every_method_gives_the_target_size(method):
    out = resize(three_bands(37, 23), ResizeSpec(height=16, width=12, method=method))
    assert out.size == (12, 16)


def test_crop_keeps_the_centre():
    out = np.asarray(resize(three_bands(30, 10), ResizeSpec(10, 10, "crop")))
    assert (out == GREEN).all()


def test_crop_scales_the_short_side_to_the_target():
    out = np.asarray(resize(three_bands(60, 20), ResizeSpec(10, 10, "crop")))
    assert (out[:, 2:8] == GREEN).all()


def test_squish_keeps_the_whole_image():
    out = np.asarray(resize(three_bands(30, 10), ResizeSpec(10, 9, "squish")))
    assert tuple(out[5, 0]) == RED
    assert tuple(out[5, 4]) == GREEN
    assert tuple(out[5, 8]) == BLUE


def test_pad_zeros_centres_the_image_between_black_bands():
    out = np.asarray(resize(three_bands(30, 10), ResizeSpec(30, 30, "pad", pad_mode="zeros")))
    assert (out[:10] == 0).all() and (out[20:] == 0).all()
    assert np.array_equal(out[10:20], np.asarray(three_bands(30, 10)))


def test_pad_reflection_mirrors_the_rows_next_to_the_edge():
    out = np.asarray(resize(row_ramp(4, 4), ResizeSpec(6, 4, "pad", pad_mode="reflection")))[:, 0, 0]
    assert out.tolist() == [20, 10, 20, 30, 40, 30]


def test_pad_reflection_wider_than_the_image_keeps_it_centred():
    out = np.asarray(resize(row_ramp(4, 4), ResizeSpec(12, 4, "pad", pad_mode="reflection")))[:, 0, 0]
    assert out[4:8].tolist() == [10, 20, 30, 40]  # same place as with zeros: (12 - 4) // 2 rows above
    assert out[3] == 20 and out[8] == 30


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown resize method"):
        resize(three_bands(), ResizeSpec(10, 10, "stretch"))


def test_to_chw_is_uint8_channels_first():
    chw = to_chw(three_bands(30, 10))
    assert chw.dtype == np.uint8 and chw.shape == (3, 10, 30)
    assert chw[:, 0, 0].tolist() == list(RED)


# ---- decode ---------------------------------------------------------------------------------------


def test_exif_orientation_is_applied():
    stored = three_bands(30, 10)  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: display rotated 90 degrees clockwise
    data = encode(stored, "JPEG", quality=95, exif=exif.tobytes())
    img = decode_image(data)
    assert img.size == (10, 30)
    top = np.asarray(img)[2, 5]
    assert top[0] > 200 and top[2] < 60  # the stored left (red) band is now on top


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("LA", "PNG"), ("CMYK", "JPEG"), ("1", "BMP")],
)
def test_every_mode_decodes_to_rgb(mode, fmt):
    data = encode(three_bands(12, 6).convert(mode), fmt)
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == (12, 6)


def test_transparent_pixels_become_white():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black
    img = decode_image(encode(Image.fromarray(arr, "RGBA")))
    assert (np.asarray(img) == 255).all()


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    pixel = np.asarray(decode_image(buffer.getvalue()))[4, 4]
    assert pixel[0] > 200 and pixel[2] < 60


def test_non_image_bytes_raise_image_error():
    with pytest.raises(ImageError, match="not a recognised image"):
        decode_image(b"this is a text file, not a picture")


def test_truncated_image_raises_image_error():
    data = encode(smooth_photo(64, 64), "JPEG")
    with pytest.raises(ImageError):
        decode_image(data[: len(data) // 2])


def test_more_pixels_than_the_limit_raise_image_too_large():
    data = encode(three_bands(30, 10))
    with pytest.raises(ImageTooLarge, match="300 pixels"):
        decode_image(data, max_pixels=299)


def test_a_decompression_bomb_header_raises_image_too_large():
    # a PNG header announcing 30000 x 30000 pixels: Pillow refuses it at open already
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge):
        decode_image(data)


def test_jpeg_draft_decoding_nearly_matches_a_full_decode():
    data = encode(smooth_photo(480, 360), "JPEG", quality=95)
    spec = ResizeSpec(60, 60, "crop")
    drafted = preprocess(data, spec).astype(np.int16)
    full = to_chw(resize(decode_image(data), spec)).astype(np.int16)
    assert decode_image(data, target=spec).width < 480  # draft mode did shrink the decode
    assert np.abs(drafted - full).mean() < 3


def test_jpeg_draft_keeps_enough_pixels_for_an_exif_rotated_photo():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(smooth_photo(480, 240), "JPEG", quality=95, exif=exif.tobytes())
    spec = ResizeSpec(height=60, width=100, method="crop")  # upright the photo is 240 wide
    img = decode_image(data, target=spec)
    assert img.width >= 100 and img.height >= 60  # never upsampled to reach the target


def test_preprocess_is_decode_resize_and_chw():
    data = encode(three_bands(30, 10))
    spec = ResizeSpec(10, 10, "crop")
    assert np.array_equal(preprocess(data, spec), to_chw(resize(decode_image(data), spec)))


# ---- the libspng path for plain PNGs ---------------------------------------------------------------


def pillow_preprocess(data: bytes, spec: ResizeSpec) -> np.ndarray:
    """The general path, which every image can take."""
    return to_chw(resize(decode_image(data, target=spec), spec))


@pytest.mark.parametrize("gray", [True, False], ids=["gray", "rgb"])
@pytest.mark.parametrize("method", ["crop", "squish", "pad"])
@pytest.mark.parametrize("pad_mode", ["reflection", "zeros"])
def test_plain_pngs_give_exactly_the_pixels_of_the_general_path(gray, method, pad_mode):
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 60, 2)
        pixels = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
        data = encode(Image.fromarray(pixels))
        spec = ResizeSpec(int(rng.integers(1, 50)), int(rng.integers(1, 50)), method, pad_mode)
        assert plain_png_pixels(data) is not None  # the fast path is taken
        assert np.array_equal(preprocess(data, spec), pillow_preprocess(data, spec))


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "I;16", "1"])
def test_other_pngs_take_the_general_path(mode):
    img = three_bands(12, 6).convert("RGBA" if mode == "RGBA" else "RGB").convert(mode)
    data = encode(img)
    spec = ResizeSpec(8, 8, "squish")
    assert plain_png_pixels(data) is None
    assert np.array_equal(preprocess(data, spec), pillow_preprocess(data, spec))


def test_a_png_with_exif_takes_the_general_path_and_is_turned():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(three_bands(30, 10), exif=exif.tobytes())
    assert plain_png_pixels(data) is None
    assert preprocess(data, ResizeSpec(30, 10, "squish")).shape == (3, 30, 10)


def test_a_plain_png_over_the_pixel_limit_is_refused_before_decoding():
    with pytest.raises(ImageTooLarge, match="300 pixels"):
        plain_png_pixels(encode(three_bands(30, 10)), max_pixels=299)


def test_a_corrupt_plain_png_is_reported_by_the_general_path():
    data = bytearray(encode(smooth_photo(40, 40)))
    data[60:80] = bytes(20)  # inside the compressed pixels: the checksum fails
    assert plain_png_pixels(bytes(data)) is None
    with pytest.raises(ImageError):
        preprocess(bytes(data), ResizeSpec(8, 8))


def test_image_summary_measures_brightness_contrast_and_size():
    summary = image_summary(Image.new("RGB", (20, 10), (255, 255, 255)))
    assert summary == {"brightness": 1.0, "contrast": 0.0, "width": 20.0, "height": 10.0, "aspect": 2.0}
