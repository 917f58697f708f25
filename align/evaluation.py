"""`align eval`: how a policy compares with its reference, on preference pairs and on sampled replies.

On preference pairs: the implicit DPO reward accuracy (the sign of the policy-vs-reference log-ratio margin) and
the judge's accuracy. On prompts (any data file can give prompts): replies sampled from the policy and the
reference, the policy's win rate as a judge sees it with a bootstrap confidence interval, the KL to the reference
on the policy's own samples, reply length, EOS rate and repetition. A pipeline run dir compares all its stages.
Writes eval.json, eval.md, samples.jsonl (align.eval_report) and PNG plots; the forward passes and judges are in
align.scoring. DPO paper: https://huggingface.co/papers/2305.18290
"""

from __future__ import annotations

import gc
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import data_formats
from align import completions, config, eval_report, models, scoring
from align.errors import ConfigError, ModelError
from align.sections import ModelConfig

log = logging.getLogger(__name__)

JUDGE_STAGE = "reward"
"""In a pipeline run, the stage whose output is a reward model (a judge, not a policy)."""


@dataclass
class EvalConfig:
    """The options of `align eval`."""

    policy: str
    """A policy checkpoint dir (or LoRA adapter dir), or a pipeline run dir to compare its stages."""
    data: str
    """A data file (any format `align data inspect` reads); preference pairs also give the pair metrics."""
    reference: str | None = None
    """The reference policy (the DPO/PPO reference, usually the SFT output). Pipeline runs: the first stage."""
    judge: str | None = None
    """reward:DIR (a reward model) or rule:module:function / rule:path.py:function (fn(prompts, completions))."""
    out: str | None = None
    """Where the report goes (default: <policy>/eval)."""
    max_new_tokens: int = 128
    num_samples: int = 100
    """Rows evaluated: the first N of the file (pairs and prompts each)."""
    seed: int = 0
    """Seed for sampling and for the bootstrap."""
    temperature: float = 1.0
    """Sampling temperature; 0 decodes greedily. KL estimates are unbiased only at 1."""
    beta: float = 0.1
    """DPO beta for the implicit rewards and margins (their accuracy does not depend on it)."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """Per-token KL estimator (align.rl.kl_estimate); k3 is unbiased and never negative."""
    batch_size: int = 8
    bootstrap_samples: int = 1000
    num_threads: int = 0
    """CPU threads for torch (0: one per core this process may use)."""

    def check(self) -> list[str]:
        problems = []
        for name in ("max_new_tokens", "num_samples", "batch_size", "bootstrap_samples"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')}: must be >= 1, got {getattr(self, name)}")
        if self.num_threads < 0:
            problems.append(f"--num-threads: must be >= 0, got {self.num_threads}")
        if self.temperature < 0:
            problems.append(f"--temperature: must be >= 0, got {self.temperature}")
        if self.beta <= 0:
            problems.append(f"--beta: must be > 0, got {self.beta}")
        if self.kl_estimator not in ("k1", "k3"):
            problems.append(f"--kl-estimator: must be k1 or k3, got {self.kl_estimator!r}")
        return problems


@dataclass
class EvalResult:
    report: dict[str, Any]
    markdown: str
    files: list[Path] = field(default_factory=list)


# ---- pure metrics -------------------------------------------------------------------------------------------------

def win_outcomes(policy_scores: list[float], reference_scores: list[float]) -> list[float]:
    """Per prompt: 1 where the policy's reply scores higher, 0.5 on a tie, 0 where the reference's does."""
    return [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores, strict=True)]


def bootstrap_ci(values: list[float], *, samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean: resample the values with replacement `samples` times
    (seeded, so the same inputs give the same interval) and take the central `level` of the resampled means."""
    import torch

    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    data = torch.tensor(values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    means = data[torch.randint(len(values), (samples, len(values)), generator=generator)].mean(dim=1)
    tail = (1.0 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    return low, high


def implicit_reward_metrics(policy_chosen: list[float], policy_rejected: list[float], ref_chosen: list[float],
                            ref_rejected: list[float], beta: float) -> tuple[dict[str, float], list[float]]:
    """TRL-named DPO metrics from summed reply log-probs, and the per-pair margins.

    rewards/chosen = beta * (log pi(c) - log pi_ref(c)), likewise rejected; rewards/margins their difference;
    rewards/accuracies the fraction of pairs with a positive margin (beta > 0 does not change its sign).
    """
    n = len(policy_chosen)
    chosen = [beta * (p - r) for p, r in zip(policy_chosen, ref_chosen, strict=True)]
    rejected = [beta * (p - r) for p, r in zip(policy_rejected, ref_rejected, strict=True)]
    margins = [c - r for c, r in zip(chosen, rejected)]
    metrics = {
        "rewards/accuracies": sum(m > 0 for m in margins) / n,
        "rewards/margins": sum(margins) / n,
        "rewards/chosen": sum(chosen) / n,
        "rewards/rejected": sum(rejected) / n,
        "logps/chosen": sum(policy_chosen) / n,
        "logps/rejected": sum(policy_rejected) / n,
    }
    return metrics, margins


def judge_pair_metrics(chosen_scores: list[float], rejected_scores: list[float]) -> dict[str, float]:
    """The judge's accuracy (chosen scored strictly higher) and mean score margin on preference pairs."""
    n = len(chosen_scores)
    diffs = [c - r for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    return {"accuracy": sum(d > 0 for d in diffs) / n, "margin_mean": sum(diffs) / n}


# ---- data and models ----------------------------------------------------------------------------------------------

@dataclass
class EvalData:
    format: str
    prompts: list[list[dict]]
    pairs: list[dict]
    """Preference rows, empty when the file's format gives none."""


def load_data(path: str, limit: int) -> EvalData:
    """The first `limit` prompt rows of any data file, and its first `limit` preference rows when it has them."""
    loaded = data_formats.load_source(path, "prompt")
    fmt = loaded.report.format
    pairs = data_formats.load_source(path, "preference").rows[:limit] if "preference" in data_formats.FORMATS[
        fmt].kinds else []
    rows = loaded.rows[:limit]
    if any(row.get("tools") for row in rows + pairs):
        raise ConfigError(f"--data {path}: rows with tools are not supported by align eval yet")
    return EvalData(format=fmt, prompts=[row["prompt"] for row in rows], pairs=pairs)


@dataclass
class Candidate:
    """A model to evaluate: a policy, or the reference."""

    name: str
    path: str


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / models.ADAPTER_CONFIG).is_file()


def pipeline_stages(run_dir: Path) -> list[tuple[str, Path]]:
    """(stage, dir) of every finished stage under a pipeline run dir, in the order they finished.

    A stage dir holds summary.json (written last, with `finished_at`) and config.yaml (with `stage:`). Order is by
    `finished_at`, then by the summary file's modification time (finished_at has one-second resolution).
    """
    found = []
    for sub in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        summary, cfg = sub / "summary.json", sub / "config.yaml"
        if not (summary.is_file() and cfg.is_file()):
            continue
        stage = config.read_yaml(cfg).get("stage")
        if not isinstance(stage, str):
            log.warning("%s: config.yaml names no stage; left out of the comparison", sub)
            continue
        finished = json.loads(summary.read_text(encoding="utf-8")).get("finished_at", "")
        found.append((finished, summary.stat().st_mtime_ns, stage, sub))
    return [(stage, sub) for _, _, stage, sub in sorted(found)]


def candidates(cfg: EvalConfig) -> tuple[list[Candidate], Candidate | None, str | None]:
    """(policies, reference, judge spec) for a policy dir, or for a pipeline run dir by this rule: every stage but
    `reward` is a policy, in finishing order; the reference is --reference, else the first of them (normally sft);
    the judge is --judge, else the last reward stage's output."""
    policy = Path(cfg.policy)
    reference = Candidate(Path(cfg.reference).resolve().name, cfg.reference) if cfg.reference else None
    stages = [] if is_model_dir(policy) else pipeline_stages(policy)
    if not stages:
        if reference is not None and reference.name == policy.resolve().name:  # run1/dpo vs run2/dpo: name by path
            return [Candidate(cfg.policy, cfg.policy)], Candidate(cfg.reference, cfg.reference), cfg.judge
        return [Candidate(policy.resolve().name, cfg.policy)], reference, cfg.judge
    policies = [Candidate(sub.name, str(sub)) for stage, sub in stages if stage != JUDGE_STAGE]
    if not policies:
        raise ConfigError(f"--policy {policy}: the pipeline run has no policy stage (only {JUDGE_STAGE})")
    if reference is None:
        reference = policies[0]
        log.info("pipeline run: %s is the reference (its first stage)", reference.path)
    judge = cfg.judge
    judges = [sub for stage, sub in stages if stage == JUDGE_STAGE]
    if judge is None and judges:
        judge = f"reward:{judges[-1]}"
        log.info("pipeline run: judging with its reward model %s", judges[-1])
    return policies, reference, judge


def load_policy(candidate: Candidate, device: str):
    """Tokenizer and causal LM (eval mode) of a policy dir."""
    cfg = ModelConfig(name_or_path=candidate.path)
    path = models.resolve_path(candidate.path)
    return models.load_tokenizer(cfg, path), models.load_causal_lm(cfg, path).to(device).eval()


def check_same_tokenizer(policy_tokenizer, other_tokenizer, name: str) -> None:
    """KL and implicit rewards compare token log-probs, so both models must share vocabulary and chat template."""
    if (policy_tokenizer.get_vocab() != other_tokenizer.get_vocab()
            or policy_tokenizer.chat_template != other_tokenizer.chat_template):
        raise ModelError(f"{name}: its tokenizer or chat template differs from the reference's; log-probs of the same "
                         "text cannot be compared across them")


# ---- one model's results ------------------------------------------------------------------------------------------

def as_replies(texts: list[str]) -> list[list[dict]]:
    return [[{"role": "assistant", "content": text}] for text in texts]


@dataclass
class Baseline:
    """What every policy is compared with: the reference model, its judge scores and its pair log-probs."""

    model: Any
    judge_scores: list[float] | None
    chosen_logps: list[float]
    rejected_logps: list[float]


def evaluate_model(cfg: EvalConfig, data: EvalData, model, tokenizer, judge,
                   baseline: Baseline | None) -> tuple[dict[str, Any], completions.Generated]:
    """One model's metrics: its sampled replies, and with a baseline, pairs and samples compared with it."""
    generated = completions.generate(model, tokenizer, data.prompts, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size)
    generation: dict[str, Any] = dict(completions.completion_stats(generated))
    per_sample: dict[str, list[float]] = {"length": [len(r) for r in generated.responses]}
    scores = judge.score(data.prompts, as_replies(generated.texts)) if judge else None
    if scores is not None:
        generation["judge_score_mean"] = sum(scores) / len(scores)
        per_sample["judge_score"] = scores
    result: dict[str, Any] = {"generation": generation, "per_sample": per_sample}
    if baseline is None:
        return result, generated
    if data.pairs:
        chosen, rejected = scoring.pair_logps(model, tokenizer, data.pairs, cfg.batch_size)
        result["pairs"], per_sample["implicit_margin"] = implicit_reward_metrics(
            chosen, rejected, baseline.chosen_logps, baseline.rejected_logps, cfg.beta)
    kl = scoring.kl_per_sample(model, baseline.model, generated, tokenizer.pad_token_id, cfg.kl_estimator,
                               cfg.batch_size)
    generation["kl"] = sum(kl) / len(kl)
    if scores is not None and baseline.judge_scores is not None:
        outcomes = win_outcomes(scores, baseline.judge_scores)
        generation["win_rate"] = sum(outcomes) / len(outcomes)
        generation["win_rate_ci"] = list(bootstrap_ci(outcomes, samples=cfg.bootstrap_samples, seed=cfg.seed))
    return result, generated


def sample_rows(name: str, data: EvalData, generated: completions.Generated,
                judge_scores: list[float] | None) -> list[dict]:
    """samples.jsonl rows: one per model and prompt."""
    rows = []
    for i, row in enumerate(completions.completion_rows(data.prompts, generated)):
        rows.append({"model": name, **row, **({"judge_score": judge_scores[i]} if judge_scores else {})})
    return rows


# ---- the command --------------------------------------------------------------------------------------------------

def new_report(cfg: EvalConfig, data: EvalData, judge_spec: str | None) -> dict[str, Any]:
    """eval.json before any model is evaluated: what data, which settings, which judge."""
    return {
        "data": {"path": cfg.data, "format": data.format, "prompts": len(data.prompts), "pairs": len(data.pairs)},
        "settings": {k: v for k, v in asdict(cfg).items() if k not in ("policy", "data", "reference", "judge", "out")},
        "judge": {"spec": judge_spec} if judge_spec else None,
        "reference": None,
        "policies": [],
    }


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate, then write eval.json, eval.md, samples.jsonl and PNG plots to the output dir."""
    from align import plots

    problems = cfg.check()
    if problems:
        raise ConfigError("; ".join(problems))
    policies, reference, judge_spec = candidates(cfg)
    spec = scoring.parse_judge(judge_spec) if judge_spec else None
    # a rule loads before any model does, so a bad spec fails fast
    rule = scoring.load_rule(spec.target) if spec is not None and spec.kind == "rule" else None
    data = load_data(cfg.data, cfg.num_samples)
    if data.pairs and reference is None:
        raise ConfigError(f"--reference: {cfg.data} holds preference pairs, whose implicit DPO reward accuracy "
                          "compares the policy with its reference; pass the reference policy (usually the SFT "
                          "output) with --reference DIR")
    if not data.prompts:
        raise ConfigError(f"--data {cfg.data}: no rows to evaluate")
    models.configure_threads(cfg.num_threads)
    device = "cpu" if models.use_cpu() else "cuda"
    report = new_report(cfg, data, judge_spec)
    samples: list[dict] = []
    judge = baseline = reference_tokenizer = None
    if reference is not None:
        reference_tokenizer, model = load_policy(reference, device)
        judge = scoring.make_judge(spec, rule, reference_tokenizer, device, cfg.batch_size)
        result, generated = evaluate_model(cfg, data, model, reference_tokenizer, judge, None)
        report["reference"] = {"name": reference.name, "path": reference.path, **result}
        samples += sample_rows(reference.name, data, generated, result["per_sample"].get("judge_score"))
        baseline = Baseline(model, result["per_sample"].get("judge_score"),
                            *scoring.pair_logps(model, reference_tokenizer, data.pairs, cfg.batch_size))
    for candidate in policies:
        if reference is not None and Path(candidate.path).resolve() == Path(reference.path).resolve():
            continue  # the reference's own column is filled in above
        tokenizer, model = load_policy(candidate, device)
        if reference_tokenizer is not None:
            check_same_tokenizer(tokenizer, reference_tokenizer, candidate.path)
        judge = judge or scoring.make_judge(spec, rule, tokenizer, device, cfg.batch_size)
        log.info("evaluating %s", candidate.path)
        result, generated = evaluate_model(cfg, data, model, tokenizer, judge, baseline)
        report["policies"].append({"name": candidate.name, "path": candidate.path, **result})
        samples += sample_rows(candidate.name, data, generated, result["per_sample"].get("judge_score"))
        del model
        gc.collect()
    if judge is not None and data.pairs:
        prompts = [row["prompt"] for row in data.pairs]
        report["judge"]["pairs"] = judge_pair_metrics(judge.score(prompts, [row["chosen"] for row in data.pairs]),
                                                      judge.score(prompts, [row["rejected"] for row in data.pairs]))
    out = Path(cfg.out) if cfg.out else Path(cfg.policy) / "eval"
    markdown = eval_report.render_markdown(report)
    files = eval_report.write_outputs(out, report, markdown, samples)
    return EvalResult(report=report, markdown=markdown, files=files + plots.plot_eval(report, out))


