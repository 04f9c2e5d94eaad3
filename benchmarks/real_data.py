"""The study on real cells: the `herlev` and `cric` presets, then docs/results.md from what they logged.

    python benchmarks/real_data.py [--folder outputs/real_data] [--presets herlev,cric] [--report-only]

Each preset runs as its own study (id = the preset's name) against one SQLite store, `<folder>/mlruns.db`, with its
tiles, pools, checkpoints and analysis under `<folder>/studies/`. The presets read ../shared/data relative to the
working directory: run it from the repo root. Running it again skips every finished cell, so a second call (or
--report-only) only rewrites docs/results.md and docs/results/*.png from the store. Wall times are kept in
`<folder>/wall_times.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import pandas as pd

from analysis.figures import plot_curves
from analysis.query import EXTERNAL, downstream_results, representation_results, sort_rows
from analysis.stats import ALPHA, baseline_gains, drops, markdown_drops
from analysis.tables import markdown_table, summary
from cyto_ssrl.data.pools import parse_ratio
from cyto_ssrl.downstream.budgets import budget_label
from cyto_ssrl.study.config import load_config
from cyto_ssrl.study.launch import run_study

DOCS = Path("docs")
METRICS = ("acc", "auc")  # the paper's Tables 5 and 6 report Acc; AUC does not depend on a threshold
# Liu et al. (CSBJ 2026), Tables 5 and 6, accuracy at the 1 % budget (40,000-tile downstream partition): the
# balanced pool (1:1) against 1:100.
PAPER = {("mae", "linear"): (87, 83), ("mae", "finetune"): (90, 86)}
DROP_COLUMNS = ["method", "mode", "budget (%)", "ratio", "n_pairs", "reference_mean_pct", "ratio_mean_pct"]
DROP_COLUMNS += ["drop_pp", "ci95_pp", "p_value", "p_holm", "significant"]
GAIN_COLUMNS = ["method", "mode", "budget (%)", "ratio", "n_pairs", "pretrained_mean_pct", "baseline_mean_pct"]
GAIN_COLUMNS += ["gain_pp", "ci95_pp", "p_value", "p_holm", "significant"]
REPRESENTATION = ["method", "backbone", "ratio", "knn_best_weighted_f1", "kmeans_ami", "kmeans_ari"]
PUBLISHED = """The published numbers these scores would sit beside are not on these data. Stegmüller et al. (2023,
arXiv:2302.05195) report k-NN weighted F1 of DINO features on their in-house liquid-based Pap-smear tiles of
HPV-positive women; CCRL (Nakhli et al. 2022, arXiv:2208.06445) reports K-means AMI/ARI of cell clusters in H&E
histology (two tissue datasets, several cell types). Neither uses Herlev or CRIC, two classes, or 32 px tiles, and
the stored excerpts of both papers available here did not include their result tables: no published number is
quoted, rather than one from memory. The random-init rows are this study's own floor."""


def run_presets(presets: list[str], folder: Path) -> dict[str, float]:
    """Each preset as study `<preset>`; returns its wall time in seconds (also kept in wall_times.json)."""
    times_file = folder / "wall_times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    for name in presets:
        cfg = dataclasses.replace(load_config(name), output=str(folder / "studies"))
        start = time.perf_counter()
        run_study(cfg, name, name)
        times[name] = round(time.perf_counter() - start, 1)
        times_file.write_text(json.dumps(times, indent=1))
        print(f"preset {name}: {times[name]:.0f} s wall")
    return times


def md(df: pd.DataFrame) -> str:
    """As rounded: tabulate would otherwise re-read the p-value strings ('3.1e-05') as numbers and round them."""
    return df.to_markdown(index=False, disable_numparse=True)


def dataset_section(name: str, times: dict[str, float]) -> list[str]:
    """One dataset: settings, curves, tables, tests and representation scores, and a reading of them."""
    cfg = load_config(name)
    results = downstream_results(name)
    lines = [f"## {name}", "", settings_line(name, cfg, results, times), ""]
    for metric in METRICS:
        path = DOCS / "results" / f"{name}_curves_{metric}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(results, metric, name).savefig(path, dpi=110, bbox_inches="tight")
        lines += [f"![{name}: {metric} against the pool's ratio](results/{path.name})", ""]
    for metric in METRICS:
        lines += [
            f"### {metric.upper()} (%), mean ± std over {cfg.resamples} resamplings",
            "",
            md(markdown_table(summary(results, metric))),
            "",
        ]
    stats = drops(results, "acc")
    gains = baseline_gains(results, "acc")
    lines += [
        "### Accuracy drop from 1:1 (paired over resamplings, Holm over the table)",
        "",
        md(markdown_drops(stats)[DROP_COLUMNS]),
        "",
        "### Accuracy gain over the random-init baseline (paired on the budget draws, Holm over the table)",
        "",
        md(markdown_drops(gains)[GAIN_COLUMNS]),
        "",
        "### Frozen features: k-NN weighted F1 (downstream to evaluation), K-means AMI / ARI (evaluation)",
        "",
        md(representation_results(name)[REPRESENTATION].round(3)),
        "",
        "### Reading (generated from the numbers above)",
        "",
        *reading(stats, gains),
        "",
    ]
    return lines


def settings_line(name: str, cfg, results: pd.DataFrame, times: dict[str, float]) -> str:
    wall = f"{times[name] / 60:.1f} min wall" if name in times else "wall time not recorded"
    epochs = cfg.pretrain_overrides.get("epochs")
    return (
        f"`-P preset={name}`: pools of {cfg.pool_size} tiles at {', '.join(cfg.ratios)}; MAE (ViT-tiny) and SimCLR "
        f"(ResNet-18), {epochs} epochs; linear probe and fine-tuning at budgets "
        f"{' / '.join(budget_label(b) for b in cfg.budgets)} %; {cfg.resamples} resamplings; random-init baseline. "
        f"{len(results)} downstream runs; {wall}."
    )


def reading(stats: pd.DataFrame, gains: pd.DataFrame) -> list[str]:
    """Per method x mode x budget: the drop to the most imbalanced ratio, whether Holm keeps it, and the paper's."""
    extreme = stats.assign(r=stats["ratio"].map(parse_ratio))
    extreme = sort_rows(extreme.loc[extreme.groupby(["method", "mode", "budget"])["r"].idxmax()])
    lines = []
    for row in extreme.itertuples():
        verdict = "real (Holm p < 0.05)" if row.significant else f"not resolved (Holm p = {row.p_holm:.2g})"
        paper = PAPER.get((row.method, row.mode))
        beside = f"; paper at 1 %: {paper[0]} → {paper[1]} (1:1 → 1:100)" if paper else ""
        lines.append(
            f"- {row.method} {row.mode} at {budget_label(row.budget)} %: {row.reference_mean_pct:.1f} → "
            f"{row.ratio_mean_pct:.1f} ({row.reference} → {row.ratio}), drop {row.drop_pp:+.1f} ± {row.ci95_pp:.1f} "
            f"pp (95 % CI): {verdict}{beside}"
        )
    real = gains[gains["significant"] & (gains["gain_pp"] > 0)]
    linear = gains[gains["mode"] == "linear"]
    linear_real = real[real["mode"] == "linear"]
    every_budget = all((linear_real["budget"] == b).sum() == (linear["budget"] == b).sum() for b in linear["budget"])
    lines.append(
        f"- Over the random-init baseline: {len(real)} of {len(gains)} version x mode x budget gains are positive and "
        f"hold after Holm (alpha {ALPHA}); linear probe: {len(linear_real)} of {len(linear)}"
        + (" (every version at every budget)." if every_budget and len(linear) else ".")
    )
    return lines


def write_results(presets: list[str], folder: Path) -> Path:
    times_file = folder / "wall_times.json"
    times = json.loads(times_file.read_text()) if times_file.exists() else {}
    lines = [
        "# The study on real cells: Herlev and CRIC",
        "",
        "Written by `benchmarks/real_data.py` from the tracking store of its run; the hand-written reading is at the "
        f"end. Baselines are the `{EXTERNAL}` random-init backbones. Tests: two-sided paired t-tests over the 5 "
        "resamplings (the same budget draws on both sides), Holm-corrected within each table; `ci95_pp` is the "
        "half-width of the 95 % confidence interval of the mean difference, the smallest difference these pairs "
        "can tell from none.",
        "",
    ]
    for name in presets:
        lines += dataset_section(name, times)
    lines += ["## Published representation scores", "", PUBLISHED, ""]
    path = DOCS / "results.md"
    handwritten = path.read_text().split(HANDWRITTEN, 1)[1] if path.exists() and HANDWRITTEN in path.read_text() else ""
    path.write_text("\n".join(lines) + "\n" + HANDWRITTEN + (handwritten or "\n\n(to be written after a run)\n"))
    return path


# Everything below this line in docs/results.md is written by hand and kept when the file is rewritten.
HANDWRITTEN = "## Reading beside Liu et al.'s Tables 5 and 6"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="outputs/real_data", help="tracking store and study outputs")
    parser.add_argument("--presets", default="herlev,cric")
    parser.add_argument("--report-only", action="store_true", help="only rewrite docs/results.md from the store")
    args = parser.parse_args()
    folder = Path(args.folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlruns.db'}"
    presets = [p for p in args.presets.split(",") if p]
    if not args.report_only:
        times = run_presets(presets, folder)
        print("wall time: " + ", ".join(f"{name} {times[name] / 60:.1f} min" for name in presets))
    print(f"wrote {write_results(presets, folder)}")


if __name__ == "__main__":
    main()
