"""Every code block of README.md runs as written.

A block is named by its section heading and its number in that section ("## Sweeps #2").
Each block either runs here, is run by a test of its own (ELSEWHERE), or cannot run on a
test machine (EXCLUDED, with the reason). Python blocks run in a fresh namespace after the
section's earlier Python blocks (a section reads as one session); bash blocks run with
`bash -euo pipefail`; TOML blocks are model specs `jaxcnn summary` must take.

The blocks that train run in README order in one folder, as a user following it would:
HOME is that folder (`~/tfds` holds MNIST and Fashion-MNIST, prepared from the raw files),
`../shared/data` is the raw files, `experiments/` is the repository's, and the files the
commands name (digit.png, other.jpg, photo.jpg, my_net.toml, pets/, new/) are made there.
"""

import contextlib
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcnn import cli, models, shapes

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Blocks run by a test of their own: block -> "file::test".
ELSEWHERE = {
    "### Residual and branch blocks #1": "test_branches.py::test_readme_block_example_runs",
    "## Pre-trained ImageNet networks #1": "test_interop_oracle.py::test_readme_section_runs",
    "## Pre-trained ImageNet networks #2": "test_interop_oracle.py::test_readme_section_runs",
    "### Fine-tuning an imported network #1": (
        "test_interop_oracle.py::test_readme_fine_tuning_block_runs"
    ),
    "## Export #1": "test_export.py::test_readme_export_section_runs",
    "## Export #2": "test_export.py::test_readme_export_section_runs",
    "## Running on a GPU #1": "test_export.py::test_readme_gpu_section_runs",
    "## Running on a GPU #2": "test_export.py::test_readme_gpu_section_runs",
}
# Blocks that cannot run on a test machine, and why.
EXCLUDED = {
    "# jaxcnn #1": "pip installs from the network, then the whole suite: .ci/run runs both",
    "## Sweeps #2": "the measured sweeps: minutes to an hour of training each, and a "
    "PostgreSQL server; experiments/results/ holds what they wrote",
    "## Scaling out #1": "two machines, or SLURM's srun, sharing a filesystem",
}
# Blocks this module runs on their own (they need no run a block before them trained).
ALONE = (
    "## Model specs #1",
    "## Use it from your own JAX code #1",
    "## Use it from your own JAX code #2",
    "### Process settings #1",
)
# The rest, in README order in one user folder (they train, and later ones read the
# runs earlier ones wrote): test_readme_as_a_user_runs_it.
NOT_CODE = ("text", "")  # pictures of folder layouts


def readme_blocks() -> dict[str, tuple[str, str]]:
    """{name: (language, code)} of README.md's fenced blocks, in order; an indented block
    (inside a list item) is dedented."""
    blocks, heading, counts = {}, "# jaxcnn", {}
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"#{1,3} ", line):
            heading = line
        fence = re.match(r"( *)```(\w*)\s*$", line)
        if fence:
            indent, language = len(fence.group(1)), fence.group(2)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            code = "\n".join(x[indent:] for x in lines[i + 1 : end]) + "\n"
            counts[heading] = counts.get(heading, 0) + 1
            blocks[f"{heading} #{counts[heading]}"] = (language, code)
            i = end
        i += 1
    return blocks


BLOCKS = readme_blocks()


def test_every_block_is_run_or_listed_with_a_reason():
    code = {name for name, (language, _) in BLOCKS.items() if language not in NOT_CODE}
    assert {lang for lang, _ in BLOCKS.values()} <= {
        "bash",
        "python",
        "toml",
        *NOT_CODE,
    }
    for listed in (ELSEWHERE, EXCLUDED, ALONE):
        assert set(listed) <= code, f"no such block: {set(listed) - code}"
    assert not set(ELSEWHERE) & set(EXCLUDED) and not set(ALONE) & set(EXCLUDED)
    assert all(len(reason) > 20 for reason in EXCLUDED.values())
    assert len(_user_blocks()) >= 6  # the walk-through, library, data, recipes, ...


@pytest.mark.parametrize("name", sorted(ELSEWHERE))
def test_blocks_run_elsewhere_have_their_test(name):
    file, test = ELSEWHERE[name].split("::")
    source = (REPO / "tests" / file).read_text()
    assert re.search(rf"^def {test}\(", source, re.M), ELSEWHERE[name]
    heading = name.rsplit(" #", 1)[0].lstrip("# ")
    assert heading in source or "README" in source


def _user_blocks() -> list[str]:
    skip = {*ELSEWHERE, *EXCLUDED, *ALONE}
    return [
        name
        for name, (language, _) in BLOCKS.items()
        if language not in NOT_CODE and name not in skip
    ]


def _python_session(name: str) -> str:
    """The block's code after the section's earlier Python blocks."""
    heading, number = name.rsplit(" #", 1)
    return "".join(
        BLOCKS[f"{heading} #{n}"][1]
        for n in range(1, int(number) + 1)
        if BLOCKS[f"{heading} #{n}"][0] == "python"
    )


def _env(home: pathlib.Path) -> dict[str, str]:
    bindir = pathlib.Path(sys.executable).parent  # the `jaxcnn` script of this Python
    return {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": str(REPO),
        "PATH": os.pathsep.join([str(bindir), os.environ.get("PATH", "")]),
    }


def _run(name: str, cwd: pathlib.Path, home: pathlib.Path, timeout: int) -> str:
    language, code = BLOCKS[name]
    if language == "bash":
        command, stdin = ["bash", "-euo", "pipefail", "-c", code], None
    else:
        command, stdin = [sys.executable, "-"], _python_session(name)
    done = subprocess.run(
        command,
        input=stdin,
        cwd=cwd,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{name}:\n{code}\n{done.stderr[-4000:]}"
    return done.stdout


# --------------------------------------------------------------------------- fast
def test_model_spec_block_is_a_spec_summary_takes(tmp_path):
    (path := tmp_path / "spec.toml").write_text(BLOCKS["## Model specs #1"][1])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["summary", str(path)]) == 0
    summary = shapes.infer(models.load_spec(str(path)))
    assert summary.total_params == 93322  # the keras_mnist network, as its comments say
    assert "93,322" in out.getvalue()


def _undefined_names(code: str) -> set[str]:
    """Names the code reads that it never binds (imports, assignments, parameters,
    definitions) and that are not builtins: a snippet a reader cannot run as written."""
    import ast
    import builtins

    tree = ast.parse(code)
    bound = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            bound.add(node.name)
    return {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    } - bound


@pytest.mark.parametrize(
    "name", [n for n, (language, _) in BLOCKS.items() if language == "python"]
)
def test_python_blocks_define_every_name_they_use(name):
    assert not _undefined_names(_python_session(name)), name


def test_the_undefined_name_check_finds_one():
    assert _undefined_names("import jax\nlogits = model(images, rngs)\n") == {
        "model",
        "images",
        "rngs",
    }


@pytest.mark.slow  # ~30 s each: the eager forward passes compile op by op
@pytest.mark.parametrize("number", [1, 2])
def test_own_jax_code_blocks_run(number, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(_python_session(f"## Use it from your own JAX code #{number}"), namespace)
    assert namespace["logits"].shape == ((8, 10) if number == 1 else (3, 8, 10))


def test_process_settings_block_runs(tmp_path):
    _run("### Process settings #1", tmp_path, tmp_path, timeout=120)


# --------------------------------------------------------------------------- a user
def _user_folder(
    root: pathlib.Path, shared_data: pathlib.Path, tfds_dir
) -> pathlib.Path:
    """root/work, where the README's commands run; see the module docstring."""
    work = root / "work"
    work.mkdir()
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(shared_data)
    (work / "tfds").symlink_to(tfds_dir)
    (work / "experiments").symlink_to(REPO / "experiments")
    (work / "my_net.toml").write_text(BLOCKS["## Model specs #1"][1])
    rng = np.random.default_rng(0)
    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 12:16] = 255  # a "1"
    Image.fromarray(digit).save(work / "digit.png")
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), np.uint8)).save(
        work / "other.jpg"
    )
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), np.uint8)).save(
        work / "photo.jpg"
    )
    for kind, shade in (("cat", 60), ("dog", 200)):
        (work / "pets" / kind).mkdir(parents=True)
        for i in range(25):  # 40 after carving val and test: one batch of 32
            pixels = np.clip(rng.normal(shade, 30, (32, 32, 3)), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(pixels).save(work / "pets" / kind / f"{i:03}.png")
    (work / "new").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(
            work / "new" / f"{i}.jpg"
        )
    return work


@pytest.mark.slow
def test_readme_as_a_user_runs_it(tmp_path, shared_data, tfds_dir):
    work = _user_folder(tmp_path, shared_data, tfds_dir)
    outputs = {name: _run(name, work, work, timeout=900) for name in _user_blocks()}
    assert "93,322" in outputs["## Walk-through #1"]
    for figure in (
        "maps.png",
        "filters.png",
        "edges.png",
        "confusion.png",
        "curves.png",
    ):
        assert (work / figure).stat().st_size > 1000, figure
    assert (work / "mnist.onnx").is_file()
    assert (work / "runs" / "grid-smoke" / "report.md").is_file()
    assert "cat" in outputs["### Your own images #2"]
    shutil.rmtree(work / "runs")  # the checkpoints are large
