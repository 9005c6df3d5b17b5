"""What a benchmark records about where it ran (the commit and the CPU), and where."""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def write_result(name: str, record: Any, lines: list[str]) -> None:
    """Writes results/NAME.json (`record`) and results/NAME.md (`lines`, then the
    command that made them), and prints the markdown."""
    script = pathlib.Path(sys.argv[0]).name
    lines = [
        *lines,
        "",
        "```",
        " ".join([f"python benchmarks/{script}", *sys.argv[1:]]),
    ]
    lines.append("```")
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def git_commit(repo: pathlib.Path = REPO) -> str:
    """The short hash of the checkout's HEAD ("?" outside a git checkout)."""
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


def cpu() -> str:
    """CPU model, family, whether it has AVX512-BF16, and the core count."""
    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    bf16 = "avx512_bf16" in info.get("flags", "").split()
    return (
        f"{info.get('model name', '?')} (family {info.get('cpu family', '?')}, "
        f"AVX512-BF16 {'yes' if bf16 else 'no'}), {os.cpu_count()} cores"
    )
