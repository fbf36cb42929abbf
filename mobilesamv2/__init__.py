"""MobileSAMv2 "segment everything" on NVIDIA Triton.

Layout (data flows one way):
    processing/   numpy-only pre/post-processing shared by the server models, the reference pipeline and tests
    modeling/     PyTorch modules and strict loaders for the official checkpoints
    reference.py  the in-process PyTorch SegEvery pipeline (the oracle) and the SAM grid baseline
    export/       checkpoints -> Triton model repository (ONNX export, parity checks, GPU configs)
    server/       the local tritonserver launcher and Python-based backends
"""

__version__ = "0.1.0"
