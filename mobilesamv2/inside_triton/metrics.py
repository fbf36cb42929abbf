"""Custom Prometheus metrics of the ``segment_everything`` pipeline, on Triton's metrics port next to its own
(``nv_inference_*``: queue time, request failures by reason including ``REJECTED``, cache hits).

    segevery_requests_total{outcome, stage}   every answered request: ok | invalid | cancelled | deadline |
                                              failed, and the stage where it stopped (``-``: completed)
    segevery_masks                            histogram of masks per answered request
    segevery_stage_seconds{stage}             histogram of each stage's duration (decode_image, encoder,
                                              discovery, nms, decoder, postprocess, total)
    segevery_embedding_cache_total{result}    embedding lookups: hit (no decode, no encoder) | miss
    segevery_requests_in_flight               gauge of requests being served now (a stopping runner waits
                                              for it to reach 0 before it stops Triton)

Triton's own ``nv_inference_request_success`` counts every request a Python model answered, with an error too.

Uses ``pb_utils.MetricFamily`` (Python backend 24.10): importable only inside a Triton stub.
"""

from __future__ import annotations

from collections.abc import Mapping

from segment_everything_contract import ContractError

from ..pipeline import DeadlineExceeded, RequestCancelled, StageError

STAGE_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
MASK_BUCKETS = [0, 1, 5, 10, 25, 50, 100, 200, 300, 500, 1000]
STAGES = ("decode_image", "encoder", "discovery", "nms", "decoder", "postprocess", "total")


def outcome_of(exc: BaseException | None) -> tuple[str, str]:
    """``(outcome, stage)`` labels for a request that ended with ``exc`` (None: completed)."""
    if exc is None:
        return "ok", "-"
    if isinstance(exc, ContractError):
        return "invalid", "-"
    if isinstance(exc, RequestCancelled):
        return "cancelled", exc.stage
    if isinstance(exc, DeadlineExceeded):
        return "deadline", exc.stage
    if isinstance(exc, StageError):
        return ("invalid" if exc.code == "INVALID_ARG" else "failed"), exc.stage
    return "failed", "pipeline"


class PipelineMetrics:
    def __init__(self, model: str) -> None:
        import triton_python_backend_utils as pb_utils

        kind = pb_utils.MetricFamily
        self._requests = kind(
            "segevery_requests_total", "Answered requests by outcome and stage", kind.COUNTER
        )
        self._masks = kind("segevery_masks", "Masks per answered request", kind.HISTOGRAM)
        self._stages = kind("segevery_stage_seconds", "Duration of each pipeline stage", kind.HISTOGRAM)
        self._cache = kind("segevery_embedding_cache_total", "Embedding cache lookups", kind.COUNTER)
        # a family must outlive its metrics: keep a reference to each
        self._in_flight_family = kind("segevery_requests_in_flight", "Requests being served now", kind.GAUGE)
        self._in_flight = self._in_flight_family.Metric(labels={"model": model})
        self._cache_metrics = {
            result: self._cache.Metric(labels={"model": model, "result": result})
            for result in ("hit", "miss")
        }
        self._model = model
        self._request_metrics: dict[tuple[str, str], object] = {}
        self._mask_metric = self._masks.Metric(labels={"model": model}, buckets=MASK_BUCKETS)
        self._stage_metrics = {
            stage: self._stages.Metric(labels={"model": model, "stage": stage}, buckets=STAGE_BUCKETS)
            for stage in STAGES
        }

    def started(self) -> None:
        """A request is in flight until :meth:`record` counts its outcome."""
        self._in_flight.increment(1)

    def record(
        self, exc: BaseException | None, masks: int = 0, timings_ms: Mapping[str, float] | None = None
    ) -> None:
        # out of flight before counted: whoever reads both at once sees no request twice
        self._in_flight.increment(-1)
        labels = outcome_of(exc)
        metric = self._request_metrics.get(labels)
        if metric is None:
            metric = self._requests.Metric(
                labels={"model": self._model, "outcome": labels[0], "stage": labels[1]}
            )
            self._request_metrics[labels] = metric
        metric.increment(1)
        if exc is None:
            self._mask_metric.observe(masks)
        timings_ms = timings_ms or {}
        if "encoder_cached" in timings_ms:
            self._cache_metrics["hit"].increment(1)
        elif "encoder" in timings_ms:
            self._cache_metrics["miss"].increment(1)
        for stage, ms in timings_ms.items():
            if stage in self._stage_metrics:
                self._stage_metrics[stage].observe(ms / 1e3)
