"""The probe as a gate before RL: degrade the starting policy's own replies and refuse to train against a reward
model that prefers the degraded ones, since RL would find and amplify exactly that preference."""

from __future__ import annotations

import logging
from pathlib import Path

from align import generation
from align.errors import ConfigError
from align.eval import judges
from align.probe import results, scoring

log = logging.getLogger(__name__)


def check_reward_model(judge: judges.RewardModelJudge, policy, tokenizer, prompts: list[list[dict]], *, name: str,
                       threshold: float, max_new_tokens: int, out: Path, batch_size: int, seed: int, key: str,
                       override: str) -> results.ProbeResult:
    """Probe a reward model (`judge`) on the policy's greedy replies to `prompts` (`tokenizer`: the policy's); write
    probe.json into `out`. A reward model that fails is a ConfigError naming its config `key`, the worst variant
    and the `override`."""
    generated = generation.generate(policy, tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                                    seed=seed, batch_size=batch_size)
    result = scoring.score_and_write(judge, prompts, generated.texts, reward_model=name, threshold=threshold,
                                     out=out, batch_size=batch_size, seed=seed)
    message = results.refusal_message(result, key, override)
    if message:
        raise ConfigError(message)
    log.info("reward model probe passed: no degraded reply outscores the policy's own in more than %.0f%% of %d",
             100 * threshold, len(prompts))
    return result
