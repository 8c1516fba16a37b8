"""Token-level sliding-window perplexity, bits per byte and document-level rolling perplexity."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fixtures.eval_tiny import PARAGRAPHS, brute_force_logprobs, next_token_logprobs, promised_start, tiny_pair
from meshlm.errors import MeshLMError
from meshlm.eval.perplexity import (
    bits_per_byte,
    count_words,
    documents_to_stream,
    rolling_document_perplexity,
    sliding_windows,
    token_perplexity,
    window_items,
)


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def stream(pair) -> list[int]:
    _, tokenizer = pair
    ids = tokenizer.encode(" ".join(PARAGRAPHS[2:4]))
    assert len(ids) > 70
    return ids[:70]


class UniformLM(nn.Module):
    """All-zero logits over ``vocab`` tokens: every token costs exactly ln(vocab) nats."""

    def __init__(self, vocab: int):
        super().__init__()
        self.config = SimpleNamespace(max_position_embeddings=32)
        self.vocab = vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab) + 0 * self.dummy)


@pytest.mark.parametrize(("n", "context", "stride"), [(2, 1, 1), (10, 4, 4), (11, 4, 3), (50, 16, 5), (17, 16, 16)])
def test_windows_score_every_token_once_within_the_promised_context(n, context, stride):
    seen = []
    for start, end, first in sliding_windows(n, context, stride):
        assert 0 <= start < first <= end and end - start <= context
        for t in range(first, end + 1):
            seen.append(t)
            assert start == promised_start(t, n, context, stride)
            assert min(t, context - stride + 1) <= t - start <= context
    assert seen == list(range(1, n))


def test_stride_equal_to_context_gives_disjoint_input_windows():
    windows = sliding_windows(40, 8, 8)
    assert [(s, e) for s, e, _ in windows] == [(0, 8), (8, 16), (16, 24), (24, 32), (31, 39)]
    # every window scores all its positions, except the last, left-extended to a full context
    assert [e + 1 - f for _, e, f in windows] == [8, 8, 8, 8, 7]


@pytest.mark.parametrize(("context", "stride"), [(8, 9), (8, 0), (0, 1)])
def test_bad_context_or_stride_is_refused(context, stride):
    with pytest.raises(MeshLMError, match=r"stride|context"):
        sliding_windows(20, context, stride)


def test_one_window_equals_a_single_forward_pass(pair, stream):
    model, _ = pair
    ids = stream[:40]
    direct = -next_token_logprobs(model, ids).double()
    result = token_perplexity(model, torch.tensor(ids), context=64, batch_size=4, device="cpu")
    assert result["windows"] == 1 and result["tokens"] == len(ids) - 1
    assert result["loss"] == pytest.approx(float(direct.mean()), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(float(direct.mean())), rel=1e-6)


@pytest.mark.parametrize(("context", "stride", "batch_size"), [(16, 5, 3), (16, 16, 2), (9, 1, 8)])
def test_sliding_windows_equal_brute_force_per_token_scoring(pair, stream, context, stride, batch_size):
    model, _ = pair
    expected = brute_force_logprobs(model, stream, context, stride)
    result = token_perplexity(model, torch.tensor(stream), context, stride, batch_size=batch_size, device="cpu")
    assert result["tokens"] == len(stream) - 1
    assert result["nll_sum"] == pytest.approx(-sum(expected), rel=1e-5)
    # more context per token cannot be told apart from less by a test this small, but the
    # windowed loss must differ from the fully-conditioned single pass when context < stream
    single = -float(next_token_logprobs(model, stream).sum())
    assert result["nll_sum"] != pytest.approx(single, rel=1e-6)


def test_token_perplexity_refuses_bad_input(pair):
    model, _ = pair
    with pytest.raises(MeshLMError, match="at least 2 tokens"):
        token_perplexity(model, torch.tensor([5]), context=8)
    with pytest.raises(MeshLMError, match=r"outside 1\.\.64"):
        token_perplexity(model, torch.arange(10), context=65)
    with pytest.raises(MeshLMError, match="stride"):
        token_perplexity(model, torch.arange(10), context=8, stride=9)


def test_bits_per_byte_by_hand():
    # 4 tokens, 3 scored, each costing ln 256 nats = 8 bits, over 6 bytes -> 24 / 6 = 4 bits per byte
    result = token_perplexity(UniformLM(256), torch.tensor([1, 2, 3, 4]), context=4, n_bytes=6)
    assert result["loss"] == pytest.approx(math.log(256))
    assert result["perplexity"] == pytest.approx(256)
    assert result["bits_per_byte"] == pytest.approx(4.0)
    assert bits_per_byte(3 * math.log(2), 3) == pytest.approx(1.0)
    with pytest.raises(MeshLMError, match="positive byte count"):
        bits_per_byte(1.0, 0)


def test_documents_to_stream_puts_eos_before_each_document(pair):
    _, tokenizer = pair
    docs = ["The lamp.", "Über the bridge."]
    tokens, n_bytes = documents_to_stream(tokenizer, docs)
    eos = tokenizer.eos_token_id
    expected = [eos, *tokenizer.encode(docs[0]), eos, *tokenizer.encode(docs[1])]
    assert tokens.tolist() == expected
    assert n_bytes == len(b"The lamp.") + len("Über the bridge.".encode()) == 26
    capped, capped_bytes = documents_to_stream(tokenizer, docs, max_tokens=2)
    assert capped.tolist() == expected[: 1 + len(tokenizer.encode(docs[0]))] and capped_bytes == 9


def test_rolling_perplexity_equals_direct_per_document_computation(pair):
    model, tokenizer = pair
    docs = [PARAGRAPHS[0], "A short one.", PARAGRAPHS[4] + "  " + PARAGRAPHS[5]]
    context = 24
    result = rolling_document_perplexity(model, tokenizer, docs, context=context, batch_size=3, device="cpu")
    eos = tokenizer.eos_token_id
    loglikelihood = 0.0
    for doc in docs:
        ids = [eos, *tokenizer.encode(doc)]
        if len(ids) <= context + 1:  # one window: a single forward pass
            loglikelihood += float(next_token_logprobs(model, ids).double().sum())
        else:  # disjoint rolling windows of `context` tokens
            loglikelihood += sum(brute_force_logprobs(model, ids, context, context))
    assert any(len(tokenizer.encode(d)) > 2 * context for d in docs)
    words = sum(len(d.split()) for d in docs)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert result["loglikelihood"] == pytest.approx(loglikelihood, rel=1e-5)
    assert result["words"] == words and result["bytes"] == n_bytes
    assert result["tokens"] == sum(len(tokenizer.encode(d)) for d in docs)
    assert result["word_perplexity"] == pytest.approx(math.exp(-loglikelihood / words), rel=1e-5)
    assert result["byte_perplexity"] == pytest.approx(math.exp(-loglikelihood / n_bytes), rel=1e-5)
    assert result["bits_per_byte"] == pytest.approx(-loglikelihood / n_bytes / math.log(2), rel=1e-5)


def test_rolling_windows_match_lm_eval(pair):
    utils = pytest.importorskip("lm_eval.utils")
    prefix = 0
    for n_tokens, context in [(1, 4), (4, 4), (5, 4), (9, 4), (23, 5)]:
        ids = list(range(1, n_tokens + 1))
        theirs = [
            utils.make_disjoint_window(w)
            for w in utils.get_rolling_token_windows(ids, prefix_token=prefix, max_seq_len=context, context_len=1)
        ]
        ours = window_items(torch.tensor([prefix, *ids]), context, context)
        assert [((ctx + cont)[:-1], cont) for ctx, cont in theirs] == [
            (item.inputs.tolist(), item.targets.tolist()) for item in ours
        ]


def test_count_words_follows_lm_eval():
    assert count_words("a b  c\nd") == 4
    assert count_words(" leading space") == 3  # re.split keeps the empty first piece, as lm-eval counts it


def test_sliding_windows_work_unchanged_with_a_meshlm_model():
    from meshlm import MeshLMConfig, MeshLMForCausalLM

    config = MeshLMConfig(
        vocab_size=97,
        hidden_size=32,
        num_attention_heads=4,
        max_position_embeddings=32,
        layout="1+2R2+1",
        scheme="mesh",
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = MeshLMForCausalLM(config).eval()
    stream = torch.randint(0, 97, (50,), generator=torch.Generator().manual_seed(0)).tolist()
    expected = brute_force_logprobs(model, stream, 16, 5)
    result = token_perplexity(model, torch.tensor(stream), 16, 5, batch_size=4, device="cpu")
    assert result["tokens"] == 49 and result["nll_sum"] == pytest.approx(-sum(expected), rel=1e-5)
