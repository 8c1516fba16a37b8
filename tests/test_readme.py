"""Every README snippet as written: Python blocks run; shell commands parse against the real parsers.

A shell command is too heavy to run here (a 20M-token training run, a hub download), so each one
is checked instead: every flag exists and every value parses (types, choices, layouts, schemes,
the training config), with meshlm's own parser, torchrun's and lm-eval's; pip installs name
extras that pyproject.toml defines. A command of any other program fails the test, so nothing in
the README goes unchecked.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import installed
from meshlm.cli import build_parser
from meshlm.compare import sweep_from_args
from meshlm.config import parse_layout, parse_scheme
from meshlm.train.cli import config_from_args
from meshlm.train.loop import build_model_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", README, re.M | re.S)]
ENV_ASSIGNMENT = re.compile(r"[A-Z_][A-Z0-9_]*=\S*")
NEOX_VOCAB = 50277


def shell_commands() -> list[list[str]]:
    """Each command of the bash blocks as argv: continuations joined, comments dropped, split at ``&&``."""
    commands = []
    for language, body in BLOCKS:
        if language != "bash":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            command: list[str] = []
            for word in [*shlex.split(line, comments=True), "&&"]:
                if word != "&&":
                    command.append(word)
                elif command:
                    commands.append(command)
                    command = []
    return commands


def check_meshlm(argv: list[str]) -> None:
    """Parse with the full ``meshlm`` parser, then let the config classes validate the values."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"meshlm {' '.join(argv)}: the parser refuses it (exit {stop.code})")
    for name, parse in (("layout", parse_layout), ("scheme", parse_scheme)):
        if getattr(args, name, None):
            parse(getattr(args, name))
    if args.command == "train":
        build_model_config(config_from_args(args), NEOX_VOCAB)
    if args.command == "compare":
        sweep = sweep_from_args(args)
        for variant in sweep.variants:
            build_model_config(sweep.run_config(variant, sweep.seeds[0]), NEOX_VOCAB)


def check_torchrun(argv: list[str]) -> None:
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(argv)
    assert args.module and args.training_script == "meshlm.cli", argv
    check_meshlm(args.training_script_args)


def check_lm_eval(argv: list[str]) -> None:
    if not installed("lm-eval"):
        pytest.skip("lm-eval is not installed (pip install 'meshlm[eval]')")
    from lm_eval._cli import HarnessCLI

    args = HarnessCLI()._parser.parse_args(["run", *argv])  # lm_eval without a subcommand means `run`
    assert args.model == "hf" and args.model_args["trust_remote_code"] is True, argv


def check_pip(argv: list[str]) -> None:
    assert argv[0] == "install", argv
    extras = set(re.findall(r"^(\w+) = \[", (ROOT / "pyproject.toml").read_text(), re.M))
    for word in argv[1:]:
        if match := re.fullmatch(r"\.\[([\w,]+)\]", word):
            assert set(match.group(1).split(",")) <= extras, word


def check_python(argv: list[str]) -> None:
    assert argv == ["-m", "pytest"], argv  # the README's test command


CHECKERS = {"meshlm": check_meshlm, "torchrun": check_torchrun, "lm_eval": check_lm_eval, "pip": check_pip}
CHECKERS["python"] = check_python


def test_readme_has_only_python_and_bash_blocks():
    assert BLOCKS and {language for language, _ in BLOCKS} == {"python", "bash"}


@pytest.mark.parametrize("command", shell_commands(), ids=lambda c: " ".join(c)[:60])
def test_shell_command_parses(command):
    while ENV_ASSIGNMENT.fullmatch(command[0]):
        command = command[1:]
    program, *argv = command
    assert program in CHECKERS, f"README runs {program!r}, which this test cannot check"
    CHECKERS[program](argv)


@pytest.mark.parametrize("index", [i for i, (language, _) in enumerate(BLOCKS) if language == "python"])
def test_python_block_runs_as_written(index, tmp_path):
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", BLOCKS[index][1]], cwd=tmp_path, env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
