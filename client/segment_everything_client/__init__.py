"""Python client for the MobileSAMv2 "segment everything" service on NVIDIA Triton.

>>> from segment_everything_client import SegmentEverythingClient, InvalidInputError
>>> client = SegmentEverythingClient("127.0.0.1:8001")       # gRPC; protocol="http" for :8000
>>> seg = client.segment_everything("bus.jpg")               # doctest: +SKIP
>>> seg.boxes.shape, seg.masks.shape                         # doctest: +SKIP
((17, 4), (17, 1080, 810))
>>> client.close()
"""

from .aio import AsyncSegmentEverythingClient
from .client import SegmentEverythingClient
from .errors import (
    DeadlineExceededError,
    ImageNotFoundError,
    InvalidInputError,
    ModelNotReadyError,
    OverloadedError,
    RequestTimeoutError,
    SegmentEverythingError,
    ServerError,
    ServerUnavailableError,
)
from .types import Instance, Segmentation, SegmentSettings

__version__ = "0.1.0"

__all__ = [
    "AsyncSegmentEverythingClient",
    "DeadlineExceededError",
    "ImageNotFoundError",
    "Instance",
    "InvalidInputError",
    "ModelNotReadyError",
    "OverloadedError",
    "RequestTimeoutError",
    "SegmentEverythingClient",
    "SegmentEverythingError",
    "SegmentSettings",
    "Segmentation",
    "ServerError",
    "ServerUnavailableError",
    "__version__",
]
