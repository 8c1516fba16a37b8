"""A saved model folder carries its modelling code: it loads as HF remote code with meshlm unimportable.

The remote-code checks run in subprocesses where ``import meshlm`` fails (``sys.modules["meshlm"] = None``
blocks the package however it is installed, and PYTHONPATH is dropped); their numbers are compared
with the in-process meshlm model.
"""

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.dynamic_module_utils import get_imports, get_relative_import_files

from conftest import randomize_scheme
from fixtures.eval_tiny import TASKS_DIR, brute_force_logprobs, next_token_logprobs, tiny_pair
from meshlm import MeshLMForCausalLM
from meshlm.convert import from_gpt_neox
from meshlm.errors import MeshLMError
from meshlm.hub import AUTO_MAP, REMOTE_MODULES, export_remote_code, rewrite_imports

BLOCK_MESHLM = 'import sys\nsys.modules["meshlm"] = None  # any `import meshlm...` now raises ImportError\n'


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(model, tokenizer, folder): the tiny trained GPT-NeoX as a MeSH model with active routers, saved."""
    neox, tokenizer = tiny_pair()
    # 65 positions: brute_force_logprobs feeds a 64-token context plus the scored token
    model = from_gpt_neox(neox, layout="1+1R2+0", scheme="mesh", router_init="fresh_slot", max_position_embeddings=65)
    model.eval()
    randomize_scheme(model)
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model, tokenizer, folder


def run_without_meshlm(code: str, *args: str, cwd, home) -> str:
    """Run ``python -c code args`` offline with meshlm blocked and a private HF home; its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(home), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(home / "ds"))
    done = subprocess.run(
        [sys.executable, "-c", BLOCK_MESHLM + code, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_rewrite_turns_meshlm_imports_into_relative_imports_of_flat_files():
    source = textwrap.dedent(
        """\
        from __future__ import annotations
        import torch
        from meshlm.config import MeshLMConfig as C, parse_layout  # trailing comment
        from .schemes import (
            StateScheme,
            StaticScheme,
        )

        def f():
            from meshlm.errors import MeshLMError
            try:
                from meshlm.hub import export_remote_code
            except (ValueError, ImportError):
                return None
        """
    )
    expected = textwrap.dedent(
        """\
        from __future__ import annotations
        import torch
        from .configuration_meshlm import MeshLMConfig as C, parse_layout  # trailing comment
        from .meshlm_schemes import StateScheme, StaticScheme

        def f():
            from .meshlm_errors import MeshLMError
            try:
                from meshlm.hub import export_remote_code
            except (ValueError, ImportError):
                return None
        """
    )
    assert rewrite_imports(source, "meshlm.model.mesh") == expected


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("from meshlm.data.shards import read\n", "imports meshlm.data.shards, which is not shipped"),
        ("from meshlm import MeshLMConfig\n", "imports meshlm, which is not shipped"),
        ("def f():\n    from ..eval import x\n", "imports meshlm.eval, which is not shipped"),
        ("import meshlm.config\n", "has `import meshlm.config`"),
        ("from . import layers\n", r"`from \. import \.\.\.`"),
        ("try:\n    pass\nexcept ImportError:\n    from meshlm.train import x\n", "imports meshlm.train"),
    ],
)
def test_rewrite_refuses_meshlm_imports_it_cannot_ship(source, match):
    with pytest.raises(MeshLMError, match=match):
        rewrite_imports(source, "meshlm.model.lm")


def test_save_pretrained_ships_self_contained_code_and_auto_map(saved):
    _, _, folder = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP and config["model_type"] == "meshlm"
    flat = {folder / f"{name}.py" for name in REMOTE_MODULES.values()}
    assert all(path.is_file() for path in flat)
    # transformers' own view: the entry files reach every flat file, none needs the meshlm package
    entries = {folder / f"{target.split('.')[0]}.py" for target in AUTO_MAP.values()}
    reached = {p for e in entries for p in map(Path, get_relative_import_files(e))} | entries
    assert reached == flat
    assert all("meshlm" not in get_imports(path) for path in flat)


def test_local_class_still_loads_when_meshlm_is_imported(saved):
    model, _, folder = saved
    loaded = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(loaded) is MeshLMForCausalLM
    ids = torch.randint(1, model.config.vocab_size, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_export_refuses_folders_without_a_meshlm_config(tmp_path):
    with pytest.raises(MeshLMError, match=r"no readable config\.json"):
        export_remote_code(tmp_path)
    GPTNeoXForCausalLM(GPTNeoXConfig(hidden_size=8, num_attention_heads=2, num_hidden_layers=1)).save_pretrained(
        tmp_path
    )
    with pytest.raises(MeshLMError, match="'gpt_neox' model, not a meshlm model"):
        export_remote_code(tmp_path)


def test_non_main_process_writes_nothing(saved, tmp_path):
    saved[0].save_pretrained(tmp_path, is_main_process=False)
    assert not (tmp_path / "config.json").exists() and not (tmp_path / "modeling_meshlm.py").exists()


REMOTE = """
import numpy as np, torch
from transformers import AutoModelForCausalLM
try:
    import meshlm
except ImportError:
    pass
else:
    raise SystemExit("meshlm is importable")
folder, work = sys.argv[1], sys.argv[2]
ids, mask = (torch.from_numpy(np.load(f"{work}/{n}.npy")) for n in ("ids", "mask"))
model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
print(type(model).__module__)
with torch.no_grad():
    np.save(f"{work}/logits.npy", model(ids, attention_mask=mask).logits.numpy())
    np.save(f"{work}/greedy.npy", model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False).numpy())
    model.save_pretrained(f"{work}/resaved")  # a remote-code model saves itself loadable too
    again = AutoModelForCausalLM.from_pretrained(f"{work}/resaved", trust_remote_code=True)
    np.save(f"{work}/logits_again.npy", again(ids, attention_mask=mask).logits.numpy())
"""


def test_remote_code_loads_without_meshlm_and_gives_the_same_outputs(saved, tmp_path):
    model, _, folder = saved
    ids = torch.randint(1, model.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    np.save(tmp_path / "ids.npy", ids.numpy())
    np.save(tmp_path / "mask.npy", mask.numpy())
    out = run_without_meshlm(REMOTE, str(folder), str(tmp_path), cwd=tmp_path, home=tmp_path / "hf")
    assert out.strip().startswith("transformers_modules.") and out.strip().endswith(".modeling_meshlm")
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits.numpy()
        greedy = model.generate(ids[:1, :5], max_new_tokens=6, do_sample=False).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "logits_again.npy"), logits, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.load(tmp_path / "greedy.npy"), greedy)


LM_EVAL = """
import runpy
sys.argv[0] = "lm_eval"
runpy.run_module("lm_eval", run_name="__main__", alter_sys=True)
assert sys.modules["meshlm"] is None
"""


def test_stock_lm_eval_cli_on_the_saved_folder_matches_direct_loglikelihoods(saved, tmp_path):
    pytest.importorskip("lm_eval")
    model, tokenizer, folder = saved
    args = ["--model", "hf", "--model_args", f"pretrained={folder},trust_remote_code=True,max_length=64"]
    args += ["--tasks", "meshlm_tiny_mc,meshlm_tiny_rolling", "--include_path", str(TASKS_DIR)]
    args += ["--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "out"), "--log_samples"]
    run_without_meshlm(LM_EVAL, *args, cwd=TASKS_DIR, home=tmp_path / "hf")  # the YAMLs' data paths are cwd-relative
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    results = json.loads(results_file.read_text())["results"]

    def samples(task: str) -> list[dict]:
        (path,) = (tmp_path / "out").rglob(f"samples_{task}_*.jsonl")
        return sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])

    hits = hits_norm = 0
    mc = samples("meshlm_tiny_mc")
    for sample in mc:
        doc = sample["doc"]
        n_context = len(tokenizer.encode(doc["question"]))
        lls = [
            float(next_token_logprobs(model, tokenizer.encode(f"{doc['question']} {c}"))[n_context - 1 :].sum())
            for c in doc["choices"]
        ]
        np.testing.assert_allclose([float(r[0]) for r in sample["filtered_resps"]], lls, rtol=1e-4, atol=1e-4)
        hits += int(np.argmax(lls)) == doc["label"]
        hits_norm += int(np.argmax(np.array(lls) / [len(c) for c in doc["choices"]])) == doc["label"]
    assert results["meshlm_tiny_mc"]["acc,none"] == pytest.approx(hits / len(mc))
    assert results["meshlm_tiny_mc"]["acc_norm,none"] == pytest.approx(hits_norm / len(mc))
    assert hits / len(mc) >= 0.5  # the converted trained model, not a random one

    docs = [s["doc"]["text"] for s in samples("meshlm_tiny_rolling")]
    total = sum(sum(brute_force_logprobs(model, [tokenizer.eos_token_id, *tokenizer.encode(d)], 64, 64)) for d in docs)
    words = sum(len(re.split(r"\s+", d)) for d in docs)
    assert results["meshlm_tiny_rolling"]["word_perplexity,none"] == pytest.approx(math.exp(-total / words), rel=1e-4)
