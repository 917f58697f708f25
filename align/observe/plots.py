"""PNG plots that need no W&B: a run's metric curves (from metrics.jsonl), and the figure helpers that `align eval`'s
charts (align.eval.report) and `align sweep`'s chart share.

matplotlib runs on its Agg backend, so this works on machines without a display.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from align.observe.health import as_number
from align.observe.tracking import read_metrics
from align.rundir import PLOTS_DIR

log = logging.getLogger(__name__)

EVAL_PREFIX = "eval_"
# Counters and timings, not training signals.
BOOKKEEPING = {"step", "time", "epoch", "episode", "total_flos", "num_tokens", "num_input_tokens_seen", "train_loss"}
BOOKKEEPING_SUFFIXES = ("_runtime", "_per_second")
TOP_LEVEL_GROUPS = {"loss": "loss", "grad_norm": "optimizer", "learning_rate": "optimizer", "lr": "optimizer",
                    "accuracy": "accuracy", "mean_token_accuracy": "accuracy", "entropy": "entropy",
                    # GRPO / RLOO (TRL): beside each reward's rewards/<name>/mean
                    "reward": "rewards", "reward_std": "rewards", "frac_reward_zero_std": "rewards", "kl": "kl"}
COLUMNS = 3


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def group_of(metric: str) -> str:
    """The PNG a metric goes in: its `group/` prefix (rewards, logps, objective, policy, val, ...), a named group for
    top-level keys (loss, optimizer, accuracy, entropy), else "other". `metric` has no eval_ prefix."""
    if "/" in metric:
        return metric.split("/", 1)[0]
    return TOP_LEVEL_GROUPS.get(metric, "other")


def is_bookkeeping(key: str) -> bool:
    return key in BOOKKEEPING or key.endswith(BOOKKEEPING_SUFFIXES)


def curves(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """{group: {metric: {"train" | "eval": [steps..., values...]}}} from metrics.jsonl records.

    An `eval_x` key is the eval curve of metric `x`. Non-numeric values are skipped; NaN/inf ones are kept (and show
    as gaps).
    """
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for record in records:
        step = as_number(record.get("step"))
        if step is None:
            continue
        for key, raw in record.items():
            value = as_number(raw)
            if value is None or is_bookkeeping(key):
                continue
            split = "eval" if key.startswith(EVAL_PREFIX) else "train"
            metric = key.removeprefix(EVAL_PREFIX)
            series = out.setdefault(group_of(metric), {}).setdefault(metric, {}).setdefault(split, [[], []])
            series[0].append(step)
            series[1].append(value)
    return out


def plot_run(output_dir: str | Path) -> list[Path]:
    """One PNG of curves per metric group in `<output_dir>/metrics.jsonl`, saved as `<output_dir>/plots/<group>.png`;
    one panel per metric, train solid and eval dashed. Returns the files written (none without metrics)."""
    output_dir = Path(output_dir)
    grouped = curves(read_metrics(output_dir))
    if not grouped:
        log.info("%s: no metrics to plot", output_dir)
        return []
    plt = pyplot()
    target = output_dir / PLOTS_DIR
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for group, metrics in sorted(grouped.items()):
        fig, axes = panels(plt, len(metrics))
        for ax, (metric, splits) in zip(axes, sorted(metrics.items())):
            for split, (steps, values) in sorted(splits.items(), reverse=True):
                style = {"linestyle": "--", "marker": "o", "markersize": 3} if split == "eval" else {}
                ax.plot(steps, values, label=split, **style)
            ax.set_title(metric, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if len(splits) > 1:
                ax.legend(fontsize=7)
        path = target / f"{safe_name(group)}.png"
        save(plt, fig, path)
        written.append(path)
    log.info("wrote %d plots to %s", len(written), target)
    return written


def plot_finished_run(output_dir: str | Path) -> list[Path]:
    """`plot_run` at the end of a stage: a plotting failure is logged as a warning and never fails the finished
    training run (the curves can be drawn again later with `plot_run`)."""
    try:
        return plot_run(output_dir)
    except Exception as e:  # noqa: BLE001 - the trained model matters more than its pictures
        log.warning("%s: could not draw the metric plots (%s: %s); training is unaffected", output_dir,
                    type(e).__name__, e)
        return []


def panels(plt, count: int):
    """A figure with `count` axes in rows of up to COLUMNS (the spare ones hidden), and the used axes."""
    columns = min(COLUMNS, count)
    rows = math.ceil(count / columns)
    fig, grid = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.0 * rows), squeeze=False)
    axes = [ax for row in grid for ax in row]
    for spare in axes[count:]:
        spare.set_visible(False)
    return fig, axes[:count]


def save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)
