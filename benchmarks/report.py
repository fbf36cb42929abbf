"""Results dict -> the console table, ``BENCHMARKS.md`` and the PNG plot. Pure: no measuring here, so a saved
``results.json`` can be re-rendered (``python -m benchmarks.run --render results.json``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

TARGET_E2E_SPEEDUP = 5.0  # Triton vs the in-process reference ...
TARGET_E2E_BOXES = 50  # ... at about this many boxes
TARGET_ENCODER_OVERHEAD = 0.10  # encoder in the server vs a standalone ONNX Runtime session
TARGET_DECODER_MS_PER_PROMPT = 20.0  # in the server, at ~50 prompts
TARGET_DECODER_PEAK_MB = 2048.0  # the decoder's process during a 300-prompt call
TARGET_DECODER_RATIO = 8.0
TARGET_SOAK = "0 failed requests, 4 users, 5 minutes"
TARGET_CLICK_MS = 100.0
TARGET_REJECTION_MS = 100.0
TARGET_SOAK_RSS_GROWTH = 0.10
# Image-size growth at the largest prompt count must stay below this share of the prompts x pixels footprint.
MAX_PIXEL_SHARE = 0.05

START, END = "<!-- segevery-benchmarks:start -->", "<!-- segevery-benchmarks:end -->"
GPU_HEADING = "## GPU (NVIDIA, TensorRT)"
GPU_SECTION = (
    f"{GPU_HEADING}\n\nNot yet measured. The GPU repository (TensorRT engines for the encoder and decoder, "
    "see [docs/deploy.md](docs/deploy.md)) has not been benchmarked on a GPU; every number in this file is "
    "CPU-only.\n"
)

SERVER_STAGES = ("decode_image", "discovery", "nms", "encoder", "decoder", "postprocess", "total")
REFERENCE_STAGES = ("decode_image", "discovery", "encoder", "decoder", "postprocess", "total")
# Results of the benchmarks that run on their own (committed next to this file); the Targets table and the
# before/after comparison read them when present.
RESULTS_DIR = Path(__file__).resolve().parent / "results"
ATTACHED = ("allocator", "overload", "interactive")


def median(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(statistics.median(values)) if values else math.nan


def stage_medians(stages: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    return {name: median([s.get(name, math.nan) for s in stages]) for name in names}


def fmt(value: float | None, digits: int = 0, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}{unit}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --- derived numbers ----------------------------------------------------------------------------------------


def decoder_ratios(row: dict) -> dict[str, float]:
    box, grid = median(row["box_ms"]), median(row.get("grid_ms", []))
    masks = row.get("grid_masks")
    return {
        "box_ms": box,
        "grid_ms": grid,
        "time_ratio": grid / box if box and not math.isnan(grid) else math.nan,
        "mask_ratio": masks / row["box_masks"] if masks and row["box_masks"] else math.nan,
        "box_ms_per_prompt": box / row["box_prompts"] if row["box_prompts"] else math.nan,
        "grid_ms_per_point": grid / row["grid_points"] if row.get("grid_points") else math.nan,
    }


def e2e_ratio(row: dict) -> float:
    server, reference = median(row["server_wall_ms"]), median(row["reference_wall_ms"])
    return reference / server if server else math.nan


def nearest_row(rows: Sequence[dict], boxes: int) -> dict | None:
    """The e2e row whose server mask count is closest to ``boxes``."""
    rows = [r for r in rows if r.get("server_masks") is not None]
    return min(rows, key=lambda r: abs(r["server_masks"] - boxes)) if rows else None


def e2e_efficiency(e2e: dict) -> dict[str, float]:
    """Encoder in the server vs standalone, decoder ms per prompt at ~50 prompts in the server vs standalone,
    the server's peak RSS at the most prompts (total and the decoder's process)."""
    out: dict[str, float] = {}
    rows = e2e.get("rows", [])
    encoder = median([s.get("encoder", math.nan) for r in rows for s in r["server_stages"]])
    standalone = (e2e.get("encoder_standalone") or {}).get("median_ms", math.nan)
    out.update(encoder_server_ms=encoder, encoder_standalone_ms=standalone)
    out["encoder_overhead"] = encoder / standalone - 1 if standalone else math.nan
    fifty = nearest_row(rows, TARGET_E2E_BOXES)
    if fifty is not None and fifty["server_masks"]:
        decoder = stage_medians(fifty["server_stages"], ("decoder",))["decoder"]
        out.update(
            decoder_prompts=fifty["server_masks"], decoder_ms_per_prompt=decoder / fifty["server_masks"]
        )
    dec = e2e.get("decoder_standalone") or {}
    out["decoder_standalone_ms_per_prompt"] = dec.get("ms_per_prompt", math.nan)
    out["decoder_standalone_prompts"] = dec.get("prompts", math.nan)
    most = max(rows, key=lambda r: r.get("server_masks") or 0) if rows else None
    if most is not None and most.get("peak_rss_mb"):
        by = most.get("peak_rss_by_process_mb") or {}
        out.update(
            peak_prompts=most["server_masks"],
            peak_rss_mb=most["peak_rss_mb"],
            decoder_peak_rss_mb=by.get("prompt_decoder", math.nan),
        )
    return out


def memory_verdict(memory: dict) -> dict[str, float]:
    """How peak memory scales. ``mb_per_prompt``: average growth per extra prompt at the smallest image.
    ``image_growth_few``/``_many``: growth from the smallest to the largest image at the fewest/most prompts;
    their difference, ``interaction_mb``, is the prompts x pixels term, compared with what dense masks would
    add (``dense_growth_mb``) as ``pixel_share``."""
    cells = memory["cells"]
    if not cells:
        return {}
    sides, prompts = sorted({c["side"] for c in cells}), sorted({c["max_prompts"] for c in cells})
    at = {(c["max_prompts"], c["side"]): c for c in cells}
    small, large, few, many = sides[0], sides[-1], prompts[0], prompts[-1]
    out: dict[str, float] = {}
    if (few, small) in at and (many, small) in at and many > few:
        a, b = at[(few, small)], at[(many, small)]
        out["mb_per_prompt"] = (b["peak_mb"] - a["peak_mb"]) / max(b["masks"] - a["masks"], 1)
    corners = [(few, small), (few, large), (many, small), (many, large)]
    if large > small and many > few and all(k in at for k in corners):
        fs, fl, ms, ml = (at[k] for k in corners)
        out["image_growth_few_mb"] = fl["peak_mb"] - fs["peak_mb"]
        out["image_growth_many_mb"] = ml["peak_mb"] - ms["peak_mb"]
        out["interaction_mb"] = out["image_growth_many_mb"] - out["image_growth_few_mb"]
        out["dense_growth_mb"] = ml["dense_equivalent_mb"] - ms["dense_equivalent_mb"]
        out["pixel_share"] = (
            out["interaction_mb"] / out["dense_growth_mb"] if out["dense_growth_mb"] else math.nan
        )
        out["few"], out["prompts"], out["small_mp"], out["large_mp"] = (
            fs["masks"],
            ml["masks"],
            fs["megapixels"],
            ml["megapixels"],
        )
        if "response_rle_mb" in ml and "response_rle_mb" in ms:
            out["response_growth_mb"] = ml["response_rle_mb"] - ms["response_rle_mb"]
    return out


# --- the targets --------------------------------------------------------------------------------------------


def target_rows(results: dict) -> list[list[str]]:
    rows = []
    if "e2e" in results:
        e2e = results["e2e"]
        row = nearest_row(e2e["rows"], TARGET_E2E_BOXES)
        if row is not None:
            ratio = e2e_ratio(row)
            rows.append(
                [
                    f"SegEvery through Triton vs in-process reference ({row['image']}, {row['server_masks']} "
                    "masks)",
                    f">= {TARGET_E2E_SPEEDUP:g}x faster at ~{TARGET_E2E_BOXES} boxes",
                    f"{fmt(ratio, 2)}x ({fmt(median(row['server_wall_ms']))} vs "
                    f"{fmt(median(row['reference_wall_ms']))} ms)",
                    status(ratio >= TARGET_E2E_SPEEDUP, ratio / TARGET_E2E_SPEEDUP),
                ]
            )
        eff = e2e_efficiency(e2e)
        if not math.isnan(eff.get("encoder_overhead", math.nan)):
            rows.append(
                [
                    "Encoder in the server vs standalone ONNX Runtime",
                    f"within {TARGET_ENCODER_OVERHEAD:.0%}",
                    f"{fmt(eff['encoder_server_ms'])} vs {fmt(eff['encoder_standalone_ms'])} ms "
                    f"({eff['encoder_overhead']:+.1%})",
                    status(abs(eff["encoder_overhead"]) <= TARGET_ENCODER_OVERHEAD),
                ]
            )
        if "decoder_ms_per_prompt" in eff:
            ms = eff["decoder_ms_per_prompt"]
            standalone = eff["decoder_standalone_ms_per_prompt"]
            rows.append(
                [
                    f"Decoder in the server, ms per prompt ({eff['decoder_prompts']} prompts)",
                    f"<= {TARGET_DECODER_MS_PER_PROMPT:g} ms/prompt",
                    f"{fmt(ms, 1)} ms/prompt (standalone ONNX Runtime {fmt(standalone, 1)})",
                    status(ms <= TARGET_DECODER_MS_PER_PROMPT, TARGET_DECODER_MS_PER_PROMPT / ms),
                ]
            )
        if "peak_rss_mb" in eff:
            rows.append(
                [
                    f"Server peak RSS during a {eff['peak_prompts']}-prompt call",
                    f"decoder call <= {TARGET_DECODER_PEAK_MB / 1024:g} GB",
                    f"prompt_decoder process {fmt(eff['decoder_peak_rss_mb'])} MB; tritonserver + all stubs "
                    f"{fmt(eff['peak_rss_mb'])} MB",
                    status(eff["decoder_peak_rss_mb"] <= TARGET_DECODER_PEAK_MB),
                ]
            )
    if "decoder" in results:
        for row in results["decoder"]["rows"]:
            r = decoder_ratios(row)
            if math.isnan(r["time_ratio"]):
                continue
            rows.append(
                [
                    f"Decoder work, box prompts vs 32x32 grid ({row['image']}, {row['box_prompts']} boxes)",
                    f">= {TARGET_DECODER_RATIO:g}x less",
                    f"{fmt(r['time_ratio'], 1)}x less time ({fmt(r['mask_ratio'], 1)}x fewer masks)",
                    status(r["time_ratio"] >= TARGET_DECODER_RATIO, r["time_ratio"] / TARGET_DECODER_RATIO),
                ]
            )
    if "memory" in results:
        v = memory_verdict(results["memory"])
        if "pixel_share" in v:
            response = (
                f"; the RLE response alone grew {v['response_growth_mb']:,.0f} MB"
                if not math.isnan(v.get("response_growth_mb", math.nan))
                else ""
            )
            measured = (
                f"{v['small_mp']:.1f} -> {v['large_mp']:.1f} MP adds {v['image_growth_few_mb']:,.0f} MB at "
                f"{v['few']:.0f} prompt(s), {v['image_growth_many_mb']:,.0f} MB at {v['prompts']:.0f}: "
                f"prompts x pixels term {v['interaction_mb']:,.0f} MB = {v['pixel_share']:.1%} of the "
                f"{v['dense_growth_mb']:,.0f} MB dense masks would add{response}; "
                f"{v.get('mb_per_prompt', math.nan):.1f} MB per extra prompt"
            )
            rows.append(
                [
                    "Server RSS grows with prompts, not prompts x pixels",
                    f"prompts x pixels term < {MAX_PIXEL_SHARE:.0%} of dense masks",
                    measured,
                    status(v["pixel_share"] < MAX_PIXEL_SHARE),
                ]
            )
    if "soak" in results:
        soak = results["soak"]
        s = soak["summary"]
        five_minutes = soak["run_time"] in ("5m", "300s", "300")
        verdict = status(s["failures"] == 0 and s["requests"] > 0)
        if not five_minutes:
            verdict += f" (only {soak['run_time']}: quick run)"
        rows.append(
            [
                f"Locust soak, {soak['users']} users, max_prompts {soak['max_prompts']}",
                TARGET_SOAK,
                f"{s['failures']} failed of {s['requests']} in {soak['run_time']}",
                verdict,
            ]
        )
    attached = results.get("attached", {})
    if "overload" in attached:
        rows += overload_targets(attached["overload"])
    if "interactive" in attached:
        rows += interactive_targets(attached["interactive"])
    return rows


def overload_targets(overload: dict) -> list[list[str]]:
    over, soak = overload["overload"]["summary"], overload["soak"]["summary"]
    rss = overload["soak"]["rss"]
    rate = overload["overload"]["rate"]
    minutes = overload["overload"]["seconds"] / 60
    growth = rss["end_mb"] / rss["start_mb"] - 1
    return [
        [
            f"No hung request at 2x capacity ({rate:.2f} req/s, {minutes:.0f} min)",
            "0 without an answer within timeout + 5 s",
            f"{over['hung']} hung of {over['requests']}; {over['other_errors']} other errors, "
            f"{over['deadline']} deadline exceeded",
            status(over["hung"] == 0),
        ],
        [
            "Overload refused fast",
            f"rejection p95 <= {TARGET_REJECTION_MS:g} ms",
            f"{over['rejected']} rejected, p50 {fmt(over['rejected_p50_ms'], 1)} ms, p95 "
            f"{fmt(over['rejected_p95_ms'], 1)} ms; goodput {fmt(over['goodput_rps'], 3)} req/s, admitted "
            "p95 "
            f"{fmt(over['ok_p95_ms'])} ms",
            status(over["rejected"] > 0 and over["rejected_p95_ms"] <= TARGET_REJECTION_MS),
        ],
        [
            f"Soak at capacity, {overload['soak']['seconds'] / 60:.0f} min",
            f"0 failed, RSS growth <= {TARGET_SOAK_RSS_GROWTH:.0%}",
            f"{soak['requests'] - soak['ok']} failed of {soak['requests']}; RSS {rss['start_mb']:,.0f} -> "
            f"{rss['end_mb']:,.0f} MB ({growth:+.1%})",
            status(soak["ok"] == soak["requests"] and growth <= TARGET_SOAK_RSS_GROWTH),
        ],
    ]


def interactive_targets(interactive: dict) -> list[list[str]]:
    rows = []
    for name, sessions in interactive["images"].items():
        later = [c["ms"] for s in sessions for c in s["clicks"][1:]]
        first = [s["clicks"][0]["ms"] for s in sessions]
        p50, worst = median(later), max(later)
        rows.append(
            [
                f"Interactive click after the first ({name}, one-point prompt, cached embedding)",
                f"<= {TARGET_CLICK_MS:g} ms per click",
                f"p50 {fmt(p50, 1)} ms, max {fmt(worst, 1)} ms over {len(later)} clicks (first click "
                f"{fmt(median(first))} ms)",
                status(worst <= TARGET_CLICK_MS)
                if worst <= TARGET_CLICK_MS or p50 > TARGET_CLICK_MS
                else "**met at p50**, not at max",
            ]
        )
    return rows


def status(ok: bool, fraction: float | None = None) -> str:
    if ok:
        return "**met**"
    if fraction is not None and not math.isnan(fraction):
        return f"**not met** ({fraction:.0%} of target)"
    return "**not met**"


# --- sections -----------------------------------------------------------------------------------------------


def decoder_markdown(decoder: dict) -> str:
    rows = []
    for row in decoder["rows"]:
        r = decoder_ratios(row)
        rows.append(
            [
                row["image"],
                f"{row['size'][1]}x{row['size'][0]}",
                f"{row['box_prompts']} boxes -> {row['box_masks']} masks",
                fmt(r["box_ms"], 0),
                f"{row.get('grid_points', '–')} points -> {row.get('grid_masks', '–')} masks",
                fmt(r["grid_ms"], 0),
                fmt(r["time_ratio"], 1) + "x",
                fmt(r["mask_ratio"], 1) + "x",
                f"{fmt(r['box_ms_per_prompt'], 1)} / {fmt(r['grid_ms_per_point'], 1)}",
            ]
        )
    return table(
        [
            "image",
            "size",
            "object-aware prompts",
            "decoder ms",
            "32x32 grid",
            "decoder ms",
            "time ratio",
            "mask ratio",
            "ms per prompt (box / grid point)",
        ],
        rows,
    )


def _point(row: dict) -> str:
    return f"{row['image']}, conf {row['conf']:g}" if "conf" in row else row["image"]


def e2e_markdown(e2e: dict) -> str:
    parts = []
    rows = []
    for row in e2e["rows"]:
        server, reference = median(row["server_wall_ms"]), median(row["reference_wall_ms"])
        rows.append(
            [
                _point(row),
                f"{row['server_masks']} / {row['reference_masks']}",
                fmt(server),
                fmt(reference),
                fmt(e2e_ratio(row), 2) + "x",
                str(len(row["server_wall_ms"])),
            ]
        )
    parts.append(
        table(
            [
                "image, detector conf",
                "masks (Triton / reference)",
                "Triton ms (client wall)",
                "reference ms",
                "speed-up",
                "reps",
            ],
            rows,
        )
    )
    header = ["stage"]
    stage_rows: dict[str, list[str]] = {s: [s] for s in (*SERVER_STAGES[:-1], "transport", "total")}
    for row in e2e["rows"]:
        header += [f"Triton, {row['server_masks']} masks", f"reference, {row['reference_masks']} masks"]
        server = stage_medians(row["server_stages"], SERVER_STAGES)
        reference = stage_medians(row["reference_stages"], REFERENCE_STAGES)
        wall = median(row["server_wall_ms"])
        for stage in SERVER_STAGES[:-1]:
            stage_rows[stage] += [fmt(server.get(stage), 1), fmt(reference.get(stage, math.nan), 1)]
        stage_rows["transport"] += [fmt(wall - server["total"], 1), "–"]
        stage_rows["total"] += [fmt(wall, 1), fmt(median(row["reference_wall_ms"]), 1)]
    stage_rows["nms"][2::2] = ["(in discovery)"] * (len(stage_rows["nms"]) // 2)
    stage_rows["transport"][0] = "transport + client (wall - server total)"
    stage_rows["total"][0] = "total (client wall)"
    parts.append(
        "Per-stage medians (ms). Triton: the server's own `timings` (discovery, then the encoder: on CPU "
        "they run one after the other); reference: its stages, discovery including NMS.\n\n"
        + table(header, list(stage_rows.values()))
    )
    eff = e2e_efficiency(e2e)
    if eff:
        decoder_gap = (
            eff.get("decoder_ms_per_prompt", math.nan) / eff.get("decoder_standalone_ms_per_prompt", math.nan)
            - 1
        )
        lines = [
            table(
                ["measure", "in the server", "standalone", "difference"],
                [
                    [
                        "encoder (EfficientViT-L2, batch 1), ms",
                        fmt(eff.get("encoder_server_ms"), 1),
                        fmt(eff.get("encoder_standalone_ms"), 1),
                        f"{eff.get('encoder_overhead', math.nan):+.1%}",
                    ],
                    [
                        f"decoder, ms per prompt at {eff.get('decoder_prompts', '–')} prompts",
                        fmt(eff.get("decoder_ms_per_prompt"), 1),
                        fmt(eff.get("decoder_standalone_ms_per_prompt"), 1),
                        f"{decoder_gap:+.1%}",
                    ],
                ],
            )
        ]
        enc = e2e.get("encoder_standalone") or {}
        dec = e2e.get("decoder_standalone") or {}
        lines.append(
            "In the server: the `encoder` and `decoder` stage timings of the requests above (the encoder "
            "over every request, the decoder at the point nearest 50 boxes), i.e. the BLS call from the "
            "pipeline "
            "including its input preparation and the tensors' way through shared memory. Standalone: the "
            f"served `image_encoder/1/model.onnx` in a fresh ONNX Runtime session with the served config's "
            f"options ({enc.get('threads', '?')} threads, same allocator), median of "
            f"{len(enc.get('ms', []))}; "
            f"the decoder as `benchmarks/decoder_efficiency.py` runs it (factorized graph, slices of "
            f"{dec.get('slice_rows', '?')} rows, {dec.get('threads', '?')} threads, its own process, peak "
            f"RSS {dec.get('peak_rss_gib', math.nan):.2f} GiB)."
        )
        if "peak_rss_mb" in eff:
            most = max(e2e["rows"], key=lambda r: r.get("server_masks") or 0)
            by = ", ".join(
                f"{k} {v:,.0f}"
                for k, v in sorted((most.get("peak_rss_by_process_mb") or {}).items(), key=lambda kv: -kv[1])
            )
            lines.append(
                f"Peak RSS of the server during the {eff['peak_prompts']}-prompt requests (tritonserver + "
                f"every stub, psutil every 20 ms): **{eff['peak_rss_mb']:,.0f} MB**; per process group "
                f"(MB): {by}."
            )
        parts.append("\n\n".join(lines))
    return "\n\n".join(parts)


def before_after_markdown(baseline: dict, e2e: dict) -> str:
    """The old main's server and benchmark vs this checkout's, from their own runs."""
    parts = []
    old = baseline.get("e2e")
    if old:
        rows = []
        pairs = []
        for new_row in e2e["rows"]:
            old_row = nearest_row(old["rows"], new_row["server_masks"] or 0)
            if old_row is None:
                continue
            pairs.append((old_row, new_row))
            rows.append(
                [
                    f"{_point(new_row)}",
                    f"{old_row['server_masks']} / {new_row['server_masks']}",
                    f"{fmt(median(old_row['server_wall_ms']))} / {fmt(median(new_row['server_wall_ms']))}",
                    f"{median(old_row['server_wall_ms']) / median(new_row['server_wall_ms']):.2f}x",
                    f"{fmt(median(old_row['reference_wall_ms']))} / "
                    f"{fmt(median(new_row['reference_wall_ms']))}",
                    f"{fmt(e2e_ratio(old_row), 2)}x / {fmt(e2e_ratio(new_row), 2)}x",
                ]
            )
        parts.append(
            table(
                [
                    "image, conf",
                    "masks before / after",
                    "Triton ms before / after",
                    "Triton faster by",
                    "reference ms before / after",
                    "speed-up vs reference before / after",
                ],
                rows,
            )
        )
        for old_row, new_row in pairs:
            if (new_row["server_masks"] or 0) < 30:
                continue
            a = stage_medians(old_row["server_stages"], SERVER_STAGES)
            b = stage_medians(new_row["server_stages"], SERVER_STAGES)
            stage_rows = [[s, fmt(a[s], 1), fmt(b[s], 1)] for s in SERVER_STAGES]
            stage_rows.append(
                [
                    "client wall",
                    fmt(median(old_row["server_wall_ms"]), 1),
                    fmt(median(new_row["server_wall_ms"]), 1),
                ]
            )
            parts.append(
                f"Triton stages at {old_row['server_masks']} / {new_row['server_masks']} masks (ms, medians; "
                "the old server ran encoder and discovery concurrently, so its stages add up to more than "
                "its "
                "total):\n\n" + table(["stage", "before", "after"], stage_rows)
            )
    run = baseline.get("run")
    if run and "e2e" in run:
        rows = [
            [
                row["image"],
                str(row["server_masks"]),
                fmt(median(row["server_wall_ms"])),
                fmt(median(row["reference_wall_ms"])),
                fmt(e2e_ratio(row), 2) + "x",
                str(len(row["server_wall_ms"])),
            ]
            for row in run["e2e"]["rows"]
        ]
        parts.append(
            f"The old main's own benchmark (`{run['meta']['command']}` in the worktree, commit "
            f"{run['meta']['commit']}, default conf 0.4, same weights), "
            f"{run['meta'].get('finished', '')}:\n\n"
            + table(["image", "masks", "Triton ms", "reference ms", "speed-up", "reps"], rows)
        )
    return "\n\n".join(parts)


def concurrency_markdown(concurrency: dict) -> str:
    rows = [
        [
            str(level["users"]),
            str(level["requests"]),
            str(level["failures"]),
            fmt(level["throughput_rps"], 3),
            fmt(level["p50_ms"]),
            fmt(level["p95_ms"]),
            fmt(level["p99_ms"]),
            fmt(level["server_total_ms_p50"]),
            fmt(level["masks_mean"], 1),
        ]
        for level in concurrency["levels"]
    ]
    return table(
        [
            "users",
            "requests",
            "failed",
            "throughput req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "server total p50 ms",
            "masks/request",
        ],
        rows,
    )


def memory_markdown(memory: dict) -> str:
    largest = max(memory["cells"], key=lambda c: (c["masks"], c["megapixels"]))
    rows = [
        [
            str(c["max_prompts"]),
            str(c["masks"]),
            f"{c['size'][1]}x{c['size'][0]}",
            fmt(c["megapixels"], 1),
            fmt(c["peak_mb"]),
            fmt(c["growth_mb"]),
            fmt(c["dense_equivalent_mb"]),
            fmt(c["wall_ms"] / 1e3, 1),
        ]
        for c in memory["cells"]
    ]
    has_response = all("response_rle_mb" in c for c in memory["cells"])
    if has_response:
        for row, c in zip(rows, memory["cells"], strict=True):
            row.insert(-1, fmt(c["response_rle_mb"], 1))
    header = ["max_prompts", "masks", "image", "MP", "peak RSS MB", "growth over warm idle MB"]
    header += (
        ["prompts x pixels (dense masks) MB"] + (["RLE response MB"] if has_response else []) + ["request s"]
    )
    text = table(header, rows)
    smallest = max(
        (c for c in memory["cells"] if c["masks"] == largest["masks"]), key=lambda c: -c["megapixels"]
    )
    for cell in (smallest, largest) if smallest is not largest else (largest,):
        by_process = ", ".join(
            f"{k} {v:,.0f}" for k, v in sorted(cell["by_process_peak_mb"].items(), key=lambda kv: -kv[1])
        )
        if by_process:
            text += (
                f"\n\nPeak RSS per process group, {cell['masks']} prompts at {cell['megapixels']:.1f} MP "
                f"(MB): {by_process}."
            )
    return text


def console_summary(results: dict) -> str:
    """The short table printed at the end of a run."""
    rows = target_rows(results)
    if not rows:
        return "(no section measured)"
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  {r[2]}  [{r[3].replace('**', '')}; goal {r[1]}]" for r in rows)


def render_markdown(results: dict, plot_path: str | None) -> str:
    meta = results["meta"]
    machine, versions = meta["machine"], meta["versions"]
    out = [
        START,
        "## SegEvery service (`python -m benchmarks.run`)",
        "",
        (
            f"Measured {meta['finished']} on this project's CPU development machine ({machine['cpu']}, "
            f"{machine['usable_cpus']} cores, {machine['memory_gib']} GiB, no GPU) by"
        ),
        "",
        f"```\n{meta['command']}\n```",
        "",
        *(
            [
                f"Carried over from an earlier run (`--merge {meta['carried_over']['from']}`): "
                f"{', '.join(meta['carried_over']['sections'])}, measured {meta['carried_over']['measured']} "
                f"by `{meta['carried_over']['command']}`.",
                "",
            ]
            if meta.get("carried_over", {}).get("sections")
            else []
        ),
        (
            f"({'quick' if meta['quick'] else 'full'} run, {meta['duration_s'] / 60:.0f} minutes; every "
            "heavy run on this machine is wrapped in `flock /tmp/heavy.lock` so that nothing else competes "
            "for the 2 cores). Comparisons alternate inside one process run (A B, B A, ...) and report "
            "medians."
        ),
        "",
        f"**Weights: {meta['weights']}.** The model repository `{meta['model_repository']}` and the "
        f"reference pipeline load the same checkpoints (`{meta['weights_dir']}`, encoder {meta['encoder']}). "
        + (
            "These are seeded random weights in the official formats: timings are those of the real encoder "
            "and decoder (same shapes, same operations); the detector is a YOLOv8n, the smallest size, "
            "because the official file's size (n to x) is not known here, so with the real file the "
            "discovery stage may take several times longer. The detector's scores are noise, so the number "
            "of boxes is "
            "set by the confidence threshold, not by the image's content: at the default conf 0.4 it finds "
            "as many boxes as the cap allows on bus.jpg (300), and the end-to-end section picks conf per "
            "point to get about 10, 50 and 300 boxes (the actual mask counts are reported). With the real "
            "weights a photo typically yields tens of objects."
            if meta["weights"] == "fake"
            else ""
        ),
        "",
        "**Allocator**: "
        + (
            "the launcher's default: nothing process-wide"
            + (
                ", " + ", ".join(f"`{k}={v}`" for k, v in meta["allocator_env"].items())
                if meta.get("allocator_env")
                else ""
            )
            + "; the ONNX Runtime stubs (image_encoder, prompt_decoder, interactive_decoder) keep large "
            "blocks in their heap (`malloc_keep_large_blocks`: glibc mallopt, mmap threshold 32 MiB, "
            "no mmap, trim threshold 1 GiB, top pad 256 MiB)"
            + (
                ", and so does this benchmark's own process (the in-process reference; applied by mallopt "
                "once the process runs, which in section Allocator gives the reference 5.9 s where the same "
                "settings as environment variables from the start give 5.1 s: the reference here is up to "
                "~15% slower than its best)"
                if meta["reference_heap_tuned"]
                else ""
            )
            + " (section Allocator)."
            if "reference_heap_tuned" in meta
            else (
                ", ".join(f"`{k}={v}`" for k, v in meta["allocator_env"].items())
                if meta.get("allocator_env")
                else "glibc defaults"
            )
            + " for tritonserver, every stub and this benchmark's own process (the in-process reference), as "
            "the launcher sets it (section Allocator)."
        ),
        "",
    ]
    if plot_path:
        out += [f"![benchmarks]({plot_path})", ""]
    out += ["### Targets", "", table(["target", "goal", "measured", "status"], target_rows(results)), ""]
    if results.get("attached"):
        out += [
            "Overload, soak and interactive rows: from their own runs (sections below; raw numbers in "
            "`benchmarks/results/`).",
            "",
        ]
    if "decoder" in results:
        out += [
            "### 1. Decoder cost: object-aware box prompts vs the 32x32 grid",
            "",
            (
                "Same image embedding, same PyTorch decoder (the reference pipeline's), same weights; only "
                "the prompts differ. SegEvery decodes one single-mask prompt per discovered box (batches of "
                "320); SAM's automatic mask generator decodes 1024 grid points with 3 masks each (batches of "
                "64). Decoder time only (the grid's full-resolution filtering is excluded, so the grid's "
                "cost is understated)."
            ),
            "",
            decoder_markdown(results["decoder"]),
            "",
        ]
    if "e2e" in results:
        out += [
            "### 2. End to end: one SegEvery request through Triton vs the in-process reference",
            "",
            (
                "Triton: the client sends the encoded JPEG over gRPC and gets COCO RLE back (client wall "
                "time). Reference: `ReferencePipeline` (the original MobileSAMv2 formulation in PyTorch) in "
                "this process on the same bytes: decode, discovery, encoder, decoder, RLE. IoU 0.9, at most "
                "300 prompts, conf per point. Sides alternate (A B, B A, A B) within one run, one untimed "
                "warm-up each per point; medians. Cold embeddings: the server runs a copy of the repository "
                "with `embedding_cache_mb` 0 (and no response cache), so every request runs the encoder."
            ),
            "",
            e2e_markdown(results["e2e"]),
            "",
        ]
    if "baseline" in results and "e2e" in results:
        base = results["baseline"]
        out += [
            "### 2b. Before / after: the old main (bc36653) vs this checkout",
            "",
            (
                "The old main checked out in a git worktree "
                f"(`{base.get('worktree', 'work/baseline')}`), its repository built with its own build code "
                "from the same fake weights, served by its own "
                "server code, measured with the same driver (`benchmarks/e2e.py` run as a file with the old "
                "checkout's packages first on the path) under the old deployment's allocator (glibc "
                "defaults, which the old launcher left alone, for its server and its reference alike); "
                "after = section 2. Commands:"
            ),
            "",
            "```\n" + "\n".join(base.get("commands", [])) + "\n```",
            "",
            before_after_markdown(base, results["e2e"]),
            "",
        ]
    if "concurrency" in results:
        c = results["concurrency"]
        out += [
            "### 3. Throughput and latency vs concurrency",
            "",
            "Locust (`loadtest/`), closed loop: each user sends its next request when the previous one "
            f"returns; both sample images alternate; max_prompts {c['max_prompts']} (so a request takes "
            f"seconds, not the ~20 s of 300 prompts); {c['run_time']} per level"
            + (
                f", levels run up then down again and pooled ({c['passes']} passes)"
                if c["passes"] > 1
                else ""
            )
            + ". Percentiles are exact, over successful requests.",
            "",
            concurrency_markdown(c),
            "",
        ]
    if "soak" in results:
        soak = results["soak"]
        s = soak["summary"]
        out += [
            f"#### Soak: {soak['users']} users for {soak['run_time']}",
            "",
            (
                f"{s['requests']} requests, {s['failures']} failed, {fmt(s['throughput_rps'], 3)} req/s, "
                f"p50 {fmt(s['p50_ms'])} ms, p95 {fmt(s['p95_ms'])} ms, p99 {fmt(s['p99_ms'])} ms "
                f"(max_prompts {soak['max_prompts']})."
            ),
            "",
        ]
    if "memory" in results:
        m = results["memory"]
        out += [
            "### 4. Peak memory vs prompts and image size",
            "",
            (
                "Summed RSS of tritonserver and its Python-backend stub processes "
                f"({', '.join(m['processes'])}), sampled every 10 ms during one request per cell; fresh "
                "server, prompts ascending (ONNX Runtime's arenas keep what they grew to). Idle after start "
                f"{fmt(m['idle_fresh_mb'])} MB, after a warm-up request {fmt(m['idle_warm_mb'])} MB. bus.jpg "
                f"rescaled; conf {m['conf']} so that each cell gets max_prompts boxes. 'prompts x pixels' is "
                "what the masks alone would take at full resolution: the server upsamples and RLE-encodes "
                "them in cache-sized chunks instead, so what still grows with prompts x pixels is the RLE "
                "response itself (its strings in the segment_everything stub, the response in tritonserver)."
                + (
                    " With random weights the masks are noise, whose RLE is close to one run per few pixels; "
                    "a real mask's RLE grows with its outline, not its area."
                    if results["meta"]["weights"] == "fake"
                    else ""
                )
            ),
            "",
            memory_markdown(m),
            "",
        ]
    out += [
        "### Machine and versions",
        "",
        table(["", ""], [[k, str(v)] for k, v in {**machine, **versions, "commit": meta["commit"]}.items()]),
        "",
        "Section wall times: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in meta.get("section_seconds", {}).items())
        + f". Raw results: `{meta.get('results_json', '')}`.",
        END,
    ]
    return "\n".join(out)


def merge_into(existing: str, block: str) -> str:
    """``BENCHMARKS.md`` with ``block`` (this report, between its markers) in place of the previous one; other
    scripts' sections (between their own markers) and hand-written text are kept. A new file gets a title, and
    the GPU section that docs/deploy.md links to is added while nobody has written one."""
    if START in existing and END in existing:
        text = existing[: existing.index(START)] + block + existing[existing.index(END) + len(END) :]
    elif existing.strip():
        lines = existing.splitlines(keepends=True)
        at = 1 if lines and lines[0].startswith("# ") else 0
        text = "".join(lines[:at]) + ("\n" if at else "") + block + "\n\n" + "".join(lines[at:]).lstrip("\n")
    else:
        text = "# Benchmarks\n\n" + block + "\n"
    if GPU_HEADING not in text:
        text = text.rstrip("\n") + "\n\n" + GPU_SECTION
    return text if text.endswith("\n") else text + "\n"


# --- the plot -----------------------------------------------------------------------------------------------


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9.5))
    (ax_dec, ax_e2e), (ax_conc, ax_mem) = axes
    machine = results["meta"]["machine"]
    fig.suptitle(
        f"MobileSAMv2 SegEvery on CPU ({machine['usable_cpus']} cores, {machine['cpu']}), "
        f"{results['meta']['weights']} weights",
        fontsize=11,
    )

    if "decoder" in results:
        rows = results["decoder"]["rows"]
        names = [r["image"] for r in rows]
        ratios = [decoder_ratios(r) for r in rows]
        x = range(len(rows))
        ax_dec.bar([i - 0.2 for i in x], [r["box_ms"] / 1e3 for r in ratios], 0.4, label="object-aware boxes")
        ax_dec.bar(
            [i + 0.2 for i in x],
            [r["grid_ms"] / 1e3 if not math.isnan(r["grid_ms"]) else 0 for r in ratios],
            0.4,
            label="32x32 grid",
        )
        for i, (row, r) in enumerate(zip(rows, ratios, strict=True)):
            ax_dec.annotate(
                f"{row['box_masks']} masks",
                (i - 0.2, r["box_ms"] / 1e3),
                ha="center",
                va="bottom",
                fontsize=8,
            )
            if not math.isnan(r["grid_ms"]):
                ax_dec.annotate(
                    f"{row['grid_masks']} masks\n{r['time_ratio']:.1f}x",
                    (i + 0.2, r["grid_ms"] / 1e3),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax_dec.set_xticks(list(x), names)
        ax_dec.set_yscale("log")
        top = max(
            [r["box_ms"] for r in ratios] + [r["grid_ms"] for r in ratios if not math.isnan(r["grid_ms"])]
        )
        ax_dec.set_ylim(top=top / 1e3 * 4)  # room for the labels
        ax_dec.set_ylabel("decoder time, s (log)")
        ax_dec.set_title("1. Decoder: box prompts vs 32x32 grid")
        ax_dec.legend(fontsize=8)
    else:
        ax_dec.set_visible(False)

    if "e2e" in results:
        rows = results["e2e"]["rows"]
        labels, segments = [], []
        for row in rows:
            s = stage_medians(row["server_stages"], SERVER_STAGES)
            wall = median(row["server_wall_ms"])
            labels.append(f"{row['server_masks']} masks\nTriton")
            parts = {
                "decode": s["decode_image"],
                "discovery (+nms)": s["discovery"] + (0.0 if math.isnan(s["nms"]) else s["nms"]),
                "encoder": s["encoder"],
                "decoder": s["decoder"],
                "postprocess": s["postprocess"],
            }
            parts["transport/other"] = max(wall - sum(v for v in parts.values() if not math.isnan(v)), 0)
            segments.append(parts)
            r = stage_medians(row["reference_stages"], REFERENCE_STAGES)
            labels.append(f"{row['reference_masks']} masks\nreference")
            segments.append(
                {
                    "decode": r["decode_image"],
                    "discovery (+nms)": r["discovery"],
                    "encoder": r["encoder"],
                    "decoder": r["decoder"],
                    "postprocess": r["postprocess"],
                }
            )
        colors = {
            "decode": "#999999",
            "encoder": "#1f77b4",
            "discovery (+nms)": "#aec7e8",
            "decoder": "#ff7f0e",
            "postprocess": "#2ca02c",
            "transport/other": "#d62728",
        }
        seen = set()
        for i, seg in enumerate(segments):
            left = 0.0
            for name, raw_ms in seg.items():
                ms = 0.0 if math.isnan(raw_ms) else raw_ms
                ax_e2e.barh(i, ms / 1e3, left=left, color=colors[name], label=None if name in seen else name)
                seen.add(name)
                left += ms / 1e3
            ax_e2e.annotate(
                f"{left:.1f} s", (left, i), va="center", fontsize=8, xytext=(3, 0), textcoords="offset points"
            )
        ax_e2e.set_yticks(range(len(labels)), labels, fontsize=8)
        ax_e2e.invert_yaxis()
        ax_e2e.set_xlabel("seconds (median)")
        speedups = ", ".join(f"{row['server_masks']} masks {e2e_ratio(row):.1f}x" for row in rows)
        ax_e2e.set_title(f"2. One request, bus.jpg (Triton speed-up: {speedups})", fontsize=10)
        ax_e2e.legend(fontsize=7, loc="lower right")
    else:
        ax_e2e.set_visible(False)

    if "concurrency" in results:
        levels = results["concurrency"]["levels"]
        users = [lv["users"] for lv in levels]
        ax_conc.plot(users, [lv["throughput_rps"] for lv in levels], "o-", color="black", label="throughput")
        ax_conc.set_xlabel("concurrent users")
        ax_conc.set_ylabel("requests / s")
        ax_conc.set_xscale("log", base=2)
        ax_conc.set_xticks(users, [str(u) for u in users])
        ax_lat = ax_conc.twinx()
        for key, style in (("p50_ms", "s--"), ("p95_ms", "^--"), ("p99_ms", "v--")):
            ax_lat.plot(users, [lv[key] / 1e3 for lv in levels], style, label=key.replace("_ms", ""))
        ax_lat.set_ylabel("latency, s")
        ax_conc.set_ylim(bottom=0)
        ax_lat.set_ylim(bottom=0)
        handles = ax_conc.get_legend_handles_labels()
        more = ax_lat.get_legend_handles_labels()
        ax_conc.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left")
        ax_conc.set_title(f"3. Load (locust, max_prompts {results['concurrency']['max_prompts']})")
    elif "overload" in results.get("attached", {}):
        over = results["attached"]["overload"]
        samples = over.get("rss_samples") or []
        if samples:
            t0 = samples[0][0]
            ax_conc.plot(
                [(t - t0) / 60 for t, _ in samples], [mb / 1024 for _, mb in samples], "-", color="black"
            )
            for name in ("capacity", "overload", "soak"):
                phase = over[name]
                start = (phase["started"] - t0) / 60
                ax_conc.axvline(start, color="grey", linestyle=":")
                ax_conc.annotate(name, (start, 0), xytext=(3, 3), textcoords="offset points", fontsize=8)
            ax_conc.set_xlabel("minutes")
            ax_conc.set_ylabel("server RSS (tritonserver + stubs), GiB")
            ax_conc.set_ylim(bottom=0)
            cap = over["capacity"]["summary"]["goodput_rps"]
            ax_conc.set_title(f"3. Capacity {cap:.2f} req/s, 2x overload, soak: server RSS", fontsize=10)
        else:
            ax_conc.set_visible(False)
    else:
        ax_conc.set_visible(False)

    if "memory" in results:
        cells = results["memory"]["cells"]
        for side in sorted({c["side"] for c in cells}):
            row = sorted((c for c in cells if c["side"] == side), key=lambda c: c["masks"])
            mp = row[0]["megapixels"]
            ax_mem.plot(
                [c["masks"] for c in row], [c["peak_mb"] / 1024 for c in row], "o-", label=f"{mp:.1f} MP"
            )
        ax_mem.set_xlabel("prompts (masks) in the request")
        ax_mem.set_ylabel("peak server RSS, GiB")
        ax_mem.set_title("4. Peak memory vs prompts, per image size")
        ax_mem.legend(fontsize=8, title="image", title_fontsize=8)
    else:
        ax_mem.set_visible(False)

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
