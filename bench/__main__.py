"""`python -m bench`: run every ``bench/bench_*.py`` and collect their measurements.

Each bench runs in its own process (``python -m bench.bench_x``) so one bench's servers,
threads or memory cannot skew the next one's figures, and a bench that crashes is reported as
such instead of taking the others down. Results go to ``bench/results/<date>-<host>.json`` and
a Markdown table (for the README) is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def discover() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def run_one(name: str, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one bench; its measurements arrive as JSON lines in a file named by MODELLOOP_BENCH_RESULTS."""
    with tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".jsonl", delete=False) as f:
        results_path = Path(f.name)
    env = dict(os.environ, **{report.RESULTS_ENV: str(results_path), report.QUICK_ENV: "1" if quick else "0"})
    print(f"\n######## {name}{' (quick)' if quick else ''} ########", flush=True)
    started = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", f"bench.{name}"], cwd=REPO, env=env, timeout=timeout, check=False)
        rc: int | None = proc.returncode
        error = "" if rc == 0 else f"exited with status {rc}"
    except subprocess.TimeoutExpired:
        rc, error = None, f"did not finish within {timeout:.0f} s and was stopped"
    elapsed = time.monotonic() - started
    lines = results_path.read_text(encoding="utf-8").splitlines()
    results_path.unlink(missing_ok=True)
    measurements = [json.loads(line) for line in lines if line.strip()]
    if rc == 0 and not measurements:
        error = "finished but reported no measurements through bench.report.emit"
    return {"bench": name, "seconds": round(elapsed, 1), "returncode": rc, "error": error, "measurements": measurements}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes and shorter windows (CI)")
    p.add_argument("--only", nargs="+", metavar="BENCH", help="run only these (e.g. bench_artifact_path)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed per bench (default 1800)")
    p.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="directory for the results JSON")
    args = p.parse_args(argv)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            p.error(f"no such bench: {', '.join(unknown)} (have: {', '.join(names)})")
        names = [n for n in names if n in args.only]

    runs = [run_one(n, args.quick, args.timeout) for n in names]
    measurements = [report.Measurement.from_json(m) for r in runs for m in r["measurements"]]

    now = datetime.now(UTC)
    host = socket.gethostname()
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{now:%Y-%m-%d}-{host}.json"
    doc = {
        "date": now.isoformat(timespec="seconds"),
        "host": host,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "revision": _git_revision(),
        "quick": args.quick,
        "runs": runs,
    }
    out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    print("\n" + report.markdown_table(measurements))
    failed = [r for r in runs if r["error"]]
    for r in failed:
        print(f"\n{r['bench']}: {r['error']}", file=sys.stderr)
    missed = [m.name for m in measurements if not m.passed]
    if missed:
        print(f"\nbelow target: {', '.join(missed)}", file=sys.stderr)
    print(f"\nresults written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
