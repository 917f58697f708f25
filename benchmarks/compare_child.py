"""Run a Python module, script or code string in this process and record how its training steps went.

    python compare_child.py OUT_DIR -m align.cli sft --config sft.yaml
    python compare_child.py OUT_DIR path/to/script.py ARGS...
    python compare_child.py OUT_DIR -c CODE ARGS...

Writes OUT_DIR/child_steps.jsonl: one record per optimizer step of any transformers Trainer (TRL's included), from
the trainer's own `on_step_end` dispatch, with wall clock, this process's CPU time (all threads), input tokens seen
and minor page faults so far. Both sides of a comparison are timed by the same code, without adding a callback to
either. At exit writes OUT_DIR/child_stats.json with the peak CUDA memory, which can only be read inside the process
that trained. Standard library only at import: it also runs under the TRL 1.12 venv's python.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import runpy
import sys
import time


def record_steps(path: str) -> None:
    from transformers.trainer_callback import CallbackHandler

    log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - written at every step until the process exits
    original = CallbackHandler.on_step_end

    def on_step_end(self, args, state, control):
        log.write(json.dumps({"step": state.global_step, "time": time.time(), "cpu": time.process_time(),
                              "num_input_tokens_seen": state.num_input_tokens_seen,
                              "minor_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}) + "\n")
        log.flush()
        return original(self, args, state, control)

    CallbackHandler.on_step_end = on_step_end


def record_memory(path: str) -> None:
    torch = sys.modules.get("torch")
    used = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    peak = torch.cuda.max_memory_allocated() / 2**20 if used else None
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"cuda_peak_mb": peak}, f)


def main() -> None:
    out, target, *rest = sys.argv[1:]
    atexit.register(record_memory, os.path.join(out, "child_stats.json"))
    record_steps(os.path.join(out, "child_steps.jsonl"))
    if target == "-m":
        sys.argv = [rest[0], *rest[1:]]
        sys.path[0] = os.getcwd()  # as `python -m` does
        runpy.run_module(rest[0], run_name="__main__", alter_sys=True)
    elif target == "-c":
        sys.argv = ["-c", *rest[1:]]
        sys.path[0] = ""
        exec(compile(rest[0], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102 - what `python -c` does
    else:
        sys.argv = [target, *rest]
        sys.path[0] = os.path.dirname(os.path.abspath(target))
        runpy.run_path(target, run_name="__main__")


if __name__ == "__main__":
    main()
