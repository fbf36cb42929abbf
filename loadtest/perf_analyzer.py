"""A perf_analyzer recipe for the pipeline with real input data: writes the ``--input-data`` JSON (the image
files as encoded bytes, plus the settings) and prints the command.

    python -m loadtest.perf_analyzer --max-prompts 16 --out work/loadtest/perf_analyzer_input.json

perf_analyzer is not run here: on this machine PyPI offers only ``perf-analyzer`` 0.1.0, a placeholder without
the binary (2.60 is not available), so run the printed command where a working binary exists, e.g. NVIDIA's
Triton SDK container (``nvcr.io/nvidia/tritonserver:<yy.mm>-py3-sdk``). See docs/loadtest.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import shutil
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__:
    from .common import load_images
else:  # run as a script: python loadtest/perf_analyzer.py
    from common import load_images

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "work" / "loadtest" / "perf_analyzer_input.json"


def bytes_element(data: bytes) -> dict:
    """One element of a BYTES tensor as perf_analyzer's JSON wants it: base64 of a 4-byte little-endian length
    followed by the bytes."""
    return {"b64": base64.b64encode(struct.pack("<I", len(data)) + data).decode("ascii")}


def input_data(images: Sequence[tuple[str, bytes]], max_prompts: int = 0, conf: float = 0.0) -> dict:
    """perf_analyzer ``--input-data`` for ``segment_everything``: one request per image, cycled. Optional
    inputs left out of the JSON are not sent (the server's defaults apply)."""
    requests = []
    for _, data in images:
        request: dict = {"image": {"content": bytes_element(data), "shape": [1]}}
        if max_prompts:
            request["max_prompts"] = {"content": [int(max_prompts)], "shape": [1]}
        if conf:
            request["conf_threshold"] = {"content": [float(conf)], "shape": [1]}
        requests.append(request)
    return {"data": requests}


def command(
    input_json: Path,
    host: str = "127.0.0.1:8001",
    protocol: str = "grpc",
    max_concurrency: int = 4,
    interval_ms: int = 20000,
    report: str = "perf_analyzer.csv",
) -> list[str]:
    """A perf_analyzer run over concurrency 1..``max_concurrency``; windows of ``interval_ms`` because one
    request takes seconds on CPU."""
    return [
        "perf_analyzer",
        "-m",
        "segment_everything",
        "-u",
        host,
        "-i",
        protocol,
        "--input-data",
        str(input_json),
        f"--concurrency-range=1:{max_concurrency}:1",
        f"--measurement-interval={interval_ms}",
        "--stability-percentage=50",
        "--max-trials=5",
        "--percentile=95",
        "-f",
        report,
    ]


def find_binary() -> str | None:
    """A ``perf_analyzer`` on PATH that answers ``--help``, or None (the PyPI placeholder installs none)."""
    import subprocess

    path = shutil.which("perf_analyzer")
    if path is None:
        return None
    try:
        subprocess.run([path, "--help"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.perf_analyzer", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--images", default="", help="folder of images (default: the images shipped with ultralytics)"
    )
    parser.add_argument("--max-prompts", type=int, default=16, help="0 = server default (300)")
    parser.add_argument("--conf", type=float, default=0.0, help="0 = server default (0.4)")
    parser.add_argument("--host", default="127.0.0.1:8001")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--max-concurrency", type=int, default=4)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the input-data JSON goes")
    args = parser.parse_args(argv)

    images = load_images(args.images or None)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(input_data(images, args.max_prompts, args.conf)))
    print(f"wrote {args.out}: {len(images)} images ({', '.join(name for name, _ in images)})")
    print(shlex.join(command(args.out, args.host, args.protocol, args.max_concurrency)))
    if find_binary() is None:
        print(
            "no working perf_analyzer on PATH (PyPI's perf-analyzer here is a placeholder without the "
            "binary); run the command in NVIDIA's Triton SDK container",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
