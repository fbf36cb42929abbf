"""Image decoding, validation and the two input transforms of SegEvery.

Two different resizes feed the two networks, exactly as the reference does:
- the object-aware detector sees a YOLO *letterbox* (long side to 1024, padded with grey 114 to a multiple of
  32);
- the SAM image encoder sees the image *resized so its longest side is 1024* with PIL's bilinear filter (which
  antialiases on downscale); normalisation and zero padding to 1024x1024 happen inside the encoder graph.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from segment_everything_contract import (
    DETECTOR_STRIDE,
    HARD_LIMITS,
    ContractError,
    Limits,
    check_image_bytes,
    check_image_shape,
)

ENCODER_IMAGE_SIZE = 1024
"""The SAM encoders take a 1024x1024 canvas; boxes are given to the decoder in this frame."""

DETECTOR_IMAGE_SIZE = 1024
"""MobileSAMv2 runs the object-aware model at imgsz=1024."""

LETTERBOX_PAD_VALUE = 114

PIXEL_MEAN = (123.675, 116.28, 103.53)
"""SAM's RGB normalisation on 0-255 pixels (applied inside the encoder graph)."""
PIXEL_STD = (58.395, 57.12, 57.375)

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
#: EXIF orientations (tag 0x0112) that swap width and height; OpenCV's decoder applies them (as cv2.imread).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


class InvalidImageError(ContractError):
    """The input is not an image this service accepts; the message says why (shown to the caller)."""


@dataclass(frozen=True)
class LetterboxInfo:
    """Geometry of one letterbox: the detector input shape and the original image shape, both (h, w)."""

    input_shape: tuple[int, int]
    image_shape: tuple[int, int]


@dataclass(frozen=True)
class ImageHeader:
    """What an encoded file's header says, read without decoding pixels; ``height``/``width`` are the size
    after the EXIF orientation (what the decoder returns)."""

    format: str
    height: int
    width: int
    frames: int = 1


def probe_image(data: bytes, limits: Limits = HARD_LIMITS) -> ImageHeader:
    """Read and check an encoded image's header: size of the file, format, dimensions, aspect ratio.

    PIL parses only the header here, so that a file announcing e.g. 30000x30000 pixels is refused before any
    pixel is decoded.

    Raises:
        InvalidImageError: empty, too large a file, unrecognised or unsupported format, too small, too large
            or too elongated an image.
    """
    try:
        check_image_bytes(len(data), limits)
    except ContractError as exc:
        raise InvalidImageError(str(exc)) from None
    pil_limit, Image.MAX_IMAGE_PIXELS = (
        Image.MAX_IMAGE_PIXELS,
        None,
    )  # our limit applies, with a better message
    unrecognised = InvalidImageError(
        f"data is not a recognised image ({len(data)} bytes); expected one of {', '.join(SUPPORTED_FORMATS)}"
    )
    try:
        with Image.open(io.BytesIO(data)) as header:
            fmt, (width, height) = header.format, header.size
            if fmt not in SUPPORTED_FORMATS:
                raise InvalidImageError(
                    f"unsupported image format {fmt}; expected one of {', '.join(SUPPORTED_FORMATS)}"
                )
            # The limits first, on the header's size (turning by the orientation changes neither the pixel
            # count nor the aspect ratio): nothing below may read pixels of an image over them. (PIL's getexif
            # on a PNG without an eXIf chunk before IDAT loads the whole image: a PNG header announcing
            # 100000x100000 took a stub to 9.5 GB when the orientation was read first.)
            try:
                check_image_shape(height, width, limits)
            except ContractError as exc:
                raise InvalidImageError(str(exc)) from None
            frames = int(getattr(header, "n_frames", 1) or 1) if fmt == "GIF" else 1
            # OpenCV turns JPEG and PNG (eXIf) by their EXIF orientation; PIL reports TIFF sizes turned
            orientation = _orientation(header) if fmt in ("JPEG", "PNG") else 1
    except InvalidImageError:
        raise
    except Exception:
        raise unrecognised from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(fmt, height, width, frames)


def _orientation(header: Image.Image) -> int:
    """EXIF orientation (OpenCV applies it when it decodes); 1 when absent or unreadable. Never decodes
    pixels: a PNG's EXIF is read from the eXIf chunk PIL met before the image data (where OpenCV reads it)."""
    try:
        if header.format == "PNG":
            raw = header.info.get("exif")
            if not raw:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(0x0112, 1))
        return int(header.getexif().get(0x0112, 1))
    except Exception:
        return 1


def decode_image(data: bytes, header: ImageHeader | None = None, limits: Limits = HARD_LIMITS) -> np.ndarray:
    """Decode encoded image bytes to an RGB uint8 ``HxWx3`` array (first frame of an animation).

    Pixels are decoded with OpenCV, as the reference (``cv2.imread``) does, which also converts grayscale,
    RGBA and 16-bit images to 8-bit 3-channel and applies the EXIF orientation. GIF, which this OpenCV build
    does not read, is decoded with PIL (first frame, palette to RGB). ``header`` is :func:`probe_image`'s
    result when the caller already has it.

    Raises:
        InvalidImageError: see :func:`probe_image`; truncated or corrupt data; pixels that disagree with the
            header (a file whose header lies).
    """
    header = header or probe_image(data, limits)
    if header.format == "JPEG" and not _jpeg_is_complete(data):
        # libjpeg decodes a truncated JPEG with only a warning, filling the rest with grey: refuse it instead.
        raise InvalidImageError("image: JPEG data is truncated (no end-of-image marker)")
    if header.format == "GIF":
        image = _decode_first_frame_with_pil(data)
    else:
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InvalidImageError(
                f"image: {header.format} data is corrupt or truncated and could not be decoded"
            )
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if image.shape[:2] not in ((header.height, header.width), (header.width, header.height)):
        raise InvalidImageError(
            f"{header.format} pixels are {image.shape[1]}x{image.shape[0]} but its header says "
            f"{header.width}x{header.height}"
        )
    return image


def _decode_first_frame_with_pil(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)
            return np.asarray(image.convert("RGB"))
    except Exception:
        raise InvalidImageError("image: GIF data is corrupt or truncated and could not be decoded") from None


_JPEG_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_is_complete(data: bytes) -> bool:
    """Walk the JPEG's segments from its start to its end-of-image marker (entropy-coded data skipped up to
    the next real marker: inside it ``FF`` is stuffed as ``FF 00`` or a restart marker). A stream that ends
    before that marker is truncated; data after it (padding, or a ZIP or HTML appended by a polyglot) is
    ignored, as ``cv2.imread`` (the reference) ignores it. An EXIF thumbnail, a whole JPEG inside APP1, is
    skipped with its segment."""
    i, n = 2, len(data)  # past SOI
    while i + 1 < n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xD9:  # EOI
            return True
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, RST, TEM: no length
            i += 1 if marker == 0xFF else 2
            continue
        if i + 4 > n:
            return False
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data up to the next real marker
            found = _JPEG_MARKER_IN_SCAN.search(data, i)
            if found is None:
                return False
            i = found.start()
    return False


def validate_rgb_array(image: np.ndarray, limits: Limits = HARD_LIMITS) -> np.ndarray:
    """Check a raw pixel input: uint8, ``HxWx3`` RGB, within the limits. Returns it C-contiguous."""
    if image.dtype != np.uint8:
        raise InvalidImageError(f"image_raw must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"image_raw must have shape HxWx3 (RGB), got {list(image.shape)}")
    try:
        check_image_shape(image.shape[0], image.shape[1], limits)
    except ContractError as exc:
        raise InvalidImageError(str(exc)) from None
    return np.ascontiguousarray(image)


def letterbox(
    image: np.ndarray,
    size: int = DETECTOR_IMAGE_SIZE,
    stride: int = DETECTOR_STRIDE,
    pad_value: int = LETTERBOX_PAD_VALUE,
) -> tuple[np.ndarray, LetterboxInfo]:
    """YOLO letterbox as ultralytics 8.0.x ``LetterBox(auto=True)``: minimum rectangle, centred padding.

    Scale ``r = min(size/h, size/w)`` (upscaling allowed), resize to ``(round(w*r), round(h*r))`` with
    INTER_LINEAR, then pad each side to the next multiple of ``stride``; the odd pixel goes bottom/right
    (``round(d/2 - 0.1)`` / ``round(d/2 + 0.1)``). Channel order is left as given.
    """
    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = round(w * r), round(h * r)
    dw, dh = (size - new_w) % stride / 2, (size - new_h) % stride / 2
    if (new_w, new_h) != (w, h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    out = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(pad_value,) * 3)
    return out, LetterboxInfo(input_shape=(out.shape[0], out.shape[1]), image_shape=(h, w))


DETECTOR_CHANNEL_ORDER = "bgr"
"""The reference hands ultralytics an RGB array, which ultralytics takes for BGR and flips: the detector
network really sees BGR. Parity with the official pipeline needs the same order ("rgb" is what the network was
trained on, and the setting to use once the reference is fixed)."""


def detector_input(
    image_rgb: np.ndarray, channel_order: str = DETECTOR_CHANNEL_ORDER
) -> tuple[np.ndarray, LetterboxInfo]:
    """The detector's letterboxed uint8 ``HxWx3`` input in the network's channel order, and its geometry."""
    if channel_order not in ("bgr", "rgb"):
        raise ValueError(f"detector channel order must be 'bgr' or 'rgb', got {channel_order!r}")
    boxed, info = letterbox(image_rgb)
    if channel_order == "bgr":
        boxed = np.ascontiguousarray(boxed[:, :, ::-1])
    return boxed, info


def encoder_input_size(height: int, width: int, long_side: int = ENCODER_IMAGE_SIZE) -> tuple[int, int]:
    """``(newh, neww)`` of SAM's ResizeLongestSide: ``int(x * long_side / max(h, w) + 0.5)``."""
    scale = long_side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, long_side: int = ENCODER_IMAGE_SIZE) -> np.ndarray:
    """SAM's ResizeLongestSide on an RGB uint8 image, with PIL bilinear (antialiased on downscale) like
    SAM."""
    new_h, new_w = encoder_input_size(image.shape[0], image.shape[1], long_side)
    if (new_h, new_w) == image.shape[:2]:
        return np.ascontiguousarray(image)
    return np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))


def encoder_canvas(image: np.ndarray, long_side: int = ENCODER_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The image encoder's inputs: the resized image zero-padded bottom/right to ``long_side`` square (uint8,
    ``HxWx3``), and its valid size ``[newh, neww]`` (int32). The graph normalises and re-zeroes the
    padding."""
    resized = resize_longest_side(image, long_side)
    canvas = np.zeros((long_side, long_side, 3), np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas, np.array(resized.shape[:2], np.int32)
