"""The paper's figures, one panel per method x mode (rows: method and backbone, columns: linear probe, fine-tuning).

- `plot_curves` (Fig. 7): a metric against the pre-training ratio 1:r on a log axis, one line per label budget
  with mean ± std over resamplings, and the external baseline as a dashed line in the budget's colour.
- `plot_boxes` (Fig. 4/5): a metric over resamplings per budget at one ratio next to the external baseline, and
  below it the residual (ratio - external) of the runs paired by budget draw.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from analysis.query import EXTERNAL, TRAINED_MODES, panel_rows, panels, pretrained
from analysis.stats import paired
from cyto_ssrl.data.pools import ratio_label
from cyto_ssrl.downstream.budgets import budget_label

METRIC_LABELS = {
    "acc": "accuracy",
    "sp": "specificity",
    "se": "sensitivity",
    "pr": "precision",
    "f1": "F1 score",
    "auc": "ROC AUC",
}
MODE_LABELS = {"linear": "linear probe", "finetune": "fine-tuning"}
RATIO_AXIS_LABEL = "pre-training pool ratio positive:negative (log scale)"
BUDGET_AXIS_LABEL = "label budget (% of the downstream partition)"
RATIO_COLOUR, EXTERNAL_COLOUR = "tab:blue", "tab:gray"
# The external backbone was not pre-trained on a pool, so its runs pair with a ratio's by budget draw only.
RESIDUAL_KEYS = ("seed", "resample")
PANEL_SIZE = (5.0, 3.6)  # inches per panel


def metric_axis_label(metric: str) -> str:
    return f"{METRIC_LABELS.get(metric, metric)} (%)"


def ratio_tick(r: int) -> str:
    """1 -> '1:1', 1000 -> '1:1K', 10000 -> '1:10K'."""
    return f"1:{r // 1000}K" if r >= 1000 and r % 1000 == 0 else ratio_label(r)


def panel_title(method: str, backbone: str, mode: str) -> str:
    return f"{method} ({backbone}), {MODE_LABELS.get(mode, mode)}"


def panel_grid(results: pd.DataFrame, heights=(1.0,)) -> tuple[Figure, dict[tuple, list]]:
    """A figure with one cell per panel: rows method x backbone, columns mode; a cell is len(heights) axes stacked.

    Returns the figure and {(method, backbone, mode): [axes]}; grid cells without runs stay hidden.
    """
    keys = panels(results)
    rows = list(dict.fromkeys((method, backbone) for method, backbone, _ in keys))
    modes = [mode for mode in TRAINED_MODES if any(key[2] == mode for key in keys)]
    width, height = PANEL_SIZE
    fig = Figure(figsize=(width * len(modes) + 1.5, height * sum(heights) * len(rows) + 0.8), layout="constrained")
    axes = fig.subplots(
        len(rows) * len(heights), len(modes), squeeze=False, gridspec_kw={"height_ratios": list(heights) * len(rows)}
    )
    cells = {}
    for i, (method, backbone) in enumerate(rows):
        for j, mode in enumerate(modes):
            stack = list(axes[i * len(heights) : (i + 1) * len(heights), j])
            if (method, backbone, mode) in keys:
                cells[(method, backbone, mode)] = stack
            else:
                for ax in stack:
                    ax.set_visible(False)
    return fig, cells


def spread(rows: pd.DataFrame, by: str, metric: str) -> pd.DataFrame:
    """Mean and std (0 for a single run) of `metric` in % per value of `by`."""
    stats = rows.groupby(by)[metric].agg(["mean", "std"]).mul(100)
    return stats.fillna({"std": 0.0}).dropna()


def bounded_spread(stats: pd.DataFrame) -> list[pd.Series]:
    """Error bars of mean ± std that stop at 0 and 100 %: every metric here is a fraction, and with a few
    resamplings std can exceed the distance to a bound (AUC 49 ± 57 from draws at 90 % and 9 %)."""
    low = (stats["mean"] - stats["std"]).clip(lower=0)
    high = (stats["mean"] + stats["std"]).clip(upper=100)
    return [stats["mean"] - low, high - stats["mean"]]


def _empty(ax, text: str) -> None:
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="dimgray")


def plot_curves(results: pd.DataFrame, metric: str, study_id: str) -> Figure:
    """Fig. 7: `metric` against the pre-training ratio, one line per budget, one panel per method x mode."""
    budgets = sorted(results["budget"].unique(), reverse=True)
    colours = {budget: f"C{i % 10}" for i, budget in enumerate(budgets)}
    ratios = sorted(pretrained(results)["ratio_r"].unique())
    fig, cells = panel_grid(results)
    drew_external = False
    for (method, backbone, mode), (ax,) in cells.items():
        own = panel_rows(results, method, backbone, mode)
        external = panel_rows(results, EXTERNAL, backbone, mode)
        for budget in budgets:
            stats = spread(own[own["budget"] == budget], "ratio_r", metric)
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=bounded_spread(stats),
                color=colours[budget],
                marker="o",
                ms=4,
                capsize=3,
            )
            baseline = external.loc[external["budget"] == budget, metric].dropna()
            if len(baseline):
                ax.axhline(baseline.mean() * 100, color=colours[budget], ls="--", lw=1)
                drew_external = True
        _ratio_axis(ax, ratios)
        ax.set_ylabel(metric_axis_label(metric))
        ax.set_title(panel_title(method, backbone, mode))
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colours[b], marker="o", label=f"{budget_label(b)} % labels") for b in budgets]
    if drew_external:
        handles.append(Line2D([], [], color="black", ls="--", lw=1, label="external baseline\n(colour = budget)"))
    fig.legend(handles=handles, loc="outside right center", title="label budget")
    fig.suptitle(
        f"Study {study_id}: {METRIC_LABELS.get(metric, metric)} against pre-training pool imbalance\n"
        "mean ± std over resamplings (bars cut at 0 and 100 %)"
    )
    return fig


def _ratio_axis(ax, ratios: list[int]) -> None:
    """Log x axis with a tick at every ratio evaluated, labelled 1:r; margins so a single ratio still shows."""
    ax.set_xscale("log")
    ax.set_xlim(min(ratios) / 1.6, max(ratios) * 1.6)
    ax.set_xticks(ratios, [ratio_tick(r) for r in ratios], rotation=45 if len(ratios) > 5 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(RATIO_AXIS_LABEL)


def plot_boxes(results: pd.DataFrame, metric: str, ratio_r: int, study_id: str) -> Figure:
    """Fig. 4/5: `metric` over resamplings per budget at 1:`ratio_r` beside the external baseline, with residuals."""
    ratio = ratio_label(ratio_r)
    has_external = (results["method"] == EXTERNAL).any()
    fig, cells = panel_grid(results, heights=(1.0, 0.45) if has_external else (1.0,))
    for (method, backbone, mode), stack in cells.items():
        own = panel_rows(results, method, backbone, mode)
        own = own[own["ratio_r"] == ratio_r]
        external = panel_rows(results, EXTERNAL, backbone, mode)
        _box_panel(stack[0], own, external, metric, ratio)
        stack[0].set_title(panel_title(method, backbone, mode))
        if has_external and _residual_panel(stack[1], own, external, metric, ratio, backbone):
            # The residual panel below shares the budget axis: label it once, at the bottom.
            stack[0].set_xlabel("")
            stack[0].tick_params(labelbottom=False)
    handles = [
        Patch(facecolor=RATIO_COLOUR, alpha=0.6, label=f"pre-trained at {ratio}"),
        Line2D([], [], color="black", marker=".", ls="", label="one resampling"),
    ]
    title = f"Study {study_id}: {METRIC_LABELS.get(metric, metric)} at {ratio} over resamplings\n"
    if has_external:
        handles[1:1] = [Patch(facecolor=EXTERNAL_COLOUR, alpha=0.6, label="external baseline")]
        handles.append(Line2D([], [], color="black", marker="o", label=f"{ratio} - external,\npaired: mean ± std"))
        title += f"beside the external baseline; below each panel: {ratio} - external, paired by budget draw"
    else:
        title += "(no external baseline in this study)"
    fig.legend(handles=handles, loc="outside right center")
    fig.suptitle(title)
    return fig


def _box_panel(ax, own: pd.DataFrame, external: pd.DataFrame, metric: str, ratio: str) -> None:
    budgets = sorted(pd.concat([own, external])["budget"].unique(), reverse=True)
    if own.empty and external.empty:
        _empty(ax, f"no runs at {ratio}")
        return
    offset = 0.2 if len(external) else 0.0
    for x, budget in enumerate(budgets):
        _box(ax, own.loc[own["budget"] == budget, metric], x - offset, RATIO_COLOUR)
        _box(ax, external.loc[external["budget"] == budget, metric], x + offset, EXTERNAL_COLOUR)
    _budget_axis(ax, budgets)
    ax.set_ylabel(metric_axis_label(metric))


def _box(ax, values: pd.Series, x: float, colour: str) -> None:
    """One box over resamplings with its runs as dots: with 3-5 resamplings the dots say more than the box."""
    values = values.dropna() * 100
    if values.empty:
        return
    ax.boxplot(
        [values],
        positions=[x],
        widths=0.35,
        patch_artist=True,
        manage_ticks=False,
        boxprops={"facecolor": colour, "alpha": 0.6},
        medianprops={"color": "black"},
    )
    ax.plot([x] * len(values), values, ".", color="black", ms=4)


def _residual_panel(ax, own: pd.DataFrame, external: pd.DataFrame, metric: str, ratio: str, backbone: str) -> bool:
    """Paired residuals per budget; False (and a note in place of the axes) when no run pairs up."""
    if external.empty:
        _empty(ax, f"no external baseline for {backbone}")
        return False
    budgets = sorted(pd.concat([own, external])["budget"].unique(), reverse=True)
    paired_any = False
    for x, budget in enumerate(budgets):
        pairs = paired(own[own["budget"] == budget], external[external["budget"] == budget], metric, RESIDUAL_KEYS)
        if pairs.empty:
            continue
        residual = pairs["first"] - pairs["second"]
        ax.errorbar(
            x, residual.mean(), yerr=residual.std() if len(residual) > 1 else 0, fmt="o", color="black", capsize=3
        )
        # Beside the error bar, which would hide them.
        ax.plot([x + 0.15] * len(residual), residual, ".", color="black", ms=4)
        paired_any = True
    if not paired_any:
        _empty(ax, f"no {ratio} run shares a budget draw (seed, resample) with the external baseline")
        return False
    ax.axhline(0, color="gray", lw=0.8)
    _budget_axis(ax, budgets)
    ax.set_ylabel(f"{ratio} - external\n(percentage points)")
    return True


def _budget_axis(ax, budgets: list[float]) -> None:
    ax.set_xticks(range(len(budgets)), [f"{budget_label(b)} %" for b in budgets])
    ax.set_xlim(-0.6, len(budgets) - 0.4)
    ax.set_xlabel(BUDGET_AXIS_LABEL)
    ax.grid(axis="y", alpha=0.3)
