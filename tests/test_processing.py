"""The shared pre/post-processing against independent implementations (ultralytics, torchvision, torch)."""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mobilesamv2.processing import boxes as box_ops
from mobilesamv2.processing.image import (
    InvalidImageError,
    decode_image,
    detector_input,
    encoder_canvas,
    encoder_input_size,
    letterbox,
    probe_image,
    resize_longest_side,
    validate_rgb_array,
)
from mobilesamv2.processing.masks import masks_to_rles, upsample_masks
from segment_everything_contract import rle as rle_codec

SHAPES = [(1080, 810), (720, 1280), (333, 517), (1024, 1024), (50, 2000), (3000, 4000)]


def _encode(image: np.ndarray, ext: str, **params) -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@pytest.mark.parametrize("shape", SHAPES)
def test_letterbox_matches_ultralytics(shape):
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    ours, info = letterbox(image)
    theirs = LetterBox(new_shape=(1024, 1024), auto=True, stride=32)(image=image)
    assert ours.shape == theirs.shape
    assert info.input_shape == ours.shape[:2] and info.image_shape == shape
    assert ours.shape[0] % 32 == 0 and ours.shape[1] % 32 == 0 and max(ours.shape[:2]) == 1024
    np.testing.assert_array_equal(ours, theirs)


def test_detector_input_channel_order_is_an_explicit_setting():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 200  # red
    bgr, _ = detector_input(image, "bgr")
    rgb, _ = detector_input(image, "rgb")
    assert bgr[32, 32, 2] == 200 and bgr[32, 32, 0] == 0
    assert rgb[32, 32, 0] == 200
    with pytest.raises(ValueError, match="channel order"):
        detector_input(image, "gbr")


@pytest.mark.parametrize("shape", [(1080, 810), (1024, 1024), (3000, 4000), (768, 1024)])
def test_scale_boxes_matches_ultralytics_where_the_letterbox_scale_is_exact(shape):
    from ultralytics.utils.ops import scale_boxes

    _, info = letterbox(np.zeros((*shape, 3), np.uint8))
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 900, (50, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(1, 300, (50, 2)).astype(np.float32)], 1)
    theirs = scale_boxes(info.input_shape, torch.from_numpy(boxes.copy()), shape).numpy()
    np.testing.assert_allclose(box_ops.scale_boxes(boxes, info.input_shape, shape), theirs, rtol=0, atol=1e-3)


def test_scale_boxes_keeps_the_8_0_quirk_of_the_unrounded_gain():
    # 517x333 letterboxes to 1024x660 (+6 px top); ultralytics 8.0.x (the reference) un-letterboxes with the
    # unrounded gain 1024/517 = 1.98066 and pad round((672 - 333*1.98066)/2 - 0.1) = 6; current ultralytics
    # divides y by 660/333 = 1.98198 instead. Worked by hand: y = 100 -> (100 - 6) / 1.98066 = 47.458.
    _, info = letterbox(np.zeros((333, 517, 3), np.uint8))
    assert info.input_shape == (672, 1024)
    out = box_ops.scale_boxes(np.array([[0, 100, 10, 110]], np.float32), info.input_shape, (333, 517))
    assert out[0, 1] == pytest.approx(94 / (1024 / 517), abs=1e-3)
    assert out[0, 1] == pytest.approx(47.458, abs=1e-3)


def test_snap_to_border():
    boxes = np.array([[19.9, 5, 1004.1, 748.1], [20, 20, 1004, 748]], np.float32)
    out = box_ops.snap_to_border(boxes, (768, 1024))
    np.testing.assert_array_equal(out[0], [0, 0, 1024, 768])
    np.testing.assert_array_equal(out[1], [20, 20, 1004, 748])


def _random_boxes(rng, n, classes=1):
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(5, 300, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    return boxes, rng.uniform(0.4, 1, n).astype(np.float32), rng.integers(0, classes, n).astype(np.int32)


@pytest.mark.parametrize("iou", [0.5, 0.7, 0.9])
@pytest.mark.parametrize("classes", [1, 3])
def test_nms_matches_torchvision_class_aware(iou, classes):
    import torchvision

    rng = np.random.default_rng(classes)
    boxes, scores, cls = _random_boxes(rng, 2000, classes)
    # near-duplicates so that the IoU threshold matters
    boxes = np.concatenate([boxes, boxes + rng.normal(0, 2, boxes.shape).astype(np.float32)])
    scores, cls = np.concatenate([scores, scores * 0.99]), np.concatenate([cls, cls])
    ours = box_ops.non_max_suppression(boxes, scores, cls, iou, max_detections=300)
    offset = torch.from_numpy(cls[:, None].astype(np.float32)) * 7680
    theirs = torchvision.ops.nms(torch.from_numpy(boxes) + offset, torch.from_numpy(scores), iou)[
        :300
    ].numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert len(ours) == 300


def test_select_and_finalize_match_ultralytics_nms():
    from ultralytics.utils.nms import non_max_suppression

    rng = np.random.default_rng(3)
    a = 21504
    pred = np.zeros((4 + 1 + 32, a), np.float32)
    pred[:2] = rng.uniform(0, 1024, (2, a))
    pred[2:4] = rng.uniform(10, 400, (2, a))
    pred[4] = rng.uniform(0, 1, a) ** 4
    boxes, scores, classes = box_ops.select_candidates(pred, 0.4, num_classes=1)
    keep = box_ops.non_max_suppression(boxes, scores, classes, 0.9, 300)
    theirs = non_max_suppression(torch.from_numpy(pred[None]), 0.4, 0.9, max_det=300, nc=1)[0].numpy()
    np.testing.assert_allclose(boxes[keep], theirs[:, :4], atol=1e-3)
    np.testing.assert_allclose(scores[keep], theirs[:, 4], atol=1e-6)


def test_empty_detections_give_empty_prompts():
    _, info = letterbox(np.zeros((100, 100, 3), np.uint8))
    empty = np.zeros((0, 4), np.float32)
    boxes, scores = box_ops.finalize_detections(empty, np.zeros(0, np.float32), np.zeros(0, np.int32), info)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


@pytest.mark.parametrize("shape", SHAPES)
def test_boxes_to_encoder_frame_matches_sam(shape):
    h, w = shape
    new_h, new_w = encoder_input_size(h, w)
    scale = 1024 / max(h, w)
    assert (new_h, new_w) == (int(h * scale + 0.5), int(w * scale + 0.5))
    boxes = np.array([[0, 0, w, h], [w / 4, h / 3, w / 2, h / 2]], np.float64)
    out = box_ops.boxes_to_encoder_frame(boxes, shape)
    np.testing.assert_allclose(out[0], [0, 0, new_w, new_h], rtol=1e-6)


def test_resize_longest_side_matches_sams_pil_resize(bus_rgb):
    from torchvision.transforms.functional import resize, to_pil_image

    target = encoder_input_size(*bus_rgb.shape[:2])
    theirs = np.array(resize(to_pil_image(bus_rgb), list(target)))
    np.testing.assert_array_equal(resize_longest_side(bus_rgb), theirs)
    canvas, size = encoder_canvas(bus_rgb)
    assert canvas.shape == (1024, 1024, 3) and list(size) == list(target)
    assert not canvas[:, size[1] :].any() and not canvas[size[0] :, :].any()


def _sam_postprocess(low_res: np.ndarray, input_size, original_size) -> np.ndarray:
    x = torch.from_numpy(low_res)[:, None]
    x = F.interpolate(x, (1024, 1024), mode="bilinear", align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, original_size, mode="bilinear", align_corners=False)[:, 0].numpy()


@pytest.mark.parametrize("shape", [(1080, 810), (333, 517), (50, 2000)])
def test_mask_upsampling_matches_sam_postprocess(shape):
    rng = np.random.default_rng(0)
    low_res = rng.normal(0, 3, (5, 256, 256)).astype(np.float32)
    low_res = cv2.GaussianBlur(low_res.transpose(1, 2, 0), (0, 0), 4).transpose(2, 0, 1).copy()
    input_size = encoder_input_size(*shape)
    expected = _sam_postprocess(low_res, input_size, shape)
    ours = upsample_masks(low_res, input_size, shape, chunk_bytes=1)  # chunks of one mask
    certain = np.abs(expected) > 1e-4
    np.testing.assert_array_equal(ours[certain], (expected > 0)[certain])
    rles = masks_to_rles(low_res, input_size, shape, chunk_bytes=1)
    for rle, mask in zip(rles, ours, strict=True):
        np.testing.assert_array_equal(rle_codec.decode(rle), mask)
    # chunking changes OpenCV's code path (channel count), not the masks beyond float rounding
    one_chunk = upsample_masks(low_res, input_size, shape, chunk_bytes=1 << 30)
    np.testing.assert_array_equal(one_chunk[certain], ours[certain])


def test_decode_image_formats_and_conversions(bus_rgb):
    bgr = cv2.cvtColor(bus_rgb, cv2.COLOR_RGB2BGR)
    for ext in (".jpg", ".png", ".bmp", ".tiff", ".webp"):
        out = decode_image(_encode(bgr, ext))
        assert out.shape == bus_rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(decode_image(_encode(bgr, ".png")), bus_rgb)
    gray = decode_image(_encode(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), ".png"))
    assert gray.shape == bus_rgb.shape
    rgba = decode_image(_encode(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), ".png"))
    np.testing.assert_array_equal(rgba, bus_rgb)
    deep = decode_image(_encode(bgr.astype(np.uint16) * 257, ".png"))
    np.testing.assert_array_equal(deep, bus_rgb)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"hello, I am a text file\n", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a recognised image|corrupt"),
    ],
)
def test_decode_image_rejects_garbage(data, message):
    with pytest.raises(InvalidImageError, match=message):
        decode_image(data)


def test_decode_image_rejects_truncated_and_tiny(bus_rgb):
    jpeg = _encode(cv2.cvtColor(bus_rgb, cv2.COLOR_RGB2BGR), ".jpg")
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(jpeg[: len(jpeg) // 2])
    png = _encode(cv2.cvtColor(bus_rgb, cv2.COLOR_RGB2BGR), ".png")
    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        decode_image(png[: len(png) // 2])
    with pytest.raises(InvalidImageError, match="at least 8"):
        decode_image(_encode(np.zeros((1, 1, 3), np.uint8), ".png"))


def test_decode_image_refuses_huge_header_before_decoding():
    # A valid PNG header announcing 30000x30000 pixels with almost no data: refused from the header alone.
    header = io.BytesIO()
    Image.new("L", (1, 1)).save(header, format="PNG")
    data = bytearray(header.getvalue())
    data[16:24] = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big")  # IHDR width, height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR checksum
    with pytest.raises(InvalidImageError, match="30000x30000"):
        decode_image(bytes(data))


def test_validate_rgb_array():
    assert validate_rgb_array(np.zeros((10, 10, 3), np.uint8)).flags.c_contiguous
    with pytest.raises(InvalidImageError, match="uint8"):
        validate_rgb_array(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(InvalidImageError, match="HxWx3"):
        validate_rgb_array(np.zeros((10, 10, 4), np.uint8))


def test_mask_and_rle_boxes_agree():
    from mobilesamv2.processing.masks import mask_boxes, rle_boxes

    masks = np.zeros((3, 40, 60), bool)
    masks[0, 5:10, 20:33] = True
    masks[1, 39, 59] = True
    boxes = mask_boxes(masks)
    np.testing.assert_array_equal(boxes, [[20, 5, 33, 10], [59, 39, 60, 40], [0, 0, 0, 0]])
    np.testing.assert_array_equal(rle_boxes([rle_codec.encode(m) for m in masks]), boxes)


# ---------------------------------------------------------------------------------------- EXIF orientation

#: EXIF orientation -> the transform a viewer (and cv2.imread) applies to the stored pixels (as PIL's
#: ImageOps.exif_transpose: 2 mirror, 3 half turn, 4 flip, 5 transpose, 6 quarter turn clockwise,
#: 7 transverse, 8 quarter turn counter-clockwise).
EXIF_TRANSFORMS = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def _with_exif(rgb: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    """``rgb`` stored as is, with an EXIF orientation tag (0x0112) that tells viewers how to turn it."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    extra = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(rgb).save(buffer, format=fmt, exif=exif.tobytes(), **extra)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def non_square_rgb() -> np.ndarray:
    """48x80 blocks of 8x8 pixels (JPEG-friendly) with a marked corner, so every flip and turn differs."""
    rng = np.random.default_rng(7)
    blocks = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
    image[:8, :8] = (255, 0, 0)
    return image


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_cv2_imread_does(tmp_path, non_square_rgb, orientation):
    data = _with_exif(non_square_rgb, orientation)
    path = tmp_path / f"orientation{orientation}.jpg"
    path.write_bytes(data)
    expected = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)  # what the reference reads
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded, expected)  # pixel for pixel
    # and it is the orientation's transform of the stored pixels (the tag was read, not ignored)
    stored = decode_image(_with_exif(non_square_rgb, 1))
    np.testing.assert_array_equal(decoded, np.ascontiguousarray(EXIF_TRANSFORMS[orientation](stored)))
    turned = orientation in (5, 6, 7, 8)
    assert decoded.shape[:2] == ((80, 48) if turned else (48, 80))
    header = probe_image(data)  # the header check sees the size the decoder returns
    assert (header.height, header.width) == decoded.shape[:2]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_probe_image_turns_the_header_size_like_the_decoder(non_square_rgb, fmt):
    data = _with_exif(non_square_rgb, 6, fmt)
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded, np.rot90(non_square_rgb, -1))  # lossless formats: exact
    header = probe_image(data)
    assert (header.height, header.width) == decoded.shape[:2]
