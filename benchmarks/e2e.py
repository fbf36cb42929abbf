"""End to end: one SegEvery request through Triton vs the in-process reference at about 10, 50 and 300 boxes,
cold embeddings, stage by stage; the encoder and the decoder in the server vs standalone ONNX Runtime; the
server's peak RSS.

    flock /tmp/heavy.lock .venv/bin/python -m benchmarks.e2e      # ~5 min on 2 cores
    .venv/bin/python -m benchmarks.e2e --render                    # re-render BENCHMARKS.md, no measuring

Triton: the client sends the encoded JPEG over gRPC and gets COCO RLE back (client wall time; the server's
``timings`` per stage). Reference: ``ReferencePipeline`` in this process on the same bytes: decode, SegEvery,
RLE. Per point one untimed warm-up each, then the sides alternate (A B, B A, ...); medians. The server runs a
copy of the repository with ``embedding_cache_mb`` 0, so that every request runs the encoder. With random
weights the detector's scores are noise: ``conf`` sets the box count. Standalone: the served encoder and
decoder graphs in fresh ONNX Runtime sessions with the served configs' options, each in a child process whose
peak RSS is sampled; the decoder in slices of the config's ``max_rows_per_run``, as the server runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import common, serving
from benchmarks.common import fmt, median, table

NAME = "e2e"
# conf per target box count on bus.jpg with the test suite's seeded random weights (about 10, 50, 300 boxes)
POINTS = (("bus.jpg", 0.955), ("bus.jpg", 0.85), ("bus.jpg", 0.4))
SERVER_STAGES = ("decode_image", "discovery", "nms", "encoder", "decoder", "postprocess", "total")
REFERENCE_STAGES = ("decode_image", "discovery", "encoder", "decoder", "postprocess", "total")
# The goals of BENCHMARKS.md's Targets table
SPEEDUP_GOAL, SPEEDUP_BOXES = 5.0, 50
ENCODER_OVERHEAD_GOAL = 0.10  # the server's encoder at most 10% slower than standalone
DECODER_MS_PER_PROMPT_GOAL = 20.0
DECODER_PEAK_MB_GOAL = 2048.0


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def reference_request(pipe, data: bytes, conf: float) -> tuple[float, dict[str, float], int]:
    """Decode, SegEvery, RLE in this process, timed like the server's stages."""
    import cv2
    import numpy as np

    start = time.perf_counter()
    rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    decoded = time.perf_counter()
    result = pipe(rgb, conf_threshold=conf)
    segmented = time.perf_counter()
    result.rles()
    stages = {"decode_image": (decoded - start) * 1e3, **result.timings_ms, "postprocess": _ms(segmented)}
    return _ms(start), {**stages, "total": _ms(start)}, len(result)


def server_request(client, data: bytes, conf: float) -> tuple[float, dict[str, float], int]:
    start = time.perf_counter()
    segmentation = client.segment_everything(data, conf=conf, timings=True)
    return _ms(start), dict(segmentation.timings or {}), len(segmentation)


def measure_point(pipe, client, server_pid: int, data: bytes, conf: float, reps: int, rss: bool) -> dict:
    """Medians of ``reps`` alternating requests per side; the server tree's peak RSS when ``rss``."""
    server_request(client, data, conf)  # warm-up: arenas grown to this prompt count
    reference_request(pipe, data, conf)
    runs: dict[str, list] = {"server": [], "reference": []}
    peak = serving.PeakRss(server_pid, interval=0.02) if rss else None
    for rep in range(reps):
        for side in ("server", "reference") if rep % 2 == 0 else ("reference", "server"):
            if side == "reference":
                runs[side].append(reference_request(pipe, data, conf))
            elif peak is not None:
                with serving.PeakRss(server_pid, interval=0.02) as sampler:
                    runs[side].append(server_request(client, data, conf))
                peak.peak = max(peak.peak, sampler.peak)
                peak.by_label = {k: max(v, peak.by_label.get(k, 0)) for k, v in sampler.by_label.items()}
            else:
                runs[side].append(server_request(client, data, conf))
            serving.log(f"conf {conf}: {side} {runs[side][-1][0]:,.0f} ms, {runs[side][-1][2]} masks")
    point: dict = {"conf": conf, "reps": reps}
    for side, stages in (("server", SERVER_STAGES), ("reference", REFERENCE_STAGES)):
        point[side] = {
            "masks": runs[side][-1][2],
            "wall_ms": median(r[0] for r in runs[side]),
            "stages": {s: median(r[1].get(s) for r in runs[side]) for s in stages},
            "encoder_ms": [r[1].get("encoder") for r in runs[side]],
        }
    if peak is not None:
        point["peak_rss"] = {"total_mb": peak.peak_mb, "by_process_mb": peak.by_label_mb}
    return point


# --- standalone ONNX Runtime, in child processes ------------------------------------------------------------


def standalone(repository: Path, what: str, image: str, prompts: int, reps: int) -> dict:
    """``what`` (encoder or decoder) in a child process: its median ms and the child's peak RSS."""
    args = [sys.executable, "-m", "benchmarks.e2e", "--child", what, str(repository), image, str(prompts)]
    child = subprocess.Popen([*args, str(reps)], cwd=common.REPO_ROOT, stdout=subprocess.PIPE, text=True)
    with serving.PeakRss(child.pid, interval=0.02) as peak:
        out, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"standalone {what} failed (exit {child.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak.peak_mb}


def _child(what: str, repository: Path, image: str, prompts: int, reps: int) -> dict:
    import cv2
    import numpy as np

    if what == "encoder":
        from mobilesamv2.processing.image import encoder_canvas

        session, threads = serving.served_session(repository, "image_encoder")
        canvas, size = encoder_canvas(
            cv2.cvtColor(cv2.imread(str(serving.sample_image(image))), cv2.COLOR_BGR2RGB)
        )
        slices = [{"image": canvas[None], "image_size": size[None]}]
    else:
        session, threads = serving.served_session(repository, "prompt_decoder")
        rows = int(serving.served_parameters(repository, "prompt_decoder").get("max_rows_per_run") or prompts)
        rng = np.random.default_rng(prompts)
        corner = rng.random((prompts, 2), np.float32) * 900
        coords = np.stack(
            [corner, np.minimum(corner + rng.random((prompts, 2), np.float32) * 400 + 8, 1023)], 1
        )
        labels = np.tile(np.array([[2.0, 3.0]], np.float32), (prompts, 1))
        embedding = rng.standard_normal((1, 256, 64, 64), np.float32)
        slices = [
            {
                "image_embeddings": embedding,
                "point_coords": coords[i : i + rows],
                "point_labels": labels[i : i + rows],
            }
            for i in range(0, prompts, rows)
        ]
    times = []
    for rep in range(reps + 1):  # the first is a warm-up
        start = time.perf_counter()
        for feeds in slices:
            session.run(None, feeds)
        if rep:
            times.append(_ms(start))
    return {"ms": median(times), "reps": reps, "threads": threads, "slices": len(slices)}


# --- report -------------------------------------------------------------------------------------------------


def nearest(points: Sequence[dict], boxes: int) -> dict:
    return min(points, key=lambda p: abs(p["server"]["masks"] - boxes))


def speedup(point: dict) -> float:
    return point["reference"]["wall_ms"] / point["server"]["wall_ms"]


def render(results: dict) -> str:
    points = results["points"]
    overview = table(
        ["image, detector conf", "masks (Triton / reference)", "Triton ms (client wall)", "reference ms",
         "speed-up", "reps"],
        [[f"{p['image']}, conf {p['conf']:g}", f"{p['server']['masks']} / {p['reference']['masks']}",
          fmt(p["server"]["wall_ms"]), fmt(p["reference"]["wall_ms"]), f"{speedup(p):.2f}x", p["reps"]]
         for p in points],
    )  # fmt: skip
    header = ["stage (ms)"]
    rows = {
        s: [s]
        for s in (*SERVER_STAGES[:-1], "transport + client (wall - server total)", "total (client wall)")
    }
    for p in points:
        header += [f"Triton, {p['server']['masks']} masks", f"reference, {p['reference']['masks']} masks"]
        server, reference = p["server"]["stages"], p["reference"]["stages"]
        for stage in SERVER_STAGES[:-1]:
            ref = "(in discovery)" if stage == "nms" else fmt(reference.get(stage), 1)
            rows[stage] += [fmt(server.get(stage), 1), ref]
        transport = p["server"]["wall_ms"] - server["total"]
        rows["transport + client (wall - server total)"] += [fmt(transport, 1), "–"]
        rows["total (client wall)"] += [fmt(p["server"]["wall_ms"], 1), fmt(p["reference"]["wall_ms"], 1)]
    enc, dec = results["encoder"], results["decoder"]
    versus = table(
        ["measure", "in the server", "standalone", "difference", "standalone process peak RSS MB"],
        [
            ["encoder, ms", fmt(enc["server_ms"], 1), fmt(enc["standalone_ms"], 1),
             f"{enc['server_ms'] / enc['standalone_ms'] - 1:+.1%}", fmt(enc.get("standalone_peak_rss_mb"))],
            [f"decoder, ms per prompt at {dec['prompts']} prompts", fmt(dec["server_ms_per_prompt"], 1),
             fmt(dec["standalone_ms_per_prompt"], 1),
             f"{dec['server_ms_per_prompt'] / dec['standalone_ms_per_prompt'] - 1:+.1%}",
             fmt(dec.get("standalone_peak_rss_mb"))],
        ],
    )  # fmt: skip
    peak = results["peak_rss"]
    memory = table(
        ["process group", f"peak RSS MB during the {peak['prompts']}-prompt requests"],
        [*([k, fmt(v)] for k, v in peak["by_process_mb"].items()),
         ["**all (tritonserver + stubs)**", fmt(peak["total_mb"])]],
    )  # fmt: skip
    sections = [common.provenance(results), overview, table(header, list(rows.values())), versus, memory]
    return "\n\n".join(sections)


def values(results: dict) -> dict[str, str]:
    """The Targets table's cells."""
    point = nearest(results["points"], SPEEDUP_BOXES)
    enc, dec, peak = results["encoder"], results["decoder"], results["peak_rss"]
    overhead = enc["server_ms"] / enc["standalone_ms"] - 1
    decoder_peak = peak["by_process_mb"].get("prompt_decoder", float("nan"))
    return {
        "speedup": f"{speedup(point):.2f}x at {point['server']['masks']} masks "
        f"({fmt(point['server']['wall_ms'])} vs {fmt(point['reference']['wall_ms'])} ms)",
        "speedup-status": common.verdict(speedup(point) >= SPEEDUP_GOAL),
        "encoder": f"{fmt(enc['server_ms'])} vs {fmt(enc['standalone_ms'])} ms ({overhead:+.1%})",
        "encoder-status": common.verdict(overhead <= ENCODER_OVERHEAD_GOAL),
        "decoder": f"{fmt(dec['server_ms_per_prompt'], 1)} ms/prompt at {dec['prompts']} prompts (standalone "
        f"{fmt(dec['standalone_ms_per_prompt'], 1)})",
        "decoder-status": common.verdict(dec["server_ms_per_prompt"] <= DECODER_MS_PER_PROMPT_GOAL),
        "peak-rss": f"prompt_decoder {fmt(decoder_peak)} MB at {peak['prompts']} prompts; tritonserver + all "
        f"stubs {fmt(peak['total_mb'])} MB",
        "peak-rss-status": common.verdict(decoder_peak <= DECODER_PEAK_MB_GOAL),
    }


# --- the run ------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        what, repository, image, prompts, reps = argv[1:6]
        print(json.dumps(_child(what, Path(repository), image, int(prompts), int(reps))))
        return 0
    parser = common.argument_parser(NAME, __doc__)
    parser.add_argument("--reps", type=int, default=3, help="timed requests per side and point")
    parser.add_argument("--points", default=",".join(f"{n}:{c}" for n, c in POINTS), help="image:conf,...")
    parser.add_argument("--standalone-reps", type=int, default=5)
    args = parser.parse_args(argv)
    if args.render:
        return common.rerender(NAME, render, values=values)

    points = [(p.split(":")[0], float(p.split(":")[1])) for p in args.points.split(",")]
    results = common.new_results(repository=args.repository, cold="embedding_cache_mb 0")
    pipe = serving.load_reference(args.repository)
    cold = serving.repository_variant(
        args.repository,
        serving.WORK / NAME / "repository",
        {"segment_everything": {"embedding_cache_mb": "0"}},
    )
    measured = []
    with serving.serve(cold, NAME) as (server, client):
        results["settings"]["allocator_env"] = serving.allocator_env(server.pid)
        for index, (image, conf) in enumerate(points):
            data = serving.sample_image(image).read_bytes()
            point = measure_point(
                pipe, client, server.pid, data, conf, args.reps, rss=index == len(points) - 1
            )
            measured.append({"image": image, **point})
    del pipe
    server_encoder = median(ms for p in measured for ms in p["server"].pop("encoder_ms"))
    for p in measured:
        p["reference"].pop("encoder_ms")
    fifty = nearest(measured, SPEEDUP_BOXES)
    prompts = fifty["server"]["masks"]
    serving.log(f"standalone encoder and decoder ({prompts} prompts)")
    encoder = standalone(args.repository, "encoder", points[0][0], 1, args.standalone_reps)
    decoder = standalone(args.repository, "decoder", points[0][0], prompts, args.standalone_reps)
    most = measured[-1]
    results.update(
        points=measured,
        encoder={"server_ms": server_encoder, "standalone_ms": encoder["ms"], "threads": encoder["threads"],
                 "standalone_peak_rss_mb": encoder["peak_rss_mb"]},
        decoder={"prompts": prompts, "server_ms_per_prompt": fifty["server"]["stages"]["decoder"] / prompts,
                 "standalone_ms_per_prompt": decoder["ms"] / prompts, "slices": decoder["slices"],
                 "threads": decoder["threads"], "standalone_peak_rss_mb": decoder["peak_rss_mb"]},
        peak_rss={"prompts": most["server"]["masks"], **most.pop("peak_rss")},
    )  # fmt: skip
    common.publish(NAME, results, render, values=values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
