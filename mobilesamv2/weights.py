"""Download the official checkpoints from their public locations and verify them.

    mobilesamv2-weights --out weights/official [--encoder efficientvit_l2]

Files (source; licence):

- ObjectAwareModel.pt: MobileSAMv2 release archive (Google Drive, from its README);
  Apache-2.0 (MobileSAM); the detector is a YOLOv8 (ultralytics, AGPL-3.0)
- Prompt_guided_Mask_Decoder.pt: github.com/ChaoningZhang/MobileSAM (MobileSAMv2/PromptGuidedDecoder);
  Apache-2.0
- l2.pt: huggingface.co/han-cai/efficientvit-sam; Apache-2.0 (EfficientViT)
- mobile_sam.pt: github.com/ChaoningZhang/MobileSAM (weights/); Apache-2.0
- sam_vit_h_4b8939.pth: dl.fbaipublicfiles.com/segment_anything; Apache-2.0 (SAM)

Checksums: the publishers' READMEs state no checksum for these files. Where independent public projects that
download the same official file state its SHA-256, that value is pinned in ``OFFICIAL_FILES`` (the comment
next to it cites the source):

- ``sam_vit_h_4b8939.pth``: pinned. Its name's ``4b8939`` is not a SHA-256 prefix but the start of the file's
  MD5 (``4b8939a88964f0f4ff5f5b2642c598a6``, as third-party download registries state).
- ``mobile_sam.pt``: pinned.
- ``ObjectAwareModel.pt`` (inside a Google Drive zip), ``Prompt_guided_Mask_Decoder.pt`` (the GitHub
  repository gives only its git blob id, a SHA-1 of a header plus the content) and ``l2.pt`` (Hugging Face
  shows LFS SHA-256s on its file pages, but no source we could read states the one of
  ``han-cai/efficientvit-sam`` ``l2.pt``; the SHA-256 CompressAI-Vision pins is for
  ``mit-han-lab/efficientvit-sam``'s ``efficientvit_sam_l2.pt``, another repository and file name): no public
  SHA-256 found, not pinned.

``--sha256 NAME=HEX`` or else the pinned sum is checked first; otherwise a file is verified against
``weights/SHA256SUMS`` when that file lists it (commit yours), or its sum is recorded there on first download
(trust on first use) and every later build verifies it. Files are written atomically (``.part`` then rename),
so an interrupted download never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

MOBILESAMV2_ARCHIVE = "https://drive.usercontent.google.com/download?id=1dE-YAG-1mFCBmao2rHDp0n-PP4eH7SjE&export=download&confirm=t"


@dataclass(frozen=True)
class WeightFile:
    name: str
    url: str
    member: str | None = None  # path inside a zip archive at ``url``
    sha256: str | None = None


OFFICIAL_FILES: dict[str, WeightFile] = {
    f.name: f
    for f in (
        WeightFile("ObjectAwareModel.pt", MOBILESAMV2_ARCHIVE, member="ObjectAwareModel.pt"),
        WeightFile(
            "Prompt_guided_Mask_Decoder.pt",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/MobileSAMv2/PromptGuidedDecoder/"
            "Prompt_guided_Mask_Decoder.pt",
        ),
        WeightFile("l2.pt", "https://huggingface.co/han-cai/efficientvit-sam/resolve/main/l2.pt"),
        WeightFile(
            "mobile_sam.pt",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            # micro-sam pins this SHA-256 for MobileSAM's ViT-T checkpoint in its pooch registry ("vit_t",
            # "the model with vit tiny backend fom https://github.com/ChaoningZhang/MobileSAM"), which it
            # downloads from its own mirror: https://github.com/computational-cell-analytics/micro-sam/blob/
            # 00006fc6a86d4f6888f7ef333cf070987ffabb51/micro_sam/util.py. MobileSAM's weights/mobile_sam.pt
            # is unchanged since its commit a509aac (2023-06-29).
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        ),
        WeightFile(
            "sam_vit_h_4b8939.pth",
            "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            # Stated for this URL by micro-sam's pooch registry ("vit_h"), which checks downloads with it:
            # https://github.com/computational-cell-analytics/micro-sam/blob/
            # 00006fc6a86d4f6888f7ef333cf070987ffabb51/micro_sam/util.py, and by CompressAI-Vision's weight
            # list checked with `sha256sum --check` ("<sum>  segment_anything/sam_vit_h_4b8939.pth  <URL>"):
            # https://github.com/InterDigitalInc/CompressAI-Vision/blob/
            # 012d084b763dc378675ad58a636b083c7d493f1b/scripts/install.sh
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        ),
    )
}
ENCODER_FILES = {"efficientvit_l2": "l2.pt", "tiny_vit": "mobile_sam.pt", "sam_vit_h": "sam_vit_h_4b8939.pth"}
SUMS_FILE = "SHA256SUMS"


class DownloadError(RuntimeError):
    """A file could not be fetched or verified; the message says which and what to do."""


def required_files(encoder: str) -> list[str]:
    return ["ObjectAwareModel.pt", "Prompt_guided_Mask_Decoder.pt", ENCODER_FILES[encoder]]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    path = folder / SUMS_FILE
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            hexdigest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = hexdigest.lower()
    return sums


def write_sums(folder: Path, sums: dict[str, str]) -> None:
    (folder / SUMS_FILE).write_text("".join(f"{h}  {n}\n" for n, h in sorted(sums.items())))


def _fetch(url: str, dest: Path, timeout: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mobilesamv2-triton"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, dest.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if total:
                    print(f"\r  {done / 2**20:8.1f} / {total / 2**20:.1f} MiB", end="", file=sys.stderr)
            print(file=sys.stderr)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from exc


def verify(path: Path, expected: str | None, sums: dict[str, str]) -> str:
    actual = sha256_of(path)
    want = expected or sums.get(path.name)
    if want and actual != want.lower():
        raise DownloadError(
            f"{path}: SHA-256 {actual} does not match the expected {want}; delete it and retry"
        )
    return actual


def ensure_weights(
    folder: Path, names: list[str], timeout: float = 30.0, sha256: dict[str, str] | None = None
) -> None:
    """Make sure ``folder`` holds ``names``: verify present files, download missing ones, record sums."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = read_sums(folder)
    sha256 = sha256 or {}
    for name in names:
        spec = OFFICIAL_FILES[name]
        target = folder / name
        if not target.is_file():
            print(f"downloading {name} from {spec.url}", file=sys.stderr)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                part = Path(tmp) / (name + ".part")
                _fetch(spec.url, part, timeout)
                if spec.member is not None:
                    try:
                        with zipfile.ZipFile(part) as archive:
                            member = next(m for m in archive.namelist() if m.endswith(spec.member))
                            with archive.open(member) as src, (Path(tmp) / name).open("wb") as dst:
                                shutil.copyfileobj(src, dst)
                    except (zipfile.BadZipFile, StopIteration) as exc:
                        raise DownloadError(
                            f"{spec.url}: no {spec.member} in the downloaded archive ({exc})"
                        ) from exc
                    part = Path(tmp) / name
                verify(part, sha256.get(name) or spec.sha256, sums)
                part.replace(target)
        sums[name] = verify(target, sha256.get(name) or spec.sha256, sums)
    write_sums(folder, sums)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Download and verify the official MobileSAMv2 checkpoints.")
    parser.add_argument("--out", type=Path, default=Path("weights/official"))
    parser.add_argument("--encoder", default="efficientvit_l2", choices=sorted(ENCODER_FILES))
    parser.add_argument("--all", action="store_true", help="all three encoders")
    parser.add_argument(
        "--sha256", action="append", default=[], metavar="NAME=HEX", help="expected sum of a file"
    )
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    names = sorted({n for e in (ENCODER_FILES if args.all else [args.encoder]) for n in required_files(e)})
    try:
        ensure_weights(args.out, names, args.timeout, dict(s.split("=", 1) for s in args.sha256))
    except DownloadError as exc:
        print(
            f"error: {exc}\nOffline? Copy the files listed in the README into {args.out}/ by hand.",
            file=sys.stderr,
        )
        return 1
    for name in names:
        print(f"ok  {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
