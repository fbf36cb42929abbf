"""Checkpoints -> Triton model repository: ONNX export with parity checks, GPU configs, TensorRT."""
