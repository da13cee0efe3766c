"""Photos decode as a viewer shows them: orientation, bit depth, colour modes, draft mode, the pixel limit."""

from __future__ import annotations

import io
import random
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageOps

from airflow_tl.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, decode, to_8bit
from airflow_tl.data.preprocess import decode_side, to_pixels
from airflow_tl.models.card import InputSpec

BIG = 10**9  # a pixel limit no test image reaches


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def pixels(data: bytes, channels: int = 3, **kwargs) -> np.ndarray:
    return np.asarray(decode(data, "k", channels=channels, max_pixels=kwargs.pop("max_pixels", BIG), **kwargs))


def png(width: int, height: int, bit_depth: int, colour_type: int, rows: np.ndarray) -> bytes:
    """A PNG written by hand, for sample layouts Pillow cannot save (16 bits per channel)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def tiff(samples: np.ndarray, sample_format: int | None = None) -> bytes:
    """An uncompressed little-endian TIFF written by hand, for sample types Pillow cannot save.

    ``samples`` is (H, W) grayscale or (H, W, 3) RGB; the bit depth is its dtype's. ``sample_format``
    (1 unsigned, 2 signed) is written for grayscale only; None leaves the tag out.
    """
    height, width = samples.shape[:2]
    channels = samples.shape[2] if samples.ndim == 3 else 1
    bits = samples.dtype.itemsize * 8
    body = samples.astype(samples.dtype.newbyteorder("<")).tobytes()
    entries = 10 + (sample_format is not None)
    bits_at = 8 + 2 + 12 * entries + 4  # where three BitsPerSample values go when they do not fit the entry
    data_at = bits_at + 6
    tags = [
        (256, 3, 1, width), (257, 3, 1, height), (258, 3, channels, bits if channels == 1 else bits_at),
        (259, 3, 1, 1), (262, 3, 1, 2 if channels == 3 else 1), (273, 4, 1, data_at), (277, 3, 1, channels),
        (278, 3, 1, height), (279, 4, 1, len(body)), (284, 3, 1, 1),
    ]  # fmt: skip
    if sample_format is not None:
        tags.append((339, 3, 1, sample_format))
    ifd = struct.pack("<H", entries) + b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", bits, bits, bits) + body


GRADIENT16 = np.linspace(0, 65535, 48 * 64).round().astype(np.uint16).reshape(48, 64)


# --- EXIF orientation ---------------------------------------------------------------------------------------------


def upright() -> Image.Image:
    """60x40, white, with a red block at the top-left corner: any rotation or flip moves it."""
    image = Image.new("RGB", (60, 40), (255, 255, 255))
    image.paste((255, 0, 0), (0, 0, 20, 12))
    return image


# How a camera stores the upright scene for each orientation tag (the inverse of what the tag asks a viewer to do).
STORED = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    stored = upright().transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    data = encode(stored, fmt, exif=exif.tobytes(), **options)

    out = pixels(data)
    assert out.shape == (40, 60, 3)
    assert out[:12, :20].mean(axis=(0, 1)) == pytest.approx((255, 0, 0), abs=12)  # the mark is top-left again
    assert out[28:, 40:].mean() == pytest.approx(255, abs=6)
    viewer = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.abs(out.astype(int) - viewer).max() <= (2 if fmt == "JPEG" else 0)  # as Pillow's own viewer helper


def test_orientation_survives_draft_mode() -> None:
    stored = upright().resize((1200, 800)).transpose(STORED[6])  # 800x1200 as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    out = pixels(data, min_side=200)
    assert out.shape == (200, 300, 3)  # 1/4 scale, landscape again
    assert out[:60, :100].mean(axis=(0, 1)) == pytest.approx((255, 0, 0), abs=12)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_damaged_exif_keeps_the_picture() -> None:
    damaged = encode(upright(), "PNG", exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    assert np.array_equal(pixels(damaged), np.asarray(upright()))
    exif = Image.Exif()
    exif[0x0112] = 9  # no such orientation
    assert np.array_equal(pixels(encode(upright(), "PNG", exif=exif.tobytes())), np.asarray(upright()))
    exif[0x0112] = 6
    short_6 = b"\x01\x12\x00\x03\x00\x00\x00\x01\x00\x06"  # big-endian: tag 274, SHORT, 1 value: 6
    as_text = exif.tobytes().replace(short_6, b"\x01\x12\x00\x02\x00\x00\x00\x026\x00")  # ASCII "6"
    assert Image.open(io.BytesIO(encode(upright(), "PNG", exif=as_text))).getexif()[0x0112] == "6"
    assert np.array_equal(pixels(encode(upright(), "PNG", exif=as_text)), np.asarray(upright()))


# --- bit depth ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt: str) -> None:
    data = encode(Image.fromarray(GRADIENT16), fmt)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = pixels(data, channels=1)
    expected = GRADIENT16 / 257
    assert out.mean() == pytest.approx(expected.mean(), abs=0.5)
    assert np.abs(out - expected).max() <= 0.5 + 1e-9  # rounded, not clipped and not truncated
    assert (out == 255).mean() < 0.01  # the clipping decoder made 99.6 % of such an image white
    rgb = pixels(data, channels=3)
    assert rgb.shape == (48, 64, 3) and (rgb == out[:, :, None]).all()


def test_16_bit_big_endian_samples() -> None:
    image = Image.fromarray(GRADIENT16.astype(">u2"))
    assert image.mode == "I;16B"
    assert np.array_equal(np.asarray(to_8bit(image)), np.rint(GRADIENT16 / 257))


def test_48_bit_png_keeps_each_samples_high_byte() -> None:
    # Pillow decodes 16-bit-per-channel PNGs to 8-bit RGB itself, keeping the high byte (v // 256):
    # a scale, within one level of v / 257, not a clip.
    rgb16 = np.stack([GRADIENT16, GRADIENT16[::-1], np.full_like(GRADIENT16, 0x8000)], axis=-1).astype(">u2")
    out = pixels(png(64, 48, 16, 2, rgb16))
    assert np.array_equal(out, (rgb16.astype(np.int64) // 256).astype(np.uint8))
    assert np.abs(out - rgb16 / 257).max() <= 1.0


def test_16_bit_rgb_tiff_keeps_each_samples_high_byte() -> None:
    rgb16 = np.stack([GRADIENT16, GRADIENT16[::-1], np.full_like(GRADIENT16, 0x4000)], axis=-1)
    out = pixels(tiff(rgb16))
    assert np.array_equal(out, (rgb16.astype(np.int64) // 256).astype(np.uint8))


@pytest.mark.parametrize(
    ("samples", "sample_format", "expected"),
    [
        (np.array([[-100, 0, 16384, 32767]], np.int16), 2, [[0, 0, 128, 255]]),
        (np.array([[0, 2**31, 2**32 - 1]], np.uint32), 1, [[0, 128, 255]]),
        (np.array([[0, 2**31, 2**32 - 1]], np.uint32), None, [[0, 128, 255]]),  # TIFF's default: unsigned
        (np.array([[0, 2**30, 2**31 - 1, -5]], np.int32), 2, [[0, 128, 255, 0]]),
    ],
    ids=["int16", "uint32", "uint32-untagged", "int32"],
)
def test_integer_tiffs_scale_by_their_sample_type(samples: np.ndarray, sample_format: int | None, expected) -> None:
    data = tiff(samples, sample_format)
    assert Image.open(io.BytesIO(data)).mode == "I"
    assert pixels(data, channels=1).tolist() == expected


def test_32_bit_integer_and_float_tiffs_scale_by_their_range() -> None:
    ints = np.array([[0, 2**30, 2**31 - 1, -5]], dtype=np.int32)
    assert pixels(encode(Image.fromarray(ints), "TIFF"), channels=1).tolist() == [[0, 128, 255, 0]]
    floats = np.array([[0.0, 0.5, 1.0, 2.0, -1.0]], dtype=np.float32)
    assert pixels(encode(Image.fromarray(floats), "TIFF"), channels=1).tolist() == [[0, 128, 255, 255, 0]]


# --- colour modes and formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cmyk", "rgb"), [((0, 255, 255, 0), (255, 0, 0)), ((255, 0, 0, 0), (0, 255, 255))])
def test_cmyk_jpeg_becomes_rgb(cmyk: tuple, rgb: tuple) -> None:
    data = encode(Image.new("CMYK", (32, 24), cmyk), "JPEG", quality=95)  # Pillow writes Adobe's inverted CMYK
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = pixels(data)
    assert out.shape == (24, 32, 3)
    assert out.reshape(-1, 3).mean(axis=0) == pytest.approx(rgb, abs=3)


def test_palette_png_with_transparency_is_on_white() -> None:
    image = Image.new("P", (20, 10), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (254 * 3))
    image.paste(0, (0, 0, 10, 10))  # left half: index 0, declared transparent
    out = pixels(encode(image, "PNG", transparency=0))
    assert (out[:, :10] == 255).all()
    assert (out[:, 10:] == (200, 100, 50)).all()


def test_a_transparent_colour_key_is_on_white() -> None:
    image = Image.new("RGB", (20, 10), (10, 20, 30))
    image.paste((255, 0, 0), (0, 0, 10, 10))
    out = pixels(encode(image, "PNG", transparency=(255, 0, 0)))  # a tRNS chunk: pure red is transparent
    assert (out[:, :10] == 255).all() and (out[:, 10:] == (10, 20, 30)).all()


@pytest.mark.parametrize(("la", "grey"), [((90, 255), 90), ((90, 0), 255), ((0, 128), 127)])
def test_grey_with_alpha_is_on_white(la: tuple, grey: int) -> None:
    out = pixels(encode(Image.new("LA", (8, 8), la), "PNG"))
    assert (out == grey).all()


def test_one_bit_image() -> None:
    image = Image.new("1", (16, 8), 0)
    image.paste(1, (8, 0, 16, 8))
    out = pixels(encode(image, "PNG"))
    assert (out[:, :8] == 0).all() and (out[:, 8:] == 255).all()


def test_bmp_and_gif_first_frame() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8)
    assert np.array_equal(pixels(encode(Image.fromarray(rgb), "BMP")), rgb)
    frames = [Image.new("RGB", (10, 10), (255, 0, 0)), Image.new("RGB", (10, 10), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert (pixels(data) == (255, 0, 0)).all()


@pytest.mark.parametrize("name", ["a.JPG", "b.Jpeg", "c.TIF", "d.tiff", "e.BMP", "f.PNG", "g.WebP", "h.GIF"])
def test_extensions_are_matched_whatever_their_case(name: str) -> None:
    assert name.lower().endswith(IMAGE_EXTENSIONS)
    assert all(ext == ext.lower() and ext.startswith(".") for ext in IMAGE_EXTENSIONS)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not an image at all", "not an image in a format Pillow can read"), (None, "image file is truncated")],
    ids=["garbage", "truncated"],
)
def test_unreadable_images_raise_with_their_key(data: bytes | None, reason: str) -> None:
    if data is None:
        full = encode(Image.effect_noise((64, 64), 40).convert("RGB"), "JPEG")
        data = full[: len(full) // 2]
    with pytest.raises(ImageDecodeError) as raised:
        decode(data, "cats/x.jpg", channels=3, max_pixels=BIG)
    assert "cats/x.jpg" in str(raised.value) and reason in raised.value.reason


# --- the pixel limit ----------------------------------------------------------------------------------------------


def test_an_image_over_the_limit_is_refused_naming_key_and_limit() -> None:
    data = encode(Image.new("RGB", (40, 30)), "PNG")
    assert pixels(data, max_pixels=1200).shape == (30, 40, 3)  # exactly at the limit
    with pytest.raises(ImageDecodeError) as raised:
        decode(data, "dogs/huge.png", channels=3, max_pixels=1199)
    message = str(raised.value)
    assert "dogs/huge.png" in message and "1200 pixels" in message and "1199" in message
    assert "max_image_pixels" in message


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose header claims ``width`` x ``height``: a decompression bomb in miniature."""
    data = encode(Image.new("RGB", (16, 16), (9, 9, 9)), "JPEG")
    frame = data.index(b"\xff\xc0")  # SOF0: marker, length, precision, height, width
    return data[: frame + 5] + struct.pack(">HH", height, width) + data[frame + 9 :]


def test_the_limit_is_checked_from_the_header_before_decoding() -> None:
    bomb = jpeg_claiming(14000, 13000)
    with pytest.raises(ImageDecodeError, match="14000x13000 is 182000000 pixels, over the limit of 1000000"):
        decode(bomb, "k", channels=3, max_pixels=10**6)
    # Above twice Pillow's own global threshold (179 M pixels), the setting is still the only limit;
    # draft mode keeps this one small (libjpeg fills what the file lacks after its end marker).
    assert decode(bomb, "k", channels=3, max_pixels=2 * 10**8, min_side=1000).size == (1750, 1625)


def test_the_limit_is_applied_identically_from_many_threads() -> None:
    # Two streams with different limits decoding at once from eight threads: no shared state between them.
    small, large = encode(Image.new("L", (30, 30)), "PNG"), encode(Image.new("L", (31, 30)), "PNG")
    jobs = [(data, limit) for _ in range(100) for data in (small, large) for limit in (900, 930)]

    def refused(job: tuple[bytes, int]) -> bool:
        try:
            decode(job[0], "k", channels=1, max_pixels=job[1])
        except ImageDecodeError:
            return True
        return False

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(refused, jobs))
    assert results == [data is large and limit == 900 for data, limit in jobs]


# --- draft mode ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo_12mp() -> bytes:
    """A 4000x3000 JPEG (2 MB) with smooth structure and fine texture down to 8-pixel detail."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((4000, 3000), Image.BICUBIC)
    fine = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)).resize((4000, 3000), Image.BILINEAR)
    return encode(Image.blend(coarse, fine, 0.3), "JPEG", quality=90)


SPEC = InputSpec(crop_size=224, resize_size=256)


def test_draft_keeps_the_short_side_asked_for(photo_12mp: bytes) -> None:
    for min_side, size in [(256, (500, 375)), (355, (500, 375)), (400, (1000, 750)), (1600, (4000, 3000))]:
        image = decode(photo_12mp, "k", channels=3, max_pixels=BIG, min_side=min_side)
        assert image.size == size and min(image.size) >= min_side
    assert decode(photo_12mp, "k", channels=1, max_pixels=BIG, min_side=256).mode == "L"


def test_draft_decoding_gives_nearly_the_full_decodes_pixels(photo_12mp: bytes) -> None:
    full = decode(photo_12mp, "k", channels=3, max_pixels=BIG)
    draft = decode(photo_12mp, "k", channels=3, max_pixels=BIG, min_side=decode_side(SPEC, False))
    assert full.size == (4000, 3000) and draft.size == (500, 375)
    a, b = to_pixels(full, SPEC), to_pixels(draft, SPEC)
    assert a.shape == b.shape == (3, 224, 224)
    assert a.float().std() > 10  # the comparison is over real texture, not a flat image
    assert (a.float() - b.float()).abs().mean() < 1.5  # out of 255; measured 0.5


@pytest.mark.parametrize("key", range(6))
def test_draft_decoding_gives_nearly_the_same_training_crop(photo_12mp: bytes, key: int) -> None:
    full = decode(photo_12mp, "k", channels=3, max_pixels=BIG)
    draft = decode(photo_12mp, "k", channels=3, max_pixels=BIG, min_side=decode_side(SPEC, True))
    assert draft.size == (500, 375)
    # The same region of the photo, to within half a decoded pixel: close, where another region would not be.
    a, b = to_pixels(full, SPEC, random.Random(f"0:1:{key}")), to_pixels(draft, SPEC, random.Random(f"0:1:{key}"))
    assert (a.float() - b.float()).abs().mean() < 6  # measured 1.3-4.1
    other = to_pixels(full, SPEC, random.Random(f"0:1:{key + 100}"))
    assert (a.float() - other.float()).abs().mean() > 15
    # At the same decoded size the crops coincide exactly, and the pixels differ only by the DCT scaling.
    downscaled = full.resize(draft.size, Image.BILINEAR)
    c = to_pixels(downscaled, SPEC, random.Random(f"0:1:{key}"))
    assert (c.float() - b.float()).abs().mean() < 1.5  # measured 0.5-0.7
