"""align.reward_functions: the one loader and caller behind PPO's reward_model.function and eval's rule judge."""

import json

import pytest

from align import reward_functions
from align.errors import ConfigError


def test_spec_problems(tmp_path):
    assert "expected 'module:function'" in reward_functions.spec_problem("json")
    assert "expected 'module:function'" in reward_functions.spec_problem("json:not-a-name")
    assert reward_functions.spec_problem(f"{tmp_path}/missing.py:fn") == f"file '{tmp_path}/missing.py' not found"
    assert "module 'no_such_module_x' not found" in reward_functions.spec_problem("no_such_module_x:fn")
    assert reward_functions.spec_problem("json:dumps") is None


def test_load_from_a_module_and_from_a_file(tmp_path):
    assert reward_functions.load("json:dumps", "opt") is json.dumps
    path = tmp_path / "rules.py"
    path.write_text("def length(prompts, completions):\n    return [len(c) for c in completions]\n")
    fn = reward_functions.load(f"{path}:length", "opt")
    assert fn(["p", "q"], ["ab", "abc"]) == [2, 3]


def test_load_errors_start_with_the_option(tmp_path):
    with pytest.raises(ConfigError, match=r"^reward_model.function: module 'no_such_module_x' not found"):
        reward_functions.load("no_such_module_x:fn", "reward_model.function")
    with pytest.raises(ConfigError, match=r"^--judge rule:json:nope: 'json' has no function 'nope'"):
        reward_functions.load("json:nope", "--judge rule:json:nope")
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_y\n")
    with pytest.raises(ConfigError, match=r"^opt: importing .*broken.py' failed: No module named 'no_such_module_y'"):
        reward_functions.load(f"{broken}:fn", "opt")


def test_scores_are_floats_one_per_completion():
    assert reward_functions.scores(lambda p, c: (1, 2.5), ["a", "b"], ["x", "y"], "opt") == [1.0, 2.5]
    with pytest.raises(ConfigError, match=r"^opt: must return one float per completion \(2\), got list of length 1"):
        reward_functions.scores(lambda p, c: [1.0], ["a", "b"], ["x", "y"], "opt")
    with pytest.raises(ConfigError, match=r"got float of length \?"):
        reward_functions.scores(lambda p, c: 1.0, ["a"], ["x"], "opt")


def test_the_example_rules_on_hand_scored_replies():
    rules = reward_functions.load("examples/rewards.py:concise", "t").__globals__
    prompt = ("system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face\nuser\n"
              "Describe the process of making crepes.\nassistant\n")
    replies = ["OK.",                                                      # no topic word, too short
               "Whisk flour, eggs and milk, then fry each crepe thinly.",  # 10 words, "crepe" ~ "crepes"
               "The weather in the park is lovely today.",                 # on no topic: "process" is not there
               " ".join(["crepes"] * 45),                                  # on topic, 45 words: 2 - 45/30 = 0.5
               "Crepes!"]                                                  # on topic but under 3 words
    prompts = [prompt] * len(replies)
    assert rules["on_topic"](prompts, replies) == [0.0, 1.0, 0.0, 1.0, 1.0]
    assert rules["concise"](prompts, replies) == [1.0, 1.0, 1.0, 0.5, 1.0]
    assert rules["brief_on_topic"](prompts, replies) == [0.0, 1.0, 0.0, 0.5, 0.0]
    # Instruction words ("describe", "following", ...) and the system prompt are not the topic.
    assert rules["on_topic"]([prompt], ["Let me describe the following, SmolLM assistant."]) == [0.0]
