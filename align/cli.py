"""The `align` command line. The only module that prints; user errors become `error: ...` and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from align import __version__
from align.errors import USER_ERRORS

log = logging.getLogger("align")

STAGE_HELP = {
    "sft": "supervised fine-tuning on chat / prompt-completion data (trl.SFTTrainer)",
    "reward": "reward model on preference pairs (trl.RewardTrainer)",
    "dpo": "direct preference optimisation against a frozen reference (trl.DPOTrainer)",
    "ppo": "PPO with a reward model or rule, value model and frozen reference (align's own loop)",
    "grpo": "GRPO: groups of completions per prompt scored by rules and/or reward models (trl.GRPOTrainer)",
    "rloo": "RLOO: REINFORCE with a leave-one-out baseline over completions per prompt (trl.RLOOTrainer)",
    "kto": "KTO on unpaired thumbs-up/down rows or split pairs, against a frozen reference (trl.KTOTrainer)",
    "orpo": "ORPO: SFT + odds-ratio preference loss, no reference model (trl.experimental ORPOTrainer)",
    "simpo": "SimPO: length-normalised preference loss, no reference model (trl.experimental CPOTrainer)",
}


def _stage_command(args: argparse.Namespace) -> int:
    from align import rundir, stages

    _quiet_libraries()
    cfg = stages.load(args.command, args.config, args.overrides)
    result = stages.run(args.command, cfg)
    if not rundir.is_main_process():
        return 0
    print(result.summary_line())
    for key, value in result.notes.items():
        if key == "wandb_sync":
            print(f"W&B run saved offline; upload it with: {value}")
    if "stopped" in result.notes:
        # Same exit code as a pipeline stopped this way: usually the hyper-parameters (learning rate) are to blame.
        print(f"error: {result.notes['stopped']}; the final model was not saved, the last checkpoint is kept "
              f"(see {result.output_dir / rundir.SUMMARY})", file=sys.stderr)
        return 2
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from align import pipeline, rundir

    _quiet_libraries()
    cfg = pipeline.load(args.config, args.overrides)
    results = pipeline.run(cfg, from_stage=args.from_stage, force=args.force)
    if not rundir.is_main_process():
        return 0
    for result in results:
        if "skipped" in result.notes:
            print(f"{result.stage}: finished earlier, skipped -> {result.output_dir}")
            continue
        print(result.summary_line())
        if "wandb_sync" in result.notes:
            print(f"W&B run saved offline; upload it with: {result.notes['wandb_sync']}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from align import config, sweep

    _quiet_libraries()
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise config.ConfigError(f"--shard: expected i/n with 0 <= i < n, got {args.shard!r}")
    cfg = config.load_config(sweep.SweepConfig, args.config)
    ranked = sweep.run(cfg, shard=(int(index), int(count)))
    print(f"{len(ranked)} finished trials ranked by {cfg.metric} ({cfg.mode}) in {cfg.run_dir}/results.md")
    for rank, row in enumerate(ranked[:5], 1):
        print(f"  {rank}. {row['trial']}: {row['metric']}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from align import validate

    results = validate.validate_paths([Path(p) for p in args.paths])
    failed = 0
    for path, problem in results:
        if problem is None:
            print(f"ok      {path}")
        else:
            failed += 1
            print(f"invalid {path}: {problem}")
    print(f"{len(results) - failed} valid, {failed} invalid")
    return 2 if failed else 0


def _models_list(args: argparse.Namespace) -> int:
    from align import registry

    for name, alias in registry.ALIASES.items():
        state = f"pulled at {registry.alias_path(name)}" if registry.is_pulled(name) else "not pulled"
        print(f"{name}\t{state}\n    {alias.description}")
    return 0


def _models_pull(args: argparse.Namespace) -> int:
    from align import registry

    path = registry.pull(args.name, force=args.force)
    print(f"{args.name} -> {path}")
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    import data_formats

    result = data_formats.inspect(args.path, args.kind, format=args.format)
    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else data_formats.render_inspect(result))
    return 0 if result["valid"] else 2


def _data_convert(args: argparse.Namespace) -> int:
    import data_formats

    report = data_formats.convert(args.path, args.kind, args.out, format=args.format, on_error=args.on_error)
    print(report.summary())
    print(f"wrote {report.rows_out} rows to {args.out}")
    return 0


def _load_options(args: argparse.Namespace, schema: type):
    """A command's config from --config, then its options, then KEY=VALUE overrides, through the strict loader. A
    command with a positional field takes its value as the one argument that is not KEY=VALUE."""
    from align import config

    _quiet_libraries()
    overrides = [item for item in args.overrides if "=" in item]
    plain = [item for item in args.overrides if "=" not in item]
    positional = getattr(args, "positional", None)
    if len(plain) > (1 if positional else 0):
        raise config.ConfigError(f"unexpected argument {plain[-1]!r}; overrides are KEY=VALUE")
    if plain:
        if hasattr(args, positional):
            raise config.ConfigError(f"{positional}: given twice ({plain[0]!r} and {getattr(args, positional)!r})")
        setattr(args, positional, plain[0])
    options = config.given_options(args, schema)
    return config.load_config(schema, args.config, options + overrides)


def _eval(args: argparse.Namespace) -> int:
    from align import eval as evaluation

    result = evaluation.run(_load_options(args, evaluation.EvalConfig))
    print(result.markdown)
    print(f"wrote {', '.join(path.name for path in result.files)} to {result.files[0].parent}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from align.probe import ProbeConfig, command, results

    cfg = _load_options(args, ProbeConfig)
    result = command.run(cfg)
    print(results.markdown(result))
    if not result.passed:
        print(f"the reward model prefers the degraded reply '{result.worst}' too often; RL stages will refuse it")
    return 0 if result.passed else 1


def _add_options_command(sub: argparse._SubParsersAction, name: str, schema: type, func, *, help_text: str,
                         description: str, example: str, positional: str | None = None) -> None:
    """A command whose options are the fields of its config dataclass (align.config); the field named
    `positional` may also be given as the first argument."""
    from align import config

    p = sub.add_parser(name, help=help_text, description=description + " Settings come from --config, then the "
                       "options, then KEY=VALUE overrides (later wins).")
    p.add_argument("--config", metavar="FILE", help=f"YAML file of these settings, keyed by field name ({example})")
    config.add_options(p, schema)
    # One list for both, as argparse cannot place an optional positional between options and overrides.
    shown = f"[{positional.upper()}] KEY=VALUE" if positional else "KEY=VALUE"
    p.add_argument("overrides", nargs="*", metavar=shown, help=f"overrides, e.g. {example.replace(': ', '=')}" + (
        f"; {positional.upper()} is the same as {config.option_name(positional)}" if positional else ""))
    p.set_defaults(func=func, positional=positional)


def _report(args: argparse.Namespace) -> int:
    from align import report

    print(f"wrote {report.run(_load_options(args, report.ReportConfig))}")
    return 0


def _chat(args: argparse.Namespace) -> int:
    from align.use import ChatConfig, chat

    chat.run(_load_options(args, ChatConfig), input, lambda text: print(text, end="", flush=True))
    return 0


def _export(args: argparse.Namespace) -> int:
    from align.use import ExportConfig, export

    result = export.run(_load_options(args, ExportConfig))
    print(f"export check passed: {result.verification.summary()}")
    for path in result.files:
        print(f"  {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"exported and checked in {result.seconds:.0f} s")
    return 0


def _add_option_commands(sub: argparse._SubParsersAction) -> None:
    from align.eval import EvalConfig
    from align.probe import ProbeConfig
    from align.report import ReportConfig
    from align.use import ChatConfig, ExportConfig

    _add_options_command(
        sub, "eval", EvalConfig, _eval, example="num_samples: 200",
        help_text="compare a policy (or a pipeline run's stages) with its reference: win rate, KL, implicit DPO "
        "reward accuracy beside its baselines, length, EOS and repetition",
        description="Evaluate a policy against its reference on a data file; writes eval.json, eval.md, "
        "samples.jsonl, config.yaml and PNG plots. See docs/evaluation.md.")
    _add_options_command(
        sub, "probe", ProbeConfig, _probe, example="num_samples: 100",
        help_text="does a reward model prefer degraded replies (loops, list spam, padding, truncation, ...)? "
        "exit 1 when a variant wins more often than the threshold",
        description="Degrade the chosen replies of preference pairs 8 ways and report, per way, how often the reward "
        "model scores the degraded reply above the original, with 95% intervals; writes probe.json, probe.md and "
        "config.yaml. See docs/evaluation.md.", positional="reward_model")
    _add_options_command(
        sub, "report", ReportConfig, _report, example="samples: 8", positional="run_dir",
        help_text="one self-contained HTML page for a stage or pipeline run: lineage, curves, eval tables with "
        "baselines and intervals, probe, health alerts, replies side by side, cost",
        description="Write a static HTML report (no server, no network, plots embedded) of a run dir. See "
        "docs/report.md.")
    _add_options_command(
        sub, "chat", ChatConfig, _chat, example="max_new_tokens: 128", positional="model",
        help_text="talk to a model (alias, stage output, LoRA adapter, pipeline run) with its chat template, replies "
        "streamed; --compare a second one; --prompt / --prompts for scripts",
        description="Chat in the terminal with a model and its own chat template. In the chat: /reset, /system "
        "TEXT, /save FILE (OpenAI messages JSON), /quit. --prompt TEXT prints only the reply (greedy unless "
        "--temperature); --prompts FILE --out FILE.jsonl answers every prompt of a data file.")
    _add_options_command(
        sub, "export", ExportConfig, _export, example="quant: q8_0", positional="model",
        help_text="write a model as a merged Hugging Face checkpoint with a model card (--format hf) or one GGUF "
        "file with an Ollama Modelfile (--format gguf), checked against its source",
        description="Export a model (LoRA adapters merged) and check it: the export is loaded back with transformers "
        "and its next-token logits on fixed chat prompts are compared with the source model's; a mismatch is an "
        "error. Writes export.json with the figures beside the files.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="Staged preference alignment: SFT, reward model, "
                                     "DPO, PPO, on transformers + trl + peft + accelerate.")
    parser.add_argument("--version", action="version", version=f"align {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, help_text in STAGE_HELP.items():
        p = sub.add_parser(name, help=help_text, description=f"Run the {name} stage: {help_text}.")
        p.add_argument("--config", required=True, help="stage YAML file")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides, e.g. train.max_steps=10")
        p.set_defaults(func=_stage_command)

    p = sub.add_parser("pipeline", help="run stages in order, each stage's output feeding the next (sft -> dpo, ...)",
                       description="Run a staged pipeline; see align/pipeline.py for the wiring and re-run rules.")
    p.add_argument("--config", required=True, help="pipeline YAML (stage: pipeline)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every stage after it")
    p.add_argument("--force", action="store_true", help="rerun every stage, finished or not")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides; prefix a stage name to reach a stage, e.g. dpo.beta=0.2")
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("sweep", help="run a stage or pipeline over a grid / random search of overrides",
                       description="Run trials of a stage or pipeline config; see align/sweep.py.")
    p.add_argument("--config", required=True, help="sweep YAML (stage: sweep)")
    p.add_argument("--shard", default="0/1", help="run every n-th trial starting at i, as i/n (one process per GPU)")
    p.set_defaults(func=_sweep)

    _add_option_commands(sub)

    p = sub.add_parser("validate", help="load and check every YAML config found (recursively); trains nothing")
    p.add_argument("paths", nargs="+", help="YAML files or directories")
    p.set_defaults(func=_validate)

    models_parser = sub.add_parser("models", help="list or pull registered model aliases")
    models_sub = models_parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    p = models_sub.add_parser("list", help="registered aliases and whether they are in the cache")
    p.set_defaults(func=_models_list)
    p = models_sub.add_parser("pull", help="download and convert an alias into the cache ($ALIGN_CACHE_DIR)")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="pull again even if cached")
    p.set_defaults(func=_models_pull)

    data_parser = sub.add_parser("data", help="inspect or convert datasets")
    data_sub = data_parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = data_sub.add_parser("inspect", help="detected format, row counts, problems, lengths, examples")
    p.add_argument("path")
    p.add_argument("--kind", choices=["sft", "preference", "prompt", "kto"], default=None)
    p.add_argument("--format", default="auto")
    p.add_argument("--json", action="store_true", help="one machine-readable JSON object")
    p.set_defaults(func=_data_inspect)
    p = data_sub.add_parser("convert", help="write canonical JSONL rows and a report")
    p.add_argument("path")
    p.add_argument("--kind", required=True, choices=["sft", "preference", "prompt", "kto"])
    p.add_argument("--out", required=True)
    p.add_argument("--format", default="auto")
    p.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    p.set_defaults(func=_data_convert)
    return parser


def _quiet_libraries() -> None:
    """Keep the terminal to our progress bar and log lines: no per-map progress bars or info chatter."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    logging.getLogger("gguf").setLevel(logging.WARNING)  # GGUFWriter logs every metadata key, the template included
    transformers.logging.set_verbosity_warning()
    transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # argparse fills a trailing `*` positional once, so KEY=VALUE overrides after the options come back unparsed.
    args, extra = parser.parse_known_args(argv)
    if extra and (not isinstance(getattr(args, "overrides", None), list) or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # 143 after SIGTERM (errors.Terminated)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
