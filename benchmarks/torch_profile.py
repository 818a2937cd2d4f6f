"""PyTorch's time per operator on the peer model: the counterpart of `minivit profile`.

Runs the peer (benchmarks/torch_vit.py, the same architecture and initial weights as minivit)
under torch.profiler on one thread and prints each operator's own time per step (its
"self" time: time in nested operators is booked to them), its calls per step and its share.
Run it pinned to one core beside `minivit profile`, which also runs on one thread, to see
which layers make the difference between the two:

    taskset -c 0 python benchmarks/torch_profile.py --preset vit-ti16 --batch-size 8 --mode eval
    taskset -c 0 minivit profile --preset vit-ti16 --batch-size 8 --mode eval

The two names differ: PyTorch's `aten::addmm` is every dense layer (minivit's attn.qkv,
attn.proj, mlp.fc1, mlp.fc2, head), and `addmm` first copies the bias into its output
(`aten::copy_`); `_scaled_dot_product_flash_attention_for_cpu` is minivit's `attention`
(q k^T, softmax, times v), `native_layer_norm` its LayerNorms, `aten::add` the residual sums.
"""
import argparse
import os
import sys

import numpy as np

import minivit as mv

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_vit, beside this file


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="vit-ti16")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mode", choices=["train", "eval"], default="eval")
    p.add_argument("--steps", type=int, default=3, help="profiled steps, after two warm-up steps")
    p.add_argument("--rows", type=int, default=12, help="operators shown")
    a = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch_vit import torch_train_step, torch_vit
    torch.set_num_threads(1)
    cfg = mv.ViTConfig.preset(a.preset)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.batch_size, cfg.in_channels, cfg.image_size, cfg.image_size)).astype(np.float32)
    if a.mode == "eval":
        sd = {k: torch.tensor(v) for k, v in mv.to_timm(mv.init_params(cfg, seed=0), cfg).items()}
        tx = torch.from_numpy(x)

        def step(i):
            with torch.no_grad():
                torch_vit(sd, tx, cfg)[0, 0].item()
    else:
        step = torch_train_step(cfg, x, rng.integers(0, cfg.num_classes, a.batch_size))

    for i in range(2):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(a.steps):
            step(2 + i)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"PyTorch {torch.__version__}, {a.preset}, batch {a.batch_size}, {a.mode}: "
          f"{total / 1e3 / a.steps:.1f} ms per step of operator time (one thread, {a.steps} steps)")
    print(f"{'operator':<52} {'ms':>8} {'calls':>6} {'share':>6}")
    for e in events[:a.rows]:
        print(f"{e.key[:52]:<52} {e.self_cpu_time_total / 1e3 / a.steps:8.2f} {e.count // a.steps:6d} "
              f"{e.self_cpu_time_total / total:6.1%}")
    rest = sum(e.self_cpu_time_total for e in events[a.rows:])
    print(f"{'(the other ' + str(max(len(events) - a.rows, 0)) + ' operators)':<52} {rest / 1e3 / a.steps:8.2f}")


if __name__ == "__main__":
    main()
