"""The report page: overview, lineage, evaluation, replies across stages, then one section per stage (facts, cost,
health alerts, curves, data, results, replies over training, config).

The page is one HTML string with its style inline and its images as data URIs; it has no script, and its
Content-Security-Policy forbids loading anything, so it shows the same with or without a network.
"""

from __future__ import annotations

from typing import Any

from align.observe import plots
from align.report import figures, results, samples
from align.report.collect import Run, Stage
from align.report.markup import badge, code, facts, note, number, seconds, table, text

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
COST_KEYS = (("train_runtime_s", "training time", seconds), ("steps", "optimizer steps", number),
             ("tokens_per_s", "tokens/s", number), ("s_per_update", "s per PPO update", number),
             ("num_input_tokens_seen", "tokens seen", number))
COUNTERS = {"epoch", "total_flos"}
MEMORY_WORDS = ("memory", "peak_mem")
"""A summary metric whose name holds one of these is a memory figure (shown under cost)."""


def render(run: Run, *, shown_samples: int, generated_at: str) -> str:
    sections = [("overview", "Overview", overview(run)), ("lineage", "Lineage", lineage(run))]
    if run.pipeline:
        sections.append(("evaluation", "Evaluation", run_evaluation(run, shown_samples)))
        sections.append(("replies", "Replies across stages", across_stages(run, shown_samples)))
    sections += [(anchor(stage), f"Stage: {stage.name}", stage_section(stage, shown_samples)) for stage in run.stages]
    contents = "".join(f'<a href="#{key}">{text(title)}</a>' for key, title, _ in sections)
    body = "".join(f'<section id="{key}"><h2>{text(title)}</h2>{html}</section>' for key, title, html in sections)
    what = f"pipeline run, {len(run.stages)} stages" if run.pipeline else f"{run.stages[0].kind} stage"
    title = f"align report: {run.dir.name}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{text(title)}</title>'
            f"<style>{STYLE}</style></head><body><main><header><h1>{text(title)}</h1>"
            f'<p class="sub">{text(what)} · {code(run.dir.resolve())} · generated {text(generated_at)}</p>'
            f'<nav>{contents}</nav></header>{body}</main></body></html>\n')


def anchor(stage: Stage) -> str:
    return "stage-" + "".join(c if c.isalnum() else "-" for c in stage.name)


def metrics_of(stage: Stage) -> dict[str, Any]:
    return (stage.summary or {}).get("metrics") or {}


def status(stage: Stage) -> str:
    if stage.summary is None:
        return badge("not finished", "warn")
    if ((stage.summary.get("health") or {}).get("stopped_on_fatal")) is not None:
        return badge("stopped on a fatal alert", "bad")
    return badge("finished", "ok")


def alerts_of(stage: Stage) -> list[dict[str, Any]]:
    return list(((stage.summary or {}).get("health") or {}).get("alerts") or [])


def memory_keys(metrics: dict[str, Any]) -> list[str]:
    return [key for key in metrics if any(word in key for word in MEMORY_WORDS)]


# ---- overview and lineage ------------------------------------------------------------------------------------------

def overview(run: Run) -> str:
    if not run.stages:
        return note("No stage dirs in this run dir.")
    rows = []
    for stage in run.stages:
        metrics = metrics_of(stage)
        memory = ", ".join(f'{number(metrics[k])} <span class="sub">{text(k)}</span>' for k in memory_keys(metrics))
        alerts = alerts_of(stage)
        rows.append([f'<a href="#{anchor(stage)}">{text(stage.name)}</a>', status(stage),
                     number(metrics.get("steps")), number(metrics.get("train_loss")),
                     number(metrics.get("eval_loss")), seconds(metrics.get("train_runtime_s")),
                     number(metrics.get("tokens_per_s")), memory or "–",
                     badge(str(len(alerts)), "warn") if alerts else "0"])
    return table(["stage", "status", "steps", "train loss", "eval loss", "training time", "tokens/s", "peak memory",
                  "alerts"], rows, align="llrrrrrrr")


def lineage(run: Run) -> str:
    """Where each stage's inputs came from (base model or an earlier stage), its data and config fingerprints."""
    if not run.stages:
        return note("No stages, so no lineage.")
    base = base_model(run.stages[0])
    order = " → ".join([code(base) if base else "base model", *[text(stage.name) for stage in run.stages]])
    rows = []
    for stage in run.stages:
        record = stage.lineage or {}
        inputs = record.get("inputs") or configured_inputs(stage)
        cells = "<br>".join(
            f"{text(role)}: {code(value.get('name_or_path', '?'))}"
            + (f" (stage {text(value['stage'])})" if value.get("stage") else "")
            for role, value in inputs.items() if isinstance(value, dict))
        tokenizer = record.get("tokenizer") or {}
        rows.append([text(stage.name), cells or "–", code((record.get("data") or {}).get("fingerprint", "–")),
                     code(record.get("config_hash", "–")),
                     (f"vocabulary {code(tokenizer['vocabulary'])}<br>template {code(tokenizer.get('chat_template'))}"
                      if tokenizer.get("vocabulary") else "–")])
    missing = [] if all(stage.lineage for stage in run.stages) else [note(
        "Stages without lineage.json (written by `align pipeline`) show the inputs of their config.yaml.")]
    return (f'<p class="chain">{order}</p>'
            + table(["stage", "inputs", "data fingerprint", "config hash", "tokenizer"], rows) + "".join(missing))


def base_model(stage: Stage) -> str | None:
    model = ((stage.lineage or {}).get("inputs") or {}).get("model") or {}
    return model.get("name_or_path") or ((stage.config or {}).get("model") or {}).get("name_or_path")


def configured_inputs(stage: Stage) -> dict[str, dict[str, Any]]:
    cfg = stage.config or {}
    found = {"model": (cfg.get("model") or {}).get("name_or_path"), "reference": cfg.get("reference")}
    for role in ("reward_model", "value_model"):
        section = cfg.get(role)
        found[role] = section.get("name_or_path") if isinstance(section, dict) else None
    return {role: {"name_or_path": name} for role, name in found.items() if isinstance(name, str)}


# ---- run-level results ---------------------------------------------------------------------------------------------

def run_evaluation(run: Run, shown_samples: int) -> str:
    parts = [results.eval_block(found, shown_samples) for found in run.evals] or [note(
        "No eval results in this run dir: `align eval --policy RUN_DIR --data FILE` writes them to RUN_DIR/eval.")]
    parts += ["<h3>Reward-model probe</h3>" + results.probe_block(probe) for probe in run.probes]
    return "".join(parts)


def across_stages(run: Run, shown_samples: int) -> str:
    """Each stage's replies at its last sampling step, side by side by prompt."""
    columns = [(stage.name, samples.last_step(stage.samples)) for stage in run.stages if stage.samples]
    if not columns:
        return note("No stage sampled replies while training (tracking.completions_every is 0).")
    return ('<p class="sub">Each stage\'s replies at its last sampling step, during training.</p>'
            + samples.side_by_side(columns, shown_samples))


# ---- one stage ------------------------------------------------------------------------------------------------------

def stage_section(stage: Stage, shown_samples: int) -> str:
    parts = [stage_facts(stage), "<h3>Cost</h3>", cost(stage), "<h3>Health</h3>", health(stage),
             "<h3>Final metrics</h3>", final_metrics(stage), "<h3>Curves</h3>", curves(stage),
             "<h3>Data</h3>", data(stage), "<h3>Results</h3>", stage_results(stage, shown_samples),
             "<h3>Replies during training</h3>",
             samples.across_steps(stage.samples, shown_samples) if stage.samples else note(
                 "No replies sampled while training (tracking.completions_every is 0)."),
             config(stage)]
    return "".join(parts)


def stage_facts(stage: Stage) -> str:
    summary = stage.summary or {}
    items = [("status", status(stage))] + ([("stage", text(stage.kind))] if stage.kind != stage.name else [])
    items.append(("dir", code(stage.dir)))
    if summary.get("finished_at"):
        items.append(("finished at", text(summary["finished_at"])))
    parameters = summary.get("parameters") or {}
    if parameters.get("total"):
        share = parameters.get("trainable", 0) / parameters["total"]
        items.append(("parameters", f"{number(parameters.get('trainable'))} trainable of "
                                    f"{number(parameters['total'])} ({share:.1%})"
                                    + (" · LoRA" if summary.get("lora") else "")))
    if summary.get("reference"):
        items.append(("reference", text(summary["reference"])))
    for key, value in (summary.get("stopping") or {}).items():
        items.append((f"stopping: {key.replace('_', ' ')}", text(value) if value is not None else "–"))
    return facts(items)


def cost(stage: Stage) -> str:
    metrics = metrics_of(stage)
    items = [(label, show(metrics[key])) for key, label, show in COST_KEYS if key in metrics]
    items += [(key, number(metrics[key])) for key in memory_keys(metrics)]
    if not memory_keys(metrics):
        items.append(("peak memory", '<span class="sub">not recorded</span>'))
    return facts(items) if metrics else note("No summary.json yet, so no cost figures.")


def health(stage: Stage) -> str:
    if stage.summary is None:
        return note("No summary.json yet, so no health record.")
    if "health" not in stage.summary:
        return note("This stage's summary.json records no health alerts section.")
    alerts = alerts_of(stage)
    if not alerts:
        return f"<p>{badge('no alerts', 'ok')}</p>"
    rows = [[number(a.get("step")), badge(str(a.get("severity", "?")), "bad" if a.get("severity") == "fatal"
                                          else "warn"), code(a.get("name", "?")), text(a.get("message", ""))]
            for a in alerts]
    return table(["step", "severity", "alert", "message"], rows, align="rlll")


def final_metrics(stage: Stage) -> str:
    """summary.json's metrics but the cost figures and the trainer's counters and timings."""
    metrics = metrics_of(stage)
    shown = {key for key, _, _ in COST_KEYS} | set(memory_keys(metrics)) | COUNTERS
    items = [(key, number(value)) for key, value in metrics.items()
             if key not in shown and not key.endswith(plots.BOOKKEEPING_SUFFIXES)]
    if items:
        return facts(items, css="cols")
    return note("No summary.json yet." if stage.summary is None else "summary.json records no metrics beyond cost.")


def curves(stage: Stage) -> str:
    if not stage.metrics:
        return note("No metrics.jsonl, so no curves.")
    drawn = figures.curves(stage.metrics)
    if not drawn:
        return note("metrics.jsonl holds no numeric metrics to draw.")
    return '<div class="figs">' + "".join(
        f'<figure><figcaption>{text(group)}</figcaption><img alt="{text(group)} curves" src="{uri}"></figure>'
        for group, uri in drawn) + "</div>"


def data(stage: Stage) -> str:
    """Each data source: what it was used for, its format and rows (summary.json) and its sha256 (lineage.json)."""
    report = (stage.summary or {}).get("data") or {}
    formatted = {str(s.get("source")): s for s in (report.get("sources") or []) + (report.get("eval_sources") or [])
                 if isinstance(s, dict)}
    hashed = [s for s in ((stage.lineage or {}).get("data") or {}).get("sources") or [] if isinstance(s, dict)]
    sources = hashed or [{"path": s.get("path"), "used_for": split}
                         for split in ("train", "eval") for s in ((stage.config or {}).get("data") or {}).get(split) or []
                         if isinstance(s, dict)]
    rows = []
    for source in sources:
        path = str(source.get("path"))
        seen = formatted.get(path, {})
        rows.append([code(path), text(source.get("used_for", "–")), text(seen.get("format", source.get("format", "–"))),
                     number(seen.get("rows_out")), code(str(source.get("sha256") or "–")[:16])])
    counts = [(label, number(report[key])) for key, label in (("kind", "kind"), ("train_rows", "train rows"),
                                                              ("eval_rows", "eval rows")) if key in report]
    dropped = (stage.summary or {}).get("dropped") or {}
    counts += [(f"dropped: {reason}", number(count)) for reason, count in dropped.items()]
    parts = [facts(counts)] if counts else []
    parts.append(table(["source", "used for", "format", "rows", "sha256"], rows, align="lllrl") if rows
                 else note("No data sources recorded."))
    return "".join(parts)


def stage_results(stage: Stage, shown_samples: int) -> str:
    held_out = (stage.summary or {}).get("held_out") or {}
    parts = []
    if isinstance(held_out.get("accuracy"), dict):
        parts.append(f"<h4>Held-out accuracy beside its baselines ({number(held_out.get('pairs'))} pairs)</h4>"
                     + results.BASELINES_NOTE + results.baselines_block(held_out["accuracy"]))
    parts += ["<h4>Evaluation</h4>" + results.eval_block(found, shown_samples) for found in stage.evals]
    parts += ["<h4>Reward-model probe</h4>" + results.probe_block(probe) for probe in stage.probes]
    if not stage.evals and stage.kind != "reward":  # a reward model is a judge, not a policy `align eval` compares
        parts.append(note("No eval.json in this stage's dir or its sub-dirs (`align eval --policy DIR` writes one)."))
    if not stage.probes and stage.kind == "reward":
        parts.append(note("No probe.json for this reward model (`align probe --reward-model DIR` writes one)."))
    return "".join(parts)


def config(stage: Stage) -> str:
    if stage.config_text is None:
        return note("No config.yaml.")
    return f"<details><summary>config.yaml</summary><pre>{text(stage.config_text)}</pre></details>"


STYLE = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d8dee4; --soft: #f6f8fa; --accent: #0969da;
  --ok: #1a7f37; --ok-bg: #dafbe1; --warn: #9a6700; --warn-bg: #fff8c5; --bad: #d1242f; --bad-bg: #ffebe9; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 14px/1.5 -apple-system, "Segoe UI", "Noto Sans", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1200px; margin: 0 auto; padding: 28px 32px 80px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 44px 0 12px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 26px 0 8px; }
h4 { font-size: 14px; margin: 18px 0 6px; color: var(--muted); }
nav { display: flex; flex-wrap: wrap; gap: 6px 16px; margin-top: 12px; padding: 10px 0;
  border-top: 1px solid var(--line); border-bottom: 1px solid var(--line); }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
code, pre, .reply { font-family: ui-monospace, SFMono-Regular, "DejaVu Sans Mono", Menlo, Consolas, monospace;
  font-size: 12.5px; }
code { background: var(--soft); padding: 1px 4px; border-radius: 4px; word-break: break-all; }
pre { background: var(--soft); padding: 12px; border-radius: 6px; overflow: auto; max-height: 420px; }
.sub, .note, .meta { color: var(--muted); }
.note { font-style: italic; margin: 6px 0; }
.chain { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 12px 5px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; border-bottom: 2px solid var(--line); white-space: nowrap; }
td.r, th.r { text-align: right; padding-left: 12px; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: var(--soft); }
.section { font-weight: 600; color: var(--muted); text-transform: uppercase; font-size: 11.5px; letter-spacing: .04em; }
.badge { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  line-height: 20px; white-space: nowrap; }
.badge.ok { color: var(--ok); background: var(--ok-bg); }
.badge.warn { color: var(--warn); background: var(--warn-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 8px 0; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; font-variant-numeric: tabular-nums; }
dl.facts.cols { grid-template-columns: repeat(3, max-content minmax(80px, 1fr)); }
.figs { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; max-width: 100%; border: 1px solid var(--line); border-radius: 6px; padding: 8px; }
figure img { display: block; max-width: 100%; height: auto; }
figcaption { font-size: 12px; font-weight: 600; color: var(--muted); margin-bottom: 4px; }
table.replies { width: 100%; table-layout: fixed; }
table.replies th:first-child { width: 24%; }
table.replies td { padding: 8px 12px 8px 0; }
.reply { white-space: pre-wrap; word-break: break-word; max-height: 15em; overflow: auto; }
.meta { font-size: 11.5px; margin-top: 3px; }
details summary { cursor: pointer; color: var(--accent); margin: 14px 0 6px; }
"""
