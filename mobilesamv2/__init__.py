"""MobileSAMv2 "segment everything" on NVIDIA Triton.

Layout (data flows one way):
    processing/   numpy-only pre/post-processing shared by the server models, the reference pipeline and tests
    modeling/     PyTorch modules and strict loaders for the official checkpoints
    reference.py  the in-process PyTorch SegEvery pipeline (the oracle and the benchmark baseline)
    export/       checkpoints -> Triton model repository (ONNX export, parity checks, GPU configs)
    pipeline.py   SegEvery / SegAny orchestration over injected model calls (the core of the BLS model)
    inside_triton/  code that runs inside Triton: glue of the Python models, input guards, metrics, the
                  embedding cache, the Python-based onnxruntime backend
    runner/       code that runs Triton: the server process, its supervisor and probe, mobilesamv2-serve and
                  the container entrypoint
"""

__version__ = "0.1.0"
