# MobileSAMv2 "segment everything" on NVIDIA Triton, GPU image.
#
#   mobilesamv2-build --weights weights/official --out model_repository              # ONNX files (CPU repository)
#   mobilesamv2-build --target gpu --cpu-repo model_repository --out model_repository_gpu
#   docker build -t mobilesamv2-triton:0.1.0 .                                        # models baked in
#   docker build --target runtime -t mobilesamv2-triton:0.1.0-runtime .               # models from a volume
#   docker run --gpus=1 --shm-size=4g -p 8000-8002:8000-8002 -v mobilesamv2-engines:/var/cache/mobilesamv2/engines \
#       mobilesamv2-triton:0.1.0
#
# --shm-size: Triton's Python backend passes every tensor through /dev/shm (Docker's default: 64 MB), and the
# embedding cache lives there: each of the 4 pipeline instances may hold an image and a response (up to 512 MiB)
# at once, 3.0 GiB in all (mobilesamv2/runner/memory.py; the entrypoint warns when it is smaller). At start the
# entrypoint builds the TensorRT engines for this GPU and checks each one against ONNX Runtime FP32 (exit 3 if
# one disagrees); see docs/deploy.md.
#
# Base: 24.10 ships Triton 2.51.0, the server the test suite runs (nvidia-pytriton 0.7.0 bundles 2.51.0), so
# what the tests verify (Python backend, BLS, configs) is what runs here; it brings TensorRT 10.5, CUDA 12.6,
# cuDNN 9.5 and Python 3.10, and needs an NVIDIA driver >= 560 (or a data-centre driver with forward
# compatibility). Move the tag and deploy/docker/requirements.txt together.
# For reproducible builds pin the digest as well: FROM nvcr.io/nvidia/tritonserver:24.10-py3@sha256:<digest>.
FROM nvcr.io/nvidia/tritonserver:24.10-py3 AS runtime

ARG APP_UID=10001
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_REPOSITORY=/opt/mobilesamv2/model_repository \
    ENGINE_CACHE_DIR=/var/cache/mobilesamv2/engines \
    RUNTIME_MODEL_REPOSITORY=/tmp/mobilesamv2/model_repository \
    CUDA_CACHE_PATH=/tmp/mobilesamv2/cuda-cache

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Server-side dependencies only: what the Python models and the entrypoint import (no torch, no ultralytics).
COPY deploy/docker/requirements.txt /tmp/requirements.txt
RUN python3 -m pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt

# The package (pre/post-processing the Python models import, and the engine-build helpers). The image's Python
# is 3.10; the server-side code runs there, hence --ignore-requires-python; its dependencies are pinned above.
WORKDIR /opt/mobilesamv2/src
COPY pyproject.toml README.md ./
COPY client/ client/
COPY mobilesamv2/ mobilesamv2/
RUN python3 -m pip install --no-cache-dir --no-deps --ignore-requires-python . \
    && rm -rf /opt/mobilesamv2/src

# Non-root: the engine cache and the runtime repository are the only places the server writes to.
RUN groupadd --gid "${APP_UID}" mobilesamv2 \
    && useradd --no-log-init --uid "${APP_UID}" --gid "${APP_UID}" --create-home --shell /usr/sbin/nologin mobilesamv2 \
    && mkdir -p /opt/mobilesamv2/model_repository "${ENGINE_CACHE_DIR}" /tmp/mobilesamv2 \
    && chown -R mobilesamv2:mobilesamv2 "${ENGINE_CACHE_DIR}" /tmp/mobilesamv2
USER ${APP_UID}:${APP_UID}
WORKDIR /opt/mobilesamv2

# --- allocator (BENCHMARKS.md "Allocator"): nothing process-wide. On CPU the ONNX Runtime stubs tune their own heap
# (config parameter malloc_keep_large_blocks); MALLOC_* here would reach the pipeline stub too, whose memory then
# follows the largest image it ever decoded (measured: 10 GB in one stub). MOBILESAMV2_ALLOCATOR=glibc turns the
# per-stub tuning off.

EXPOSE 8000 8001 8002
# Health = real inferences through every model within a deadline (mobilesamv2.runner.probe: a SegAny box, a
# multimask point and a SegEvery request on a tiny generated image), not /v2/health/ready, which stays 200 when a
# Python model's stub died or hangs. A full queue ("overloaded") is healthy unless it lasts 10 checks in a row.
# The first start on a GPU type builds the TensorRT engines (minutes): failures do not count during start-period.
HEALTHCHECK --interval=30s --timeout=20s --start-period=30m --retries=3 \
    CMD ["python3", "-m", "mobilesamv2.runner.probe", "--url=127.0.0.1:8000", "--timeout=15", "--overloaded-ok", \
         "--max-overloaded=10", "--state-file=/tmp/mobilesamv2/healthcheck-overloaded"]
# NVIDIA's entrypoint checks the driver and prints the banner, then execs ours, which runs tritonserver as its
# child in a process group of its own: it forwards SIGTERM/SIGINT, reaps orphans (it is PID 1), kills what is left
# of the group (the Python stubs) when tritonserver exits and exits with its status; when a Python model's stub
# process dies or stops it stops tritonserver and exits 4 (run with --restart=on-failure, or let Kubernetes
# restart it). Locked down by default: model control mode none, the management APIs (shared-memory,
# model-repository, model-config, logging, trace, statistics) behind the key in $ADMIN_KEY_FILE (a mounted secret;
# without one a random key locks them), gRPC TLS with $GRPC_TLS_CERT/$GRPC_TLS_KEY (+ $GRPC_TLS_CLIENT_CA for
# mutual TLS); see docs/deploy.md. Arguments after the image name are tritonserver options (e.g. --log-verbose=1).
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "python3", "-m", "mobilesamv2.runner.entrypoint"]

# Default target: the GPU model repository (mobilesamv2-build --target gpu) baked into the image, owned by root
# and read-only for the server.
FROM runtime AS baked
COPY model_repository_gpu/ /opt/mobilesamv2/model_repository/
