"""Turn what users hold (a path, file bytes, a numpy array, a PIL image) into a request payload.

Two payloads exist, matching the model's two image inputs:

* ``image`` (BYTES): the encoded file (JPEG/PNG/WebP/BMP/TIFF) sent as-is. Paths and bytes go
  this way: a 3 MB JPEG stays 3 MB on the wire and the server decodes it.
* ``image_raw`` (UINT8 ``HxWx3``, RGB): decoded pixels. Arrays and PIL images go this way; a
  12-megapixel image is 36 MB per request, so prefer paths/bytes for remote servers.

Arrays are RGB by default. ``cv2.imread`` returns **BGR**: pass ``channel_order="bgr"`` for it.

>>> import numpy as np
>>> payload = prepare_image(np.zeros((4, 6, 3), dtype=np.uint8))
>>> payload.input_name, payload.array.shape, payload.image_size
('image_raw', (4, 6, 3), (4, 6))
>>> prepare_image(b"\\x89PNG...").input_name
'image'
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from .errors import ImageNotFoundError, InvalidInputError

if TYPE_CHECKING:
    import PIL.Image

__all__ = ["IMAGE_SUFFIXES", "ImageInput", "PreparedImage", "load_image", "prepare_image", "to_rgb_array"]

#: Anything :func:`prepare_image` accepts.
ImageInput: TypeAlias = (
    "str | os.PathLike[str] | bytes | bytearray | memoryview | np.ndarray | PIL.Image.Image"
)

#: File suffixes the server can decode (used by the CLI to pick images out of directories).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})

_CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class PreparedImage:
    """One image ready to be sent.

    Attributes:
        input_name: ``"image"`` (encoded bytes) or ``"image_raw"`` (RGB pixels).
        array: the tensor for that input: object array ``[bytes]`` or uint8 ``HxWx3``.
        source: a short description for error messages (the path, or the input type).
    """

    input_name: str
    array: np.ndarray
    source: str

    @property
    def image_size(self) -> tuple[int, int] | None:
        """``(h, w)`` for raw pixels; None for encoded bytes (only the server knows)."""
        if self.input_name == "image_raw":
            return int(self.array.shape[0]), int(self.array.shape[1])
        return None


def _is_pil_image(obj: Any) -> bool:
    # A PIL image can only exist if PIL was imported by someone: no import needed to check.
    pil_image = sys.modules.get("PIL.Image")
    return pil_image is not None and isinstance(obj, pil_image.Image)


def _check_channel_order(channel_order: str) -> str:
    order = channel_order.lower()
    if order not in _CHANNEL_ORDERS:
        raise InvalidInputError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return order


def _array_to_rgb(array: np.ndarray, channel_order: str) -> np.ndarray:
    """uint8 ``HxW``, ``HxWx1``, ``HxWx3`` or ``HxWx4`` -> C-contiguous uint8 RGB ``HxWx3``."""
    order = _check_channel_order(channel_order)
    if array.dtype != np.uint8:
        raise InvalidInputError(
            f"image arrays must be uint8 (0-255), got {array.dtype}; "
            "scale and convert first, e.g. (img * 255).round().astype(np.uint8)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        rgb = np.repeat(array[:, :, None], 3, axis=2)
    elif array.ndim == 3 and array.shape[2] in (3, 4):
        rgb = array[:, :, :3]  # drops alpha
        if order == "bgr":
            rgb = rgb[:, :, ::-1]
    else:
        raise InvalidInputError(f"image arrays must be HxW, HxWx3 or HxWx4, got shape {array.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise InvalidInputError(f"image is empty (shape {array.shape})")
    return np.ascontiguousarray(rgb)


def _pil_to_rgb(image: Any) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    return _array_to_rgb(np.asarray(image, dtype=np.uint8), "rgb")


def _check_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        raise InvalidInputError(f"URLs are not supported, download the image first: {path}")
    if not p.is_file():
        raise ImageNotFoundError(f"image file not found: {p}")
    return p


def prepare_image(image: ImageInput, *, channel_order: str = "rgb") -> PreparedImage:
    """Coerce an image into the payload for one request.

    Args:
        image: a path (``str`` / ``PathLike``) or encoded file bytes (``bytes``, ``bytearray``,
            ``memoryview``) -> sent as-is; a uint8 numpy array ``HxW`` (grayscale), ``HxWx3``
            or ``HxWx4`` (alpha dropped); or a ``PIL.Image.Image`` (converted to RGB).
        channel_order: ``"rgb"`` (default) or ``"bgr"`` for 3/4-channel arrays, e.g. from
            ``cv2.imread``. Ignored for paths, bytes and PIL images.

    Raises:
        ImageNotFoundError: a path that is not an existing file.
        InvalidInputError: an unsupported type, dtype or shape, or empty bytes.

    >>> import numpy as np
    >>> bgr = np.zeros((2, 2, 3), dtype=np.uint8); bgr[..., 0] = 255   # blue in BGR
    >>> prepare_image(bgr, channel_order="bgr").array[0, 0].tolist()
    [0, 0, 255]
    """
    if isinstance(image, (str, os.PathLike)):
        path = _check_path(image)
        return PreparedImage("image", np.array([path.read_bytes()], dtype=np.object_), str(path))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        if not data:
            raise InvalidInputError("image bytes are empty")
        return PreparedImage("image", np.array([data], dtype=np.object_), f"<{len(data)} bytes>")
    if isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image, channel_order)
        return PreparedImage("image_raw", rgb, f"<array {rgb.shape[0]}x{rgb.shape[1]}>")
    if _is_pil_image(image):
        rgb = _pil_to_rgb(image)
        return PreparedImage("image_raw", rgb, f"<PIL image {rgb.shape[0]}x{rgb.shape[1]}>")
    raise InvalidInputError(
        f"unsupported image type {type(image).__name__}: pass a path, encoded bytes, "
        "a uint8 numpy array or a PIL image"
    )


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 RGB ``HxWx3`` (OpenCV decoder, EXIF orientation applied).

    Raises:
        ImageNotFoundError: the file does not exist.
        InvalidInputError: the file is not a decodable image.
    """
    import cv2

    p = _check_path(path)
    data = np.frombuffer(p.read_bytes(), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise InvalidInputError(f"not a decodable image: {p}")
    return np.ascontiguousarray(bgr[:, :, ::-1])


def to_rgb_array(image: ImageInput, *, channel_order: str = "rgb") -> np.ndarray:
    """Any accepted image as uint8 RGB pixels ``HxWx3`` (decoding paths and bytes locally).

    >>> import numpy as np
    >>> to_rgb_array(np.full((2, 3), 7, dtype=np.uint8)).shape
    (2, 3, 3)
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        import cv2

        data = np.frombuffer(bytes(image), dtype=np.uint8)
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if bgr is None:
            raise InvalidInputError("image bytes could not be decoded")
        return np.ascontiguousarray(bgr[:, :, ::-1])
    return prepare_image(image, channel_order=channel_order).array
