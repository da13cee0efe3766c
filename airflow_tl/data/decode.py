"""One encoded image to a PIL image in the model's mode, as a photo viewer shows it.

Every loader thread calls ``decode``: the header is read first and the size checked against a pixel
limit the caller passes in (read once per stream from ``[airflow_tl] max_image_pixels``), so every
thread applies the same limit without touching shared state. Large JPEGs are decoded at 1/2, 1/4 or
1/8 scale (libjpeg's DCT scaling, Pillow's draft mode) when the caller says how small the image may
get. Then: EXIF orientation applied; 16-bit, 32-bit and float samples scaled into 0..255 rather than
clipped; alpha blended onto white; CMYK, palette, 1-bit and grayscale converted to RGB or L.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, ImageFile

# Lower-case, compared case-insensitively (``name.lower().endswith(IMAGE_EXTENSIONS)``). GIF and
# animated WebP give their first frame.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif")

# Pillow's own bomb check runs inside Image.open against a process-wide threshold (a warning above it,
# an error above twice it), whatever [airflow_tl] max_image_pixels says. Our limit is checked from the
# header before any pixel is decoded, so Pillow's is switched off once, here, rather than toggled (or
# silenced with warnings.catch_warnings) around each open, which races between loader threads.
Image.MAX_IMAGE_PIXELS = None
# A truncated file is an error, never a silently grey-filled image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

PIXEL_LIMIT_SETTING = "[airflow_tl] max_image_pixels"
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)
_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that shows the image upright (the table of ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


class ImageDecodeError(ValueError):
    """An image that cannot be used: unreadable, truncated, or over the pixel limit."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"Image {key} cannot be decoded: {reason}")
        self.key = key
        self.reason = reason


def decode(data: bytes, key: str, *, channels: int, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Decode one image, upright and in the model's mode (``RGB`` for 3 channels, ``L`` for 1).

    :param data: the encoded file.
    :param key: where it came from, for error messages.
    :param channels: 3 or 1, as the model card's input spec says.
    :param max_pixels: the largest width x height accepted; larger images raise before decoding.
    :param min_side: the shortest side the output may have; a JPEG is decoded at the smallest
        DCT scale that keeps both sides at least this long. None decodes at full size.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError(key, "not an image in a format Pillow can read") from exc
    except _PIL_ERRORS as exc:
        raise ImageDecodeError(key, str(exc) or type(exc).__name__) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            key, f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels} ({PIXEL_LIMIT_SETTING})"
        )
    try:
        if min_side:
            # A square request keeps both sides >= min_side, whichever way the EXIF orientation turns them.
            image.draft("L" if channels == 1 else "RGB", (min_side, min_side))
        image.load()
        orientation = _orientation(image)
        image = to_8bit(image)
        if orientation in _UPRIGHT:
            image = image.transpose(_UPRIGHT[orientation])
        return to_model_mode(image, channels)
    except _PIL_ERRORS as exc:
        raise ImageDecodeError(key, str(exc) or type(exc).__name__) from exc


def to_model_mode(image: Image.Image, channels: int) -> Image.Image:
    """Any mode in the channel layout the network expects: ``RGB`` or ``L``, transparency on white.

    :param image: a loaded image in any Pillow mode.
    :param channels: 3 or 1.
    """
    image = to_8bit(image)
    if image.has_transparency_data:
        # Transparent pixels become white rather than whatever colour they happen to hold.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    wanted = "RGB" if channels == 3 else "L"
    # Pillow's CMYK -> RGB is the plain formula (no ICC profile); 1-bit becomes 0/255.
    return image if image.mode == wanted else image.convert(wanted)


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float grayscale as 8-bit ``L``, scaled by the sample type's range, not clipped.

    Unsigned 16-bit divides by 257 (65535 -> 255). 32-bit integer images (``I``) map 0..the type's
    maximum onto 0..255, negatives to 0; the type is a TIFF's BitsPerSample and SampleFormat (unsigned
    when absent, as TIFF says), or Pillow's own signed 32-bit for an image not read from a TIFF.
    Floats (``F``) are taken as 0..1, the convention of float image files. Other modes are returned as is.

    :param image: a loaded image.
    """
    if image.mode in _SIXTEEN_BIT:
        samples, top = np.asarray(image), 65535
    elif image.mode == "I":
        samples, top = _integer_samples(image)
    elif image.mode == "F":
        samples, top = np.asarray(image), 1
    else:
        return image
    scaled = np.rint(np.clip(samples.astype(np.float32) * np.float32(255 / top), 0, 255)).astype(np.uint8)
    return Image.fromarray(scaled)  # uint8, two axes: mode L


def _integer_samples(image: Image.Image) -> tuple[np.ndarray, int]:
    samples = np.asarray(image)  # int32
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return samples, 2**31 - 1
    bits = _first(tags.get(258), 32)  # BitsPerSample
    if _first(tags.get(339), 1) == 2:  # SampleFormat 2: signed
        return samples, 2 ** (bits - 1) - 1
    if bits == 32:
        samples = samples.view(np.uint32)  # Pillow keeps unsigned 32-bit samples' bits in its int32 image
    return samples, 2**bits - 1


def _first(value, default: int) -> int:
    if isinstance(value, tuple):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) else default


def _orientation(image: Image.Image) -> int:
    value = image.getexif().get(_ORIENTATION, 1)  # Pillow reads a damaged EXIF block as empty, with a warning
    # A malformed tag (text, a list) loses the orientation, not the picture: it is shown as stored.
    return value if isinstance(value, int) else 1
