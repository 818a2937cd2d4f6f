"""What the install weighs: a fresh virtual environment with `pip install -r requirements.txt` (the README's
first command), then each extra added on top, with the disk each takes and the seconds each install took.

    python benchmarks/install_size.py --out benchmarks/results/install_size.json

Run from the checkout. pip's own cache makes a second run faster than a first on a new machine (the time
says how long this machine took, with whatever its cache held); the sizes do not depend on it. `--no-cache`
installs as a new machine does, every package fetched from the index again (pip's --no-cache-dir).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def size_mb(path):
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            p = os.path.join(folder, name)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total / 2 ** 20


def pip(venv, *args, cache=True):
    t0 = time.perf_counter()
    subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q",
                    *([] if cache else ["--no-cache-dir"]), *args], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--extras", nargs="*", default=["mkl", "onnx"], help="extras of pyproject.toml, added in turn")
    p.add_argument("--no-cache", action="store_true", help="ignore pip's cache: fetch every package again")
    p.add_argument("--out", help="also write the figures and the machine to this JSON file")
    a = p.parse_args()
    sys.path.insert(0, ROOT)
    from minivit.machine import machine
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        venv = os.path.join(tmp, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        base = size_mb(venv)
        seconds = pip(venv, "-r", "requirements.txt", cache=not a.no_cache)
        rows.append({"step": "pip install -r requirements.txt", "seconds": seconds, "mb": size_mb(venv) - base,
                     "total_mb": size_mb(venv)})
        for extra in a.extras:
            before = size_mb(venv)
            seconds = pip(venv, "-e", f".[{extra}]", cache=not a.no_cache)
            rows.append({"step": f'pip install -e ".[{extra}]"', "seconds": seconds, "mb": size_mb(venv) - before,
                         "total_mb": size_mb(venv)})
    for r in rows:
        print(f"{r['step']:<40} {r['mb']:8.0f} MB  {r['seconds']:6.1f} s  (environment {r['total_mb']:.0f} MB)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": " ".join(["python"] + sys.argv), "machine": machine(), "python": sys.version.split()[0],
                       "pip_cache": not a.no_cache, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
