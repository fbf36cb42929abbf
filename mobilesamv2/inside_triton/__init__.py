"""Code that runs inside Triton's stub processes: imported by the Python models of ``model_repository/`` and
by the Python-based ``onnxruntime`` backend (``backends/onnxruntime/model.py``)."""
