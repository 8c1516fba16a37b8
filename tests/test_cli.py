"""The ``meshlm`` command line's conventions: --version, a torch-free --help, help and default on every flag,
plain log lines under --no-progress, one final summary per torchrun job."""

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import meshlm
import meshlm.cli
from conftest import tiny_run
from meshlm.cli import SUBCOMMANDS, HelpFormatter, build_parser, main
from meshlm.config import MeshLMConfig
from meshlm.train import cli as train_cli
from meshlm.train import loop
from meshlm.train.logging import log_line

ROOT = Path(__file__).resolve().parents[1]
PLAIN_LINE = re.compile(
    r"step (\d+)/(\d+) \| loss \d+\.\d{4}( \| val \d+\.\d{4})? \| tok/s [\d,]+( \| MFU [\d.]+%)? \| ETA \d+m\d\ds"
)


def all_parsers(parser: argparse.ArgumentParser, name: str = "meshlm"):
    """(command name, parser) for the parser and every subcommand under it, depth first."""
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from all_parsers(sub, f"{name} {sub_name}")


def test_version_matches_the_package(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    declared = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert capsys.readouterr().out.strip() == f"meshlm {meshlm.__version__}" == f"meshlm {declared}"


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_import_neither_torch_nor_transformers(flag):
    code = (
        "import sys\nfrom meshlm.cli import main\ntry:\n    main([sys.argv[1]])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_top_level_help_lists_every_subcommand_as_its_own_parser_describes_it():
    light, full = build_parser([]), build_parser()
    for parser in (light, full):
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        assert {c.dest: c.help for c in sub._choices_actions} == {n: h for n, (_, h) in SUBCOMMANDS.items()}


def test_every_flag_of_every_subcommand_has_help_with_its_default():
    for command, parser in all_parsers(build_parser()):
        help_text = parser.format_help()
        assert "``" not in help_text and ":class:" not in help_text, command  # no raw RST markup
        assert parser.formatter_class is HelpFormatter, command
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction):
                continue
            shown = HelpFormatter(command)._get_help_string(action)
            assert shown.strip(), f"{command} {action.option_strings or action.dest} has no help"
            if action.option_strings and not action.required:
                assert "(default" in shown or "(required" in shown or "default:" in shown, (command, shown)


def test_model_flag_defaults_shown_are_the_model_configs():
    """The model flags default to None (the preset decides); their help names the config's own default."""
    config = MeshLMConfig()
    checked = []
    for name in loop.MODEL_FIELDS:
        shown = re.search(r"\(default: ([^)]*)\)$", train_cli.HELP[name]).group(1)
        value = getattr(config, name)
        if " " in shown or "'" in shown:  # "the preset's", "K + 3", "4 x hidden size"
            continue
        if isinstance(value, bool):
            assert shown == ("on" if value else "off"), name
        elif isinstance(value, str):
            assert shown == value, name
        else:
            assert float(shown) == value, name
        checked.append(name)
    assert len(checked) >= 7, checked


def test_preset_is_restricted_to_the_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--preset", "pythia-99m", "--data", "d", "--out", "o"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'pythia-99m'" in capsys.readouterr().err


def test_compare_takes_no_scheme_flag_each_variant_names_its_own(capsys):
    compare = dict(all_parsers(build_parser()))["meshlm compare"]
    flags = {flag for action in compare._actions for flag in action.option_strings}
    assert "--variants" in flags and not {"--scheme", "--resume"} & flags
    with pytest.raises(SystemExit):
        main(["compare", "--data", "d", "--out", "o", "--scheme", "mesh"])
    assert "unrecognized arguments: --scheme mesh" in capsys.readouterr().err


def test_log_line_format():
    record = {"step": 20, "loss": 5.123456, "val_loss": 5.2, "tokens_per_s": 12345.6, "mfu": 0.4123}
    assert (
        log_line(record, 100, 65.4) == "step 20/100 | loss 5.1235 | val 5.2000 | tok/s 12,346 | MFU 41.2% | ETA 1m05s"
    )
    plain = {"step": 3, "loss": 1.0, "tokens_per_s": 9.0, "mfu": None}
    assert log_line(plain, 10, 3725.0) == "step 3/10 | loss 1.0000 | tok/s 9 | ETA 1h02m"


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(30):
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i}: the {i % 7} cats sat on {i % 5} mats. " * 20)
    return folder


def train_argv(corpus, out, **overrides) -> list[str]:
    """``meshlm train`` flags of the conftest tiny run."""
    argv = ["train"]
    for key, value in tiny_run(corpus, out, out.parent / "cache", **overrides).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv


def test_no_progress_prints_plain_lines_and_where_the_model_went(corpus, tmp_path, capsys, monkeypatch):
    # wrap_model without the compile itself (a minute on CPU): the run still says it compiles
    monkeypatch.setattr(loop, "wrap_model", lambda model, dist, compile=False, **_: model)
    out = tmp_path / "run"
    assert main([*train_argv(corpus, out, log_every=2, max_steps=6), "--compile"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert any(line.startswith("torch.compile: compiling") for line in lines)
    steps = [int(m.group(1)) for m in map(PLAIN_LINE.fullmatch, lines) if m]
    assert steps == [2, 4, 6]
    assert any(" | val " in line for line in lines if PLAIN_LINE.fullmatch(line))  # eval_every=4 hits step 4
    assert lines[-1] == f"model saved to {out / 'model'}" and (out / "model" / "config.json").is_file()
    assert json.loads(captured.out)["steps"] == 6


def test_only_the_first_torchrun_rank_prints_the_summary(capsys, monkeypatch, tmp_path):
    summary = {"steps": 3}
    monkeypatch.setattr(train_cli, "train", lambda cfg: summary)
    argv = ["train", "--data", "d", "--out", str(tmp_path), "--max-steps", "3"]
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert bool(captured.out) is printed and ("model saved to" in captured.err) is printed
