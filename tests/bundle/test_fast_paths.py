"""Every fast path in ``bundle/`` agrees with the plain version beside it, on generated inputs.

The pattern of tests/test_rollout_policy.py's compiled route: where a fast path
answers (anything but None), its answer is exactly the reference's (the same
values, dtypes and missing positions), and the reference raises nothing there;
where it declines, the public function's answer, or its error, is the reference's.
"""

from __future__ import annotations

import io
import math
import types
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps, PngImagePlugin

from bundle import monitoring as mon
from bundle.images import (
    SERVED_FORMATS,
    ImageError,
    ImageTooLarge,
    ResizeSpec,
    decode_image,
    load_image,
    open_image,
    plain_png_pixels,
    preprocess,
    preprocess_by_pillow,
    to_chw,
    to_rgb,
)
from bundle.tabular import Categorify, TabularInputError, category_levels, rows_to_columns, to_numbers
from bundle.tabular.dates import parts_of_dates, parts_of_dates_by_pandas
from bundle.tabular.rows import _plain_json_columns, json_columns_cell_by_cell
from bundle.tabular.values import _plain_levels, _plain_numbers, levels_by_pandas, numbers_by_pandas

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("value", result) or ("error", (type, message, column, row)) of a call.

    OverflowError included: pandas raises it for an int beyond float range, which
    the fast path declines and the service's decoder refuses before (MAX_INT_DIGITS).
    """
    try:
        return "value", call()
    except (TabularInputError, ValueError, OverflowError) as exc:
        return "error", (type(exc), str(exc), getattr(exc, "column", None), getattr(exc, "row", None))


def took(answer: Any) -> str:
    """Which path an example took, for ``--hypothesis-show-statistics``."""
    return "the general path" if answer is None else "the fast path"


def same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtypes, NaN at the same places, and bit for bit the same numbers elsewhere (-0.0 is not 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    missing = np.isnan(a)
    return bool(
        np.array_equal(missing, np.isnan(b)) and np.array_equal(a[~missing].view(np.int64), b[~missing].view(np.int64))
    )


def same_objects(a: np.ndarray, b: np.ndarray) -> bool:
    """Object arrays holding the same values of the same types (None where the other has None)."""
    return (
        a.dtype == b.dtype == object
        and a.shape == b.shape
        and all(
            type(x) is type(y) and (x is y or x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)))
            for x, y in zip(a, b)
        )
    )


# -- the values JSON gives, and the others that reach the general paths ------------------------------

big_ints = st.integers(min_value=-(10**400), max_value=10**400)
json_numbers = st.one_of(st.integers(-(2**70), 2**70), big_ints, st.floats(allow_nan=True, allow_infinity=True))
number_text = st.one_of(
    st.sampled_from(["", " ", "nan", "NaN", " 7 ", "3.5", "-0", "1e400", "inf", "0x10", "1_000", "abc", "True"]),
    json_numbers.map(str),
    st.text(max_size=6),
)
numpy_scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(np.int64),
    st.floats(width=32).map(np.float32),
    st.floats().map(np.float64),
    st.booleans().map(np.bool_),
)
json_scalars = st.one_of(st.none(), st.booleans(), json_numbers, number_text)
scalar_cells = st.one_of(json_scalars, numpy_scalars)  # what rows_to_columns lets through
any_cells = st.one_of(scalar_cells, st.just([1]), st.just({"a": 1}))


def object_array(values: list[Any]) -> np.ndarray:
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def one_type_columns(kinds: st.SearchStrategy[Any]) -> st.SearchStrategy[np.ndarray]:
    """Columns of one kind of value and None: what the fast paths take; now and then another value mixed in."""
    cells = st.one_of(kinds, st.none())
    mixed = st.lists(st.one_of(cells, cells, cells, scalar_cells), max_size=8)
    return st.one_of(st.lists(cells, max_size=8), mixed).map(object_array)


number_columns = st.one_of(
    one_type_columns(st.integers(-(2**70), 2**70)),
    one_type_columns(big_ints),
    one_type_columns(st.floats()),
    one_type_columns(json_numbers),
    one_type_columns(number_text),
    one_type_columns(numpy_scalars),
)
level_columns = st.one_of(
    one_type_columns(st.text(max_size=5)),
    one_type_columns(number_text),
    one_type_columns(st.integers(-(2**70), 2**70)),
    one_type_columns(big_ints),
    one_type_columns(st.floats()),
    one_type_columns(st.booleans()),
    one_type_columns(numpy_scalars),
)


# -- rows -> columns ----------------------------------------------------------------------------------

COLUMNS = ["a", "b", "c"]
keys = st.sampled_from(["a", "b", "c", "a", "b", "zz", 1])
plain_rows = st.dictionaries(keys, json_scalars, max_size=4)
odd_rows = st.one_of(
    st.dictionaries(keys, any_cells, max_size=4),
    plain_rows.map(types.MappingProxyType),  # a Mapping that is not a dict
    st.sampled_from([None, 3, "row", [1, 2]]),
)
known_rows = st.dictionaries(st.sampled_from(COLUMNS), json_scalars, max_size=3)
rows_lists = st.one_of(
    st.lists(known_rows, max_size=6), st.lists(st.one_of(known_rows, known_rows, plain_rows, odd_rows), max_size=6)
)


@FAST
@given(rows=rows_lists, unknown=st.sampled_from(["error", "ignore"]))
def test_plain_json_rows_become_exactly_the_columns_the_cell_by_cell_loop_gives(rows: list[Any], unknown: str) -> None:
    plain = _plain_json_columns(rows, COLUMNS, check_keys=unknown == "error")
    event(took(plain))
    reference = outcome(lambda: json_columns_cell_by_cell(rows, COLUMNS, unknown))
    if plain is not None:
        assert reference[0] == "value"
        assert list(plain) == list(reference[1]) == COLUMNS
        for name in COLUMNS:  # the very objects the rows hold, in place
            assert all(x is y for x, y in zip(plain[name], reference[1][name])), name
            assert plain[name].dtype == object and plain[name].shape == (len(rows),)
    public = outcome(lambda: rows_to_columns(rows, COLUMNS, unknown))
    assert public[0] == reference[0]
    if public[0] == "error":
        assert public[1] == reference[1]
    else:
        assert all(same_objects(public[1][name], reference[1][name]) for name in COLUMNS)


def test_rows_of_json_scalars_with_known_keys_take_the_fast_path() -> None:
    rows = [{"a": 1, "b": "x"}, {"c": None, "a": 2.5, "b": True}]
    assert _plain_json_columns(rows, COLUMNS, check_keys=True) is not None


# -- numbers ------------------------------------------------------------------------------------------


@FAST
@given(raw=number_columns)
def test_plain_numbers_are_exactly_what_pandas_reads(raw: np.ndarray) -> None:
    plain = _plain_numbers(raw)
    event(took(plain))
    reference = outcome(lambda: numbers_by_pandas(raw, "x"))
    if plain is not None:
        assert reference[0] == "value"
        assert same_floats(plain, reference[1])
    public = outcome(lambda: to_numbers(raw, "x"))
    if reference[0] == "error":
        assert public == reference
    elif public[0] == "value":
        assert same_floats(public[1], reference[1])
    else:  # only an infinity is refused after the reference's numbers
        assert np.isinf(reference[1]).any() and "NaN/Infinity not allowed" in public[1][1]


@FAST
@given(
    dtype=st.sampled_from([np.int64, np.int32, np.uint64, np.uint8, np.float32, np.float64, np.bool_]),
    values=st.lists(st.integers(0, 2**64 - 1), max_size=8),
)
def test_numeric_arrays_are_cast_to_the_numbers_pandas_reads(dtype: type, values: list[int]) -> None:
    raw = np.array(values, dtype=np.uint64).astype(dtype)
    assert same_floats(raw.astype(np.float64, copy=False), numbers_by_pandas(raw.astype(object), "x"))


def test_a_json_number_column_takes_the_fast_path() -> None:
    assert _plain_numbers(object_array([1, 2.5, None, -(2**60)])) is not None


# -- category levels ----------------------------------------------------------------------------------


@FAST
@given(raw=level_columns, numeric=st.booleans())
def test_plain_levels_are_exactly_the_levels_of_the_general_path(raw: np.ndarray, numeric: bool) -> None:
    plain = _plain_levels(raw, numeric)
    event(took(plain))
    reference = outcome(lambda: levels_by_pandas(raw, numeric))
    if plain is not None:
        assert reference[0] == "value"
        assert same_objects(plain, reference[1])
    public = outcome(lambda: category_levels(raw, numeric))
    assert public[0] == reference[0]
    if public[0] == "error":  # text beside an int beyond float range: pandas overflows on both
        assert public[1] == reference[1]
    else:
        assert same_objects(public[1], reference[1])


@FAST
@given(
    dtype=st.sampled_from([np.int64, np.int8, np.uint64, np.bool_]),
    values=st.lists(st.integers(0, 2**64 - 1), max_size=8),
    numeric=st.booleans(),
)
def test_integer_and_boolean_arrays_get_the_levels_of_their_values(
    dtype: type, values: list[int], numeric: bool
) -> None:
    raw = np.array(values, dtype=np.uint64).astype(dtype)
    assert same_objects(category_levels(raw, numeric), levels_by_pandas(raw, numeric))


def test_a_column_of_one_json_type_takes_the_fast_path() -> None:
    for values in (["a", None, "b"], [1, None, 3], [1.5, None, float("nan")], [True, None, False]):
        assert _plain_levels(object_array(values), numeric=False) is not None


@FAST
@given(
    vocab=st.lists(st.sampled_from(["#na#", "a", "b", "1", "2", "True"]), min_size=1, max_size=6),
    values=st.lists(st.sampled_from([None, "a", "b", "c", 1, 2.0, True, ""]), max_size=8),
)
def test_categorify_codes_are_the_first_position_of_each_level_in_the_vocabulary(
    vocab: list[str], values: list[Any]
) -> None:
    proc = Categorify.from_dict({"columns": ["c"], "vocab": {"c": vocab}, "numeric": []})
    levels = category_levels(object_array(values))
    expected = [
        vocab.index(level) if level in vocab else 0 for level in levels
    ]  # a search, as the dict lookup replaces
    assert proc.transform({"c": object_array(values)})[:, 0].tolist() == expected


# -- date parts ---------------------------------------------------------------------------------------

moments = st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2262, 1, 1))


@FAST
@given(
    moments=st.lists(st.one_of(moments, st.none()), max_size=8),
    unit=st.sampled_from(["ns", "us", "ms", "s"]),
    time=st.booleans(),
)
def test_date_parts_from_datetime_arithmetic_are_pandas_dt_accessors(
    moments: list[datetime | None], unit: str, time: bool
) -> None:
    dates = np.array(
        [np.datetime64(m, unit) if m else np.datetime64("NaT", unit) for m in moments], dtype=f"datetime64[{unit}]"
    )
    numbers, flags, missing = parts_of_dates(dates, time)
    ref_numbers, ref_flags, ref_missing = parts_of_dates_by_pandas(dates, time)
    assert np.array_equal(missing, ref_missing)
    assert numbers.keys() == ref_numbers.keys()
    for part in numbers:
        assert same_floats(numbers[part], ref_numbers[part]), part
    assert flags.keys() == ref_flags.keys()
    for part in flags:
        assert flags[part].dtype == bool and np.array_equal(flags[part], ref_flags[part]), part


def test_iso_weeks_at_the_turn_of_the_year() -> None:
    dates = np.array(["2020-12-31", "2021-01-03", "2021-01-04", "2026-12-31", "2027-01-01"], dtype="datetime64[ns]")
    assert parts_of_dates(dates)[0]["Week"].tolist() == [53, 53, 1, 53, 53]


# -- images -------------------------------------------------------------------------------------------

PLAIN_MODES = ["L", "RGB"]
OTHER_MODES = ["LA", "RGBA", "P", "I;16", "1"]


@st.composite
def encoded_images(draw: st.DrawFn, formats: tuple[str, ...] = ("PNG",)) -> bytes:
    """A small image in one of ``formats``: plain PNGs mostly, others with EXIF, text chunks or other modes."""
    width, height = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    mode = draw(st.sampled_from(PLAIN_MODES * 3 + OTHER_MODES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if draw(st.booleans()):  # smooth, as photos are, rather than noise
        pixels = np.sort(pixels, axis=draw(st.sampled_from([0, 1])))
    img = (
        Image.fromarray(pixels).convert(mode)
        if mode != "I;16"
        else Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    )
    fmt = draw(st.sampled_from(formats))
    options: dict[str, Any] = {}
    if fmt in ("PNG", "JPEG", "WEBP") and draw(st.integers(0, 5)) == 0:
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # the orientation; 0 and 9 are junk
        options["exif"] = exif.tobytes()
    if fmt == "PNG":
        options["compress_level"] = draw(st.integers(0, 9))
        if draw(st.integers(0, 5)) == 0:
            info = PngImagePlugin.PngInfo()
            info.add_text("comment", "a text chunk before the pixels")
            options["pnginfo"] = info
    elif img.mode not in ("L", "RGB") or fmt == "WEBP":
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


@FAST
@given(data=encoded_images(), max_pixels=st.sampled_from([40_000_000, 1600, 400, 1]))
def test_libspng_gives_exactly_pillows_pixels_for_the_pngs_it_takes(data: bytes, max_pixels: int) -> None:
    try:
        plain = plain_png_pixels(data, max_pixels)
    except ImageTooLarge:
        with pytest.raises(ImageTooLarge):
            decode_image(data, max_pixels, formats=SERVED_FORMATS)
        return
    reference = outcome(lambda: np.asarray(decode_image(data, max_pixels, formats=SERVED_FORMATS)))
    event(took(plain))
    if plain is not None:
        assert reference[0] == "value"
        assert plain.dtype == np.uint8 and np.array_equal(rgb(plain), reference[1])


@FAST
@given(
    data=encoded_images(),
    height=st.integers(1, 48),
    width=st.integers(1, 48),
    method=st.sampled_from(["crop", "squish", "pad"]),
    pad_mode=st.sampled_from(["reflection", "zeros"]),
)
def test_preprocess_gives_the_pixels_of_pillow_alone(
    data: bytes, height: int, width: int, method: str, pad_mode: str
) -> None:
    spec = ResizeSpec(height, width, method, pad_mode)
    try:
        expected = preprocess_by_pillow(data, spec, formats=SERVED_FORMATS)
    except ImageError:
        with pytest.raises(ImageError):
            preprocess(data, spec, formats=SERVED_FORMATS)
        return
    assert np.array_equal(preprocess(data, spec, formats=SERVED_FORMATS), expected)


@FAST
@given(data=encoded_images())
def test_to_chw_is_the_transposed_array_of_the_image(data: bytes) -> None:
    img = decode_image(data)
    for image in (img, img.convert("L")):
        expected = np.ascontiguousarray(rgb(np.asarray(image)).transpose(2, 0, 1))
        chw = to_chw(image)
        assert chw.dtype == np.uint8 and chw.flags.c_contiguous and np.array_equal(chw, expected)


@FAST
@given(data=encoded_images(formats=("PNG", "JPEG", "GIF", "BMP", "WEBP")))
def test_an_image_opened_by_its_sniffed_format_and_turned_only_when_it_must_is_pillows_own(data: bytes) -> None:
    img = open_image(data, formats=SERVED_FORMATS)  # told the format the magic bytes name
    reference = Image.open(io.BytesIO(data))  # every plugin in turn
    assert (img.format, img.size, img.mode) == (reference.format, reference.size, reference.mode)
    # load_image skips exif_transpose unless the orientation turns the image
    assert np.array_equal(np.asarray(load_image(img)), np.asarray(to_rgb(ImageOps.exif_transpose(reference))))


# -- monitoring ---------------------------------------------------------------------------------------


@FAST
@given(data=encoded_images(formats=("PNG", "JPEG", "GIF", "BMP", "WEBP")))
def test_a_png_size_read_from_its_header_is_the_size_pillow_reads(data: bytes) -> None:
    assert mon.encoded_size(data) == mon.encoded_size_by_pillow(data) != (0, 0)


@FAST
@given(
    n=st.integers(1, 4),
    height=st.integers(1, 100),
    width=st.integers(1, 100),
    seed=st.integers(0, 2**32 - 1),
    flat=st.booleans(),
)
def test_summary_matrix_is_the_per_image_summaries_to_float32_rounding(
    n: int, height: int, width: int, seed: int, flat: bool
) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 3, height, width), dtype=np.uint8)
    if flat:  # a uniform image: the variance is all cancellation
        pixels[:] = pixels[:, :, :1, :1]
    sizes = [tuple(int(v) for v in rng.integers(0, 5000, 2)) for _ in range(n)]
    fast = mon.summary_matrix(pixels, sizes)
    reference = mon.summary_matrix_by_image(pixels, sizes)
    assert fast.dtype == np.float64 and fast.shape == reference.shape == (n, 6)
    assert np.array_equal(fast[:, 3:], reference[:, 3:])  # the sizes and aspect, exactly
    # float32 sums: the means to 1e-6, and the variance E[x^2] - mean^2 to 1e-5 (on a uniform image that
    # cancellation is all there is, so the contrast, its square root, can read up to about 3e-3 instead of 0).
    np.testing.assert_allclose(fast[:, [0, 2]], reference[:, [0, 2]], rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast[:, 1] ** 2, reference[:, 1] ** 2, rtol=0, atol=1e-5)
