"""Probe summaries and the RL gate, against hand-computed values, with a judge whose preferences are known."""

from align.probe import results, scoring, variants


def fixed_interval(values):
    return (min(values), max(values))


def test_summarise_counts_wins_ties_and_margins_by_hand():
    originals = [1.0, 2.0, 3.0]
    scored = {"empty": [(0, 0.0), (1, 2.0), (2, 4.0)], "filler": []}
    result = results.summarise("rm", 0.5, originals, scored, fixed_interval)
    empty = result.variants["empty"]
    assert (empty.n, empty.win_rate, empty.mean_margin) == (3, 0.5, 0.0)  # lose, tie, win; -1 + 0 + 1
    assert empty.ci == (0.0, 1.0) and "filler" not in result.variants  # a variant with no cases is left out
    assert result.passed and result.worst == "empty"


def test_a_length_loving_judge_fails_on_padding_and_the_gate_names_it():
    def by_length(prompts, replies):
        return [float(len(reply[0]["content"])) for reply in replies]

    prompts = [[{"role": "user", "content": "Tell me about Paris."}]] * 2
    replies = ["Paris is the capital of France. It has many museums.", "I'm sorry, I can't help with that."]
    result = scoring.probe(by_length, prompts, replies, reward_model="rm", threshold=0.5,
                           interval=fixed_interval, batch_size=3)
    v = result.variants
    assert v["filler"].win_rate == 1.0 and v["ngram_loop"].win_rate == 1.0
    assert v["empty"].win_rate == 0.0 and v["truncated"].win_rate == 0.0
    assert v["refusal"].n == 1 and v["compliance"].n == 1  # one helpful reply, one refusal
    assert scoring.job_count(replies, prompts) == 2 + 6 * 2 + 1 + 1
    assert not result.passed
    message = results.refusal_message(result, "ppo", "ppo.probe_threshold=1")
    assert "'filler'" in message or "'ngram_loop'" in message
    assert "100% of 2 cases" in message and "ppo.probe_threshold=1" in message
    assert set(result.to_dict()) >= {"variants", "worst", "passed", "threshold"}
    assert "FAIL" in results.markdown(result)


def test_a_judge_that_prefers_the_original_passes():
    def prefers_original(prompts, replies):
        return [1.0 if reply[0]["content"] == "A good, complete answer." else 0.0 for reply in replies]

    result = scoring.probe(prefers_original, [[{"role": "user", "content": "q"}]], ["A good, complete answer."],
                           reward_model="rm", threshold=0.0, interval=fixed_interval, batch_size=8)
    assert result.passed and results.refusal_message(result, "ppo", "x") is None
    assert set(result.variants) == set(variants.VARIANTS) - {"compliance"}
