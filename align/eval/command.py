"""`align eval`: how a policy compares with its reference, on preference pairs and on sampled replies.

On preference pairs: the implicit DPO reward accuracy (the sign of the policy-vs-reference log-ratio margin) and
the judge's accuracy. On prompts (any data file can give prompts): replies sampled from the policy and the
reference, the policy's win rate as a judge sees it with a bootstrap confidence interval, the KL to the reference
on the policy's own samples, reply length, EOS rate and repetition. A pipeline run dir compares all its stages.
`build` checks everything that can be checked before a model loads; `run` evaluates and writes config.yaml and the
report (align.eval.report). DPO paper: https://huggingface.co/papers/2305.18290
"""

from __future__ import annotations

import gc
import logging
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import data_formats
from align import config, models, reward_functions, rundir
from align.errors import ConfigError
from align.eval import baselines, judges, metrics, rankings, scoring
from align.eval.config import EvalConfig
from align.eval.report import plot_eval, render_markdown, sample_rows, write_outputs
from align.generation import Generated, Progress, completion_stats, generate
from align.sections import ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)

JUDGE_STAGE = "reward"
JUDGE_RANKING = "judge"
"""In a pipeline run, the stage whose output is a reward model (a judge, not a policy)."""


@dataclass
class EvalResult:
    report: dict[str, Any]
    markdown: str
    files: list[Path] = field(default_factory=list)


@dataclass
class EvalData:
    format: str
    prompts: list[list[dict]]
    pairs: list[dict]
    """Preference rows, empty when the file's format gives none."""
    skipped: dict[str, dict[str, int]]
    """Malformed rows left out under on_error skip, by reason, as prompts and as pairs."""


def load_data(path: str, limit: int, on_error: str) -> EvalData:
    """The first `limit` prompt rows of any data file, and its first `limit` preference rows when it has them."""
    loaded = data_formats.load_source(path, "prompt", on_error=on_error)
    fmt = loaded.report.format
    pairs = (data_formats.load_source(path, "preference", on_error=on_error)
             if "preference" in data_formats.FORMATS[fmt].kinds else None)
    rows = loaded.rows[:limit]
    pair_rows = pairs.rows[:limit] if pairs else []
    if any(row.get("tools") for row in rows + pair_rows):
        raise ConfigError(f"--data {path}: rows with tools are not supported by align eval yet")
    return EvalData(format=fmt, prompts=[row["prompt"] for row in rows], pairs=pair_rows,
                    skipped={"prompts": loaded.report.skipped, "pairs": pairs.report.skipped if pairs else {}})


@dataclass
class Candidate:
    """A model to evaluate: a policy, or the reference."""

    name: str
    path: str


def candidates(cfg: EvalConfig) -> tuple[list[Candidate], Candidate | None, str | None]:
    """(policies, reference, judge spec) for a policy dir, or for a pipeline run dir by this rule: every stage but
    `reward` is a policy, in finishing order; the reference is --reference, else the first of them (normally sft);
    the judge is --judge, else the last reward stage's output."""
    policy = Path(cfg.policy)
    reference = Candidate(Path(cfg.reference).resolve().name, cfg.reference) if cfg.reference else None
    stages = [] if models.is_model_dir(policy) else rundir.pipeline_stages(policy)
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
    judge_dirs = [sub for stage, sub in stages if stage == JUDGE_STAGE]
    if judge is None and judge_dirs:
        judge = f"reward:{judge_dirs[-1]}"
        log.info("pipeline run: judging with its reward model %s", judge_dirs[-1])
    return policies, reference, judge


@dataclass
class EvalBuild:
    """What `run` evaluates, checked before any model loads."""

    policies: list[Candidate]
    reference: Candidate | None
    judge_spec: str | None
    judge: judges.JudgeSpec | None
    rule: reward_functions.RewardFunction | None
    """The judge's function when it is a rule; loaded here so a bad spec fails fast."""
    data: EvalData


def build(cfg: EvalConfig) -> EvalBuild:
    """The models, judge and data of an evaluation, every user error found here raised before any model loads."""
    problems = cfg.check()
    if problems:
        raise ConfigError("; ".join(problems))
    policies, reference, judge_spec = candidates(cfg)
    spec = judges.parse_judge(judge_spec) if judge_spec else None
    rule = judges.load_rule(spec.target) if spec is not None and spec.kind == "rule" else None
    data = load_data(cfg.data, cfg.num_samples, cfg.on_error)
    if data.pairs and reference is None:
        raise ConfigError(f"--reference: {cfg.data} holds preference pairs, whose implicit DPO reward accuracy "
                          "compares the policy with its reference; pass the reference policy (usually the SFT "
                          "output) with --reference DIR")
    if not data.prompts:
        raise ConfigError(f"--data {cfg.data}: no rows to evaluate")
    return EvalBuild(policies, reference, judge_spec, spec, rule, data)


def load_policy(candidate: Candidate, device: str):
    """Tokenizer and causal LM (eval mode) of a policy dir."""
    cfg = ModelConfig(name_or_path=candidate.path)
    path = models.resolve_path(candidate.path)
    return models.load_tokenizer(cfg, path), models.load_causal_lm(cfg, path).to(device).eval()


def as_replies(texts: list[str]) -> list[list[dict]]:
    return [[{"role": "assistant", "content": text}] for text in texts]


@dataclass
class Baseline:
    """What every policy is compared with: the reference model, its judge scores and its pair log-probs."""

    model: PreTrainedModel
    judge_scores: list[float] | None
    chosen_logps: list[float]
    rejected_logps: list[float]


def progress_bar(name: str, total: int):
    """A bar with an ETA over the rows one model's passes go through (sampling, judging, log-probs, KL)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"eval {name}", unit="row", dynamic_ncols=True)


def rows_to_pass(data: EvalData, judge, *, compared: bool) -> int:
    """How many rows `evaluate_model` passes through: sampling and judging each prompt, and against a baseline each
    pair's two replies and each sample's KL (a policy pass and a reference pass)."""
    return len(data.prompts) * (1 + bool(judge) + 2 * compared) + 2 * len(data.pairs) * compared


def evaluate_model(cfg: EvalConfig, data: EvalData, model, tokenizer, judge, baseline: Baseline | None,
                   progress: Progress | None = None) -> tuple[dict[str, Any], Generated]:
    """One model's metrics: its sampled replies, and with a baseline, pairs and samples compared with it."""
    generated = generate(model, tokenizer, data.prompts, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size, progress=progress)
    generation: dict[str, Any] = dict(completion_stats(generated))
    per_sample: dict[str, list[float]] = {"length": [len(r) for r in generated.responses]}
    scores = judge.score(data.prompts, as_replies(generated.texts), progress) if judge else None
    if scores is not None:
        generation["judge_score_mean"] = sum(scores) / len(scores)
        generation["judge_score_ci"] = list(metrics.bootstrap_ci(scores, samples=cfg.bootstrap_samples, seed=cfg.seed))
        per_sample["judge_score"] = scores
    result: dict[str, Any] = {"generation": generation, "per_sample": per_sample}
    if baseline is None:
        return result, generated
    if data.pairs:
        chosen, rejected = scoring.pair_logps(model, tokenizer, data.pairs, cfg.batch_size, progress)
        result["pairs"], per_sample["implicit_margin"] = metrics.implicit_reward_metrics(
            chosen, rejected, baseline.chosen_logps, baseline.rejected_logps, cfg.beta)
    kl = scoring.kl_per_sample(model, baseline.model, generated, tokenizer.pad_token_id, cfg.kl_estimator,
                               cfg.batch_size, progress)
    generation["kl"] = sum(kl) / len(kl)
    if scores is not None and baseline.judge_scores is not None:
        outcomes = metrics.win_outcomes(scores, baseline.judge_scores)
        generation["win_rate"] = sum(outcomes) / len(outcomes)
        generation["win_rate_ci"] = list(metrics.bootstrap_ci(outcomes, samples=cfg.bootstrap_samples,
                                                              seed=cfg.seed))
    return result, generated


def new_report(cfg: EvalConfig, data: EvalData, judge_spec: str | None) -> dict[str, Any]:
    """eval.json before any model is evaluated: what data, which settings, which judge."""
    return {
        "data": {"path": cfg.data, "format": data.format, "prompts": len(data.prompts), "pairs": len(data.pairs),
                 "skipped": data.skipped},
        "settings": {k: v for k, v in asdict(cfg).items()
                     if k not in ("stage", "policy", "data", "reference", "judge", "out")},
        "judge": {"spec": judge_spec} if judge_spec else None,
        "reference": None,
        "policies": [],
    }


def evaluate(cfg: EvalConfig, built: EvalBuild) -> tuple[dict[str, Any], list[dict]]:
    """eval.json's report and samples.jsonl's rows: the reference first (it becomes the baseline), then each
    policy, loaded one at a time, then the judge on the preference pairs."""
    data, reference, spec, rule = built.data, built.reference, built.judge, built.rule
    models.configure_threads(cfg.num_threads)
    device = models.device()
    report = new_report(cfg, data, built.judge_spec)
    samples: list[dict] = []
    # Per-pair outcomes of every way of ranking the pairs: each policy's implicit reward, the judge, the baselines.
    pair_rankings: dict[str, list[float]] = {}
    judge = baseline = reference_tokenizer = None
    if reference is not None:
        reference_tokenizer, model = load_policy(reference, device)
        judge = judges.make_judge(spec, rule, reference_tokenizer, device, cfg.batch_size,
                                   cfg.judge_max_length)
        prompts = [row["prompt"] for row in data.pairs]
        with progress_bar(reference.name, rows_to_pass(data, judge, compared=False) + 2 * len(data.pairs)) as bar:
            result, generated = evaluate_model(cfg, data, model, reference_tokenizer, judge, None, bar.update)
            chosen, rejected = (scoring.reply_logps_and_lengths(model, reference_tokenizer, prompts,
                                                                [row[side] for row in data.pairs], cfg.batch_size,
                                                                bar.update) for side in ("chosen", "rejected"))
        report["reference"] = {"name": reference.name, "path": reference.path, **result}
        samples += sample_rows(reference.name, data.prompts, generated, result["per_sample"].get("judge_score"))
        baseline = Baseline(model, result["per_sample"].get("judge_score"), chosen[0], rejected[0])
        if data.pairs:
            pair_rankings.update(rankings.length_rankings(data.pairs))
            pair_rankings.update({f"{name} ({reference.name})": outcomes for name, outcomes
                                  in rankings.log_prob_rankings(chosen, rejected).items()})
    for candidate in built.policies:
        if reference is not None and Path(candidate.path).resolve() == Path(reference.path).resolve():
            continue  # the reference's own column is filled in above
        tokenizer, model = load_policy(candidate, device)
        if reference_tokenizer is not None:
            # KL and implicit rewards compare the two models' log-probs of the same rendered conversations.
            models.check_same_vocabulary(reference_tokenizer, tokenizer, other=candidate.path,
                                         against=f"the reference {reference.path}", chat_template=True,
                                         why="log-probs of the same text cannot be compared across them")
        judge = judge or judges.make_judge(spec, rule, tokenizer, device, cfg.batch_size,
                                           cfg.judge_max_length)
        log.info("evaluating %s", candidate.path)
        with progress_bar(candidate.name, rows_to_pass(data, judge, compared=baseline is not None)) as bar:
            result, generated = evaluate_model(cfg, data, model, tokenizer, judge, baseline, bar.update)
        report["policies"].append({"name": candidate.name, "path": candidate.path, **result})
        if "implicit_margin" in result["per_sample"]:
            margins = result["per_sample"]["implicit_margin"]
            pair_rankings[f"{candidate.name} implicit reward"] = baselines.outcomes(margins, [0.0] * len(margins))
        samples += sample_rows(candidate.name, data.prompts, generated, result["per_sample"].get("judge_score"))
        del model
        gc.collect()
    if judge is not None and data.pairs:
        prompts = [row["prompt"] for row in data.pairs]
        with progress_bar("judge on pairs", 2 * len(data.pairs)) as bar:
            judged_chosen = judge.score(prompts, [row["chosen"] for row in data.pairs], bar.update)
            judged_rejected = judge.score(prompts, [row["rejected"] for row in data.pairs], bar.update)
        report["judge"]["pairs"] = metrics.judge_pair_metrics(judged_chosen, judged_rejected)
        pair_rankings[JUDGE_RANKING] = baselines.outcomes(judged_chosen, judged_rejected)
    if isinstance(judge, judges.RewardModelJudge):
        report["judge"]["truncated"] = judge.truncated  # texts over judge_max_length, scored on their last tokens
    if pair_rankings:
        report["baselines"] = baselines.table(pair_rankings, [cfg.data] * len(data.pairs), partial(
            metrics.bootstrap_ci, samples=cfg.bootstrap_samples, seed=cfg.seed))
    return report, samples


def run(cfg: EvalConfig) -> EvalResult:
    """Evaluate, then write eval.json, eval.md, samples.jsonl, config.yaml (the config as loaded) and PNG plots to
    the output dir."""
    report, samples = evaluate(cfg, build(cfg))
    out = Path(cfg.out) if cfg.out else Path(cfg.policy) / "eval"
    markdown = render_markdown(report)
    files = write_outputs(out, report, markdown, samples) + [config.save_config(cfg, out)]
    return EvalResult(report=report, markdown=markdown, files=files + plot_eval(report, out))
