"""What a content fingerprint of a folder dataset would cost beside the stat one it uses.

A folder run records a fingerprint of its files (sha256 over every file's relative path,
size and modification time: `jaxcnn.data.folders`), computed at every load, so a resume
refuses changed files and `eval` warns about them. A file rewritten with the same size
and an old modification time (e.g. `touch -r`) is not noticed. Hashing every file's
bytes would notice it; this measures both on a folder of MNIST PNG files (built by
`folder_bench.build_folder` under --cache-dir), each the median of --rounds, with the
files in the page cache (the second and later reads of a load that decodes them anyway):

  stat      the fingerprint jaxcnn computes (`folders._scan`: listing + stat + hash)
  content   listing, then sha256 of each file's bytes (read whole)

  python benchmarks/fingerprint_bench.py                 # writes results/fingerprint.*
  python benchmarks/fingerprint_bench.py --images 10000 --name fingerprint_10k
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import folder_bench  # noqa: E402
import machine_info  # noqa: E402


def stat_fingerprint(root: pathlib.Path) -> str:
    from jaxcnn.data import folders

    return folders._scan(root).fingerprint


def content_fingerprint(root: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name[0] != "."):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def timed(fn, root: pathlib.Path, rounds: int) -> float:
    fn(root)  # the files into the page cache
    seconds = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(root)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cache-dir",
        default=str(pathlib.Path.home() / ".cache" / "jaxcnn-bench" / "folder"),
        help="where the PNG folder is built (shared with folder_bench.py)",
    )
    p.add_argument("--images", type=int, default=60000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--name", default="fingerprint", help="results/<name>.json, .md")
    args = p.parse_args()
    root = pathlib.Path(args.cache_dir) / f"mnist_png{args.images}"
    folder_bench.build_folder(root, args.images)
    files = [q for q in root.rglob("*.png")]
    total = sum(q.stat().st_size for q in files)
    record = {
        "commit": machine_info.git_commit(),
        "cpu": machine_info.cpu(),
        "files": len(files),
        "megabytes": total / 2**20,
        "stat_seconds": timed(stat_fingerprint, root, args.rounds),
        "content_seconds": timed(content_fingerprint, root, args.rounds),
        "rounds": args.rounds,
    }
    lines = [
        f"# Folder fingerprint: stat vs content, {record['files']:,} PNG files "
        f"({record['megabytes']:.1f} MB)",
        "",
        f"{record['cpu']}, commit {record['commit']}; median of {args.rounds} rounds, "
        "files in the page cache",
        "",
        "| fingerprint | seconds | per 1,000 files |",
        "|---|---|---|",
    ]
    for kind in ("stat", "content"):
        s = record[f"{kind}_seconds"]
        lines.append(f"| {kind} | {s:.3f} | {1000 * s / record['files']:.4f} |")
    machine_info.write_result(args.name, record, lines)


if __name__ == "__main__":
    main()
