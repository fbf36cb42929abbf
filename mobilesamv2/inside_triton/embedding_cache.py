"""The image-embedding cache the pipeline's model instances share: ``.npy`` files in a RAM-backed directory.

Every click of an interactive SegAny session sends the same image again; its embedding (256x64x64 float32,
4 MiB) is looked up here by the image's content digest, and a hit skips decoding the image and running the
encoder. The pipeline runs in several Triton model instances, which are separate processes, so the cache lives
in the file system (``/dev/shm`` by default: RAM, no disk I/O) and every instance sees every entry; a file is
written to a temporary name and renamed into place, so a reader never sees half an entry. Entries are evicted
least recently used first (access time is refreshed on every hit) once the directory holds more than the byte
budget.

Triton's own response cache on ``image_encoder`` would have been the first choice, but Triton 2.51 stores an
error response too and replays it to the same request as a success with no outputs (verified with a Python
model here): one failed or refused encoder call would poison that image until evicted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..pipeline import CachedEmbedding

DEFAULT_ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
STALE_SECONDS = 3600


def cache_directory(root: Path, identity: str) -> Path:
    """A directory per model repository and build: entries of other weights are never read."""
    return root / "mobilesamv2-embeddings" / hashlib.blake2b(identity.encode(), digest_size=8).hexdigest()


class SharedEmbeddingCache:
    """See the module docstring. ``to_host`` turns what the encoder returned into a numpy array (the
    pipeline's embedding may be a Triton tensor); ``wrap`` turns a cached array into the decoder's input."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        to_host: Callable[[Any], np.ndarray] = np.asarray,
        wrap: Callable[[np.ndarray], Any] = lambda array: array,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.to_host = to_host
        self.wrap = wrap
        self.hits = self.misses = 0

    def _path(self, key: str, image_size: tuple[int, int]) -> Path:
        return self.directory / f"{key.replace(':', '-')}.{image_size[0]}x{image_size[1]}.npy"

    def _find(self, key: str) -> Path | None:
        prefix = key.replace(":", "-") + "."
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(".npy"):
                    return Path(entry.path)
        return None

    def get(self, key: str) -> CachedEmbedding | None:
        path = self._find(key)
        if path is None:
            self.misses += 1
            return None
        try:
            array = np.load(path, mmap_mode="r")
            os.utime(path)  # most recently used
        except (OSError, ValueError):  # evicted by another instance meanwhile, or unreadable
            self.misses += 1
            return None
        h, w = (int(v) for v in path.name.rsplit(".", 2)[1].split("x"))
        self.hits += 1
        return CachedEmbedding(self.wrap(np.ascontiguousarray(array)), (h, w))

    def put(self, key: str, embedding: Any, image_size: tuple[int, int]) -> Any:
        array = np.ascontiguousarray(self.to_host(embedding), dtype=np.float32)
        if array.nbytes > self.max_bytes:
            return embedding
        path = self._path(key, image_size)
        with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as handle:
            np.save(handle, array)
        os.replace(handle.name, path)
        self._evict()
        return embedding

    def _evict(self) -> None:
        files = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.endswith(".npy"):
                    with contextlib.suppress(FileNotFoundError):
                        stat = entry.stat()
                        files.append((max(stat.st_atime, stat.st_mtime), stat.st_size, entry.path))
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            total -= size

    def prune_stale_siblings(self, seconds: float = STALE_SECONDS) -> None:
        """Remove cache directories of other builds nobody has touched for ``seconds`` (old weights)."""
        now = time.time()
        for sibling in self.directory.parent.iterdir():
            if sibling == self.directory or not sibling.is_dir():
                continue
            with contextlib.suppress(OSError):
                if now - sibling.stat().st_mtime > seconds:
                    for child in sibling.iterdir():
                        child.unlink()
                    sibling.rmdir()
