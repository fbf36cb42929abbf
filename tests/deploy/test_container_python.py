"""What runs inside NVIDIA's container runs on its Python 3.10 (the project's own venv is 3.11): the Triton
Python models, everything they import from this project, and the entrypoint must parse as Python 3.10 and
import only modules that 3.10 has and the image installs (deploy/docker/requirements.txt)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRY_FILES = [
    *sorted((REPO_ROOT / "model_repository").glob("*/1/model.py")),
    REPO_ROOT / "mobilesamv2" / "runner" / "entrypoint.py",
    REPO_ROOT / "mobilesamv2" / "runner" / "probe.py",  # the HEALTHCHECK and the Kubernetes probes
]
PACKAGE_ROOTS = {
    "mobilesamv2": REPO_ROOT / "mobilesamv2",
    "segment_everything_client": REPO_ROOT / "client" / "segment_everything_client",
    # the wire contract, installed into the image with the package (pyproject's packages.find)
    "segment_everything_contract": REPO_ROOT / "client" / "segment_everything_contract",
}
#: Third-party modules the image provides: deploy/docker/requirements.txt, and Triton's own.
IMAGE_MODULES = {"numpy", "cv2", "PIL", "onnxruntime", "onnx", "torch", "triton_python_backend_utils"}
NEW_IN_311 = {"tomllib", "wsgiref.types"}


def module_file(name: str) -> Path | None:
    top, *rest = name.split(".")
    if top not in PACKAGE_ROOTS:
        return None
    base = PACKAGE_ROOTS[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_nodes(tree: ast.Module, everywhere: bool) -> list[ast.stmt]:
    """Import statements run at import time (module level, under if/try/with, not under TYPE_CHECKING), or
    all of them (``everywhere``: the Triton models import in ``initialize``)."""
    if everywhere:
        return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    found, stack = [], list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                stack += node.body + node.orelse
        elif isinstance(node, ast.Try):
            stack += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, (ast.With, ast.ClassDef)):
            stack += node.body
    return found


def imports(path: Path, tree: ast.Module) -> set[str]:
    package = (
        ".".join(path.relative_to(PACKAGE_ROOTS["mobilesamv2"].parent).with_suffix("").parts[:-1])
        if path.is_relative_to(PACKAGE_ROOTS["mobilesamv2"])
        else None
    )
    for name in ("segment_everything_client", "segment_everything_contract"):
        if path.is_relative_to(PACKAGE_ROOTS[name]):
            package = name
    names = set()
    for node in import_nodes(tree, everywhere=path in ENTRY_FILES):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and package:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # submodules imported by name
    return names


def test_server_side_code_is_python_310_and_imports_what_the_image_has():
    seen: set[Path] = set()
    queue = list(ENTRY_FILES)
    third_party: set[str] = set()
    while queue:
        path = queue.pop()
        if path in seen:
            continue
        seen.add(path)
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
        for name in imports(path, tree):
            assert name.split(".")[0] not in NEW_IN_311 and name not in NEW_IN_311, f"{path}: {name}"
            found = module_file(name)
            if found is not None:
                parts = name.split(".")  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
                queue += [f for f in (module_file(".".join(parts[:i])) for i in range(1, len(parts))) if f]
                queue.append(found)
            elif name.split(".")[0] not in PACKAGE_ROOTS and name != "__future__":
                third_party.add(name.split(".")[0])
    assert len(seen) > len(ENTRY_FILES)  # the walk reached the package
    stdlib = set(sys.stdlib_module_names)
    assert third_party - stdlib <= IMAGE_MODULES, third_party - stdlib - IMAGE_MODULES
