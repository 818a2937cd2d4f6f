"""minivit against PyTorch, side by side: each alone in its own process, in turn (A B A B ...).

    python benchmarks/compare_step.py --preset cifar-tiny --batch-size 256
    python benchmarks/compare_step.py --preset cifar-small --batch-size 128 --steps 6
    python benchmarks/compare_step.py --preset vit-ti16 --batch-size 16 --steps 5
    python benchmarks/compare_step.py --preset cifar-tiny --batch-size 500 --mode eval
    python benchmarks/compare_step.py --preset cifar-tiny --against numpy   # what the CPU kernels buy

Each round runs benchmarks/step_throughput.py once for minivit and once for PyTorch (the order
alternates between rounds), and takes the ratio of their images/s. The machine's speed drifts
(other work, turbo, the neighbours on a shared host), so two runs minutes apart are no
comparison, but two runs seconds apart are; the median of the round ratios, with its spread, is
the figure to quote. The two frameworks never share a process: PyTorch's OpenMP threads keep
spinning after each operation and would steal the cores from NumPy's.

minivit runs with its fused CPU kernels (numba) when numba is installed; `--fused 0` runs it without
them (MINIVIT_FUSED=0), and `--against numpy` compares minivit with them against minivit without
them, in the same alternating way. With them, the dense layers' and attention's products are Intel's
MKL where the mkl wheel is installed (minivit/cpu/blas.py); `--blas numpy` keeps NumPy's own BLAS
(MINIVIT_BLAS=numpy), and `--against openblas` compares the two: minivit with MKL against minivit
with NumPy's BLAS, the kernels on in both. `--against tree --tree DIR` compares this checkout with another
one of minivit (an older commit, checked out with `git worktree add DIR COMMIT`), each process importing
its own tree's package: a change's before and after, side by side. The first line names the CPU, its vector ISA, the BLAS kernel threadpoolctl
reports, numba's version and MKL's.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(side, a):
    """One process of step_throughput.py for a side: 'minivit', 'torch', 'numpy' (minivit, kernels off),
    'openblas' (minivit, kernels on, NumPy's BLAS for the products) or 'tree' (minivit of the checkout --tree)."""
    impl = "torch" if side == "torch" else "minivit"
    root = a.tree if side == "tree" else os.path.dirname(HERE)
    cmd = [sys.executable, os.path.join(root, "benchmarks", "step_throughput.py"), "--impl", impl, "--json",
           "--preset", a.preset, "--batch-size", str(a.batch_size), "--threads", str(a.threads),
           "--steps", str(a.steps), "--warmup", str(a.warmup), "--mode", a.mode]
    if a.image_size:
        cmd += ["--image-size", str(a.image_size)]
    fused = "0" if side == "numpy" else a.fused
    env = dict(os.environ, MINIVIT_FUSED=fused, MINIVIT_BLAS="numpy" if side == "openblas" else a.blas,
               PYTHONPATH=os.pathsep.join([root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cifar-tiny")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2, help="cores each framework may use")
    p.add_argument("--mode", choices=["train", "eval"], default="train")
    p.add_argument("--image-size", type=int, default=None, help="the preset at another image size (step_throughput.py)")
    p.add_argument("--rounds", type=int, default=5, help="minivit/PyTorch pairs")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--fused", choices=["0", "1"], default="1", help="minivit's fused CPU kernels on (1) or off (0)")
    p.add_argument("--blas", choices=["mkl", "numpy"], default="mkl",
                   help="minivit's products with the kernels on: MKL where installed, or NumPy's own BLAS")
    p.add_argument("--against", choices=["torch", "numpy", "openblas", "tree"], default="torch",
                   help="the peer: PyTorch, minivit with its CPU kernels off (numpy), minivit with its kernels "
                        "and NumPy's own BLAS for the products (openblas), or the minivit of another checkout (tree)")
    p.add_argument("--tree", help="with --against tree: the other checkout's folder")
    p.add_argument("--out", help="also write every round, the command and the machine to this JSON file")
    a = p.parse_args()
    if (a.against == "tree") != bool(a.tree):
        p.error("--against tree and --tree DIR go together")
    if a.tree and not os.path.isfile(os.path.join(a.tree, "benchmarks", "step_throughput.py")):
        p.error(f"--tree {a.tree}: no benchmarks/step_throughput.py there (a minivit checkout?)")
    sys.path.insert(0, os.path.dirname(HERE))
    os.environ["MINIVIT_FUSED"], os.environ["MINIVIT_BLAS"] = a.fused, a.blas   # as the minivit side runs
    from minivit.machine import machine
    import numpy  # noqa: F401  (loaded, so that threadpoolctl reports NumPy's BLAS)
    here = machine()
    try:
        import numba
        here["numba"] = numba.__version__
    except ImportError:
        here["numba"] = None
    kernels = f"numba {here['numba']}" if here["numba"] and a.fused == "1" else "off"
    if kernels != "off":
        kernels += f", products by {here['mkl'] if here.get('mkl') else 'NumPy'}"
    peer = {"torch": "PyTorch", "numpy": "minivit without its CPU kernels",
            "openblas": "minivit with NumPy's BLAS", "tree": f"minivit of {a.tree}"}[a.against]
    print(f"machine: {here['cpu']}, {here['cores']} cores, {' '.join(here.get('isa', []))}; BLAS {', '.join(here.get('blas', []))}; "
          f"minivit's CPU kernels: {kernels}", flush=True)
    rows = []
    for r in range(a.rounds):
        order = ("minivit", a.against) if r % 2 == 0 else (a.against, "minivit")
        res = {side: run(side, a) for side in order}
        m, t = res["minivit"], res[a.against]
        rows.append((m, t, m["images_per_s"] / t["images_per_s"]))
        print(f"round {r + 1}: minivit {m['images_per_s']:7.1f} img/s, {peer} {t['images_per_s']:7.1f} img/s, "
              f"ratio {rows[-1][2]:.3f}; step memory {m['step_mb']:.0f} MB vs {t['step_mb']:.0f} MB", flush=True)
    ratios = [r[2] for r in rows]
    med = lambda key, i: statistics.median(r[i][key] for r in rows)
    size = f" at {a.image_size} px" if a.image_size else ""
    print(f"{a.preset}{size} batch {a.batch_size} {a.mode}, {a.threads} threads each: minivit / {peer}, speed ratio "
          f"median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}, {a.rounds} rounds); "
          f"images/s median {med('images_per_s', 0):.1f} vs {med('images_per_s', 1):.1f}; "
          f"step memory median {med('step_mb', 0):.0f} MB vs {med('step_mb', 1):.0f} MB")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"command": " ".join(["python"] + sys.argv), "machine": here, "torch": rows[0][1].get("torch"),
                       "tree": a.tree and subprocess.run(["git", "-C", a.tree, "rev-parse", "HEAD"], capture_output=True,
                                                         text=True).stdout.strip(),
                       "minivit_kernels": kernels, "against": a.against,
                       "rounds": [{"minivit": m, a.against: t, "ratio": r} for m, t, r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
