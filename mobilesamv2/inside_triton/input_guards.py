"""Declarative input guards of the Python-based ``onnxruntime`` runner: what a model accepts, from its config.

Anyone who can reach Triton's port can call an internal model directly, with any shape and any value that
Triton's own checks let through (datatypes, ranks, the dims a config fixes and ``max_batch_size``, nothing
else). Four ``config.pbtxt`` parameters (string values) bound the rest; the runner parses them when the model
loads (a bad parameter fails the load with a message naming it) and checks every request before ONNX Runtime
sees it, in this order:

``max_dims``
    ``input=d0,d1,...[;input=...]``: the largest size of each axis of the tensor as the model receives it
    (the batch axis first when ``max_batch_size`` > 0), one entry per axis, each an integer >= 1 or ``*`` (no
    bound). Checked from the shape alone, before any value is read. Example:
    ``point_coords=320,33,2;point_labels=320,33``.
``same_dims``
    ``input:axis,input:axis[,...][;...]``: each group of axes must have the same length (ONNX Runtime would
    otherwise fail deep inside the graph). Example:
    ``point_coords:0,point_labels:0;point_coords:1,point_labels:1``.
``finite_inputs``
    ``input,input,...``: floating-point inputs that must hold no NaN and no infinity.
``value_ranges``
    ``input=low:high[;...]``: every value within ``[low, high]`` (inclusive; numbers such as ``-1024``,
    ``0.5`` or ``1e4``; an empty side is unbounded). NaN is outside every range. Example:
    ``point_coords=-1024:2048;point_labels=-1:3``.

A violation is a :class:`InputRejected` (a ``ContractError``: Triton's ``INVALID_ARG``) whose message names
the model, the input, the offending size or value (and where it is) and the limit, e.g.
``prompt_decoder: input 'point_coords' has shape [3000, 2, 2]: axis 0 is 3000, over the limit of 320
(max_dims [320, 33, 2])``.

NVIDIA's C++ backends ignore parameters they do not know, so the same ``config.pbtxt`` still loads in NVIDIA's
container; there the TensorRT optimisation profiles bound the shapes (a request outside the profile is refused
by TensorRT) and the values go unchecked. Pure numpy: unit-tested without Triton.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from segment_everything_contract import ContractError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class InputRejected(ContractError):
    """A request breaks one of the model's declared input guards (answered with INVALID_ARG)."""


class GuardConfigError(ValueError):
    """A guard parameter is malformed or does not fit the model's inputs (fails the model load)."""


@dataclass(frozen=True)
class InputInfo:
    """What the runner knows of one input: numpy dtype and full shape as received (-1 = variable)."""

    dtype: np.dtype
    shape: tuple[int, ...]


def _entries(parameter: str, text: str) -> list[tuple[str, str]]:
    """``name=value;name=value`` -> pairs (blank entries ignored; a name given twice is an error)."""
    pairs: list[tuple[str, str]] = []
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, value = entry.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not _NAME.match(name) or not value:
            raise GuardConfigError(f"parameter {parameter}: entry {entry!r} is not 'input=value'")
        if any(name == seen for seen, _ in pairs):
            raise GuardConfigError(f"parameter {parameter}: input '{name}' is given twice")
        pairs.append((name, value))
    return pairs


def _known(parameter: str, name: str, inputs: Mapping[str, InputInfo]) -> InputInfo:
    if name not in inputs:
        raise GuardConfigError(
            f"parameter {parameter}: '{name}' is not an input of the model (inputs: {', '.join(inputs)})"
        )
    return inputs[name]


def _bound(parameter: str, name: str, text: str) -> float | None:
    if not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        raise GuardConfigError(f"parameter {parameter}: bound {text!r} of '{name}' is not a number") from None
    if math.isnan(value):
        raise GuardConfigError(f"parameter {parameter}: bound of '{name}' is NaN")
    return value


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class InputGuards:
    """The parsed guards of one model; :meth:`check` refuses a request's inputs that break them."""

    model: str
    max_dims: dict[str, tuple[int | None, ...]] = field(default_factory=dict)
    same_dims: tuple[tuple[tuple[str, int], ...], ...] = ()
    finite_inputs: tuple[str, ...] = ()
    value_ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.max_dims or self.same_dims or self.finite_inputs or self.value_ranges)

    # --------------------------------------------------------------------------------------------- parsing

    @classmethod
    def from_parameters(
        cls, model: str, params: Mapping[str, str], inputs: Mapping[str, InputInfo]
    ) -> InputGuards:
        """Parse the guard parameters (absent or empty = no guard) against the model's inputs.

        Raises:
            GuardConfigError: malformed syntax, an unknown input, a wrong number of axes, a bound below a dim
                the config fixes, ``finite_inputs`` on a non-float input, ``low > high``.
        """
        return cls(
            model,
            cls._parse_max_dims(params.get("max_dims", "") or "", inputs),
            cls._parse_same_dims(params.get("same_dims", "") or "", inputs),
            cls._parse_finite(params.get("finite_inputs", "") or "", inputs),
            cls._parse_ranges(params.get("value_ranges", "") or "", inputs),
        )

    @staticmethod
    def _parse_max_dims(text: str, inputs: Mapping[str, InputInfo]) -> dict[str, tuple[int | None, ...]]:
        out: dict[str, tuple[int | None, ...]] = {}
        for name, value in _entries("max_dims", text):
            info = _known("max_dims", name, inputs)
            dims: list[int | None] = []
            for item in (part.strip() for part in value.split(",")):
                if item == "*":
                    dims.append(None)
                    continue
                if not item.isdigit() or int(item) < 1:
                    raise GuardConfigError(
                        f"parameter max_dims: '{name}' bound {item!r} is not an integer >= 1 or '*'"
                    )
                dims.append(int(item))
            if len(dims) != len(info.shape):
                raise GuardConfigError(
                    f"parameter max_dims: '{name}' has {len(info.shape)} axes {list(info.shape)}, "
                    f"got {len(dims)} bounds"
                )
            for axis, (bound, fixed) in enumerate(zip(dims, info.shape, strict=True)):
                if bound is not None and fixed > 0 and bound < fixed:
                    raise GuardConfigError(
                        f"parameter max_dims: '{name}' axis {axis} is fixed at {fixed}, the bound {bound} "
                        "refuses every request"
                    )
            out[name] = tuple(dims)
        return out

    @staticmethod
    def _parse_same_dims(
        text: str, inputs: Mapping[str, InputInfo]
    ) -> tuple[tuple[tuple[str, int], ...], ...]:
        groups: list[tuple[tuple[str, int], ...]] = []
        for raw in text.split(";"):
            if not raw.strip():
                continue
            group: list[tuple[str, int]] = []
            for item in (part.strip() for part in raw.split(",")):
                name, sep, axis = item.partition(":")
                name, axis = name.strip(), axis.strip()
                if not sep or not axis.isdigit():
                    raise GuardConfigError(f"parameter same_dims: {item!r} is not 'input:axis'")
                info = _known("same_dims", name, inputs)
                if int(axis) >= len(info.shape):
                    raise GuardConfigError(
                        f"parameter same_dims: '{name}' has {len(info.shape)} axes, no axis {axis}"
                    )
                group.append((name, int(axis)))
            if len(group) < 2:
                raise GuardConfigError(f"parameter same_dims: group {raw.strip()!r} needs two axes or more")
            groups.append(tuple(group))
        return tuple(groups)

    @staticmethod
    def _parse_finite(text: str, inputs: Mapping[str, InputInfo]) -> tuple[str, ...]:
        names = [item.strip() for item in text.split(",") if item.strip()]
        for name in names:
            info = _known("finite_inputs", name, inputs)
            if info.dtype.kind != "f":
                raise GuardConfigError(
                    f"parameter finite_inputs: '{name}' is {info.dtype}, only floating-point inputs can hold "
                    "NaN or infinity"
                )
        if len(set(names)) != len(names):
            raise GuardConfigError("parameter finite_inputs: an input is given twice")
        return tuple(names)

    @staticmethod
    def _parse_ranges(
        text: str, inputs: Mapping[str, InputInfo]
    ) -> dict[str, tuple[float | None, float | None]]:
        out: dict[str, tuple[float | None, float | None]] = {}
        for name, value in _entries("value_ranges", text):
            info = _known("value_ranges", name, inputs)
            if info.dtype.kind not in "fiu":
                raise GuardConfigError(f"parameter value_ranges: '{name}' is {info.dtype}, not numbers")
            low_text, sep, high_text = value.partition(":")
            if not sep or ":" in high_text:
                raise GuardConfigError(f"parameter value_ranges: '{name}={value}' is not 'input=low:high'")
            low, high = _bound("value_ranges", name, low_text), _bound("value_ranges", name, high_text)
            if low is not None and high is not None and low > high:
                raise GuardConfigError(f"parameter value_ranges: '{name}' has low {low:g} > high {high:g}")
            out[name] = (low, high)
        return out

    # -------------------------------------------------------------------------------------------- checking

    def check(self, feeds: Mapping[str, np.ndarray]) -> None:
        """Refuse the first violation (shapes before values, so nothing huge is ever scanned)."""
        for name, bounds in self.max_dims.items():
            array = feeds.get(name)
            if array is not None:
                self._check_dims(name, array.shape, bounds)
        for group in self.same_dims:
            present = [(n, a) for n, a in group if feeds.get(n) is not None]
            sizes = [feeds[n].shape[a] for n, a in present]
            if len(set(sizes)) > 1:
                parts = ", ".join(f"'{n}' axis {a} is {s}" for (n, a), s in zip(present, sizes, strict=True))
                raise InputRejected(f"{self.model}: these axes must have the same length: {parts}")
        for name in self.finite_inputs:
            array = feeds.get(name)
            if array is not None and array.size and not np.isfinite(array).all():
                where = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                raise InputRejected(
                    f"{self.model}: input '{name}' must be finite (no NaN or infinity), got "
                    f"{array[where]} at {list(where)} (finite_inputs)"
                )
        for name, (low, high) in self.value_ranges.items():
            array = feeds.get(name)
            if array is not None and array.size:
                self._check_range(name, array, low, high)

    def _check_dims(self, name: str, shape: Sequence[int], bounds: tuple[int | None, ...]) -> None:
        limit = "[" + ", ".join("*" if b is None else str(b) for b in bounds) + "]"
        if len(shape) != len(bounds):
            raise InputRejected(
                f"{self.model}: input '{name}' must have {len(bounds)} axes, got shape {list(shape)} "
                f"(max_dims {limit})"
            )
        for axis, (size, bound) in enumerate(zip(shape, bounds, strict=True)):
            if bound is not None and size > bound:
                raise InputRejected(
                    f"{self.model}: input '{name}' has shape {list(shape)}: axis {axis} is {size}, over the "
                    f"limit of {bound} (max_dims {limit})"
                )

    def _check_range(self, name: str, array: np.ndarray, low: float | None, high: float | None) -> None:
        smallest, largest = array.min(), array.max()  # NaN propagates into both
        nan = array.dtype.kind == "f" and (np.isnan(smallest) or np.isnan(largest))
        if not nan and (low is None or smallest >= low) and (high is None or largest <= high):
            return
        inside = np.ones(array.shape, bool)
        if low is not None:
            inside &= array >= low
        if high is not None:
            inside &= array <= high
        where = tuple(int(i) for i in np.argwhere(~inside)[0])
        span = f"[{'-inf' if low is None else _fmt(low)}, {'inf' if high is None else _fmt(high)}]"
        value = array[where]
        shown = _fmt(float(value)) if array.dtype.kind == "f" else str(int(value))
        raise InputRejected(
            f"{self.model}: input '{name}' must be in {span}, got {shown} at {list(where)} (value_ranges)"
        )

    def describe(self) -> dict[str, object]:
        """For the load log line."""
        out: dict[str, object] = {}
        if self.max_dims:
            out["max_dims"] = {n: ["*" if b is None else b for b in d] for n, d in self.max_dims.items()}
        if self.same_dims:
            out["same_dims"] = [[f"{n}:{a}" for n, a in g] for g in self.same_dims]
        if self.finite_inputs:
            out["finite_inputs"] = list(self.finite_inputs)
        if self.value_ranges:
            out["value_ranges"] = {n: [lo, hi] for n, (lo, hi) in self.value_ranges.items()}
        return out
