"""The README's default run, `minivit train`, timed as a newcomer runs it, with its raw files kept.

    python benchmarks/default_run.py --out benchmarks/results

Runs `minivit train --no-progress` in an empty folder (the shipped subset, offline; its images decoded from the
cache as a second run finds them) and writes `default_run_metrics.jsonl`, `default_run_config.json` (the run's
own files, machine record included) and `default_run.json` (the command's wall time and peak resident memory)
into --out. docs/results.md ("The default run") renders from them. Needs the machine to itself.
"""
import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for the three raw files")
    a = p.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "minivit", "train", "--no-progress", "--out", "run"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            sys.exit(f"minivit train failed:\n{r.stderr}")
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024   # MiB: Linux reports KiB
        shutil.copy(Path(tmp) / "run" / "metrics.jsonl", out / "default_run_metrics.jsonl")
        shutil.copy(Path(tmp) / "run" / "config.json", out / "default_run_config.json")
    (out / "default_run.json").write_text(json.dumps(
        {"command": "minivit train --no-progress", "wall_s": round(wall, 1), "peak_rss_mib": round(rss_mb, 1),
         "stdout_tail": r.stdout.strip().splitlines()[-1:]}, indent=1) + "\n")
    print(f"wall {wall:.1f} s, peak resident memory {rss_mb:.0f} MiB; {r.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main()
