"""How fast the commands people type often answer: `perfguard models`, `history MODEL`, `status`.

Sets up a folder with the starter config (`perfguard init`), stores two runs of the example MLP
(`perfguard run mlp`, a short budget), then times each command RUNS times as a user would run it (a new
process each time, wall clock) and prints the median and the slowest. The goal is 0.8 s or less for
each on the machine that runs it. With `--compare REV`, the same commands from a checkout of REV (a
git worktree, same interpreter and packages) are timed in alternation, and the ratio printed. Run it
alone on the machine.

    .venv/bin/python bench/cli_speed.py [--runs 7] [--compare ed53fe5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PERFGUARD = Path(sys.executable).parent / "perfguard"
REPO = Path(__file__).resolve().parent.parent
COMMANDS = (["models"], ["history", "mlp"], ["status"], ["--help"])
# The command as its console script runs it, from the tree on PYTHONPATH (this one, or REV's).
AS_SCRIPT = "import sys; from monitor.cli import main; sys.argv[0] = 'perfguard'; main()"


def timed(tree: Path, command: list[str], folder: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", AS_SCRIPT, *command], cwd=folder, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--compare", metavar="REV", help="also time this revision's commands, alternately")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([PERFGUARD, "init"], cwd=folder, check=True, capture_output=True)
        config = Path(folder) / "perfguard.toml"
        config.write_text(config.read_text().replace("max_time_s = 5 ", "max_time_s = 0.5 "))
        subprocess.run([PERFGUARD, "run", "mlp"], cwd=folder, check=True, capture_output=True)
        trees = {"this tree": REPO}
        if args.compare:
            old = Path(folder) / "old-tree"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.compare],
                           check=True, capture_output=True)
            trees[args.compare] = old
        try:
            print(f"{cpu_name()}, Python {platform.python_version()}, {args.runs} runs each (wall clock, new process)")
            for command in COMMANDS:
                times: dict[str, list[float]] = {name: [] for name in trees}
                for _ in range(args.runs):
                    for name, tree in trees.items():
                        times[name].append(timed(tree, command, folder))
                line = [f"{name}: median {statistics.median(t):.2f} s, slowest {max(t):.2f} s"
                        for name, t in times.items()]
                if args.compare:
                    ratio = statistics.median(times["this tree"]) / statistics.median(times[args.compare])
                    line.append(f"ratio {ratio:.2f}")
                print(f"perfguard {' '.join(command):<12} " + "; ".join(line))
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees[args.compare])],
                               check=False, capture_output=True)


if __name__ == "__main__":
    main()
