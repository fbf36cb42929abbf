"""Pre- and post-processing, numpy/OpenCV only: written once, used by the Triton models, the build tools, the
reference pipeline and the tests.

- ``image``: decoding and validation, the detector letterbox, SAM's resize-longest-side canvas
- ``boxes``: candidate selection, NMS, border snap, box frame transforms, prompts
- ``masks``: low-res logits -> full-resolution masks -> COCO RLE
"""
