"""LAMBADA: lm-eval's context/target split, greedy accuracy and perplexity against direct computation."""

import json
import math

import pytest
import torch

from fixtures.eval_tiny import TASKS_DIR, next_token_logprobs, tiny_pair
from meshlm.errors import MeshLMError
from meshlm.eval.lambada import encode_pair, lambada, split_last_word

LAMBADA_FILE = TASKS_DIR / "lambada.jsonl"


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


def direct(model, tokenizer, text: str) -> tuple[float, bool, int]:
    """Target log-likelihood, greedy match and target length from one unbatched forward pass."""
    words = text.split(" ")
    context, target = " ".join(words[:-1]), " " + words[-1]
    n_context = len(tokenizer.encode(context.rstrip()))
    whole = tokenizer.encode(context + target)
    target_ids = whole[n_context:]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0, n_context - 1 :]
    greedy = logits.argmax(-1).tolist() == target_ids
    logprob = float(next_token_logprobs(model, whole)[n_context - 1 :].double().sum())
    return logprob, greedy, len(target_ids)


def test_split_follows_lm_eval_templates():
    assert split_last_word("the old lamp") == ("the old", " lamp")
    assert split_last_word("toward the  sea") == ("toward the ", " sea")
    assert split_last_word("word") == ("", " word")


def test_encode_pair_moves_trailing_spaces_into_the_target(pair):
    _, tokenizer = pair
    context, target = encode_pair(tokenizer, "toward the ", " sea")
    assert context == tokenizer.encode("toward the")
    assert context + target == tokenizer.encode("toward the  sea")
    prefix, alone = encode_pair(tokenizer, "", " sea")
    assert prefix == [tokenizer.eos_token_id] and alone == tokenizer.encode(" sea")


@pytest.mark.parametrize("batch_size", [1, 4])
def test_lambada_matches_direct_greedy_and_nll(pair, batch_size):
    model, tokenizer = pair
    texts = [json.loads(line)["text"] for line in LAMBADA_FILE.read_text().splitlines()]
    expected = [direct(model, tokenizer, t) for t in texts]
    assert max(n for _, _, n in expected) >= 3 and min(n for _, _, n in expected) <= 2  # multi-token targets
    accuracy = sum(g for _, g, _ in expected) / len(texts)
    assert 0 < accuracy < 1  # the tiny model gets some right and some wrong, so the check has teeth
    result = lambada(model, tokenizer, LAMBADA_FILE, batch_size=batch_size, device="cpu")
    assert result["examples"] == len(texts)
    assert result["target_tokens"] == sum(n for _, _, n in expected)
    assert result["acc"] == accuracy
    mean_nll = -sum(ll for ll, _, _ in expected) / len(texts)
    assert result["mean_nll"] == pytest.approx(mean_nll, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(mean_nll), rel=1e-5)


def test_lambada_accepts_records_and_truncates_long_contexts(pair):
    model, tokenizer = pair
    long_text = " ".join(["the river carried the little boat"] * 30) + " home"
    assert len(tokenizer.encode(long_text)) > 64
    result = lambada(model, tokenizer, [{"text": long_text}], device="cpu")
    ids = tokenizer.encode(long_text)
    n_target = len(ids) - len(tokenizer.encode(long_text.rpartition(" ")[0]))
    kept = ids[-65:]  # the last max_positions + 1 tokens, as lm-eval truncates
    expected = -float(next_token_logprobs(model, kept)[-n_target:].double().sum())
    assert result["mean_nll"] == pytest.approx(expected, rel=1e-5)


def test_lambada_file_errors(tmp_path, pair):
    model, tokenizer = pair
    with pytest.raises(MeshLMError, match="does not exist"):
        lambada(model, tokenizer, tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine line"}\n{"no_text": 1}\n')
    with pytest.raises(MeshLMError, match=r"bad\.jsonl:2: each jsonl line must be an object"):
        lambada(model, tokenizer, bad)
    bad.write_text("not json\n")
    with pytest.raises(MeshLMError, match="malformed JSON"):
        lambada(model, tokenizer, bad)
