"""Results dict -> the console table, ``BENCHMARKS.md`` and the PNG plot. Pure: no measuring here, so a saved
``results.json`` can be re-rendered (``python -m benchmarks.run --render results.json``)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

TARGET_E2E_SPEEDUP = 1.5
TARGET_DECODER_RATIO = 8.0
TARGET_SOAK = "0 failed requests, 4 users, 5 minutes"
# Image-size growth at the largest prompt count must stay below this share of the prompts x pixels footprint.
MAX_PIXEL_SHARE = 0.05

START, END = "<!-- segevery-benchmarks:start -->", "<!-- segevery-benchmarks:end -->"
GPU_HEADING = "## GPU (NVIDIA, TensorRT)"
GPU_SECTION = (
    f"{GPU_HEADING}\n\nNot yet measured. The GPU repository (TensorRT engines for the encoder and decoder, "
    "see [docs/deploy.md](docs/deploy.md)) has not been benchmarked on a GPU; every number in this file is "
    "CPU-only.\n"
)

SERVER_STAGES = ("decode_image", "encoder", "discovery", "nms", "decoder", "postprocess", "total")
REFERENCE_STAGES = ("decode_image", "encoder", "discovery", "decoder", "postprocess", "total")


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
        for row in results["e2e"]["rows"]:
            ratio = e2e_ratio(row)
            rows.append(
                [
                    (
                        f"SegEvery through Triton vs in-process reference ({row['image']}, "
                        f"{row['server_masks']} masks)"
                    ),
                    f">= {TARGET_E2E_SPEEDUP}x faster",
                    f"{fmt(ratio, 2)}x",
                    status(ratio >= TARGET_E2E_SPEEDUP, ratio / TARGET_E2E_SPEEDUP),
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


def e2e_markdown(e2e: dict) -> str:
    parts = []
    rows = []
    for row in e2e["rows"]:
        server, reference = median(row["server_wall_ms"]), median(row["reference_wall_ms"])
        rows.append(
            [
                row["image"],
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
                "image",
                "masks (Triton / reference)",
                "Triton ms (client wall)",
                "reference ms",
                "speed-up",
                "reps",
            ],
            rows,
        )
    )
    for row in e2e["rows"]:
        server = stage_medians(row["server_stages"], SERVER_STAGES)
        reference = stage_medians(row["reference_stages"], REFERENCE_STAGES)
        wall = median(row["server_wall_ms"])
        stage_rows = [
            [stage, fmt(server.get(stage), 1), fmt(reference.get(stage), 1)] for stage in SERVER_STAGES
        ]
        stage_rows.insert(
            -1, ["transport + client (wall - server total)", fmt(wall - server["total"], 1), "–"]
        )
        stage_rows.append(["client wall", fmt(wall, 1), fmt(median(row["reference_wall_ms"]), 1)])
        parts.append(
            f"Per-stage medians, {row['image']} (ms; Triton runs encoder and discovery concurrently, so its "
            f"stages add up to more than its total; the reference's discovery includes NMS):\n\n"
            + table(["stage", "Triton", "reference"], stage_rows)
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
            "These are seeded random weights in the official formats: timings are those of the real networks "
            "(same shapes, same operations), but the detector's output is noise, so it finds as many boxes "
            "as the cap allows on busy images (300 on bus.jpg at the default conf 0.4). With the real "
            "weights a photo typically yields tens of objects, which makes every per-prompt cost below "
            "smaller and the box-vs-grid ratio larger."
            if meta["weights"] == "fake"
            else ""
        ),
        "",
    ]
    if plot_path:
        out += [f"![benchmarks]({plot_path})", ""]
    out += ["### Targets", "", table(["target", "goal", "measured", "status"], target_rows(results)), ""]
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
                "time). Reference: `ReferencePipeline` in this process on the same bytes: decode, discovery, "
                "encoder, decoder (PyTorch), RLE. Default settings (conf 0.4, IoU 0.9, at most 300 prompts)."
            ),
            "",
            e2e_markdown(results["e2e"]),
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
            labels.append(f"{row['image']}\nTriton")
            segments.append(
                {
                    "decode": s["decode_image"],
                    "encoder ∥ discovery": max(s["encoder"], s["discovery"]),
                    "nms": s["nms"],
                    "decoder": s["decoder"],
                    "postprocess": s["postprocess"],
                    "transport/other": max(
                        wall
                        - (
                            s["decode_image"]
                            + max(s["encoder"], s["discovery"])
                            + s["nms"]
                            + s["decoder"]
                            + s["postprocess"]
                        ),
                        0,
                    ),
                }
            )
            r = stage_medians(row["reference_stages"], REFERENCE_STAGES)
            labels.append(f"{row['image']}\nreference")
            segments.append(
                {
                    "decode": r["decode_image"],
                    "encoder": r["encoder"],
                    "discovery (+nms)": r["discovery"],
                    "decoder": r["decoder"],
                    "postprocess": r["postprocess"],
                }
            )
        colors = {
            "decode": "#999999",
            "encoder ∥ discovery": "#1f77b4",
            "encoder": "#1f77b4",
            "discovery (+nms)": "#aec7e8",
            "nms": "#aec7e8",
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
        speedups = ", ".join(f"{row['image']} {e2e_ratio(row):.2f}x" for row in rows)
        ax_e2e.set_title(f"2. One request end to end (Triton speed-up: {speedups})", fontsize=10)
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
