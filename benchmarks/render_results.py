"""Render the figures of docs/ from their raw files in benchmarks/results/, so that a page never drifts from
its evidence.

    python benchmarks/render_results.py           # rewrite every generated block in the pages
    python benchmarks/render_results.py --check   # exit 1, naming each block whose text differs

A page marks a generated block with two comments, and everything between them belongs to this script:

    <!-- begin generated: NAME -->
    ...
    <!-- end generated: NAME -->

BLOCKS[NAME] renders it from raw files only, and every block names the machine its figures came from (the
raw file's `machine` record: CPU model, vector ISA, BLAS, library versions). tests/test_results_page.py
fails when a page and this script disagree, so a rerun that changes a raw file changes the page with it.
"""
import argparse
import json
from dataclasses import fields
import math
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from minivit.config import TrainConfig, ViTConfig, flag_of, resize_stages  # noqa: E402  (the CLI's own names and parser)
RAW = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "docs" / "results.md", ROOT / "docs" / "cpu_kernels.md", ROOT / "docs" / "distributed.md", ROOT / "README.md",
         ROOT / "docs" / "derivations" / "resample.md"]
BLOCK = re.compile(r"(<!-- begin generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end generated: (?P=name) -->)", re.S)


# ---------------------------------------------------------------- reading raw files

def load(name):
    """A raw file of benchmarks/results/: JSON, or JSON lines for .jsonl."""
    text = (RAW / name).read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()] if name.endswith(".jsonl") else json.loads(text)


def machine(record, blas=True):
    """A raw `machine` record in words: CPU model, cores, ISA, BLAS (unless a table's columns name it), and the
    versions that matter."""
    isa = {"avx2": "AVX2", "avx512f": "AVX-512", "amx_tile": "AMX", "asimd": "NEON", "sve": "SVE"}
    parts = [cpu_words(record) + f", {record.get('cores', '?')} cores"]
    if record.get("isa"):
        parts.append(" ".join(isa.get(f, f) for f in record["isa"]))
    if blas and record.get("blas"):
        parts.append("BLAS " + " and ".join(sorted(record["blas"])))
    versions = [f"{k} {record[k]}" for k in ("python", "numpy", "numba", "mkl", "torch") if record.get(k)
                and (blas or k != "mkl")]
    return "; ".join(parts + [", ".join(versions)])


def cpu_words(record):
    """The CPU of a machine record, with x86's family and model numbers where the record has them."""
    return record.get("cpu", "unknown CPU") + (f" ({record['cpu_id']})" if record.get("cpu_id") else "")


def cpu_isa(record):
    """The CPU of a machine record with its vector ISA in the raw spelling: 'AMD EPYC (avx2 avx512f)'."""
    return f"{record['cpu']} ({' '.join(record.get('isa', []))})"


def num(x, digits=0):
    return f"{x:,.{digits}f}"


def pct(x, digits=2):
    return f"{100 * x:.{digits}f}%"


# ---------------------------------------------------------------- side-by-side speed (compare_step.py)

def ratio_summary(raw):
    """median (min-max, rounds; k below 1.0) of a compare_step.py file's pair ratios."""
    r = [row["ratio"] for row in raw["rounds"]]
    below = sum(x < 1.0 for x in r)
    return (f"{statistics.median(r):.3f} ({min(r):.3f}–{max(r):.3f}, {len(r)} rounds"
            + (f"; {below} below 1.0)" if below else "; none below 1.0)"))


def sides(raw):
    """The two sides' names in a compare_step.py file: minivit and its peer."""
    peer = raw.get("against", "torch")
    return "minivit", peer


def median_of(raw, side, key):
    return statistics.median(row[side][key] for row in raw["rounds"])


def speed_table(rows, caption):
    """A table of compare_step.py files: [(case, file)], each file's ratio, images/s and step memory."""
    raws = [(case, name, load(name)) for case, name in rows]
    machines = {machine(raw["machine"]) for _, _, raw in raws}
    out = [caption, "", f"Machine: {'; '.join(sorted(machines))}.", "",
           "| case | ratio, median (range, rounds) | images/s, minivit vs peer | step memory (MB), minivit vs peer | raw file |",
           "| --- | --- | --- | --- | --- |"]
    for case, name, raw in raws:
        a, b = sides(raw)
        ips = lambda s: median_of(raw, s, "images_per_s")
        fmt = lambda v: num(v, 1) if v < 100 else num(v)
        out.append(f"| {case} | **{ratio_summary(raw)}** | {fmt(ips(a))} vs {fmt(ips(b))} | "
                   f"{median_of(raw, a, 'step_mb'):.0f} vs {median_of(raw, b, 'step_mb'):.0f} | "
                   f"[`{name}`](../benchmarks/results/{name}) |")
    return "\n".join(out)


CPU_CASES = [("training, `cifar-tiny`, 256", "cifar-tiny_train"), ("training, `cifar-small`, 128", "cifar-small_train"),
             ("training, `vit-ti16`, 16", "vit-ti16_train"), ("inference, `cifar-tiny`, 500", "cifar-tiny_eval"),
             ("inference, `cifar-small`, 500", "cifar-small_eval"), ("inference, `vit-ti16`, 16", "vit-ti16_eval")]


def case_medians(suffix):
    """{case key: median pair ratio} of the six cases' files `cpu_step_<case><suffix>.json`."""
    return {key: statistics.median(r["ratio"] for r in load(f"cpu_step_{key}{suffix}.json")["rounds"]) for _, key in CPU_CASES}


def rounds_below(names):
    """How many of these compare_step files' rounds fell below 1.0, and the lowest."""
    r = [row["ratio"] for name in names for row in load(name)["rounds"]]
    return f"{sum(x < 1.0 for x in r)} of these {len(r)} rounds fell below 1.0 (the lowest {min(r):.3f})."


def cpu_step_variants():
    """One row per case, one column per build: the NumPy lines, the kernels with OpenBLAS, the kernels with MKL."""
    builds = [("NumPy lines", "lines"), ("kernels, OpenBLAS", "numba_openblas"), ("kernels and MKL", "mkl")]
    raws = {(key, b): load(f"cpu_step_{key}_{b}.json") for _, key in CPU_CASES for _, b in builds}
    machines = sorted({machine(raw["machine"], blas=False) for raw in raws.values()})
    out = ["minivit against PyTorch, each alone in its own process, in turn (`benchmarks/compare_step.py`; "
           "`--fused 0` the NumPy lines, `--blas numpy` NumPy's OpenBLAS for the products); a ratio above 1 is "
           "minivit faster. Raw files `cpu_step_<case>_{lines,numba_openblas,mkl}.json`.", "",
           f"Machine: {'; '.join(machines)}.", "",
           "| case | " + " | ".join(name for name, _ in builds) + " | images/s, minivit vs PyTorch (kernels and MKL) | "
           "step memory (MB), minivit vs PyTorch |", "| --- |" + " --- |" * (len(builds) + 2)]
    for case, key in CPU_CASES:
        cells = [ratio_summary(raws[key, b]) for _, b in builds]
        mkl = raws[key, "mkl"]
        fmt = lambda v: num(v, 1) if v < 100 else num(v)
        out.append(f"| {case} | " + " | ".join(cells[:-1]) + f" | **{cells[-1]}** | "
                   f"{fmt(median_of(mkl, 'minivit', 'images_per_s'))} vs {fmt(median_of(mkl, 'torch', 'images_per_s'))} | "
                   f"{median_of(mkl, 'minivit', 'step_mb'):.0f} vs {median_of(mkl, 'torch', 'step_mb'):.0f} |")
    r = [row["ratio"] for raw in (raws[key, "mkl"] for _, key in CPU_CASES) for row in raw["rounds"]]
    out += ["", f"With the kernels and MKL: {sum(x < 1.0 for x in r)} of {len(r)} rounds below 1.0."]
    return "\n".join(out)


def cpu_step_final():
    rows = [(case, f"cpu_step_{key}_mkl_final.json") for case, key in CPU_CASES if (RAW / f"cpu_step_{key}_mkl_final.json").exists()]
    text = speed_table(rows, "The final tree of that work, rechecked on its three thinnest cases.")
    return text + "\n\n" + rounds_below(name for _, name in rows)


def restructure():
    rows = [(case, f"restructure_{key}_vs_before.json") for case, key in CPU_CASES
            if (RAW / f"restructure_{key}_vs_before.json").exists()]
    lesson = [(case, f"restructure_{key}_lesson_vs_before.json") for case, key in CPU_CASES
              if (RAW / f"restructure_{key}_lesson_vs_before.json").exists()]
    text = speed_table(rows, "The default install (numba kernels, MKL), the tree with the textbook layers against the "
                             "tree before (`compare_step.py --against tree`); above 1 is the new tree faster.")
    one = [(case + ", one thread", f"restructure_{key}_1thread_vs_before.json") for case, key in CPU_CASES
           if (RAW / f"restructure_{key}_1thread_vs_before.json").exists()]
    if one:
        text += "\n\n" + speed_table(one, "The same on one core (`--threads 1`), where the two shard threads' "
                                           "scheduling adds no noise of its own.")
    if lesson:
        text += "\n\n" + speed_table(lesson, "`MINIVIT_FUSED=0`, the layers' own lines (the lesson), against the "
                                             "tuned NumPy forms they replaced (`--fused 0 --against tree`).")
    return text


# ---------------------------------------------------------------- a step's fixed and per-image costs (step_vs_batch.py)

STEP_PARTS = ("batch", "resize", "forward+backward", "wait", "allreduce", "clip", "adamw")


def step_vs_batch(name="step_vs_batch.json"):
    """benchmarks/step_vs_batch.py: step time against batch size at each size, and the per-step / per-image split."""
    raw = load(name)
    sizes = sorted({r["size"] for r in raw["rows"]})
    batches = sorted({r["batch"] for r in raw["rows"]})
    at = {(r["size"], r["batch"]): r for r in raw["rows"]}
    out = ["| image size | " + " | ".join(f"batch {b}: ms (images/s)" for b in batches)
           + " | per step (ms) | per image (us) | per-step share at batch 256 |",
           "| --- |" + " --- |" * (len(batches) + 3)]
    for s in sizes:
        f = raw["fits"][str(s)]["step"]
        share = f["per_step_ms"] / (f["per_step_ms"] + 256 * f["per_image_ms"])
        out.append(f"| {s} px | " + " | ".join(f"{at[s, b]['ms']['step']:.1f} ({num(at[s, b]['images_per_s'])})" for b in batches)
                   + f" | {f['per_step_ms']:.1f} | {1e3 * f['per_image_ms']:.0f} | {share:.0%} |")
    out += ["", "The per-step cost of each part (the fitted line's intercept, ms; a negative one is zero within the "
            "fit's noise):", "",
            "| image size | " + " | ".join(STEP_PARTS) + " |", "| --- |" + " --- |" * len(STEP_PARTS)]
    for s in sizes:
        fits = raw["fits"][str(s)]
        out.append(f"| {s} px | " + " | ".join(f"{fits[k]['per_step_ms']:.2f}" for k in STEP_PARTS) + " |")
    out += ["", f"{raw['ranks']} MPI rank(s) x {raw['threads']} thread(s), medians of each (size, batch) on rank 0; "
            f"{machine(raw['machine'])}; raw file [`{name}`](../benchmarks/results/{name})."]
    return "\n".join(out)


def step_16px_torch(suffix=""):
    return speed_table([("training, `cifar-tiny` at 16 px, 256", f"cpu_step_cifar-tiny_train_16px{suffix}.json")],
                       "minivit against PyTorch on the first stage's step (`compare_step.py --image-size 16`):")


# ---------------------------------------------------------------- the hour (metrics.jsonl of a --time-budget run)

def first_row(rows, key, level):
    """The first row (epoch) whose `key` reaches `level`, or None."""
    return next((r for r in rows if r.get(key) is not None and r[key] >= level), None)


def first_reaching(rows, key, level):
    """Minutes of training when `key` first reaches `level`, or None."""
    r = first_row(rows, key, level)
    return r["elapsed_s"] / 60 if r else None


def stage_medians(rows, stages, budget_s):
    """Median images/s of the epochs that ended inside each resize stage ([(size, until)], until as a share)."""
    out, start = [], 0.0
    for size, until in stages:
        inside = [r["images_per_s"] for r in rows if start * budget_s < r["elapsed_s"] <= until * budget_s]
        out.append((size, statistics.median(inside) if inside else math.nan))
        start = until
    return out


def images_seen(rows, train_images):
    """Images the run trained on: whole epochs, and the last one's steps where it ended mid-epoch."""
    steps_per_epoch = rows[0]["step"] / rows[0]["epoch"]
    batch = train_images / steps_per_epoch if steps_per_epoch else 0
    return rows[-1]["step"] * batch


def views_of(last, cfg):
    """The --tta of a run whose last readings were scored on the views too (its last metrics row holds
    test_tta_acc), or ''."""
    return cfg["train"].get("tta", "") if "test_tta_acc" in last else ""


def last_minutes(rows, minutes=10):
    """The validation readings of a --time-budget run's last `minutes` of training."""
    return [r["val_acc"] for r in rows if r["elapsed_s"] >= rows[-1]["elapsed_s"] - 60 * minutes]


def hour_table(metrics, config, train_images=45000, window=(43, 47)):
    """The facts of a --time-budget run: its metrics.jsonl and the config.json of the run it followed; `window`:
    the minutes whose validation readings are listed (None: no such row)."""
    rows, cfg = load(metrics), load(config)
    stages = resize_stages(cfg["train"]["resize_schedule"]) + [(cfg["model"]["image_size"], 1.0)]
    last = rows[-1]
    budget = last["elapsed_s"]
    reach = " / ".join(f"{first_reaching(rows, 'val_acc', x):.1f}" if first_reaching(rows, 'val_acc', x) else "never"
                       for x in (0.70, 0.75, 0.80))
    tail = last_minutes(rows)
    best = max(rows, key=lambda r: r["val_acc"])
    tta = views_of(last, cfg)
    return [
        ("test accuracy (read once, after the last epoch)", pct(last["test_acc"]) if tta else f"**{pct(last['test_acc'])}**"),
        *([(f"test accuracy with `--tta {tta}` (the same reading, the views' logits)", f"**{pct(last['test_tta_acc'])}**"),
           (f"validation accuracy at the end with `--tta {tta}`", pct(last["val_tta_acc"]))] if tta else []),
        ("validation accuracy at the end", pct(last["val_acc"])),
        ("validation, mean (sd) over the last 10 minutes", f"{pct(statistics.mean(tail))} ({100 * statistics.stdev(tail):.2f})"),
        ("best validation reading", f"{pct(best['val_acc'])} at {best['elapsed_s'] / 60:.1f} min (epoch {best['epoch']})"),
        ("validation 70% / 75% / 80% first reached (min)", reach),
        *([(f"validation readings from {window[0]} to {window[1]} minutes",
            ", ".join(pct(r["val_acc"]) for r in rows if window[0] * 60 <= r["elapsed_s"] <= window[1] * 60))]
          if window else []),
        ("images/s, median per stage", " / ".join(f"{num(v)} at {s} px" for s, v in stage_medians(rows, stages, budget))),
        ("training time, epochs, images seen", f"{budget / 60:.1f} min, {last['epoch']} epochs, about "
                                               f"{images_seen(rows, train_images) / 1e6:.1f} million images"),
        ("training accuracy at the end (augmented batches)", pct(last["train_acc"], 1)),
    ]


def stage_table(metrics, config, train_images=45000):
    """Each resize stage of a --time-budget run: its minutes, the images it trained on, the validation accuracy
    (read at the full size) inside it, the training accuracy (at the stage's size) at its end, and the first
    validation reading a minute or more into it."""
    rows, cfg = load(metrics), load(config)
    stages = resize_stages(cfg["train"]["resize_schedule"]) + [(cfg["model"]["image_size"], 1.0)]
    budget = rows[-1]["elapsed_s"]
    batch = train_images / (rows[0]["step"] / rows[0]["epoch"])
    lines = ["| stage | minutes | images (million) | validation inside it (min - max) | training accuracy at its end "
             "| validation a minute in |", "| --- | --- | --- | --- | --- | --- |"]
    start, step0 = 0.0, 0
    for size, until in stages:
        inside = [r for r in rows if start * budget < r["elapsed_s"] <= until * budget + 1e-6]
        in_a_minute = next((r for r in inside if r["elapsed_s"] >= start * budget + 60), None)
        val = [r["val_acc"] for r in inside]
        lines.append(f"| {size} px | {start * budget / 60:.1f} - {until * budget / 60:.1f} | "
                     f"{(inside[-1]['step'] - step0) * batch / 1e6:.1f} | {pct(min(val), 1)} - {pct(max(val), 1)} | "
                     f"{pct(inside[-1]['train_acc'], 1)} | "
                     + (f"{pct(in_a_minute['val_acc'], 1)} at {in_a_minute['elapsed_s'] / 60:.1f} min" if in_a_minute else "-")
                     + " |")
        start, step0 = until, inside[-1]["step"]
    return "\n".join(lines)


def stages_block(stem):
    """A --time-budget run's stage table (file stem in benchmarks/results/), its machine and raw file."""
    return (stage_table(f"{stem}_metrics.jsonl", f"{stem}_config.json") + "\n\n"
            + machine(load(f"{stem}_config.json")["machine"]) + f"; raw file `{stem}_metrics.jsonl`.")


def hour_fifth_stages():
    return stages_block("cifar10_hour_mpi")


def hour_fifth():
    facts = hour_table("cifar10_hour_mpi_metrics.jsonl", "cifar10_hour_mpi_config.json")
    m = machine(load("cifar10_hour_mpi_config.json")["machine"])
    lines = ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in facts]
    lines.append(f"| machine | {m} |")
    lines.append("| raw files | [`cifar10_hour_mpi_metrics.jsonl`](../benchmarks/results/cifar10_hour_mpi_metrics.jsonl), "
                 "[`cifar10_hour_mpi_config.json`](../benchmarks/results/cifar10_hour_mpi_config.json) |")
    return "\n".join(lines)


# --recipe hour with the half hour's three changes (--pool gap --patch-init whiten --tta flip-shift), two seeds
HOUR_LEVERS = ("cifar10_hour_gap_whiten_tta_s0", "cifar10_hour_gap_whiten_tta_s1")


def hour_levers():
    """The hour with the half hour's levers, a column per seed, beside the fifth attempt (another CPU: each named)."""
    return "\n".join(seeds_table(HOUR_LEVERS, beside=("the fifth attempt, seed 0", "cifar10_hour_mpi")))


def seeds_stages(stems):
    """stages_block of each run, headed by its seed."""
    return "\n\n".join(f"Seed {seed_of(stem)}:\n\n" + stages_block(stem) for stem in stems)


def hour_levers_stages():
    return seeds_stages(HOUR_LEVERS)


# --recipe hour and --recipe half-hour on the other CPU family, an AMD EPYC (file stems in benchmarks/results/)
HOUR_AMD = ("cifar10_hour_amd_s0",)
HALF_HOUR_AMD = ("cifar10_half_hour_amd_s2", "cifar10_half_hour_amd_s3")


def seeds_words(stems):
    """'seed 2' for one run, 'the mean of seeds 2 and 3' for several."""
    seeds = [str(seed_of(stem)) for stem in stems]
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"the mean of seeds {', '.join(seeds[:-1])} and {seeds[-1]}"


def other_family(amd_stems, xeon_stems):
    """A recipe's runs on the AMD EPYC beside its seeds on the Xeon, each column with its machine, and how far
    apart they end."""
    cpu = lambda stem: load(f"{stem}_config.json")["machine"]["cpu"].split(" Processor")[0].replace("(R)", "")
    columns = [(f"{cpu(stem)}, seed {seed_of(stem)}", stem) for stem in amd_stems + xeon_stems]
    lines = runs_table(columns)
    amd, xeon = test_readings(amd_stems), test_readings(xeon_stems)
    amd_plain, xeon_plain = test_readings(amd_stems, plain=True), test_readings(xeon_stems, plain=True)
    seen_amd, seen_xeon = (statistics.mean(images_seen(load(f"{s}_metrics.jsonl"), 45000) for s in stems) / 1e6
                           for stems in (amd_stems, xeon_stems))
    tta = views_of(load(f"{amd_stems[0]}_metrics.jsonl")[-1], load(f"{amd_stems[0]}_config.json"))
    gap = lambda stems: statistics.mean(100 * (r["train_acc"] - r["val_acc"])
                                        for r in (load(f"{s}_metrics.jsonl")[-1] for s in stems))
    runs = seeds_words(amd_stems)
    lines += ["", f"On the {cpu(amd_stems[0])}, {runs}: **{pct(statistics.mean(amd))}** test with `--tta {tta}` "
              f"({pct(statistics.mean(amd_plain))} plain), against {pct(statistics.mean(xeon))} "
              f"({pct(statistics.mean(xeon_plain))} plain), the mean of the {cpu(xeon_stems[0])}'s {len(xeon_stems)} "
              f"seeds: {100 * (statistics.mean(amd) - statistics.mean(xeon)):+.2f} points, where one reading's sampling "
              f"error is {100 * binomial_se(statistics.mean(amd), 10000):.2f} points (10,000 test images). It saw about "
              f"{seen_amd:.1f} million images against {seen_xeon:.1f} ({seen_amd / seen_xeon:.2f} times), and its training accuracy (augmented batches) ends "
              f"{gap(amd_stems):.1f} points above validation, against {gap(xeon_stems):.1f} on the "
              f"{cpu(xeon_stems[0])} (the mean of its seeds)."]
    return "\n".join(lines)


def hour_amd():
    return other_family(HOUR_AMD, HOUR_LEVERS)


def half_hour_amd():
    return other_family(HALF_HOUR_AMD, HALF_HOUR)


def hour_amd_stages():
    return seeds_stages(HOUR_AMD)


# A lever on `--recipe hour` at the hour's length on the AMD EPYC, beside the recipe's run of the same seed:
# (the flags beside --recipe hour, file stem)
HOUR_RANDAUGMENT_AMD = (("", "cifar10_hour_amd_s0"), ("--randaugment 2 --randaugment-magnitude 9", "cifar10_hour_ra_amd_s0"))


def lever_pair(base, lever):
    """Two --time-budget runs of one seed, the recipe and the recipe with one lever ((flags, stem) each), side by
    side; then their difference on validation (where a lever is chosen), with the noise of one reading, and on
    the test set, read once by each."""
    (base_flags, base_stem), (flags, stem) = base, lever
    lines = runs_table([(f"`--recipe {load(f'{base_stem}_config.json')['train']['recipe']}"
                         f"{' ' + base_flags if base_flags else ''}`", base_stem), (f"the same with `{flags}`", stem)])
    b, x = (load(f"{s}_metrics.jsonl") for s in (base_stem, stem))
    lb, lx = b[-1], x[-1]
    tail = lambda rows: statistics.mean(last_minutes(rows))
    val_images = load(f"{base_stem}_config.json")["train"]["val_split"]
    tta = views_of(lx, load(f"{stem}_config.json"))
    gap = lambda last: 100 * (last["train_acc"] - last["val_acc"])
    lines += ["", f"With `{flags}`, seed {seed_of(stem)}, against the recipe's run of the same seed: validation "
              f"{100 * (lx['val_acc'] - lb['val_acc']):+.2f} points at the end, "
              + (f"{100 * (lx['val_tta_acc'] - lb['val_tta_acc']):+.2f} with `--tta {tta}`, " if tta else "")
              + f"{100 * (tail(x) - tail(b)):+.2f} on the mean of the last 10 minutes' readings; one reading's sampling "
              f"error on the {val_images:,} validation images is {100 * binomial_se(lb['val_acc'], val_images):.2f} points, and the "
              "spread between seeds of the hour was not measured on this CPU. Training accuracy (augmented batches) "
              f"minus validation at the end: {gap(lx):+.1f} points, against {gap(lb):+.1f}. The test set, read once by each: "
              + (f"{100 * (lx['test_tta_acc'] - lb['test_tta_acc']):+.2f} points with the views, " if tta else "")
              + f"{100 * (lx['test_acc'] - lb['test_acc']):+.2f} plain."]
    return "\n".join(lines)


def hour_randaugment_amd():
    return lever_pair(*HOUR_RANDAUGMENT_AMD)


def hour_randaugment_amd_stages():
    return stages_block(HOUR_RANDAUGMENT_AMD[1][1])


def peer_table(mine, theirs, mine_label, window):
    """minivit's --time-budget run (file stem `mine`: _metrics.jsonl, _config.json) beside the PyTorch peer that
    followed it (stem `theirs`: _metrics.jsonl, _machine.json): one table, and the speed and accuracy gaps."""
    config = f"{mine}_config.json"
    cfg = load(config)
    ours = dict(hour_table(f"{mine}_metrics.jsonl", config, window=window))
    theirs_facts = dict(hour_table(f"{theirs}_metrics.jsonl", config, window=window))
    lines = [f"| | minivit ({mine_label}) | PyTorch peer (1 process x 2 threads) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {ours[k]} | {theirs_facts[k]} |" for k in ours]
    lines.append(f"| machine | {machine(cfg['machine'])} | {machine(load(f'{theirs}_machine.json'))} |")
    a, b = load(f"{mine}_metrics.jsonl"), load(f"{theirs}_metrics.jsonl")
    stages = resize_stages(cfg["train"]["resize_schedule"]) + [(cfg["model"]["image_size"], 1.0)]
    speed = [x / y for (_, x), (_, y) in zip(stage_medians(a, stages, a[-1]["elapsed_s"]),
                                            stage_medians(b, stages, b[-1]["elapsed_s"]))]
    tta = views_of(a[-1], cfg)
    test = "test_tta_acc" if tta else "test_acc"

    def gap(x):
        return f"{abs(100 * x):.2f} points {'above' if x >= 0 else 'below'}"
    lines.append("")
    lines.append(f"minivit ran {min(speed):.2f} to {max(speed):.2f} times the peer's images/s (the stages' medians); "
                 f"it ends {gap(a[-1][test] - b[-1][test])} on test"
                 + (f" with `--tta {tta}` ({gap(a[-1]['test_acc'] - b[-1]['test_acc'])} with the plain logits)" if tta else "")
                 + f" and {gap(a[-1]['val_acc'] - b[-1]['val_acc'])} on validation. The test set's sampling error at "
                 f"this accuracy is {100 * binomial_se(a[-1][test], 10000):.2f} points (10,000 images).")
    return "\n".join(lines)


def hour_peer():
    return peer_table("cifar10_hour_mpi", "torch_hour_budget", "2 MPI ranks x 1 thread", (43, 47))


def newer_readings():
    """What the headline table and the README quote of the newer runs: the half-hour peer's seed, minivit's and the
    peer's last rows, the hour-with-levers runs' mean test reading with the views and their machine, and the hour's
    seed that the peer followed and that peer's last rows."""
    mine, peer = (load(f"{stem}_metrics.jsonl")[-1] for stem in HALF_HOUR_PEER)
    hour_mine, hour_peer = (load(f"{stem}_metrics.jsonl")[-1] for stem in HOUR_PEER)
    return (seed_of(HALF_HOUR_PEER[0]), mine, peer, statistics.mean(test_readings(HOUR_LEVERS)),
            load(f"{HOUR_LEVERS[0]}_config.json")["machine"], hour_mine, hour_peer)


HOUR_PEER = ("cifar10_hour_gap_whiten_tta_s0", "torch_hour_s0")   # --recipe hour's seed 0 and the peer that followed it


def hour_levers_peer():
    return peer_table(*HOUR_PEER, f"2 MPI ranks x 1 thread, seed {seed_of(HOUR_PEER[0])}", None)


def half_hour_peer():
    return peer_table(*HALF_HOUR_PEER, f"2 MPI ranks x 1 thread, seed {seed_of(HALF_HOUR_PEER[0])}", None)


# --recipe half-hour's runs: its first version (the hour's recipe on 30 minutes), the second (with global average
# pooling and patch whitening) and the recipe now (the second with test-time flip-shift of the last readings), two
# seeds each; file stems in benchmarks/results/.
HALF_HOUR_FIRST = ("cifar10_half_hour_s0", "cifar10_half_hour_s1")
HALF_HOUR_SECOND = ("cifar10_half_hour_gap_whiten_s0", "cifar10_half_hour_gap_whiten_s1")
HALF_HOUR = ("cifar10_half_hour_tta_s2", "cifar10_half_hour_tta_s3")
HALF_HOUR_PEER = ("cifar10_half_hour_tta_s2", "torch_half_hour_s2")   # minivit's run and the peer that followed it


def test_readings(stems=HALF_HOUR, plain=False):
    """The test accuracy each run read once, at its end: its recipe's figure (with --tta, the views'), or the
    plain logits' with `plain`."""
    last = [load(f"{stem}_metrics.jsonl")[-1] for stem in stems]
    return [r["test_acc"] if plain else r.get("test_tta_acc", r["test_acc"]) for r in last]


def seed_of(stem):
    return load(f"{stem}_config.json")["train"]["seed"]


def runs_table(columns):
    """--time-budget runs side by side: a column per (label, file stem), hour_table's rows, machines, raw files."""
    facts = [dict(hour_table(f"{stem}_metrics.jsonl", f"{stem}_config.json", window=None)) for _, stem in columns]
    lines = ["| | " + " | ".join(label for label, _ in columns) + " |", "| --- |" + " --- |" * len(columns)]
    lines += [f"| {key} | " + " | ".join(f.get(key, "–") for f in facts) + " |" for key in facts[0]]
    lines.append("| machine | " + " | ".join(machine(load(f"{stem}_config.json")["machine"]) for _, stem in columns) + " |")
    lines.append("| raw files | " + " | ".join(f"`{stem}_metrics.jsonl`, `{stem}_config.json`" for _, stem in columns) + " |")
    return lines


def seeds_table(stems, beside=None):
    """Runs of one recipe, a column per seed, and the mean of their test readings; `beside`: (label, stem) of one
    more run drawn in a last column for comparison, outside the mean."""
    lines = runs_table([(f"seed {seed_of(stem)}", stem) for stem in stems] + ([beside] if beside else []))
    tests = test_readings(stems)
    lines.append("")
    plain = test_readings(stems, plain=True)
    tta = views_of(load(f"{stems[0]}_metrics.jsonl")[-1], load(f"{stems[0]}_config.json"))
    lines.append(f"Mean test accuracy of the {len(tests)} seeds" + (f" with `--tta {tta}`" if tta else "")
                 + f": **{pct(statistics.mean(tests))}** (they differ by {100 * abs(tests[0] - tests[-1]):.2f} points)"
                 + (f"; the same readings' plain logits: {pct(statistics.mean(plain))}." if tta else "."))
    return lines


def half_hour():
    """The first version's runs, and where the fifth hour's run stood at the same minute."""
    lines = seeds_table(HALF_HOUR_FIRST)
    hour, other = load("cifar10_hour_mpi_metrics.jsonl"), load("cifar10_hour_mpi_config.json")["machine"]
    at = max((r for r in hour if r["elapsed_s"] <= 30 * 60), key=lambda r: r["elapsed_s"])
    mine = load(f"{HALF_HOUR_FIRST[0]}_config.json")["machine"]
    lines.append(f"For comparison, the fifth hour's run (above), on another machine ({other['cpu']}, "
                 f"{' '.join(other.get('isa', []))}; these runs: {mine['cpu']}, {' '.join(mine.get('isa', []))}), "
                 f"read {pct(at['val_acc'])} on validation after "
                 f"{at['elapsed_s'] / 60:.1f} minutes of training, its learning rate then {at['lr']:.2g}, still on its "
                 "way down to the deadline at 60.")
    return "\n".join(lines)


def half_hour_second():
    return "\n".join(seeds_table(HALF_HOUR_SECOND))


def half_hour_now():
    return "\n".join(seeds_table(HALF_HOUR))


def tta_table(stems):
    """benchmarks/tta_eval.py on each run's checkpoint: validation accuracy per test-time augmentation."""
    raws = [load(f"{stem}_tta.json") for stem in stems]
    lines = ["| --tta | " + " | ".join(f"seed {seed_of(stem)}: validation (change)" for stem in stems)
             + " | seconds for the validation images |", "| --- |" + " --- |" * (len(raws) + 1)]
    for i, tta in enumerate(r["tta"] for r in raws[0]["readings"]):
        cells = [f"{pct(raw['readings'][i]['val_acc'])} ({100 * (raw['readings'][i]['val_acc'] - raw['readings'][0]['val_acc']):+.2f})"
                 for raw in raws]
        lines.append(f"| {tta} | " + " | ".join(cells) + f" | {raws[0]['readings'][i]['seconds']:.1f} |")
    se = binomial_se(raws[0]["readings"][0]["val_acc"], raws[0]["val_images"])
    lines.append("")
    lines.append(f"{raws[0]['val_images']:,} validation images (the standard error of one accuracy on them is about "
                 f"{100 * se:.2f} points; the readings of one run are of the same images and weights, so their "
                 f"differences are paired and vary less than that); {machine(raws[0]['machine'])}; raw files "
                 + ", ".join(f"`{stem}_tta.json`" for stem in stems) + ".")
    return "\n".join(lines)


def half_hour_tta():
    return tta_table(HALF_HOUR_FIRST)


def half_hour_second_tta():
    return tta_table(HALF_HOUR_SECOND)


# The first version of the half-hour recipe with levers changed, beside its own seeds: (lever, flags, file stem).
HALF_HOUR_LEVERS = [("the first version", "", "cifar10_half_hour_s0"), ("the first version", "--seed 1", "cifar10_half_hour_s1"),
                    ("global average pooling", "--pool gap", "cifar10_half_hour_gap_s0"),
                    ("and patch whitening", "--pool gap --patch-init whiten", "cifar10_half_hour_gap_whiten_s0")]


def half_hour_levers():
    """Runs of `--recipe half-hour` with one change each: validation (the choice), then the test read once."""
    lines = ["| lever | flags beside the first version | validation at the end | validation, mean of the last 10 min "
             "| images seen (million) | images/s per stage (16 / 24 / 32 px) | test (read once) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    machines = set()
    for lever, flags, stem in HALF_HOUR_LEVERS:
        rows, cfg = load(f"{stem}_metrics.jsonl"), load(f"{stem}_config.json")
        stages = resize_stages(cfg["train"]["resize_schedule"]) + [(cfg["model"]["image_size"], 1.0)]
        last, budget = rows[-1], rows[-1]["elapsed_s"]
        tail = last_minutes(rows)
        speeds = " / ".join(num(v) for _, v in stage_medians(rows, stages, budget))
        lines.append(f"| {lever} | `{flags or '--seed 0'}` | {pct(last['val_acc'])} | {pct(statistics.mean(tail))} | "
                     f"{images_seen(rows, 45000) / 1e6:.2f} | {speeds} | {pct(last['test_acc'])} |")
        machines.add(machine(cfg["machine"]))
    lines.append("")
    lines.append(f"Machine: {'; '.join(sorted(machines))}. Raw files: "
                 + ", ".join(f"`{stem}_metrics.jsonl`, `{stem}_config.json`" for _, _, stem in HALF_HOUR_LEVERS) + ".")
    return "\n".join(lines)


def pos_align():
    """benchmarks/pos_align_eval.py: checkpoints read at each stage's size with the table corner- or centre-aligned."""
    raw = load("pos_align_eval.json")
    sizes = [r["size"] for r in raw["runs"][0]["readings"]]
    out = ["| checkpoint | " + " | ".join(f"{s} px: corners / centres (change)" for s in sizes) + " |",
           "| --- |" + " --- |" * len(sizes)]
    for run in raw["runs"]:
        cells = [f"{pct(r['corners'])} / {pct(r['centres'])} ({100 * (r['centres'] - r['corners']):+.2f})"
                 for r in run["readings"]]
        out.append(f"| `{run['checkpoint']}` | " + " | ".join(cells) + " |")
    changes = [100 * (r["centres"] - r["corners"]) for run in raw["runs"] for r in run["readings"]
               if r["size"] != sizes[-1]]
    out += ["", f"Validation accuracy on each run's {raw['runs'][0]['val_images']:,} held-out images. At the smaller "
            f"sizes the centre-aligned table changes the reading by {min(changes):+.2f} to {max(changes):+.2f} points; "
            f"the standard error of one reading there is about "
            f"{100 * binomial_se(raw['runs'][0]['readings'][0]['corners'], raw['runs'][0]['val_images']):.2f}. "
            f"{machine(raw['machine'])}; raw file `benchmarks/results/pos_align_eval.json`."]
    return "\n".join(out)


# ---------------------------------------------------------------- the first four hours (epochs, not a budget)

# These runs' metrics predate the machine record in raw files; the page's "The machines" names their CPU.
FIRST_HOURS_MACHINE = "machine: the AMD EPYC (AVX2) of the first four hours, 2 cores (its files predate machine records)"
FIRST_HOURS = {1: "notebooks/assets/vit-cifar10-tiny.npz", 2: "cifar10_tiny_hour_metrics.jsonl",
               3: "cifar10_dim96_hour_metrics.jsonl", 4: "cifar10_b128_hour_metrics.jsonl"}


def epoch_rows(source):
    """One row per epoch: a metrics.jsonl of benchmarks/results/, or the history a checkpoint keeps."""
    if source.endswith(".npz"):
        import numpy as np
        with np.load(ROOT / source) as z:
            return json.loads(str(z["meta"]))["history"]
    return load(source)


def attempt_facts(n):
    """The facts table of the n-th hour: test accuracy, training time, images/s, training accuracy."""
    rows = epoch_rows(FIRST_HOURS[n])
    last, best = rows[-1], max(rows, key=lambda r: r["test_acc"])
    best_text = ("the best epoch was the last" if best is last
                 else f"best epoch {pct(best['test_acc'])}, epoch {best['epoch']}")
    ema = f"; the EMA of the weights {pct(last['ema_test_acc'])}" if "ema_test_acc" in last else ""
    speeds = [r["images_per_s"] for r in rows]
    facts = [("**test accuracy**", f"**{pct(last['test_acc'])}** after {last['epoch']} epochs ({best_text}){ema}"),
             ("training time", f"{num(last['elapsed_s'])} s = {last['elapsed_s'] / 60:.1f} min inside the training loop"),
             ("throughput", f"{num(statistics.median(speeds))} images/s median over the epochs ({num(min(speeds))} to "
                            f"{num(max(speeds))})"),
             ("training accuracy, last epoch", f"{pct(last['train_acc'], 1)} (augmented images)")]
    lines = ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in facts]
    return "\n".join(lines + ["", f"{FIRST_HOURS_MACHINE}; raw: `{FIRST_HOURS[n]}`."])


def attempt_reach(n):
    """Epoch and minutes of training at which the n-th hour's test accuracy first reached each level."""
    rows = epoch_rows(FIRST_HOURS[n])
    levels = (0.50, 0.60, 0.70, 0.75, 0.78, 0.80)
    first = [first_row(rows, "test_acc", x) for x in levels]
    lines = ["| test accuracy | " + " | ".join(f"{100 * x:.0f}%" for x in levels) + " |",
             "| --- |" + " --- |" * len(levels),
             "| epoch | " + " | ".join(str(r["epoch"]) if r else "not reached" for r in first) + " |",
             "| minutes of training | " + " | ".join(f"{r['elapsed_s'] / 60:.1f}" if r else "–" for r in first) + " |"]
    return "\n".join(lines + ["", f"{FIRST_HOURS_MACHINE}; raw: `{FIRST_HOURS[n]}`."])


def at_minutes(rows, minutes):
    """The test accuracy of the last epoch finished by `minutes` of training."""
    done = [r for r in rows if r["elapsed_s"] <= minutes * 60]
    return pct(done[-1]["test_acc"], 1) if done else "–"


def attempts_2_and_4():
    minutes = (5, 10, 20, 30, 40, 50)
    lines = ["| minutes | " + " | ".join(map(str, minutes)) + " |", "| --- |" + " --- |" * len(minutes)]
    for label, n in (("batch 256 (second attempt)", 2), ("batch 128 (fourth)", 4)):
        rows = epoch_rows(FIRST_HOURS[n])
        lines.append(f"| {label} | " + " | ".join(at_minutes(rows, m) for m in minutes) + " |")
    return "\n".join(lines + ["", f"{FIRST_HOURS_MACHINE}; raw: `{FIRST_HOURS[2]}`, `{FIRST_HOURS[4]}`."])


def peer_second():
    """The second attempt and its PyTorch peer, side by side."""
    sides = [epoch_rows(FIRST_HOURS[2]), load("torch_tiny_hour_metrics.jsonl")]

    def reach(rows, x):
        minutes = first_reaching(rows, "test_acc", x)
        return f"{minutes:.1f}" if minutes is not None else "never"

    def speed(rows):
        v = [r["images_per_s"] for r in rows]
        return f"{num(statistics.median(v))} ({num(min(v))}–{num(max(v))})"
    facts = [(f"test accuracy after {sides[0][-1]['epoch']} epochs", lambda r: f"**{pct(r[-1]['test_acc'])}**"),
             ("training accuracy, last epoch", lambda r: pct(r[-1]["train_acc"])),
             ("time in the training loop", lambda r: f"{num(r[-1]['elapsed_s'])} s ({r[-1]['elapsed_s'] / 60:.1f} min)"),
             ("images/s, median over epochs (range)", speed),
             ("minutes to 70% / 75% test accuracy", lambda r: f"{reach(r, 0.70)} / {reach(r, 0.75)}")]
    lines = ["| | minivit (NumPy, hand-written backward) | PyTorch 2.13 (autograd) |", "| --- | --- | --- |"]
    lines += [f"| {k} | {f(sides[0])} | {f(sides[1])} |" for k, f in facts]
    return "\n".join(lines + ["", f"{FIRST_HOURS_MACHINE}; raw: `cifar10_tiny_hour_metrics.jsonl`, "
                                   "`torch_tiny_hour_metrics.jsonl`."])


# ---------------------------------------------------------------- recipe sweeps (recipe_sweep.py)

def binomial_se(p, n):
    """The standard error of an accuracy p measured on n images: the test set's sampling error only, not the
    spread between training runs (which needs seeds)."""
    return math.sqrt(p * (1 - p) / n)


def sweep_budget():
    raw = load("recipe_sweep_budget_cpu.json")
    runs = sorted(raw["runs"], key=lambda r: -r["rank_acc"])
    n = raw["runs"][0]["train_config"]["val_split"]
    changes = lambda r: ", ".join(f"{k}={v}" for k, v in {**{k: v for k, v in r["train_config"].items()
                                                             if k in ("schedule", "resize_schedule") and v not in ("cosine", "")},
                                                          **{k: v for k, v in r["model"].items() if k == "patch_dropout"}}.items()) or "the base"
    out = [f"Machine: {machine(raw['machine'])}; {raw['ranks']} MPI ranks. Raw file: "
           "[`recipe_sweep_budget_cpu.json`](../benchmarks/results/recipe_sweep_budget_cpu.json).", "",
           "| recipe | changes from `hour` | validation accuracy | test accuracy (read once) | epochs | images/s |",
           "| --- | --- | --- | --- | --- | --- |"]
    for i, r in enumerate(runs):
        val = pct(r["rank_acc"])
        out.append(f"| {r['recipe']} | {changes(r)} | {'**' + val + '**' if i == 0 else val} | {pct(r['test_acc'])} | "
                   f"{r['history'][-1]['epoch']} | {num(r['images_per_s'])} |")
    se = binomial_se(runs[0]["rank_acc"], n)
    out += ["", f"On {n:,} validation images one reading's sampling error is about {100 * se:.2f} points, and a "
                f"difference of two readings' about {100 * math.sqrt(2) * se:.2f}; the spread between training runs "
                "(seeds) was not measured and comes on top."]
    return "\n".join(out)


def flags_of(changes):
    """{'lr': 0.004, 'attn_init': 'mimetic'} -> '`--lr 0.004 --attn-init mimetic`': the command-line flags of model
    and training settings, named as the CLI names them (flag_of)."""
    flag = lambda k: flag_of(TrainConfig if k in {f.name for f in fields(TrainConfig)} else ViTConfig, k)
    return "`" + " ".join(f"{flag(k)} {v:g}" if isinstance(v, float) else f"{flag(k)} {v}" for k, v in changes.items()) + "`"


def sweep_epochs(name, base):
    """A recipe_sweep.py file of 2-epoch runs scored on the test set (before --val-split existed): a row per recipe,
    its settings' difference from the run named `base`, and each difference's size in standard errors."""
    raw = load(name)
    runs = sorted(raw["runs"], key=lambda r: -r["test_acc"])
    ref = next(r for r in runs if r["recipe"] == base)
    n = 10000   # the CIFAR-10 test set, which scored these runs
    setting = lambda r: {**r["model"], **r["train"]}
    out = [f"| recipe | changes from `{base}` | test accuracy | change (standard errors of a difference) | minutes | "
           "images/s | points over chance per minute |", "| --- | --- | --- | --- | --- | --- | --- |"]
    se2 = math.sqrt(2) * binomial_se(ref["test_acc"], n)
    for i, r in enumerate(runs):
        diff = {k: v for k, v in setting(r).items() if setting(ref).get(k) != v}
        acc = pct(r["test_acc"])
        change = ("–" if r is ref else f"{100 * (r['test_acc'] - ref['test_acc']):+.2f} "
                                       f"({(r['test_acc'] - ref['test_acc']) / se2:+.1f})")
        out.append(f"| {r['recipe']} | {flags_of(diff) if diff else 'the base'} | {'**' + acc + '**' if i == 0 else acc} | "
                   f"{change} | {r['minutes']:.2f} | {num(r['images_per_s'])} | {r['points_per_minute']:.1f} |")
    out += ["", f"One run each, seed 0, {raw['epochs']} epochs, scored on the {n:,} test images: one reading's sampling "
                f"error is about {100 * binomial_se(ref['test_acc'], n):.2f} points and a difference of two readings' "
                f"about {100 * se2:.2f}; the spread between seeds was not measured and comes on top. "
                f"{FIRST_HOURS_MACHINE}; raw file [`{name}`](../benchmarks/results/{name})."]
    return "\n".join(out)


def sweep_short():
    return sweep_epochs("recipe_sweep_cpu.json", "tiny")


def sweep_hour():
    return sweep_epochs("recipe_sweep_hour_cpu.json", "hour")


def peer_second_drift():
    """How far the second attempt and its peer drift apart epoch by epoch, and compare_runs.py's table of it."""
    a, b = epoch_rows(FIRST_HOURS[2]), load("torch_tiny_hour_metrics.jsonl")
    d = [100 * (x["test_acc"] - y["test_acc"]) for x, y in zip(a, b)]
    last = d[-10:]
    speed = (statistics.median(r["images_per_s"] for r in a) / statistics.median(r["images_per_s"] for r in b))
    lean = lambda v: f"minivit ahead by {v:.2f}" if v > 0 else f"PyTorch ahead by {-v:.2f}"
    out = [f"They end {abs(d[-1]):.2f} points apart. Along the way single epochs differ by up to "
           f"{max(map(abs, d)):.1f} points, {lean(statistics.mean(d))} on average over all {len(d)} epochs; over the last "
           f"ten they are within {max(map(abs, last)):.2f} points, {lean(statistics.mean(last))} on average. minivit's "
           f"median epoch ran at {speed:.2f} times PyTorch's images/s. From `python benchmarks/compare_runs.py "
           "benchmarks/results/cifar10_tiny_hour_metrics.jsonl benchmarks/results/torch_tiny_hour_metrics.jsonl "
           "--labels minivit PyTorch`:", "", "```", "epoch | minivit test acc PyTorch test acc  diff (points)"]
    for e in sorted({1, 5, 10, 20, 30, 40, len(d)}):
        x, y = a[e - 1]["test_acc"], b[e - 1]["test_acc"]
        out.append(f"{e:5d} | {x:16.4f} {y:16.4f} {100 * (x - y):+14.2f}")
    out += ["```", "", f"{FIRST_HOURS_MACHINE}; raw: `cifar10_tiny_hour_metrics.jsonl`, `torch_tiny_hour_metrics.jsonl`."]
    return "\n".join(out)


# ---------------------------------------------------------------- pre-training and data size (paper 4.6, 4.2)

UNDATED_MACHINE = ("machine: the raw file names none; by date the AMD EPYC (AVX2) of the first "
                   "four hours, 2 cores")


def pretrain_arms():
    """benchmarks/pretrain_experiment.py: the pre-training itself, then each label fraction's two arms."""
    raw = load("pretrain_cifar10.json")
    pre = raw["pretrain"]
    h = pre["history"]
    out = [f"Pre-training: {len(h)} epochs, {num(pre['images'])} images, {pre['seconds'] / 60:.1f} min of training; "
           f"colour accuracy on corrupted test patches {pct(h[0]['test_acc'], 1)} after the first epoch, "
           f"{pct(h[-1]['test_acc'], 1)} after the last (test loss {h[-1]['test_loss']:.2f} nats).", "",
           "| labels | labelled images | pretrained: colour + fine-tuning | scratch, same images in total | difference |",
           "| --- | --- | --- | --- | --- |"]
    fractions = sorted({r["fraction"] for r in raw["runs"].values()})
    for f in fractions:
        arm = {r["arm"]: r for r in raw["runs"].values() if r["fraction"] == f}
        p_, s_ = arm["pretrained"], arm["scratch"]
        out.append(f"| {100 * f:g}% | {num(p_['labelled_images'])} | {pct(p_['test_acc'], 1)} (+ {num(p_['images'])} "
                   f"images) | {pct(s_['test_acc'], 1)} ({num(s_['images'])} images) | "
                   f"{100 * (p_['test_acc'] - s_['test_acc']):+.1f} |")
    out += ["", f"{raw['test_images']:,} test images, one seed per run (one reading's sampling error about "
                f"{100 * binomial_se(0.5, raw['test_images']):.1f} points). machine, as the raw file records it: "
                f"{raw['machine']}. Raw file `pretrain_cifar10.json`."]
    return "\n".join(out)


def pretrain_features():
    """The frozen features' few-shot and probe accuracy before and after pre-training, and the attention distances."""
    raw = load("pretrain_cifar10.json")
    shots = [k for k in raw["fewshot"]["token"]["init"] if k != "probe"]
    out = ["| representation | " + " | ".join(f"{k}-shot" for k in shots) + " | linear probe |",
           "| --- |" + " --- |" * (len(shots) + 1)]
    for rep, name in (("token", "class token"), ("gap", "mean patch token")):
        for when, label in (("init", "at initialisation"), ("pretrained", "pre-trained")):
            v = raw["fewshot"][rep][when]
            out.append(f"| {name}, {label} | " + " | ".join(pct(v[k], 1) for k in shots) + f" | {pct(v['probe'], 1)} |")
    dist = raw["attention_distance"]
    span = lambda keys: (f"{min(min(dist[k]) for k in keys):.1f}–{max(max(dist[k]) for k in keys):.1f}")
    scratch = [k for k in dist if k.endswith("-scratch")]
    tuned = [k for k in dist if k.endswith("-pretrained")]
    out += ["", "Mean attention distance per block, in pixels: after pre-training "
            + ", ".join(f"{d:.1f}" for d in dist["pretrained"]) + "; at initialisation "
            + ", ".join(f"{d:.1f}" for d in dist["init"]) + f"; after supervised training from scratch {span(scratch)}; "
            f"the fine-tuned models {span(tuned)}. Raw file `pretrain_cifar10.json` (the same machine)."]
    return "\n".join(out)


def data_size():
    """benchmarks/data_size.py: the ViT and the CNN at each number of distinct training images, equal images seen."""
    raw = load("data_size_cifar10.json")
    by = {(r["model"], r["train_images"]): r for r in raw["runs"]}
    sizes = sorted({n for _, n in by})
    out = ["| training images | ViT test | CNN test | CNN − ViT | ViT train | CNN train | seconds, ViT / CNN |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for n in sizes:
        v, c = by["vit", n], by["cnn", n]
        out.append(f"| {num(n)} | {pct(v['test_acc'], 1)} | {pct(c['test_acc'], 1)} | "
                   f"{100 * (c['test_acc'] - v['test_acc']):+.1f} | {pct(v['train_acc_last_epoch'], 1)} | "
                   f"{pct(c['train_acc_last_epoch'], 1)} | {v['seconds']:.0f} / {c['seconds']:.0f} |")
    out += ["", f"Every run saw {num(raw['images_seen'])} images; {raw['test_images']:,} test images, one seed each. "
                f"{UNDATED_MACHINE}. Raw file `data_size_cifar10.json`."]
    return "\n".join(out)


# ---------------------------------------------------------------- the shipped subset: paper features, few-shot, default run

def paper_features_runs():
    """benchmarks/paper_features.py --json: every run's last row, its median images/s, the machine."""
    raw = load("paper_features_subset.json")
    lines = ["| run | flags | epochs | test accuracy | training time (s) | images/s, median over epochs |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['name']} | `{r['flags']}` | {r['epochs']} | {pct(r['test_acc'], 1)} | {r['elapsed_s']:.0f} | "
              f"{num(r['images_per_s_median'])} |" for r in raw["runs"]]
    lines.append("")
    lines.append(f"Each run: `minivit train {raw['common_flags'].replace(' --no-progress', '')}` plus its flags; the whole "
                 f"script took {raw['wall_s'] / 60:.1f} minutes. {machine(raw['machine'])}; raw file "
                 "`paper_features_subset.json`.")
    return "\n".join(lines)


# Table 8 of Dosovitskiy et al. (arXiv:2010.11929v2, Appendix D.4): ImageNet 5-shot linear accuracy of ViT-B/16,
# written as percentages; keyed by minivit's run names (after the stem, in every layer).
PAPER_TABLE_8 = [("none", "pos-none", "61.382%", "n/a", None),
                 ("learned 1-D (`learned`)", "pos-learned", "64.206%", "64.292% shared, 63.964% per layer",
                  "pos-learned-every-layer"),
                 ("learned 2-D, D/2 per axis (`learned2d`)", "pos-learned2d", "64.001%",
                  "64.022% shared, 64.046% per layer", "pos-learned2d-every-layer"),
                 ("relative attention (`relative`)", "pos-relative", "64.032%", "n/a", None),
                 ("fixed 2-D sine-cosine (`sincos`)", "pos-sincos", "not in Table 8", "not in Table 8", None)]


def paper_runs():
    return {r["name"]: r for r in load("paper_features_subset.json")["runs"]}


def paper_source():
    return f" (raw file `paper_features_subset.json`; machine: {load('paper_features_subset.json')['machine']['cpu']})"


def paper_features_positions():
    runs = paper_runs()
    lines = ["| position information | paper, added after the stem | paper, added in every layer | minivit, after the stem "
             "| minivit, in every layer |", "| --- | --- | --- | --- | --- |"]
    for label, stem, p_stem, p_every, every in PAPER_TABLE_8:
        mine_every = f"{pct(runs[every]['test_acc'], 1)} (per layer)" if every else ("n/a" if p_every == "n/a" else "not run")
        lines.append(f"| {label} | {p_stem} | {p_every} | {pct(runs[stem]['test_acc'], 1)} | {mine_every} |")
    lines.append("")
    lines.append("minivit's columns" + paper_source() + ".")
    return "\n".join(lines)


def paper_features_positions_reading():
    """The position runs against the noise of one reading on the subset's 1,000 test images."""
    runs = paper_runs()
    n = 1000
    none, learned = runs["pos-none"]["test_acc"], runs["pos-learned"]["test_acc"]
    with_pos = {k: r["test_acc"] for k, r in runs.items() if k.startswith("pos-") and k != "pos-none"}
    se = binomial_se(learned, n)
    order = sorted(with_pos, key=with_pos.get, reverse=True)
    below = sum(v < none for v in with_pos.values())
    clear = sum(v - none > 2 * se * math.sqrt(2) for v in with_pos.values())
    return (f"On the subset, no positions reads {pct(none, 1)}, {abs(100 * (learned - none)):.1f} points "
            f"{'below' if none < learned else 'above'} the learned 1-D table ({abs(learned - none) / (se * math.sqrt(2)):.1f} "
            f"standard errors of a difference of two readings; one reading's is {100 * se:.1f} points at this accuracy, "
            f"{n:,} test images). "
            + (f"All {len(with_pos)} runs that carry position read above it" if not below else
               f"{below} of the {len(with_pos)} runs that carry position read below it")
            + f"; {clear} read above it by more than two standard errors of a difference. The {len(with_pos)} lie within "
            f"{100 * (max(with_pos.values()) - min(with_pos.values())):.1f} points of each other, from {order[0]} "
            f"({pct(with_pos[order[0]], 1)}) to {order[-1]} ({pct(with_pos[order[-1]], 1)}). Relative attention took "
            f"{runs['pos-relative']['elapsed_s'] / runs['pos-learned']['elapsed_s']:.1f} times the learned table's "
            "training time" + paper_source() + ".")


def paper_features_hybrid():
    runs = paper_runs()
    pure = runs["pos-learned"]
    hybrid = next(r for k, r in runs.items() if k.startswith("hybrid-") and k != "hybrid-1-epoch")
    per_epoch_h, per_epoch_p = hybrid["elapsed_s"] / hybrid["epochs"], pure["elapsed_s"] / pure["epochs"]
    return (f"`cifar-hybrid` (a conv stem of 32 and 64 channels before the same encoder) took {per_epoch_h:.1f} s an "
            f"epoch against `cifar-tiny`'s {per_epoch_p:.1f} s in the same script run ({per_epoch_h / per_epoch_p:.1f} "
            f"times as long; the medians of the epochs' images/s are {num(hybrid['images_per_s_median'])} and "
            f"{num(pure['images_per_s_median'])}), so the pure model's {pure['elapsed_s']:.0f} s bought it "
            f"{hybrid['epochs']} whole epochs (the script's one-epoch probe took {runs['hybrid-1-epoch']['elapsed_s']:.0f} s; "
            f"the {hybrid['epochs']} took {hybrid['elapsed_s']:.0f} s). It reached {pct(hybrid['test_acc'], 1)} "
            f"against the pure model's {pct(pure['test_acc'], 1)}" + paper_source() + ".")


def paper_features_resolution():
    raw = load("paper_features_subset.json")["resolution"]
    return (f"The learned-position model above scores {pct(raw['eval_32'], 1)} on its 32×32 test images. On the same "
            "images upsampled (bicubic) to 48×48 it has 145 tokens instead of 65, so its 65-row position table cannot "
            "be used as it is. With the table resized bilinearly (12×12 grid from 8×8, `resize_pos_embed`, what "
            f"`minivit evaluate` does on its own) it scores {pct(raw['eval_48_resized_pos'], 1)}. "
            f"{raw['finetune_48_epochs']} epochs of fine-tuning at 48×48 (`minivit finetune`, SGD with momentum, the "
            f"paper's recipe) bring it to {pct(raw['finetune_48_test_acc'], 1)}" + paper_source() + ".")


def fewshot():
    name = "fewshot_tiny_subset.json"
    raw = load(name)
    shots = list(raw["fewshot"])
    lines = ["| shots per class | " + " | ".join(shots) + " | linear probe, all training images |",
             "| --- |" + " --- |" * (len(shots) + 1),
             f"| accuracy ({raw['draws']} draws, ridge l2 = {raw['l2']:g}) | "
             + " | ".join(f"{pct(raw['fewshot'][k]['accuracy'], 1)} ± {100 * raw['fewshot'][k]['std']:.1f}" for k in shots)
             + f" | {pct(raw['linear_probe'], 1) if 'linear_probe' in raw else 'not run'} |"]
    lines.append("")
    lines.append(f"{machine(raw['machine'])}; raw file `{name}`.")
    return "\n".join(lines)


def fewshot_l2():
    raw = load("fewshot_tiny_subset_l2_1.json")
    return (f"With `--l2 {raw['l2']:g}` the same run gives "
            + ", ".join(f"{pct(v['accuracy'], 1)} at {k}" for k, v in raw["fewshot"].items())
            + f" shots per class (raw file `fewshot_tiny_subset_l2_1.json`; machine: {raw['machine']['cpu']}).")


def default_run():
    rows, cfg, run = load("default_run_metrics.jsonl"), load("default_run_config.json"), load("default_run.json")
    ips = [r["images_per_s"] for r in rows]
    return (f"**{pct(rows[-1]['test_acc'], 1)} test accuracy** after {rows[-1]['epoch']} epochs (chance is 10%), in "
            f"**{run['wall_s']:.0f} s** wall time ({rows[-1]['elapsed_s']:.0f} s in the training loop, {num(min(ips))}–"
            f"{num(max(ips))} images/s over the epochs; peak resident memory {num(run['peak_rss_mib'])} MiB). "
            f"{machine(cfg['machine'])}; raw files `default_run_metrics.jsonl`, `default_run_config.json`, "
            "`default_run.json` (`python benchmarks/default_run.py`).")


# ---------------------------------------------------------------- MPI ranks against threads (mpi_scaling.py)

MPI_ROW = re.compile(r"^(?P<preset>\S+)\s+(?P<batch>\d+)\s+(?P<setting>\d+ ranks? x \d+ threads?)\s+(?P<ips>\d+)\s+"
                     r"(?P<step>[\d.]+)\s+(?P<red>[\d.]+)\s+(?P<mb>[\d.]+)\s+\(images/s (?P<lo>\d+)-(?P<hi>\d+)\)")


def mpi_table(name):
    """The settings of one mpi_scaling.py output, a row per preset: images/s (range) of each, the Allreduce."""
    text = (RAW / name).read_text()
    record = json.loads(text.splitlines()[0].split(":", 1)[1])
    rows = {}
    for m in (MPI_ROW.match(line) for line in text.splitlines()):
        if m:
            rows.setdefault((m["preset"], m["batch"]), {})[m["setting"]] = m
    settings = ["1 rank x 1 thread", "2 ranks x 1 thread", "1 rank x 2 threads"]
    out = [f"Machine: {machine(record)}. Raw file: [`{name}`](../benchmarks/results/{name}).", "",
           "| preset | batch | " + " | ".join(settings) + " | Allreduce a step (2 ranks) | gradient |",
           "| --- | --- |" + " --- |" * (len(settings) + 2)]
    for (preset, batch), by in rows.items():
        best = max(int(by[k]["ips"]) for k in settings)
        cell = lambda k: (f"**{num(int(by[k]['ips']))}**" if int(by[k]["ips"]) == best else num(int(by[k]["ips"]))) + \
            f" ({by[k]['lo']}-{by[k]['hi']}) img/s"
        two = by["2 ranks x 1 thread"]
        out.append(f"| {preset} | {batch} | " + " | ".join(cell(k) for k in settings) +
                   f" | {float(two['red']):.1f} ms | {two['mb']} MB |")
    return "\n".join(out)


def mpi_scaling_old():
    return mpi_table("mpi_scaling.txt")


def mpi_scaling_kernels():
    return mpi_table("mpi_scaling_kernels.txt")


# ---------------------------------------------------------------- dependencies (install_size.py) and the BLAS by CPU

def install_size(name="install_size.json"):
    raw = load(name)
    cache = ("`python benchmarks/install_size.py`; pip's cache was warm, so the seconds are this machine's with it"
             if raw.get("pip_cache", True) else "`python benchmarks/install_size.py --no-cache`: pip's cache not used, "
             "each package read again from the indexes and wheel folders pip is configured with")
    out = [f"Machine: {machine(raw['machine'])}. Raw file: [`{name}`](../benchmarks/results/{name}) ({cache}).", "",
           "| step | adds | took | the environment then |", "| --- | --- | --- | --- |"]
    out += [f"| `{r['step']}` | {r['mb'] / 1024:.2f} GB | {r['seconds']:.0f} s | {r['total_mb'] / 1024:.2f} GB |" for r in raw["rows"]]
    return "\n".join(out)


def readme_install():
    rows = {r["step"]: r for r in load("install_size.json")["rows"]}
    base = rows["pip install -r requirements.txt"]
    extra = lambda name: rows[f'pip install -e ".[{name}]"']["mb"] / 1024
    return (f"The first command builds a {base['total_mb'] / 1024:.1f} GB environment (numba's kernels included); "
            f"`pip install -e \".[mkl]\"` adds Intel's MKL ({extra('mkl'):.1f} GB, a few percent faster on Intel CPUs) and "
            f"`pip install -e \".[onnx]\"` the ONNX export's check ({extra('onnx'):.1f} GB); `minivit info` prints what "
            "this machine has.")


def cpu_step_amd():
    """The six cases against PyTorch on the AMD EPYC, with what that CPU gets by default: the kernels and NumPy's
    OpenBLAS (minivit/cpu/blas.py's vendor rule)."""
    rows = [(case, f"cpu_step_{key}_amd.json") for case, key in CPU_CASES]
    text = speed_table(rows, "minivit against PyTorch, each alone in its own process, in turn (`benchmarks/compare_step.py "
                             "--blas numpy`: the kernels and NumPy's OpenBLAS, what minivit uses on an AMD CPU with or "
                             "without the mkl extra); a ratio above 1 is minivit faster.")
    return text + "\n\n" + rounds_below(name for _, name in rows)


def cases_table(suffix, caption):
    """speed_table of the cases that have a raw file `cpu_step_<case><suffix>.json`."""
    rows = [(case, f"cpu_step_{key}{suffix}.json") for case, key in CPU_CASES if (RAW / f"cpu_step_{key}{suffix}.json").exists()]
    return speed_table(rows, caption)


def mkl_vs_openblas_amd():
    return cases_table("_mkl_vs_openblas_amd", "On the AMD EPYC: minivit with MKL's products (`MINIVIT_BLAS=mkl`) against "
                       "minivit with NumPy's OpenBLAS, the kernels on in both (`compare_step.py --against openblas "
                       "--blas mkl`); above 1 is MKL faster.")


def kernels_amd():
    return cases_table("_kernels_amd", "On the AMD EPYC: minivit with its numba kernels against minivit with the NumPy "
                       "lines (`compare_step.py --against numpy --blas numpy`), NumPy's OpenBLAS for the products in "
                       "both; above 1 is the kernels faster.")


def mkl_vs_openblas():
    return cases_table("_mkl_vs_openblas", "minivit with MKL's products against minivit with NumPy's OpenBLAS, the "
                       "kernels on in both (`compare_step.py --against openblas`); above 1 is MKL faster.")


# ---------------------------------------------------------------- the headline table

def headlines():
    hour = dict(hour_table("cifar10_hour_mpi_metrics.jsonl", "cifar10_hour_mpi_config.json"))
    peer = dict(hour_table("torch_hour_budget_metrics.jsonl", "cifar10_hour_mpi_config.json"))
    m_hour = load("cifar10_hour_mpi_config.json")["machine"]
    seed, half_mine, half_peer, levers, levers_machine, hour_mine_last, hour_peer_last = newer_readings()
    ratios, amd_ratios = case_medians("_mkl").values(), case_medians("_amd").values()
    m_cpu, m_amd = (load(f"cpu_step_{CPU_CASES[0][1]}{suffix}.json")["machine"] for suffix in ("_mkl", "_amd"))
    rows = [
        (f"CIFAR-10 in 60 minutes of training, 2 cores, mean of {len(HOUR_LEVERS)} seeds (`--recipe hour`: the test "
         "reading with flip-shift)", f"**{pct(levers)}** test", levers_machine.get("cpu"),
         "`mpiexec -n 2 minivit train --data ... --recipe hour` (below)",
         ", ".join(f"`{stem}_metrics.jsonl`" for stem in HOUR_LEVERS)),
        (f"the same, `--recipe hour` on the other CPU family, {seeds_words(HOUR_AMD)} (the test reading with flip-shift)",
         f"{pct(statistics.mean(test_readings(HOUR_AMD)))} test", cpu_words(load(f"{HOUR_AMD[0]}_config.json")["machine"]),
         "the same command", ", ".join(f"`{stem}_metrics.jsonl`" for stem in HOUR_AMD)),
        ("CIFAR-10 in 60 minutes of training, 2 cores, one seed: the fifth attempt, the hour's recipe before global "
         "average pooling, patch whitening and flip-shift", f"{hour['test accuracy (read once, after the last epoch)'].strip('*')} test",
         m_hour.get("cpu"), "`mpiexec -n 2 minivit train ... --time-budget 60` (below)", "`cifar10_hour_mpi_metrics.jsonl`"),
        (f"CIFAR-10 in 30 minutes of training, 2 cores, mean of {len(HALF_HOUR)} seeds (`--recipe half-hour`: the test "
         "reading with flip-shift)",
         f"**{pct(statistics.mean(test_readings()))}** test",
         load(f"{HALF_HOUR[0]}_config.json")["machine"].get("cpu"),
         "`mpiexec -n 2 minivit train --data ... --recipe half-hour` (below)",
         ", ".join(f"`{stem}_metrics.jsonl`" for stem in HALF_HOUR)),
        (f"the same, `--recipe half-hour` on the other CPU family, {seeds_words(HALF_HOUR_AMD)} (the test reading with flip-shift)",
         f"{pct(statistics.mean(test_readings(HALF_HOUR_AMD)))} test", cpu_words(load(f"{HALF_HOUR_AMD[0]}_config.json")["machine"]),
         "the same command", ", ".join(f"`{stem}_metrics.jsonl`" for stem in HALF_HOUR_AMD)),
        (f"the PyTorch peer on `--recipe hour`, seed {seed_of(HOUR_PEER[0])}, same machine (the test reading with flip-shift)",
         f"{pct(hour_peer_last['test_tta_acc'])} test (minivit's seed {seed_of(HOUR_PEER[0])}: {pct(hour_mine_last['test_tta_acc'])})",
         load(f"{HOUR_PEER[1]}_machine.json").get("cpu"), "`benchmarks/train_torch.py ... --time-budget 60` (below)",
         f"`{HOUR_PEER[1]}_metrics.jsonl`"),
        ("the PyTorch peer on the fifth attempt's recipe and machine", f"{peer['test accuracy (read once, after the last epoch)'].strip('*')} test",
         load("torch_hour_budget_machine.json").get("cpu"), "`benchmarks/train_torch.py ...` (below)",
         "`torch_hour_budget_metrics.jsonl`"),
        (f"the PyTorch peer on the half-hour recipe, seed {seed}, same machine (the test reading with flip-shift)",
         f"{pct(half_peer['test_tta_acc'])} test (minivit's seed {seed}: {pct(half_mine['test_tta_acc'])})",
         load(f"{HALF_HOUR_PEER[1]}_machine.json").get("cpu"), "`benchmarks/train_torch.py ... --time-budget 30` (below)",
         f"`{HALF_HOUR_PEER[1]}_metrics.jsonl`"),
        ("CPU step against PyTorch, six cases (kernels and MKL)",
         f"medians {min(ratios):.2f}–{max(ratios):.2f}", m_cpu.get("cpu"), "`benchmarks/compare_step.py` (below)",
         "`cpu_step_*_mkl.json`"),
        ("CPU step against PyTorch, six cases, on the other CPU family (kernels and NumPy's OpenBLAS, its default)",
         f"medians {min(amd_ratios):.2f}–{max(amd_ratios):.2f}", cpu_words(m_amd),
         "`benchmarks/compare_step.py --blas numpy` (below)", "`cpu_step_*_amd.json`"),
    ]
    out = ["| headline | figure | machine | command | raw file |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(out)


def readme_results():
    """The README's paragraph of headline figures, each with its machine."""
    hour = dict(hour_table("cifar10_hour_mpi_metrics.jsonl", "cifar10_hour_mpi_config.json"))
    peer = dict(hour_table("torch_hour_budget_metrics.jsonl", "cifar10_hour_mpi_config.json"))
    m = load("cifar10_hour_mpi_config.json")["machine"]
    med = case_medians("_mkl")
    train = [med[k] for k in med if k.endswith("train")]
    infer = [med[k] for k in med if k.endswith("eval")]
    finals = [load(f"cpu_step_{key}_mkl_final.json") for _, key in CPU_CASES if (RAW / f"cpu_step_{key}_mkl_final.json").exists()]
    rounds = [r["ratio"] for raw in finals for r in raw["rounds"]]
    cpu = load("cpu_step_cifar-tiny_train_mkl.json")["machine"]
    amd_med = case_medians("_amd")
    amd_train = [v for k, v in amd_med.items() if k.endswith("train")]
    amd_infer = [v for k, v in amd_med.items() if k.endswith("eval")]
    amd_step = load("cpu_step_cifar-tiny_train_amd.json")["machine"]
    half = pct(statistics.mean(test_readings()))
    seed, half_mine, half_peer, levers, levers_machine, hour_mine_last, hour_peer_last = newer_readings()
    half_m = load(f"{HALF_HOUR[0]}_config.json")["machine"]
    half_cpu, levers_cpu = cpu_isa(half_m), cpu_isa(levers_machine)
    amd_m = load(f"{HOUR_AMD[0]}_config.json")["machine"]
    amd_cpu = cpu_isa(amd_m)
    return (f"On an {levers_cpu}, 2 cores: `--recipe hour` reaches **{pct(levers)}** test accuracy in 60 minutes of "
            f"training with its test-time flip-shift ({pct(statistics.mean(test_readings(HOUR_LEVERS, plain=True)))} "
            f"from the same readings' plain logits), the mean of {len(HOUR_LEVERS)} seeds, short of the 85% goal; its "
            f"PyTorch peer, on seed {seed_of(HOUR_PEER[0])}'s weights and batches, {pct(hour_peer_last['test_tta_acc'])} "
            f"(minivit's seed {seed_of(HOUR_PEER[0])}: {pct(hour_mine_last['test_tta_acc'])}). "
            f"On an {amd_cpu}, {seeds_words(HOUR_AMD)} of the same command reached "
            f"{pct(statistics.mean(test_readings(HOUR_AMD)))} ({pct(statistics.mean(test_readings(HOUR_AMD, plain=True)))} "
            "plain). "
            f"Half an hour (`--recipe half-hour`) reached {half} test accuracy with its test-time flip-shift "
            f"({pct(statistics.mean(test_readings(plain=True)))} from the same readings' plain logits), the mean of "
            f"{len(HALF_HOUR)} seeds, on " + ("the same CPU" if half_m["cpu"] == levers_machine["cpu"] else f"an {half_cpu}")
            + f"; its PyTorch peer, on seed {seed}'s weights and batches, "
            f"{pct(half_peer['test_tta_acc'])} (minivit's seed {seed}: {pct(half_mine['test_tta_acc'])}); on the "
            f"{amd_m['cpu']}, {seeds_words(HALF_HOUR_AMD)} of it reached {pct(statistics.mean(test_readings(HALF_HOUR_AMD)))} "
            f"({pct(statistics.mean(test_readings(HALF_HOUR_AMD, plain=True)))} plain). "
            f"Before its three changes (global average pooling, patch whitening, flip-shift), on an {cpu_isa(m)}, the hour's recipe reached "
            f"{hour['test accuracy (read once, after the last epoch)'].strip('*')} (the fifth attempt, one seed; validation "
            f"{hour['validation accuracy at the end']} at the end), and the PyTorch peer on the same recipe, weights and "
            f"batches {peer['test accuracy (read once, after the last epoch)'].strip('*')}. "
            + ("On that CPU" if cpu["cpu"] == m["cpu"] else f"On an {cpu['cpu']}") + ", with "
            f"the numba kernels and MKL's products, minivit's step against PyTorch's has medians of "
            f"{min(train):.2f}–{max(train):.2f} in training and {min(infer):.2f}–{max(infer):.2f} in inference "
            f"(`benchmarks/compare_step.py`, {cpu['cpu']}); in a recheck of the three thinnest cases "
            f"{sum(x < 1.0 for x in rounds)} of {len(rounds)} rounds fell below 1.0. On the {cpu_words(amd_step)}, with "
            f"the kernels and NumPy's OpenBLAS, the medians are {min(amd_train):.2f}–{max(amd_train):.2f} in training "
            f"and {min(amd_infer):.2f}–{max(amd_infer):.2f} in inference. Rendered from "
            "`benchmarks/results/` by `benchmarks/render_results.py`.")


BLOCKS = {"headlines": headlines, "readme-results": readme_results, "mpi-scaling-old": mpi_scaling_old,
          "mpi-scaling-kernels": mpi_scaling_kernels, "cpu-step-variants": cpu_step_variants,
          "cpu-step-final": cpu_step_final, "install-size": install_size,
          "install-size-amd": lambda: install_size("install_size_amd.json"),
          "install-size-amd-cold": lambda: install_size("install_size_amd_cold.json"), "readme-install": readme_install,
          "mkl-vs-openblas": mkl_vs_openblas, "mkl-vs-openblas-amd": mkl_vs_openblas_amd, "cpu-step-amd": cpu_step_amd,
          "hour-amd": hour_amd, "hour-amd-stages": hour_amd_stages, "half-hour-amd": half_hour_amd,
          "hour-randaugment-amd": hour_randaugment_amd, "hour-randaugment-amd-stages": hour_randaugment_amd_stages,
          "kernels-amd": kernels_amd,
          "hour-fifth": hour_fifth, "hour-peer": hour_peer, "half-hour-peer": half_hour_peer, "hour-levers": hour_levers,
          "hour-levers-peer": hour_levers_peer,
          "hour-levers-stages": hour_levers_stages, "paper-features-runs": paper_features_runs,
          "paper-features-positions": paper_features_positions,
          "paper-features-positions-reading": paper_features_positions_reading,
          "paper-features-hybrid": paper_features_hybrid, "paper-features-resolution": paper_features_resolution,
          "fewshot": fewshot, "fewshot-l2": fewshot_l2, "default-run": default_run, "restructure": restructure, "sweep-budget": sweep_budget,
          "half-hour": half_hour, "half-hour-tta": half_hour_tta, "half-hour-now": half_hour_now,
          "half-hour-second": half_hour_second, "half-hour-second-tta": half_hour_second_tta, "half-hour-levers": half_hour_levers,
          "hour-fifth-stages": hour_fifth_stages, "step-vs-batch": step_vs_batch, "pos-align": pos_align, "step-16px-torch": step_16px_torch,
          "step-vs-batch-amd": lambda: step_vs_batch("step_vs_batch_amd.json"),
          "step-16px-torch-amd": lambda: step_16px_torch("_amd"), "attempts-2-and-4": attempts_2_and_4,
          "peer-second": peer_second, "peer-second-drift": peer_second_drift, "sweep-short": sweep_short,
          "sweep-hour": sweep_hour, "pretrain-arms": pretrain_arms, "pretrain-features": pretrain_features,
          "data-size": data_size,
          **{f"attempt-{n}": (lambda n=n: attempt_facts(n)) for n in FIRST_HOURS},
          **{f"attempt-{n}-reach": (lambda n=n: attempt_reach(n)) for n in FIRST_HOURS}}


# ---------------------------------------------------------------- pages

def render_page(text):
    """The page with every generated block rendered anew; an unknown block name is an error."""
    def fill(m):
        name = m.group("name")
        if name not in BLOCKS:
            raise KeyError(f"a generated block names {name!r}, which render_results.py does not know")
        return m.group(1) + BLOCKS[name]().rstrip("\n") + "\n" + m.group(4)
    return BLOCK.sub(fill, text)


def differing_blocks(text):
    """Names of the page's generated blocks whose text differs from what the raw files render."""
    return [m.group("name") for m in BLOCK.finditer(text)
            if m.group("body").rstrip("\n") != BLOCKS[m.group("name")]().rstrip("\n")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each block that differs")
    a = p.parse_args()
    stale = []
    for page in PAGES:
        text = page.read_text()
        if a.check:
            stale += [f"{page.relative_to(ROOT)}: {name}" for name in differing_blocks(text)]
        else:
            new = render_page(text)
            if new != text:
                page.write_text(new)
                print(f"rendered {page.relative_to(ROOT)}")
    if stale:
        print("out of date (run python benchmarks/render_results.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
