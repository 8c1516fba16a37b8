"""``meshlm generate``: the CLI prints what the model's own ``generate`` gives, seeded sampling, loop counts, errors."""

import re
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import save_recursive_model
from fixtures.eval_tiny import tiny_pair
from meshlm import MeshLMForCausalLM
from meshlm.cli import main
from meshlm.convert import from_gpt_neox
from meshlm.generate import Sampling, generate_ids

PROMPT = "The old lighthouse keeper"
NEW = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The eval fixtures' briefly trained GPT-NeoX as a vanilla meshlm model, saved with its tokenizer."""
    folder = tmp_path_factory.mktemp("vanilla")
    neox, tokenizer = tiny_pair()
    from_gpt_neox(neox).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def recursive_dir(tmp_path_factory):
    """A random recursive MeSH model (K = 2) whose weights are large enough that the loop count shows."""
    torch.manual_seed(0)
    _, tokenizer = tiny_pair()
    folder = tmp_path_factory.mktemp("recursive")
    return save_recursive_model(folder, tokenizer, initializer_range=0.3, eos_token_id=tokenizer.eos_token_id)


def generate(capsys, folder, *extra) -> str:
    """stdout of a successful ``meshlm generate FOLDER --prompt PROMPT ...`` on CPU."""
    assert main(["generate", str(folder), "--prompt", PROMPT, "--device", "cpu", *extra]) == 0
    captured = capsys.readouterr()
    assert "new tokens in" in captured.err
    return captured.out


def reference(folder, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, the model's own ``generate`` output) for the saved folder."""
    model = MeshLMForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    pad = tokenizer.pad_token_id
    return ids, model.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=pad, **kwargs)


def decoded(folder, ids: torch.Tensor) -> str:
    return AutoTokenizer.from_pretrained(folder).decode(ids[0].tolist(), skip_special_tokens=True) + "\n"


def test_greedy_default_equals_the_models_generate_token_for_token(model_dir, capsys):
    ids, expected = reference(model_dir, max_new_tokens=NEW, do_sample=False)
    assert expected.shape[1] > ids.shape[1] + 3  # the model writes something before its end of text
    model = MeshLMForCausalLM.from_pretrained(model_dir).eval()
    for cache in ("dynamic", "static"):
        assert torch.equal(generate_ids(model, ids, Sampling(max_new_tokens=NEW), cache=cache), expected)
    assert generate(capsys, model_dir, "--max-new-tokens", str(NEW)) == decoded(model_dir, expected)
    assert generate(capsys, model_dir, "--max-new-tokens", str(NEW), "--cache", "static") == decoded(
        model_dir, expected
    )


def test_a_seed_repeats_its_sample_and_another_seed_differs(recursive_dir, capsys):
    sample = ("--max-new-tokens", str(NEW), "--temperature", "1.0", "--top-k", "0")
    first = generate(capsys, recursive_dir, *sample, "--seed", "1")
    assert generate(capsys, recursive_dir, *sample, "--seed", "1") == first
    assert generate(capsys, recursive_dir, *sample, "--seed", "2") != first
    assert generate(capsys, recursive_dir, "--max-new-tokens", str(NEW)) != first  # sampling, not greedy


@pytest.mark.parametrize("narrow", [("--top-k", "1"), ("--top-p", "1e-6")])
def test_sampling_narrowed_to_one_token_is_greedy(recursive_dir, capsys, narrow):
    greedy = generate(capsys, recursive_dir, "--max-new-tokens", str(NEW))
    sampled = generate(capsys, recursive_dir, "--max-new-tokens", str(NEW), "--temperature", "2", *narrow)
    assert sampled == greedy


def test_sampling_leaves_the_callers_rng_as_it_was(recursive_dir):
    model = MeshLMForCausalLM.from_pretrained(recursive_dir).eval()
    state = torch.get_rng_state()
    generate_ids(model, torch.tensor([[5, 6, 7]]), Sampling(max_new_tokens=4, temperature=1.0, seed=3))
    assert torch.equal(torch.get_rng_state(), state)


def test_num_loops_runs_the_shared_core_k_times(recursive_dir, capsys):
    default = generate(capsys, recursive_dir, "--max-new-tokens", str(NEW))
    assert generate(capsys, recursive_dir, "--max-new-tokens", str(NEW), "--num-loops", "2") == default
    for k, cache in ((1, "dynamic"), (3, "dynamic"), (3, "static")):
        _, expected = reference(recursive_dir, max_new_tokens=NEW, do_sample=False, num_loops=k)
        out = generate(capsys, recursive_dir, "--max-new-tokens", str(NEW), "--num-loops", str(k), "--cache", cache)
        assert out == decoded(recursive_dir, expected) != default


def test_a_training_run_folder_is_accepted(model_dir, tmp_path, capsys):
    shutil.copytree(model_dir, tmp_path / "run" / "model")
    run = generate(capsys, tmp_path / "run", "--max-new-tokens", str(NEW))
    assert run == generate(capsys, model_dir, "--max-new-tokens", str(NEW))


@pytest.mark.parametrize(
    ("folder", "extra", "message"),
    [
        ("missing", [], "is not a folder"),
        ("empty", [], "is not a model folder"),
        ("no-tokenizer", [], "holds no tokenizer"),
        ("vanilla", ["--top-p", "0"], r"--top-p must be in \(0, 1\]"),
        ("vanilla", ["--top-p", "1.5"], r"--top-p must be in \(0, 1\]"),
        ("vanilla", ["--temperature", "-0.5"], "--temperature must be 0"),
        ("vanilla", ["--temperature", "nan"], "--temperature must be 0"),
        ("vanilla", ["--top-k", "-1"], "--top-k must be 0"),
        ("vanilla", ["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
        ("vanilla", ["--max-new-tokens", "60"], "exceed the model's 64 positions"),
        ("vanilla", ["--seed", "-1"], "--seed must be non-negative"),
        ("vanilla", ["--num-loops", "2"], "has no shared core"),
        ("recursive", ["--num-loops", "0"], "num_loops must be an integer >= 1"),
        ("vanilla", ["--prompt", ""], "--prompt is empty"),
    ],
)
def test_bad_inputs_give_one_error_line(model_dir, recursive_dir, tmp_path, capsys, folder, extra, message):
    (tmp_path / "empty").mkdir()
    no_tokenizer = tmp_path / "no-tokenizer"
    shutil.copytree(model_dir, no_tokenizer)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tokenizer / name).unlink()
    folders = {"vanilla": model_dir, "recursive": recursive_dir}
    path = folders.get(folder, tmp_path / folder)
    assert main(["generate", str(path), "--prompt", PROMPT, "--device", "cpu", *extra]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert re.search(message, lines[0]), lines[0]


@pytest.fixture(scope="module")
def neox_dir(tmp_path_factory):
    """The eval fixtures' GPT-NeoX as it is (a non-meshlm folder), saved with its tokenizer."""
    folder = tmp_path_factory.mktemp("neox")
    neox, tokenizer = tiny_pair()
    neox.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("folder", ["recursive_dir", "neox_dir"])
def test_bfloat16_weights_give_the_models_own_text_with_both_caches(folder, request, capsys):
    """What CUDA runs (bf16 weights, with either cache), on CPU: the text of the bf16 model's generate."""
    folder = request.getfixturevalue(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).to(torch.bfloat16).eval()
    ids = AutoTokenizer.from_pretrained(folder)(PROMPT, return_tensors="pt").input_ids
    expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
    for cache in ("dynamic", "static"):
        out = generate(capsys, folder, "--max-new-tokens", str(NEW), "--dtype", "bfloat16", "--cache", cache)
        assert out == decoded(folder, expected)


@pytest.mark.parametrize(("flag", "dtype"), [((), torch.float32), (("--dtype", "bfloat16"), torch.bfloat16)])
def test_dtype_sets_the_weights_and_the_cache_is_dynamic_by_default(recursive_dir, capsys, monkeypatch, flag, dtype):
    import meshlm.generate

    seen = []
    real = meshlm.generate.generate_ids

    def spy(model, *args, **kwargs):
        seen.append(({p.dtype for p in model.parameters()}, kwargs["cache"]))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(meshlm.generate, "generate_ids", spy)
    generate(capsys, recursive_dir, "--max-new-tokens", "2", *flag)
    assert seen == [({dtype}, "dynamic")]  # auto on CPU: fp32; no compiled static cache unless asked
