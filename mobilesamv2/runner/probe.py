"""Health probe that runs real inferences: ``python -m mobilesamv2.runner.probe --url 127.0.0.1:8000``.

``/v2/health/ready`` stays 200 when a Python model's stub process died or hangs (Python backend 24.10 neither
restarts nor reports it), so this probe sends tiny requests through every model instead, within one deadline
(``--timeout``), over Triton's HTTP/JSON protocol:

1. SegAny, one box, on a freshly generated 64x48 noise image: ``image_encoder`` + ``prompt_decoder``
   (a new image every time: the encoder's response cache cannot answer for a dead encoder);
2. SegAny, one point with ``multimask``: ``interactive_decoder`` (``--no-interactive`` skips it);
3. SegEvery with ``max_prompts`` 1: ``object_discovery`` (+ the decoder when it finds a box).

Every answer is checked (image size, number of masks, prompt indices), so an empty or malformed success fails
too. Prints one line and exits with

- 0: every request succeeded;
- 1: a request failed, timed out, or the answer was wrong (the line says which and why);
- 2: the server refused a request because its queue is full ("overloaded": alive, but not ready for more).
  With ``--overloaded-ok`` (liveness) that is exit 0, unless it happened ``--max-overloaded`` probes in a row
  (counted in ``--state-file``): a queue that stays full is also what hung model instances look like.

Requests go with priority 1 (ahead of SegEvery traffic) and carry the deadline as Triton's ``timeout``. Only
inference and health endpoints are used: it works with the management APIs restricted. Standard library and
the wire contract only (the container's Python 3.10 runs it in the HEALTHCHECK and the Kubernetes probes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import segment_everything_contract as contract

OK, FAILED, OVERLOADED = 0, 1, 2
HEIGHT, WIDTH = 48, 64
_QUEUE_FULL = re.compile(r"exceeds maximum queue size|overloaded", re.IGNORECASE)


class ProbeFailure(Exception):
    """One check failed; ``overloaded`` when the server refused the request because its queue is full."""

    def __init__(self, message: str, overloaded: bool = False) -> None:
        super().__init__(message)
        self.overloaded = overloaded


@dataclass
class ProbeResult:
    code: int
    message: str
    seconds: float
    steps: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.code == OK

    @property
    def overloaded(self) -> bool:
        return self.code == OVERLOADED

    def line(self) -> str:
        word = {OK: "ok", FAILED: "FAILED", OVERLOADED: "OVERLOADED"}[self.code]
        return f"{word}: {self.message} ({self.seconds:.2f} s)"


def _tensor(spec: contract.TensorSpec, shape: Sequence[int], data: list) -> dict:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(shape), "data": data}


def noise_image(rng: random.Random) -> list[int]:
    return [rng.randrange(256) for _ in range(HEIGHT * WIDTH * 3)]


class Prober:
    """The probe's requests against one server (``host:port`` of Triton's HTTP endpoint)."""

    def __init__(
        self,
        url: str = "127.0.0.1:8000",
        timeout: float = 10.0,
        interactive: bool = True,
        headers: dict[str, str] | None = None,
        priority: int = 1,
    ) -> None:
        self.url = url.removeprefix("http://").rstrip("/")
        self.timeout = timeout
        self.interactive = interactive
        self.headers = dict(headers or {})
        self.priority = priority

    def _post(self, body: dict, deadline: float, what: str) -> dict:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ProbeFailure(f"{what}: deadline of {self.timeout:g} s passed before it was sent")
        body.setdefault("parameters", {}).update(
            timeout=max(1, int(left * 1e6)),  # microseconds: Triton drops it from its queue when it expires
            priority=self.priority,
        )
        request = urllib.request.Request(
            f"http://{self.url}/v2/models/{contract.PIPELINE_MODEL}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **self.headers},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=left) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read() or b"{}").get("error", "") or exc.reason
            except (ValueError, OSError):
                message = str(exc.reason)
            raise ProbeFailure(
                f"{what}: HTTP {exc.code}: {message}", bool(_QUEUE_FULL.search(message))
            ) from exc
        except TimeoutError as exc:  # socket.timeout is TimeoutError since 3.10
            raise ProbeFailure(f"{what}: no answer within the deadline of {self.timeout:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise ProbeFailure(f"{what}: no answer within the deadline of {self.timeout:g} s") from exc
            raise ProbeFailure(f"{what}: server unreachable at {self.url}: {exc.reason}") from exc
        except (OSError, ValueError) as exc:  # connection reset, broken JSON
            raise ProbeFailure(f"{what}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _outputs(response: dict, what: str) -> dict[str, list]:
        try:
            return {o["name"]: o.get("data", []) for o in response["outputs"]}
        except (KeyError, TypeError) as exc:
            raise ProbeFailure(f"{what}: malformed response: {str(response)[:200]}") from exc

    def _check(self, what: str, outputs: dict[str, list], masks: int | None, max_masks: int = 1) -> None:
        size = outputs.get(contract.IMAGE_SIZE.name)
        if size != [HEIGHT, WIDTH]:
            raise ProbeFailure(f"{what}: image_size {size}, expected {[HEIGHT, WIDTH]}")
        index = outputs.get(contract.PROMPT_INDEX.name)
        boxes = outputs.get(contract.BOXES_OUT.name)
        ious = outputs.get(contract.IOU_PREDICTIONS.name)
        if index is None or boxes is None or ious is None:
            raise ProbeFailure(f"{what}: outputs missing: {sorted(outputs)}")
        if masks is not None and len(index) != masks:
            raise ProbeFailure(f"{what}: {len(index)} masks, expected {masks}")
        if len(index) > max_masks or len(boxes) != 4 * len(index) or len(ious) != len(index):
            raise ProbeFailure(f"{what}: inconsistent outputs ({len(index)} masks, {len(boxes)} box values)")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in [*boxes, *ious]):
            raise ProbeFailure(f"{what}: non-finite boxes or IoU predictions")

    def run(self) -> ProbeResult:
        started = time.monotonic()
        deadline = started + self.timeout
        rng = random.Random(time.time_ns() ^ os.getpid())
        image = _tensor(contract.IMAGE_RAW, (HEIGHT, WIDTH, 3), noise_image(rng))
        wanted = [
            {"name": n}
            for n in (
                contract.BOXES_OUT.name,
                contract.IOU_PREDICTIONS.name,
                contract.PROMPT_INDEX.name,
                contract.IMAGE_SIZE.name,
            )
        ]
        steps: dict[str, float] = {}
        cases = [
            (
                "SegAny box (image_encoder, prompt_decoder)",
                [image, _tensor(contract.BOXES_IN, (1, 4), [8.0, 6.0, 40.0, 30.0])],
                1,
                1,
            )
        ]
        if self.interactive:
            cases.append(
                (
                    "SegAny multimask point (interactive_decoder)",
                    [
                        image,
                        _tensor(contract.POINTS, (1, 1, 2), [32.0, 24.0]),
                        _tensor(contract.POINT_LABELS, (1, 1), [1]),
                        _tensor(contract.MULTIMASK, (1,), [True]),
                    ],
                    3,
                    3,
                )
            )
        cases.append(
            (
                "SegEvery (object_discovery)",
                [image, _tensor(contract.MAX_PROMPTS, (1,), [1])],
                None,
                1,
            )
        )
        try:
            for what, inputs, masks, max_masks in cases:
                step = time.monotonic()
                response = self._post({"inputs": inputs, "outputs": wanted}, deadline, what)
                self._check(what, self._outputs(response, what), masks, max_masks)
                steps[what] = time.monotonic() - step
        except ProbeFailure as exc:
            code = OVERLOADED if exc.overloaded else FAILED
            return ProbeResult(code, str(exc), time.monotonic() - started, steps)
        return ProbeResult(
            OK, f"{len(cases)} requests through every model at {self.url}", time.monotonic() - started, steps
        )


def _consecutive_overloaded(state_file: Path | None, overloaded: bool) -> int:
    """Count overloaded results in a row in ``state_file`` (exec probes keep no state of their own)."""
    if state_file is None:
        return 1 if overloaded else 0
    try:
        count = int(state_file.read_text().strip() or 0) if overloaded else 0
    except (OSError, ValueError):
        count = 0
    count = count + 1 if overloaded else 0
    try:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(f"{count}\n")
    except OSError:
        pass
    return count


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mobilesamv2.runner.probe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", default=os.environ.get("PROBE_URL", "127.0.0.1:8000"), help="Triton HTTP")
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline of the whole probe, seconds")
    parser.add_argument(
        "--no-interactive", dest="interactive", action="store_false", help="skip interactive_decoder"
    )
    parser.add_argument("--header", action="append", default=[], metavar="NAME=VALUE", help="extra header")
    parser.add_argument(
        "--overloaded-ok", action="store_true", help="liveness: a full queue is alive (exit 0)"
    )
    parser.add_argument(
        "--max-overloaded",
        type=int,
        default=0,
        help="with --overloaded-ok: fail after this many overloaded probes in a row (0: never)",
    )
    parser.add_argument("--state-file", type=Path, default=None, help="where the overloaded count is kept")
    args = parser.parse_args(argv)
    headers = dict(h.split("=", 1) for h in args.header if "=" in h)

    result = Prober(args.url, args.timeout, args.interactive, headers).run()
    code = result.code
    message = result.line()
    if args.overloaded_ok:
        count = _consecutive_overloaded(args.state_file, result.overloaded)
        if result.overloaded:
            if args.max_overloaded and count >= args.max_overloaded:
                message += f"; overloaded {count} probes in a row: failing"
                code = FAILED
            else:
                message += " (alive)"
                code = OK
    print(message, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
