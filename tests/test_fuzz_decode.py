"""Fuzzing the image and mask decoding path (issue #12, bad input).

Whatever bytes lie in an image or mask file, ``read_image`` / ``read_mask`` return a correct array
(uint8 ``H×W`` / ``H×W×3``; bool ``H×W``) or raise :class:`DatasetError` naming the file: never
another exception, never a warning instead of an error, never a silent skip.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from iadlib.data import get_dataset
from iadlib.data.base import MAX_PIXELS, check_image, read_image, read_mask
from iadlib.errors import ConfigError, DatasetError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check_result(arr: np.ndarray) -> None:
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8
    assert arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3), arr.shape
    assert arr.shape[0] > 0 and arr.shape[1] > 0
    assert arr.flags.c_contiguous and arr.flags.writeable


def _decode_or_dataset_error(path: Path, reader=read_image) -> np.ndarray | None:
    """The contract: a valid array, or DatasetError naming the file; warnings count as failures."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            out = reader(path)
        except DatasetError as exc:
            assert str(path) in str(exc), f"error does not name the file: {exc}"
            return None
    if reader is read_mask:
        assert out.dtype == bool and out.ndim == 2
    else:
        _check_result(out)
    return out


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    im = Image.fromarray(arr) if mode is None else Image.fromarray(arr).convert(mode)
    im.save(buf, format=fmt)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int, bit_depth: int = 8, colour: int = 0, idat: bytes = b"") -> bytes:
    """A PNG whose header claims ``width × height`` pixels, followed by (little or no) data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr)
    if idat:
        body += _png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + body + _png_chunk(b"IEND", b"")


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (24, 32, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, (24, 32), dtype=np.uint8)
VALID = {
    "rgb.png": _encode(RGB, "PNG"),
    "grey.png": _encode(GREY, "PNG"),
    "rgb.jpg": _encode(RGB, "JPEG"),
    "grey.jpg": _encode(GREY, "JPEG"),
    "rgb.bmp": _encode(RGB, "BMP"),
    "rgb.tif": _encode(RGB, "TIFF"),
    "palette.png": _encode(RGB, "PNG", "P"),
    "rgba.png": _encode(RGB, "PNG", "RGBA"),
    "la.png": _encode(GREY, "PNG", "LA"),
    "cmyk.jpg": _encode(RGB, "JPEG", "CMYK"),
    "bilevel.png": _encode(GREY, "PNG", "1"),
}


# --- well-formed files of every mode decode to the documented shapes and values -------------------


@pytest.mark.parametrize(
    "name, shape",
    [
        ("rgb.png", (24, 32, 3)),
        ("grey.png", (24, 32)),
        ("rgb.jpg", (24, 32, 3)),
        ("grey.jpg", (24, 32)),
        ("rgb.bmp", (24, 32, 3)),
        ("rgb.tif", (24, 32, 3)),
        ("palette.png", (24, 32, 3)),
        ("rgba.png", (24, 32, 3)),
        ("la.png", (24, 32)),
        ("cmyk.jpg", (24, 32, 3)),
        ("bilevel.png", (24, 32)),
    ],
)
def test_valid_modes_decode(tmp_path, name, shape):
    p = tmp_path / name
    p.write_bytes(VALID[name])
    out = read_image(p)
    _check_result(out)
    assert out.shape == shape
    if name in ("rgb.png", "rgb.bmp", "rgb.tif", "rgba.png"):  # lossless: exact pixels
        np.testing.assert_array_equal(out, RGB)
    if name in ("grey.png", "la.png"):
        np.testing.assert_array_equal(out, GREY)
    if name == "bilevel.png":
        assert set(np.unique(out)) <= {0, 255}
    assert read_image(p, mode="L").ndim == 2 and read_image(p, mode="RGB").shape == (24, 32, 3)


def test_16bit_scaled_to_8bit(tmp_path):
    vals = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(vals).save(p)  # 16-bit greyscale PNG
    out = read_image(p)
    np.testing.assert_array_equal(out, [[0, 1, 128, 255]])
    assert read_image(p, mode="RGB").shape == (1, 4, 3)
    # A 16-bit TIFF too (PIL mode I;16)
    t = tmp_path / "deep.tif"
    Image.fromarray(vals).save(t)
    np.testing.assert_array_equal(read_image(t), [[0, 1, 128, 255]])


def test_float_tiff(tmp_path):
    p = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(p)
    np.testing.assert_array_equal(read_image(p), [[0, 128, 255]])
    bad = tmp_path / "nan.tif"
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(bad)
    with pytest.raises(DatasetError, match="nan.tif.*NaN"):
        read_image(bad)


def test_bad_mode_argument(tmp_path):
    p = tmp_path / "rgb.png"
    p.write_bytes(VALID["rgb.png"])
    with pytest.raises(ConfigError, match="'RGBA'"):
        read_image(p, mode="RGBA")


# --- broken files: a DatasetError naming the file ------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALID))
@pytest.mark.parametrize("keep", [0, 1, 8, 30, 0.5, 0.9])
def test_truncated_files(tmp_path, name, keep):
    data = VALID[name]
    n = keep if isinstance(keep, int) else int(len(data) * keep)
    p = tmp_path / f"cut_{name}"
    p.write_bytes(data[:n])
    out = _decode_or_dataset_error(p)
    if n < 30:  # too little to hold any pixel: must be an error, never an image
        assert out is None


@pytest.mark.parametrize("name", ["rgb.png", "grey.png", "palette.png", "rgb.tif"])
def test_truncated_lossless_never_silently_filled(tmp_path, name):
    """A lossless file missing its last bytes is an error, not an image padded with zeros."""
    data = VALID[name]
    p = tmp_path / name
    p.write_bytes(data[: len(data) - 40])
    with pytest.raises(DatasetError, match=name):
        read_image(p)


def test_missing_and_empty_file(tmp_path):
    with pytest.raises(DatasetError, match="nope.png.*not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty.png"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DatasetError, match="folder.png"):
        read_image(tmp_path / "folder.png")


def test_zero_size_header(tmp_path):
    for w, h in [(0, 10), (10, 0), (0, 0)]:
        p = tmp_path / f"zero_{w}x{h}.png"
        p.write_bytes(_png_header_only(w, h))
        with pytest.raises(DatasetError, match=p.name):
            read_image(p)


@pytest.mark.parametrize(
    "w, h",
    [(10_000, 10_000), (65_535, 65_535), (100_000, 1_000), (2**31 - 1, 2**31 - 1), (9_000, 8_000)],
)
def test_decompression_bomb_guard(tmp_path, w, h):
    """Huge dimensions in the header: refused before any pixel is allocated, file and size named."""
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(w, h, idat=zlib.compress(b"\0" * 64)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning must not leak out as a warning
        with pytest.raises(DatasetError, match="bomb.png") as err:
            read_image(p)
    msg = str(err.value)
    assert "pixels" in msg and ("limit" in msg or "large" in msg)


def test_pixel_limit_is_explicit(tmp_path):
    p = tmp_path / "wide.png"
    Image.fromarray(np.zeros((10, 50), np.uint8)).save(p)
    assert read_image(p).shape == (10, 50)
    with pytest.raises(DatasetError, match=r"wide.png: 50×10 = 500 pixels exceeds the limit of 499"):
        read_image(p, max_pixels=499)
    assert MAX_PIXELS < Image.MAX_IMAGE_PIXELS  # our guard triggers before PIL's warning zone


def test_real_compressed_bomb(tmp_path):
    """A small file (all-zero PNG) that would inflate to MAX_PIXELS + 1 pixels."""
    w = 8192
    h = MAX_PIXELS // w + 1
    raw = zlib.compress(b"\0" * ((w // 8 + 1) * 64), 9)  # a few rows suffice: the guard must not read them
    p = tmp_path / "zbomb.png"
    p.write_bytes(_png_header_only(w, h, bit_depth=1, idat=raw))
    assert p.stat().st_size < 10_000
    with pytest.raises(DatasetError, match=f"zbomb.png: {w}×{h}"):
        read_image(p)


# --- property-based fuzzing --------------------------------------------------------------------


@FUZZ
@given(data=st.binary(min_size=0, max_size=2048))
def test_fuzz_random_bytes(tmp_path, data):
    p = tmp_path / "random.png"
    p.write_bytes(data)
    _decode_or_dataset_error(p)
    _decode_or_dataset_error(p, read_mask)


@FUZZ
@given(
    name=st.sampled_from(sorted(VALID)),
    cut=st.integers(min_value=0, max_value=4096),
    flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), max_size=8),
)
def test_fuzz_mutated_images(tmp_path, name, cut, flips):
    """Real images, truncated at a random byte and with random bytes overwritten."""
    data = bytearray(VALID[name][: max(cut, 1)])
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    p = tmp_path / ("mut_" + name)
    p.write_bytes(bytes(data))
    _decode_or_dataset_error(p)
    _decode_or_dataset_error(p, read_mask)


@FUZZ
@given(
    w=st.integers(min_value=0, max_value=2**31 - 1),
    h=st.integers(min_value=0, max_value=2**31 - 1),
    depth=st.sampled_from([1, 2, 4, 8, 16]),
    colour=st.sampled_from([0, 2, 3, 4, 6]),
    idat=st.binary(max_size=64),
)
def test_fuzz_png_headers(tmp_path, w, h, depth, colour, idat):
    """Arbitrary (also invalid) header dimensions, bit depths and colour types."""
    p = tmp_path / "hdr.png"
    p.write_bytes(_png_header_only(w, h, depth, colour, zlib.compress(idat)))
    out = _decode_or_dataset_error(p)
    if out is not None:
        assert out.shape[:2] == (h, w)


# --- masks ---------------------------------------------------------------------------------------


def test_mask_binarisation(tmp_path):
    m = np.zeros((8, 8), np.uint8)
    m[2:4, 2:4] = 255
    m[0, 0] = 7  # JPEG-like noise in a 0/255 mask is not a defect
    p = tmp_path / "m255.png"
    Image.fromarray(m).save(p)
    out = read_mask(p)
    assert out.dtype == bool and out.sum() == 4 and not out[0, 0]
    # label masks (0/1, class indices) mark every non-zero pixel
    lab = np.zeros((8, 8), np.uint8)
    lab[1, 1], lab[5, 5] = 1, 3
    p2 = tmp_path / "labels.png"
    Image.fromarray(lab).save(p2)
    assert read_mask(p2).sum() == 2
    # 16-bit 0/1 and 0/65535 masks
    for top in (1, 65535):
        m16 = np.zeros((8, 8), np.uint16)
        m16[3, 3] = top
        p3 = tmp_path / f"m16_{top}.png"
        Image.fromarray(m16).save(p3)
        out = read_mask(p3)
        assert out.sum() == 1 and out[3, 3]
    # an RGB mask drawn in pure red
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[4, 4] = (255, 0, 0)
    p4 = tmp_path / "red.png"
    Image.fromarray(rgb).save(p4)
    assert read_mask(p4).sum() == 1


def test_mask_jpeg_keeps_the_shape(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    p = tmp_path / "m.jpg"
    Image.fromarray(m).save(p, quality=60)
    out = read_mask(p)
    assert abs(int(out.sum()) - 16 * 16) <= 16 and out[16, 16] and not out[0, 0]


def test_mask_size_mismatch(tmp_path):
    p = tmp_path / "mask.png"
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(p)
    assert read_mask(p, shape=(8, 10)).shape == (8, 10)
    assert read_mask(p, shape=(8, 10, 3)).shape == (8, 10)  # an image's shape works too
    msg = r"mask.png: mask of size \(8, 10\) does not match its image of size \(10, 8\)"
    with pytest.raises(DatasetError, match=msg):
        read_mask(p, shape=(10, 8))


def test_folder_dataset_with_broken_file_is_not_skipped(tmp_path):
    """A dataset loader meeting a corrupt file raises (naming it) instead of dropping the sample."""
    root = tmp_path / "ds"
    for sub in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (root / sub).mkdir(parents=True)
    img = np.full((16, 16), 100, np.uint8)
    for i in range(3):
        Image.fromarray(img).save(root / "train/good" / f"{i:03d}.png")
    Image.fromarray(img).save(root / "test/good/000.png")
    Image.fromarray(img).save(root / "test/crack/000.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "ground_truth/crack/000_mask.png")
    (root / "train/good/001.png").write_bytes(VALID["rgb.png"][:50])  # truncated
    try:
        ds = get_dataset("folder", root=root)
    except DatasetError as exc:  # eager loaders may fail at build time: fine, if the file is named
        assert "001.png" in str(exc)
        return
    with pytest.raises(DatasetError, match="001.png"):
        ds.train.images()


def test_folder_dataset_with_a_bomb_image_names_it(tmp_path):
    root = tmp_path / "ds"
    (root / "good").mkdir(parents=True)
    (root / "crack").mkdir()
    (root / "good/000.png").write_bytes(_png_header_only(20_000, 20_000, idat=zlib.compress(b"\0" * 64)))
    for i in range(1, 4):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "good" / f"{i:03d}.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "crack/000.png")
    with pytest.raises(DatasetError, match="000.png"):
        get_dataset("folder", root=root).train.images()


# --- round trips of random valid images, and in-memory arrays -------------------------------------


@FUZZ
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    mode=st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16", "1"]),
    fmt=st.sampled_from(["PNG", "TIFF"]),
    seed=st.integers(0, 2**16),
)
def test_fuzz_lossless_round_trip(tmp_path, h, w, mode, fmt, seed):
    """Random images of every mode, written losslessly, decode to the documented uint8 values."""
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        raw = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        im = Image.fromarray(raw)
        want = np.clip(np.round(raw.astype(np.float64) / 65535 * 255), 0, 255).astype(np.uint8)
    else:
        rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        im = Image.fromarray(rgba, "RGBA").convert(mode)
        want = np.asarray(im.convert("L" if mode in ("L", "LA", "1") else "RGB"))
        if mode == "1":
            want = np.asarray(im).astype(np.uint8) * 255
    p = tmp_path / f"img.{fmt.lower()}"
    im.save(p, format=fmt)
    out = read_image(p)
    _check_result(out)
    np.testing.assert_array_equal(out, want)


@FUZZ
@given(
    arr=st.one_of(
        hnp.arrays(
            dtype=st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_, np.uint16]),
            shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
            elements=None,
        ),
        hnp.arrays(dtype=np.complex64, shape=(3, 3)),
    )
)
def test_fuzz_in_memory_arrays(arr):
    """check_image (used on every array a detector is given): a valid uint8 image or a DatasetError."""
    try:
        out = check_image(arr, "array under test")
    except DatasetError as exc:
        assert "array under test" in str(exc)
        return
    assert out.dtype == np.uint8 and (out.ndim == 2 or (out.ndim == 3 and out.shape[2] == 3)) and out.size > 0
    if arr.dtype == np.uint8 and arr.ndim == 2:
        np.testing.assert_array_equal(out, arr)
