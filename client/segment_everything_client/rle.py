"""COCO RLE of binary masks: the contract's codec (:mod:`segment_everything_contract.rle`), re-exported for
client users (``from segment_everything_client import rle``)."""

from segment_everything_contract.rle import *  # noqa: F403
from segment_everything_contract.rle import __all__, counts  # noqa: F401
