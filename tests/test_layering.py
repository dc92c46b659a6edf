"""The package's layering: only the training package itself and the command line import ``vqgan.train`` (which
needs Lightning); the models, metrics, pictures and converters work with torch alone."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vqgan"
# The public ``vqgan.fit`` wrapper: imported inside the function, so ``import vqgan`` does not pull in Lightning.
ALLOWED = {("__init__.py", "vqgan.train.fit")}


def _train_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(module, line, at module level)`` for every import of ``vqgan.train`` in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "vqgan.train" or name.startswith("vqgan.train."):
                found.append((name, node.lineno, id(node) in top))
                break
    return found


def test_nothing_outside_train_and_cli_imports_the_training_package():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("train", "cli"):
            continue
        for name, line, module_level in _train_imports(path):
            if (str(rel), name) in ALLOWED and not module_level:
                continue
            offenders.append(f"{rel}:{line} imports {name}")
    assert not offenders, "\n".join(offenders)


def test_the_scan_finds_an_import_of_the_training_package(tmp_path):
    """The scan above can fail: it sees both import forms, at module level and inside functions."""
    f = tmp_path / "m.py"
    f.write_text("import vqgan.train.fit\n\ndef g():\n    from vqgan.train import checkpoint\n")
    assert _train_imports(f) == [("vqgan.train.fit", 1, True), ("vqgan.train", 4, False)]
