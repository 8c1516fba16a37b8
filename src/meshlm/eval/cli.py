"""``meshlm eval MODEL_DIR``: perplexity, rolling perplexity, LAMBADA and lm-eval tasks in one report.

The model dir is any ``from_pretrained``-loadable causal LM with its tokenizer (meshlm
checkpoints are; importing :mod:`meshlm` registers its model class). Weights are loaded in
fp32; forward passes use bf16 autocast on CUDA.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError

from meshlm.accounting import count_parameters
from meshlm.data.shards import load_tokens
from meshlm.data.sources import is_shard_dir, iter_documents
from meshlm.data.tokenizers import tokenizer_from_folder
from meshlm.errors import MeshLMError
from meshlm.eval.harness import check_output_options, run_harness
from meshlm.eval.lambada import lambada
from meshlm.eval.perplexity import documents_to_stream, rolling_document_perplexity, token_perplexity
from meshlm.eval.scoring import check_context, model_max_length, prepare_model
from meshlm.eval.tables import report_markdown, table1_row
from meshlm.hub import refuse_foreign_code
from meshlm.train.checkpoint import check_intact
from meshlm.train.hardware import resolve_device
from meshlm.train.logging import quiet_transformers

SHARD_SPLIT = "val"
# files of which a Hugging Face tokenizer folder holds at least one
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def add_subcommand(subparsers) -> None:
    """Register ``meshlm eval``."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model dir: perplexity, LAMBADA, LM Evaluation Harness tasks",
        description=(
            "Evaluate a saved model (a folder with config, weights and tokenizer). Each --ppl/--rolling "
            "source is any --data string (file, folder, glob, builtin:NAME, hf:DATASET...); a shard folder "
            f"gives its '{SHARD_SPLIT}' tokens directly. Table 1 picks up the names pile, wikitext, "
            "lambada_openai and lambada_standard."
        ),
    )
    p.add_argument("model_dir", help="model folder (a training run folder holding model/, or any HF causal LM folder)")
    p.add_argument(
        "--ppl",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="token-level perplexity over SOURCE's documents joined as EOS doc EOS doc ... (repeatable; default: none)",
    )
    p.add_argument("--context", type=int, help="tokens per forward pass (default: the model's maximum)")
    p.add_argument("--stride", type=int, help="tokens newly scored per window for --ppl (default: --context)")
    p.add_argument(
        "--max-tokens",
        type=int,
        help="cap each --ppl stream near N tokens (text: after the document reaching N; shards: exactly N) "
        "(default: no cap)",
    )
    p.add_argument(
        "--rolling",
        action="append",
        default=[],
        metavar="NAME=SOURCE",
        help="document-level rolling perplexity as lm-eval's wikitext computes it (repeatable; default: none)",
    )
    p.add_argument(
        "--lambada",
        action="append",
        default=[],
        metavar="[NAME=]SOURCE",
        help="LAMBADA accuracy/perplexity on one passage per document: a jsonl with a 'text' field, or any --data "
        "source such as hf:EleutherAI/lambada_openai:default:test; NAME defaults to the file stem "
        "(repeatable; default: none)",
    )
    p.add_argument("--tasks", help="comma-separated lm-eval tasks, e.g. piqa,arc_easy,lambada_openai (default: none)")
    p.add_argument(
        "--num-fewshot",
        "--num_fewshot",
        default="0",
        metavar="N[,N...]",
        help="comma-separated shot counts for --tasks (default: 0)",
    )
    p.add_argument("--include-path", help="folder of extra lm-eval task YAMLs (default: none)")
    p.add_argument(
        "--limit", type=float, help="lm-eval examples per task (a fraction if < 1), for testing (default: all)"
    )
    p.add_argument(
        "--loops",
        metavar="K1,K2,...",
        help="also report every --ppl/--rolling perplexity with the shared core run K1, K2, ... times "
        "(the test-time-compute curve; recursive meshlm models only), e.g. 1,2,3,4,6,8 (default: none)",
    )
    p.add_argument(
        "--bootstrap-iters",
        type=int,
        default=100000,
        help="lm-eval bootstrap iterations for the stderr of perplexity-type metrics (0 skips them)",
    )
    p.add_argument("--batch-size", "--batch_size", type=int, default=8, metavar="N", help="sequences per forward pass")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run Python files a non-meshlm model folder ships (its auto_map) (default: off)",
    )
    p.add_argument(
        "--json", type=Path, metavar="OUT", help="write every number and the model info here (default: print only)"
    )
    p.add_argument(
        "--markdown",
        type=Path,
        metavar="OUT",
        help="write the Table 1 row and per-task tables here (default: print only)",
    )
    p.add_argument(
        "--output-path",
        "--output_path",
        type=Path,
        metavar="FILE_OR_DIR",
        help="write lm-eval's own results JSON of --tasks, named as lm_eval --output_path names it: "
        "DIR/<model>/results_<date>.json, or FILE_<date>.json for a .json path; one file per shot count "
        "(default: none)",
    )
    p.add_argument(
        "--log-samples",
        "--log_samples",
        action="store_true",
        help="with --output-path, also write lm-eval's per-sample records, samples_<task>_<date>.jsonl "
        "beside the results (default: off)",
    )
    p.set_defaults(func=run_eval)


def parse_named(value: str, option: str) -> tuple[str, str]:
    """``NAME=VALUE`` -> ``(NAME, VALUE)``; MeshLMError if either side is empty."""
    name, sep, rest = value.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise MeshLMError(f"{option} takes NAME=SOURCE, got {value!r} (e.g. {option} pile=data/pile_val.jsonl).")
    return name.strip(), rest.strip()


def parse_int_list(value: str, option: str) -> list[int]:
    """``"0,5"`` -> ``[0, 5]``; MeshLMError for anything but non-negative integers."""
    try:
        numbers = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise MeshLMError(f"{option} takes comma-separated integers, got {value!r} (e.g. 0,5).") from None
    if not numbers or any(n < 0 for n in numbers):
        raise MeshLMError(f"{option} takes comma-separated non-negative integers, got {value!r}.")
    return numbers


def resolve_model_dir(path: str | Path) -> Path:
    """The model folder at ``path``: the folder itself (config.json) or a training run's ``model/``.

    A folder meshlm saved is checked against its recorded checksums first (MeshLMError if damaged).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MeshLMError(f"{folder} is not a folder; give a model folder written by meshlm train.")
    for candidate in (folder, folder / "model"):
        check_intact(candidate)
        if (candidate / "config.json").is_file():
            return candidate
    raise MeshLMError(
        f"{folder} is not a model folder (no config.json, nor model/config.json); "
        "give a folder written by meshlm train."
    )


def loop_counts(value: str | None, model) -> list[int]:
    """The ``--loops`` counts, checked against the model: it must be a meshlm model with a shared core."""
    if value is None:
        return []
    counts = parse_int_list(value, "--loops")
    for k in counts:
        check_num_loops(model, k, "--loops")
    return list(dict.fromkeys(counts))


def check_num_loops(model, k: int, option: str) -> None:
    """MeshLMError unless ``model`` is a meshlm model whose shared core can run ``k`` times (k >= 1)."""
    if getattr(model.config, "model_type", None) != "meshlm":
        raise MeshLMError(f"{option} needs a recursive meshlm model; {type(model).__name__} has no loop count.")
    model.config.parsed_layout.with_loops(k)  # refuses 0 and layouts without a shared core


def load_model_dir(model_dir: str | Path, trust_remote_code: bool = False):
    """fp32 model and tokenizer of a saved folder (or of a run folder's ``model/``); MeshLMError if neither.

    Code shipped in the folder runs only with ``trust_remote_code`` (never for meshlm's own folders).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_dir(model_dir)
    refuse_foreign_code(folder, trust_remote_code)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise MeshLMError(
            f"{folder} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save the tokenizer with the model."
        )
    trust = {"trust_remote_code": trust_remote_code}
    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **trust)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), **trust)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        raise MeshLMError(f"cannot load the model in {folder}: {e}") from None
    return model, tokenizer


def model_info(model, model_dir: str | Path) -> dict:
    """What the report records about the model: type, layout, scheme, parameters, tokens trained."""
    config = model.config
    info = {
        "dir": str(model_dir),
        "model_type": config.model_type,
        "layout": getattr(config, "layout", None),
        "scheme": getattr(config, "scheme", None),
        "max_position_embeddings": model_max_length(model),
        "parameters": count_parameters(model),
        "tokens_trained": None,
    }
    state_file = Path(model_dir) / "trainer_state.json"
    if state_file.is_file():
        info["tokens_trained"] = json.loads(state_file.read_text()).get("tokens_seen")
    return info


def _shard_stream(model_dir: Path, source: str, max_tokens: int | None, hf_tokenizer) -> tuple[torch.Tensor, int]:
    """Held-out tokens of a shard folder (checked against the model's tokenizer) and their byte count."""
    shards = load_tokens(source, tokenizer_from_folder(model_dir))
    if SHARD_SPLIT not in shards.splits or shards.num_tokens(SHARD_SPLIT) < 2:
        raise MeshLMError(
            f"shard folder {source} has no '{SHARD_SPLIT}' tokens to evaluate; prepare it with a val split."
        )
    tokens = torch.from_numpy(shards.split(SHARD_SPLIT)[:max_tokens].astype("int64"))
    text = hf_tokenizer.decode(tokens[1:].tolist(), skip_special_tokens=True)
    return tokens, len(text.encode("utf-8"))


def _ppl_stream(model_dir: Path, source: str, max_tokens: int | None, tokenizer) -> tuple[torch.Tensor, int]:
    if is_shard_dir(source):
        return _shard_stream(model_dir, source, max_tokens, tokenizer)
    return documents_to_stream(tokenizer, iter_documents(source), max_tokens)


def evaluate_model_dir(args: argparse.Namespace) -> dict:
    """Run every evaluation the arguments ask for and return the report."""
    ppl_specs = [parse_named(v, "--ppl") for v in args.ppl]
    rolling_specs = [parse_named(v, "--rolling") for v in args.rolling]
    lambada_specs = [parse_named(v, "--lambada") if "=" in v else (Path(v).stem, v) for v in args.lambada]
    tasks = [t.strip() for t in (args.tasks or "").split(",") if t.strip()]
    shots = parse_int_list(args.num_fewshot, "--num-fewshot")
    if not (ppl_specs or rolling_specs or lambada_specs or tasks):
        raise MeshLMError("nothing to evaluate; give --ppl, --rolling, --lambada or --tasks.")
    output_path, log_samples = getattr(args, "output_path", None), getattr(args, "log_samples", False)
    if (output_path is not None or log_samples) and not tasks:
        raise MeshLMError(
            "--output-path/--log-samples write the LM Evaluation Harness's files, which only --tasks makes; "
            "give --tasks, or --json for the other numbers."
        )
    check_output_options(output_path, log_samples)  # before the model loads
    model_dir = resolve_model_dir(args.model_dir)
    model, tokenizer = load_model_dir(model_dir, args.trust_remote_code)
    device = prepare_model(model, resolve_device(args.device))
    context = model_max_length(model) if args.context is None else args.context
    check_context(model, context)
    stride = args.stride or context
    report: dict = {
        "model": model_info(model, model_dir),
        "settings": {
            "context": context,
            "stride": stride,
            "batch_size": args.batch_size,
            "device": str(device),
            "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        },
    }
    common = {"batch_size": args.batch_size, "device": device, "progress": True}
    loops = loop_counts(getattr(args, "loops", None), model)
    if loops and not (ppl_specs or rolling_specs):
        raise MeshLMError("--loops reports perplexity per loop count; give --ppl or --rolling as well.")
    streams = {name: _ppl_stream(model_dir, source, args.max_tokens, tokenizer) for name, source in ppl_specs}
    documents = {name: list(iter_documents(source)) for name, source in rolling_specs}
    for k in [None, *loops]:
        at_k = {} if k is None else report.setdefault("loops", {}).setdefault(str(k), {})
        for name, source in ppl_specs:
            tokens, n_bytes = streams[name]
            result = token_perplexity(model, tokens, context, stride, n_bytes=n_bytes, num_loops=k, **common)
            (report if k is None else at_k).setdefault("ppl", {})[name] = {"source": source, **result}
        for name, source in rolling_specs:
            result = rolling_document_perplexity(model, tokenizer, documents[name], context, num_loops=k, **common)
            (report if k is None else at_k).setdefault("rolling", {})[name] = {"source": source, **result}
    for name, source in lambada_specs:
        records = [{"text": text} for text in iter_documents(source)]
        report.setdefault("lambada", {})[name] = {"source": source, **lambada(model, tokenizer, records, **common)}
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    for n in shots if tasks else []:
        report.setdefault("harness", {})[str(n)] = run_harness(
            model,
            tokenizer,
            tasks,
            n,
            args.batch_size,
            device,
            include_path=args.include_path,
            limit=limit,
            max_length=context,
            bootstrap_iters=args.bootstrap_iters,
            model_args={"pretrained": str(model_dir), "dtype": "float32", "max_length": context},
            output_path=output_path,
            log_samples=log_samples,
        )
    report["table1"] = table1_row(report)
    return report


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``meshlm eval``: evaluate, print the summary, write --json / --markdown."""
    report = evaluate_model_dir(args)
    markdown = report_markdown(report)
    sys.stdout.write(markdown)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown)
    for run in report.get("harness", {}).values():
        for path in run.get("lm_eval_files", []):
            print(f"lm-eval wrote {path}", file=sys.stderr)
    return 0
