"""The package's layers: every `jaxcnn` import points down (DESIGN.md), so there is no cycle.

Each module has a rank; a module may import only modules of lower rank (lazy imports
inside functions included). A new module must be given its rank here.
"""

import ast
import pathlib
import re

import jaxcnn

PACKAGE = pathlib.Path(jaxcnn.__file__).parent

RANKS = {
    "jaxcnn.errors": 0,
    "jaxcnn.recipes": 0.5,
    "jaxcnn.spec.coerce": 1.0,
    "jaxcnn.spec.layers": 1.01,
    "jaxcnn.spec.model": 1.02,
    "jaxcnn.spec.sections": 1.03,
    "jaxcnn.spec.run": 1.04,
    "jaxcnn.spec": 1.05,
    "jaxcnn.cputune": 1,
    "jaxcnn.filters": 1,
    "jaxcnn.shapes": 2,
    "jaxcnn.footprint": 2.1,
    "jaxcnn.architectures": 2,
    "jaxcnn.precision": 2.5,
    "jaxcnn.kernels.windows": 3.0,
    "jaxcnn.kernels.conv": 3.1,
    "jaxcnn.kernels.pool": 3.2,
    "jaxcnn.kernels.plan": 3.3,
    "jaxcnn.kernels": 3.4,
    "jaxcnn.layers": 4,
    "jaxcnn.models": 5,
    "jaxcnn.data.arrays": 5.0,
    "jaxcnn.data.images": 5.1,
    "jaxcnn.data.catalog": 5.2,
    "jaxcnn.data.folders": 5.3,
    "jaxcnn.data": 5.4,
    "jaxcnn.optim": 5,
    "jaxcnn.checkpoint": 5,
    "jaxcnn.metrics": 5,
    "jaxcnn.distributed": 5,
    "jaxcnn.memory": 5,
    "jaxcnn.rundir": 6,
    "jaxcnn.transfer": 7,
    "jaxcnn.interop.imagenet": 7.1,
    "jaxcnn.interop.readers": 7.1,
    "jaxcnn.interop.download": 7.1,
    "jaxcnn.interop.names": 7.15,
    "jaxcnn.interop.keras_match": 7.17,
    "jaxcnn.interop.mapping": 7.2,
    "jaxcnn.interop.importer": 7.3,
    "jaxcnn.interop": 7.4,
    "jaxcnn.export": 7.5,
    "jaxcnn.train.sharding": 8.0,
    "jaxcnn.train.preemption": 8.05,
    "jaxcnn.train.step": 8.1,
    "jaxcnn.train.batches": 8.2,
    "jaxcnn.train.loop": 8.3,
    "jaxcnn.train.evaluate": 8.4,
    "jaxcnn.train": 8.5,
    "jaxcnn.viz": 10,
    "jaxcnn.sweep.status": 10.9,
    "jaxcnn.sweep.optuna_api": 10.95,
    "jaxcnn.sweep.results": 11.0,
    "jaxcnn.sweep.config": 11.1,
    "jaxcnn.sweep.plan": 11.2,
    "jaxcnn.sweep.storage": 11.3,
    "jaxcnn.sweep.trial": 11.4,
    "jaxcnn.sweep.queueing": 11.41,
    "jaxcnn.sweep.identity": 11.42,
    "jaxcnn.sweep.liveness": 11.43,
    "jaxcnn.sweep.datasets": 11.44,
    "jaxcnn.sweep.execute": 11.45,
    "jaxcnn.sweep.worker": 11.5,
    "jaxcnn.sweep.run": 11.6,
    "jaxcnn.sweep.report": 11.7,
    "jaxcnn.sweep.compare": 11.75,
    "jaxcnn.sweep": 11.8,
    "jaxcnn.cli.args": 11.85,
    "jaxcnn.cli.dispatch": 11.85,
    "jaxcnn.cli.run": 11.9,
    "jaxcnn.cli.exchange": 11.9,
    "jaxcnn.cli.sweeps": 11.9,
    "jaxcnn.cli.figures": 11.9,
    "jaxcnn.cli": 12,
    "jaxcnn": 13,
    "jaxcnn.__main__": 14,
}


def _module_name(path: pathlib.Path) -> str:
    parts = ("jaxcnn", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(name: str) -> float:
    """The rank of a module: its own, else its package's (jaxcnn.kernels.conv -> kernels)."""
    probe = name
    while probe not in RANKS:
        probe, _, _ = probe.rpartition(".")
        assert probe, f"{name} has no rank in tests/test_layering.py RANKS"
    return RANKS[probe]


def _imports(tree: ast.AST, module: str) -> set[str]:
    """The jaxcnn modules `module` imports (`from jaxcnn import x` names module x)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("jaxcnn")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("jaxcnn"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / sub.replace(".", "/")).with_suffix(
                    ".py"
                ).exists() or (PACKAGE.parent / sub.replace(".", "/")).is_dir()
                found.add(sub if is_module else node.module)
    return found - {module}


def _same_package(a: str, b: str) -> bool:
    return a.rpartition(".")[0] == b.rpartition(".")[0] != "jaxcnn"


def test_every_import_points_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for imported in _imports(ast.parse(path.read_text()), module):
            if module.startswith(imported + "."):
                continue  # a package's own __init__ (e.g. jaxcnn.errors from jaxcnn)
            if _rank(imported) < _rank(module):
                continue
            if _same_package(module, imported) and _rank(imported) <= _rank(module):
                continue  # siblings of one package of equal rank, e.g. kernels.conv/pool
            wrong.append(
                f"{module} ({_rank(module)}) imports {imported} ({_rank(imported)})"
            )
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def test_every_module_has_a_rank():
    for path in PACKAGE.rglob("*.py"):
        _rank(_module_name(path))


def test_the_check_sees_an_upward_import(tmp_path):
    tree = ast.parse("from jaxcnn import train\nimport jaxcnn.cli\n")
    assert _imports(tree, "jaxcnn.layers") == {"jaxcnn.train", "jaxcnn.cli"}
    assert _rank("jaxcnn.train") > _rank("jaxcnn.layers")


# --------------------------------------------------------------------------- README
def _layout_rows() -> list[str]:
    """The rows of README.md's Layout table, top (imports most) to bottom."""
    text = (PACKAGE.parent / "README.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def _layout_modules(rows: list[str]) -> dict[str, int]:
    """{module: index of the README row naming it}: `name.py` or `package/` in a row's
    first cell, and a package's modules as `name.py` or `name` anywhere in its row."""
    found = {}
    for index, row in enumerate(rows):
        first = row.split("|")[1]
        names = re.findall(r"`([\w/.]+)`", row)
        for token in re.findall(r"`([\w/.]+)`", first):
            if token.endswith(".py"):
                found[f"jaxcnn.{token[:-3]}"] = index
            elif token.endswith("/"):
                package = f"jaxcnn.{token[:-1]}"
                found[package] = index
                for name in names:
                    found.setdefault(f"{package}.{name.removesuffix('.py')}", index)
    return found


def test_readme_layout_names_every_module_in_rank_order():
    rows = _layout_rows()
    listed = _layout_modules(rows)
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")} - {
        "jaxcnn",
        "jaxcnn.__main__",
    }
    missing = sorted(m for m in modules if m not in listed)
    assert not missing, f"README's Layout table lacks {missing}"
    stale = sorted(m for m in listed if m.count(".") == 1 and m not in modules)
    assert not stale, f"README's Layout table names modules that do not exist: {stale}"
    for a in modules:
        for b in modules:
            if listed[a] < listed[b]:  # a is listed above b: it may import b, not back
                assert _rank(a) >= _rank(b), (
                    f"README lists {a} (rank {_rank(a)}) above {b} (rank {_rank(b)})"
                )
