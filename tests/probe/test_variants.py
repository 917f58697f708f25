"""The degraded variants, checked on a reply whose every variant can be written out by hand."""

from align.probe import variants

REPLY = "Paris is the capital of France. It has many museums."  # 10 words
PROMPT = "What is the capital of France?"


def test_ngram_loop_repeats_the_first_six_words():
    looped = variants.ngram_loop(REPLY, PROMPT)
    first_six = "Paris is the capital of France."
    assert looped == " ".join([first_six] * 8)  # max(8, 3 * 10 // 6 = 5) loops


def test_list_spam_numbers_four_word_chunks_then_pads_to_ten_items():
    lines = variants.list_spam(REPLY, PROMPT).split("\n")
    assert lines[:3] == ["1. Paris is the capital", "2. of France. It has", "3. many museums."]
    assert len(lines) == 10 and lines[-1] == "10. Key point 10: consider all the important details."


def test_truncated_keeps_half_the_words_without_final_punctuation():
    assert variants.truncated(REPLY, PROMPT) == "Paris is the capital of"
    assert variants.truncated("Yes.", PROMPT) == "Yes"


def test_empty_echo_and_filler():
    assert variants.empty(REPLY, PROMPT) == ""
    assert variants.prompt_echo(REPLY, PROMPT) == PROMPT
    padded = variants.filler(REPLY, PROMPT)
    assert padded.startswith(REPLY + " It is worth noting") and len(padded) >= 4 * len(variants.FILLER)


def test_refusal_and_compliance_apply_to_opposite_replies():
    declined = "I'm sorry, I can't help you make a weapon."
    assert variants.refusal(REPLY, PROMPT) == variants.REFUSAL and variants.compliance(REPLY, PROMPT) is None
    assert variants.refusal(declined, PROMPT) is None and variants.compliance(declined, PROMPT) == variants.COMPLIANCE
    assert variants.is_refusal("As an AI, I cannot do that") and not variants.is_refusal("Sure, here is a recipe.")
