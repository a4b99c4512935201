"""Start-up time of the command line, beside ``python -c pass``.

    python tests/bench/bench_cli.py [--repeat 7]

Each command runs once to warm the page cache, then ``--repeat`` times; the
median wall time is reported (the minimum beside it).  ``collector --help``
must import no plugin (docs/plugin-authors.md: hooks only declare); ``collector plugins`` loads
every entry point, so it shows what plugin discovery costs.  For a miss,
``python -X importtime -m collector.cli plugins`` shows where the time goes;
:func:`import_top` returns its largest cumulative entries.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from typing import Any

from harness import PYTHON, REPO, collector_exe


def time_command(argv: list[str], repeat: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "0"}
    subprocess.run(argv, capture_output=True, check=True, timeout=60, env=env, cwd=REPO)  # warm-up
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, timeout=60, env=env, cwd=REPO)
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def import_top(args: list[str], n: int = 12) -> list[tuple[str, float]]:
    """The ``n`` imports with the largest cumulative time (seconds) under ``-X importtime``."""
    out = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "collector.cli", *args],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    rows: list[tuple[str, float]] = []
    for line in out.stderr.decode(errors="replace").splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self, cumulative, name = line.removeprefix("import time:").split("|", 2)
        rows.append((name.rstrip(), int(cumulative) / 1e6))
    top_level = [(name.strip(), t) for name, t in rows if not name.startswith("  ")]
    return sorted(top_level, key=lambda r: -r[1])[:n]


def cli(repeat: int = 7) -> dict[str, Any]:
    exe = collector_exe()
    return {
        "python_pass": time_command([PYTHON, "-c", "pass"], repeat),
        "help": time_command([*exe, "--help"], repeat),
        "plugins": time_command([*exe, "plugins"], repeat),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=7)
    p.add_argument("--importtime", action="store_true", help="also list the slowest imports of each command")
    args = p.parse_args()
    result: dict[str, Any] = cli(args.repeat)
    if args.importtime:
        result["importtime_help"] = import_top(["--help"])
        result["importtime_plugins"] = import_top(["plugins"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
