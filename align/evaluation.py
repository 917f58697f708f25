"""`align eval`: how a policy compares with its reference, on preference pairs and on sampled replies.

On preference pairs: the implicit DPO reward accuracy (the sign of the policy-vs-reference log-ratio margin) and
the judge's accuracy. On prompts (any data file can give prompts): replies sampled from the policy and the
reference, the policy's win rate as a judge sees it with a bootstrap confidence interval, the KL to the reference
on the policy's own samples, reply length, EOS rate and repetition. A pipeline run dir compares all its stages.
Writes eval.json, eval.md, samples.jsonl and PNG plots. DPO paper: https://huggingface.co/papers/2305.18290
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import data_formats
from align import chat, completions, config, models
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


# ---- judges -------------------------------------------------------------------------------------------------------

Rule = Callable[[list[str], list[str]], list[float]]


@dataclass(frozen=True)
class JudgeSpec:
    kind: Literal["reward", "rule"]
    target: str
    """The reward model dir, or the rule's module:function."""


def parse_judge(spec: str) -> JudgeSpec:
    """`reward:DIR` or `rule:module:function` -> JudgeSpec; anything else is a ConfigError."""
    kind, sep, target = spec.partition(":")
    if not sep or kind not in ("reward", "rule") or not target:
        raise ConfigError(f"--judge: expected reward:DIR or rule:module:function, got {spec!r}")
    return JudgeSpec(kind, target)


def load_rule(target: str) -> Rule:
    """`module:function` or `path/to/file.py:function` -> the function, checked to exist and be callable."""
    source, sep, name = target.rpartition(":")
    if not sep or not source or not name.isidentifier():
        raise ConfigError(f"--judge rule:{target}: expected rule:module:function or rule:path/to/file.py:function")
    try:
        if source.endswith(".py"):
            if not Path(source).is_file():
                raise ConfigError(f"--judge rule:{target}: file {source!r} not found")
            module_spec = importlib.util.spec_from_file_location(Path(source).stem, source)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except ImportError as e:
        raise ConfigError(f"--judge rule:{target}: importing {source!r} failed: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"--judge rule:{target}: {source!r} has no function {name!r}")
    return fn


class RewardModelJudge:
    """Scores replies with a one-label sequence classifier: logits[0] at the reply's EOS (see chat.reward_text)."""

    def __init__(self, path: str, device: str, batch_size: int):
        cfg = ModelConfig(name_or_path=path)
        self.tokenizer = models.load_tokenizer(cfg)
        model = models.load_sequence_classifier(cfg, pad_token_id=self.tokenizer.pad_token_id)
        self.model = model.to(device).eval()
        self.batch_size = batch_size

    def score(self, prompts: list[list[dict]], replies: list[list[dict]]) -> list[float]:
        import torch

        rows = [self.tokenizer(chat.reward_text(self.tokenizer, prompt, reply), add_special_tokens=False)["input_ids"]
                for prompt, reply in zip(prompts, replies, strict=True)]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                ids, mask = right_padded(rows[start:start + self.batch_size], self.tokenizer.pad_token_id,
                                         self.model.device)
                scores.extend(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist())
        return scores


class RuleJudge:
    """Scores replies with a rule `fn(prompts, completions) -> one float each`, called as the PPO stage calls it:
    prompts as chat-templated text without special tokens, completions as the reply's text."""

    def __init__(self, fn: Rule, tokenizer):
        self.fn = fn
        self.tokenizer = tokenizer

    def score(self, prompts: list[list[dict]], replies: list[list[dict]]) -> list[float]:
        prompt_texts = [self.tokenizer.decode(completions.prompt_ids(self.tokenizer, prompt), skip_special_tokens=True)
                        for prompt in prompts]
        texts = ["\n".join(message["content"] for message in reply) for reply in replies]
        scores = self.fn(prompt_texts, texts)
        if not isinstance(scores, (list, tuple)) or len(scores) != len(texts):
            raise ConfigError(f"--judge: the rule must return one float per completion ({len(texts)}), got "
                              f"{type(scores).__name__}")
        return [float(score) for score in scores]


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


# ---- forward passes -----------------------------------------------------------------------------------------------

def right_padded(rows: list[list[int]], pad_id: int, device: Any) -> tuple[Any, Any]:
    """(B, L) right-padded ids and their (B, L) attention mask (from the row lengths, not from the pad id)."""
    import torch

    width = max(map(len, rows))
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
    return ids, mask


def token_logprobs(model, rows: list[list[int]], pad_id: int, batch_size: int) -> list[Any]:
    """Per row, the (L - 1,) log-probs of tokens 1..L-1 given the tokens before them (temperature 1)."""
    import torch

    from align import rl

    out = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            ids, mask = right_padded(batch, pad_id, model.device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            logprobs = rl.logprobs_from_logits(logits[:, :-1], ids[:, 1:]).cpu()
            out.extend(row_logprobs[:len(row) - 1] for row, row_logprobs in zip(batch, logprobs))
    return out


def reply_logps(model, tokenizer, prompts: list[list[dict]], replies: list[list[dict]], batch_size: int) -> list[float]:
    """Summed log-probs of each reply's assistant tokens up to and including their EOS, given the prompt: the tokens
    align's SFT labels (TRL's DPO also counts the template's text after the EOS, e.g. ChatML's newline)."""
    encoded = [chat.tokenize_sft_row(tokenizer, {"prompt": prompt, "completion": reply})
               for prompt, reply in zip(prompts, replies, strict=True)]
    logprobs = token_logprobs(model, [enc["input_ids"] for enc in encoded], tokenizer.pad_token_id, batch_size)
    sums = []
    for enc, row in zip(encoded, logprobs):
        trained = [label != chat.IGNORE_INDEX for label in enc["labels"][1:]]
        sums.append(float(sum(lp for lp, keep in zip(row.tolist(), trained) if keep)))
    return sums


def kl_per_sample(policy, reference, generated: completions.Generated, pad_id: int, estimator: str,
                  batch_size: int) -> list[float]:
    """Per sampled reply, the sum over its tokens of the per-token KL(policy || reference) estimate."""
    from align import rl

    rows = [prompt + response for prompt, response in zip(generated.prompt_ids, generated.responses, strict=True)]
    policy_lp = token_logprobs(policy, rows, pad_id, batch_size)
    reference_lp = token_logprobs(reference, rows, pad_id, batch_size)
    out = []
    for prompt, lp, ref_lp in zip(generated.prompt_ids, policy_lp, reference_lp):
        reply = slice(len(prompt) - 1, None)  # log-prob index t scores token t + 1
        out.append(float(rl.kl_estimate(lp[reply], ref_lp[reply], estimator).sum()))
    return out


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


def pair_logps(model, tokenizer, pairs: list[dict], batch_size: int) -> tuple[list[float], list[float]]:
    """Summed reply log-probs of the chosen and of the rejected reply of each pair."""
    prompts = [row["prompt"] for row in pairs]
    return (reply_logps(model, tokenizer, prompts, [row["chosen"] for row in pairs], batch_size),
            reply_logps(model, tokenizer, prompts, [row["rejected"] for row in pairs], batch_size))


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
        chosen, rejected = pair_logps(model, tokenizer, data.pairs, cfg.batch_size)
        result["pairs"], per_sample["implicit_margin"] = implicit_reward_metrics(
            chosen, rejected, baseline.chosen_logps, baseline.rejected_logps, cfg.beta)
    kl = kl_per_sample(model, baseline.model, generated, tokenizer.pad_token_id, cfg.kl_estimator, cfg.batch_size)
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

def make_judge(spec: JudgeSpec | None, rule: Rule | None, tokenizer, device: str, batch_size: int):
    """The judge a spec names; a rule renders prompts with the policies' (shared) tokenizer."""
    if spec is None:
        return None
    if rule is not None:
        return RuleJudge(rule, tokenizer)
    return RewardModelJudge(spec.target, device, batch_size)


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
    spec = parse_judge(judge_spec) if judge_spec else None
    rule = load_rule(spec.target) if spec is not None and spec.kind == "rule" else None  # before any model loads
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
        judge = make_judge(spec, rule, reference_tokenizer, device, cfg.batch_size)
        result, generated = evaluate_model(cfg, data, model, reference_tokenizer, judge, None)
        report["reference"] = {"name": reference.name, "path": reference.path, **result}
        samples += sample_rows(reference.name, data, generated, result["per_sample"].get("judge_score"))
        baseline = Baseline(model, result["per_sample"].get("judge_score"),
                            *pair_logps(model, reference_tokenizer, data.pairs, cfg.batch_size))
    for candidate in policies:
        if reference is not None and Path(candidate.path).resolve() == Path(reference.path).resolve():
            continue  # the reference's own column is filled in above
        tokenizer, model = load_policy(candidate, device)
        if reference_tokenizer is not None:
            check_same_tokenizer(tokenizer, reference_tokenizer, candidate.path)
        judge = judge or make_judge(spec, rule, tokenizer, device, cfg.batch_size)
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
    markdown = render_markdown(report)
    files = write_outputs(out, report, markdown, samples)
    return EvalResult(report=report, markdown=markdown, files=files + plots.plot_eval(report, out))


def write_outputs(out: Path, report: dict[str, Any], markdown: str, samples: list[dict]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "eval.json", out / "eval.md", out / "samples.jsonl"]
    files[0].write_text(json.dumps(report, indent=2), encoding="utf-8")
    files[1].write_text(markdown, encoding="utf-8")
    files[2].write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in samples), encoding="utf-8")
    return files


# ---- the report ---------------------------------------------------------------------------------------------------

# (label, section, key): one table row each, shown when some column has the value.
TABLE_ROWS = (
    ("win rate vs reference", "generation", "win_rate"),
    ("KL to reference (nats/reply)", "generation", "kl"),
    ("judge score (mean)", "generation", "judge_score_mean"),
    ("implicit reward accuracy", "pairs", "rewards/accuracies"),
    ("implicit margin (beta)", "pairs", "rewards/margins"),
    ("logps/chosen", "pairs", "logps/chosen"),
    ("logps/rejected", "pairs", "logps/rejected"),
    ("reply length (tokens)", "generation", "length_mean"),
    ("EOS rate", "generation", "eos_rate"),
    ("repeated 4-gram rate", "generation", "repetition_rate"),
)


def cell(column: dict[str, Any], section: str, key: str) -> str | None:
    value = column.get(section, {}).get(key)
    if value is None:
        return None
    if key == "win_rate":
        low, high = column[section]["win_rate_ci"]
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.4g}"


def render_markdown(report: dict[str, Any]) -> str:
    """A short report: what was evaluated, and one table with a column per model (the reference first)."""
    columns = ([{**report["reference"], "name": f"{report['reference']['name']} (reference)"}]
               if report["reference"] else []) + report["policies"]
    data, settings = report["data"], report["settings"]
    sampling = "greedy" if settings["temperature"] == 0 else f"temperature {settings['temperature']:g}"
    lines = [
        "# align eval", "",
        f"- data: `{data['path']}` ({data['format']}): {data['prompts']} prompts, {data['pairs']} preference pairs",
        (f"- sampling: {sampling}, up to {settings['max_new_tokens']} new tokens, seed {settings['seed']}; KL "
         f"estimator {settings['kl_estimator']}; beta {settings['beta']:g}"),
    ]
    judge = report["judge"]
    if judge:
        on_pairs = judge.get("pairs")
        lines.append(f"- judge: `{judge['spec']}`" + (
            f"; on the pairs: accuracy {on_pairs['accuracy']:.3f}, mean margin {on_pairs['margin_mean']:.4g}"
            if on_pairs else ""))
    lines += ["", "| metric | " + " | ".join(c["name"] for c in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for label, section, key in TABLE_ROWS:
        cells = [cell(c, section, key) for c in columns]
        if any(value is not None for value in cells):
            lines.append(f"| {label} | " + " | ".join(value or "–" for value in cells) + " |")
    lines += ["", ("Win rate: ties count 0.5; brackets hold the 95% bootstrap interval. Reply length counts the EOS. "
                   "Repeated 4-gram rate: fraction of replies in which some 4 consecutive tokens occur twice."), ""]
    return "\n".join(lines)
