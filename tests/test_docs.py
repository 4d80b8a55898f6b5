"""The documentation cannot drift from the code: every command in a fenced shell block of
README.md and docs/ parses (make targets, `python -m mobileast` commands and flags, DVC commands
through DVC's own parser, MLflow commands through MLflow's, params keys of `-S` / `--set` in
the params schema), docs/cli.md is what the argparse definitions generate, every relative link
resolves, and no file cites a document that is not in the repository.

The commands are parsed, not run: tests/test_pipeline_e2e.py runs the walkthrough itself.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path

import click
import pytest
from dvc.cli.parser import get_main_parser
from mlflow.cli import cli as mlflow_cli

from mobileast import schema
from mobileast.cli import COMMANDS
from mobileast.cli_docs import command_parser, render

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_BLOCK = re.compile(r"^( *)```(?:bash|sh|console|shell)\n(.*?)\n\1```", re.S | re.M)
OPERATORS = {"|", "||", "&&", ";", "&"}
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# The one form of each tool the docs use: from a fresh shell, without activating the venv.
DVC, PYTHON, MLFLOW = ".venv/bin/dvc", ".venv/bin/python", ".venv/bin/mlflow"


def shell_commands(text: str) -> list[list[str]]:
    """The simple commands of the fenced shell blocks of a Markdown text, as token lists.

    Lines continued with a backslash are joined; `$ ` prompts (console blocks) mark the
    command lines, the other lines of such a block being output; comments are dropped;
    pipelines and lists are split at their operators, and `xargs CMD` yields CMD.
    """
    commands = []
    for indent, block in SHELL_BLOCK.findall(text):
        lines = [line[len(indent):] for line in block.split("\n")]
        if any(line.startswith("$ ") for line in lines):  # a console block: commands after `$ `, then output
            kept, continued = [], False
            for line in lines:
                if continued or line.startswith("$ "):
                    kept.append(line if continued else line[2:])
                    continued = line.endswith("\\")
            lines = kept
        source = "\n".join(lines).replace("\\\n", " ")
        for line in source.split("\n"):
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;")
            lexer.whitespace_split = True
            current: list[str] = []
            for token in [*lexer, ";"]:
                if token in OPERATORS:
                    if current:
                        commands.append(current)
                    current = []
                else:
                    current.append(token)
    result = []
    for command in commands:
        if command[0] == "xargs":  # the command xargs runs, after xargs's own options
            command = command[next(i for i, t in enumerate(command[1:], 1) if not t.startswith("-")):]
        result.append(command)
    return result


def make_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+):(?!=)", (REPO / "Makefile").read_text(), re.M))


def params_key_known(key: str) -> bool:
    """Whether a dotted params key (`augment.mixup.p`) is in the schema (any key below a free mapping)."""
    node = schema.SCHEMA
    for part in key.split("."):
        if isinstance(node, schema.Param) and node.kind == "mapping":
            return True
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def set_keys(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """The keys of `FLAG key=value` / `FLAG=key=value` arguments."""
    keys = []
    for i, arg in enumerate(args):
        value = args[i + 1] if arg in flags and i + 1 < len(args) else next(
            (arg[len(f) + 1:] for f in flags if arg.startswith(f + "=")), None)
        if value is not None:
            keys.append(value.split("=", 1)[0])
    return keys


def argparse_error(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """argparse's message for args, None when they parse (--help counts as parsing)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            parser.parse_args(args)
        except SystemExit as exit_:
            return None if exit_.code == 0 else stderr.getvalue().strip().splitlines()[-1]
        except Exception as error:  # DVC's parser raises its own error from argparse's
            return str(error.__cause__ or error.__context__ or error)
    return None


def check_mobileast(args: list[str]) -> list[str]:
    if not args:
        return ["`mobileast` without a command"]
    if args[0] in ("--version", "-h", "--help"):
        return []
    if args[0] not in COMMANDS:
        return [f"unknown command {args[0]!r}"]
    problems = []
    if error := argparse_error(command_parser(args[0]), args[1:]):
        problems.append(error)
    if args[0] == "profile":
        problems += [f"params key {k!r} not in the schema" for k in set_keys(args, ("--set",)) if not params_key_known(k)]
    return problems


def check_dvc(args: list[str]) -> list[str]:
    problems = []
    if error := argparse_error(get_main_parser(), args):
        problems.append(error)
    problems += [f"params key {k!r} not in the schema" for k in set_keys(args, ("-S", "--set-param"))
                 if not params_key_known(k)]
    return problems


def check_mlflow(args: list[str], env: list[str]) -> list[str]:
    command, rest = mlflow_cli, list(args)
    while isinstance(command, click.Group):
        if not rest or rest[0] not in command.commands:
            return [f"no MLflow command {' '.join(args)!r}"]
        command = command.commands[rest.pop(0)]
    try:
        command.make_context(command.name, rest)
    except click.ClickException as error:
        return [error.format_message()]
    if args[:1] == ["artifacts"] and not any(e.startswith("MLFLOW_TRACKING_URI=") for e in env):
        return ["`mlflow artifacts` needs the store: prefix MLFLOW_TRACKING_URI=..."]
    return []


def check_command(tokens: list[str]) -> list[str]:
    """What is wrong with one documented command line, [] if nothing."""
    env = [t for t in tokens[:next((i for i, t in enumerate(tokens) if not ENV_ASSIGNMENT.match(t)), len(tokens))]]
    program, *args = tokens[len(env):] or [""]
    if program == "make":
        return [f"no make target {t!r}" for t in args if not t.startswith("-") and "=" not in t and t not in make_targets()]
    if program.endswith("dvc"):
        return check_dvc(args) if program == DVC else [f"run DVC as {DVC} (one form everywhere)"]
    if program.endswith("mlflow"):
        return check_mlflow(args, env) if program == MLFLOW else [f"run MLflow as {MLFLOW}"]
    if program.endswith("mobileast"):
        return check_mobileast(args)
    if re.fullmatch(r"(.*/)?python3?", program):
        if program != PYTHON:
            return [f"run Python as {PYTHON} (one form everywhere)"]
        if args[:2] == ["-m", "mobileast"]:
            return check_mobileast(args[2:])
        if args[:1] == ["-c"]:
            return []
        if args[:1] == ["-m"]:
            return [] if args[1] in ("pytest", "pip") else [f"unexpected module {args[1]!r}"]
        script = next((a for a in args if a.endswith(".py")), None)
        return [] if script and (REPO / script).is_file() else [f"no script {script!r}"]
    return []


def documented_commands() -> list[tuple[str, list[str]]]:
    return [(doc.relative_to(REPO).as_posix(), command) for doc in DOCS if doc.is_file()
            for command in shell_commands(doc.read_text())]


def test_the_docs_exist_and_the_readme_is_short():
    for name in ("README.md", "CHANGELOG.md", "LICENSE", "CITATION.cff", "docs/experiments.md", "docs/tau22.md",
                 "docs/models.md", "docs/deployment.md", "docs/cli.md", "docs/benchmarks.md"):
        assert (REPO / name).is_file(), name
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


def test_documented_commands_parse():
    commands = documented_commands()
    assert len(commands) > 30  # the blocks were found
    problems = [f"{doc}: `{shlex.join(command)}`: {problem}"
                for doc, command in commands for problem in check_command(command)]
    assert not problems, "\n".join(problems)


def test_every_mobileast_command_is_documented_in_a_shell_block():
    used = {c[3] if c[0] == PYTHON else c[1] for _, c in documented_commands()
            if (c[0] == PYTHON and c[1:3] == ["-m", "mobileast"] and len(c) > 3) or c[0].endswith("/mobileast")}
    assert set(COMMANDS) <= used, f"no example of {sorted(set(COMMANDS) - used)}"


@pytest.mark.parametrize("line, problem", [
    ("make nosuchtarget", "no make target"),
    (".venv/bin/dvc exp run -S dkd.alpah=5", "not in the schema"),
    (".venv/bin/dvc exp frobnicate", "invalid choice"),
    ("dvc repro", "one form"),
    (".venv/bin/python -m mobileast predict --model m.pt --per-secnd a.wav", "unrecognized arguments"),
    (".venv/bin/python -m mobileast profile tau22-sub1 --set data.rot=/x --apply", "not in the schema"),
    (".venv/bin/python -m mobileast nosuch", "unknown command"),
    (".venv/bin/mlflow artifacts download -r ID -a model", "MLFLOW_TRACKING_URI"),
])
def test_the_checker_catches_what_it_should(line, problem):
    (command,) = shell_commands(f"```sh\n{line}\n```")
    assert any(problem in p for p in check_command(command)), check_command(command)


def test_the_checker_reads_pipes_continuations_prompts_and_nested_keys():
    text = ("```console\n$ .venv/bin/python -m mobileast profile tau22-sub1 --set data.root=/d --dvc-args \\\n"
            "    | xargs .venv/bin/dvc exp run -n x   # comment\nsome output\n```\n")
    assert shell_commands(text) == [[PYTHON, "-m", "mobileast", "profile", "tau22-sub1", "--set", "data.root=/d",
                                     "--dvc-args"], [DVC, "exp", "run", "-n", "x"]]
    assert params_key_known("augment.mixup.p") and params_key_known("student.custom.vit_version")
    assert not params_key_known("augment.mixup.q") and not params_key_known("dkd.alpha.x")


def test_cli_reference_is_current():
    assert (REPO / "docs/cli.md").read_text() == render(), "docs/cli.md is out of date: run `make docs`"


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.*)$", text, re.M)}


def test_relative_links_resolve():
    problems = []
    for doc in DOCS:
        text = re.sub(r"^```.*?^```", "", doc.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                problems.append(f"{doc.name}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                problems.append(f"{doc.name}: {target}: no such heading")
    assert not problems, "\n".join(problems)


def test_nothing_cites_a_document_outside_the_repository():
    files = [REPO / "params.yaml", REPO / "README.md", REPO / "CHANGELOG.md", REPO / "CITATION.cff"]
    for folder in ("src", "stages", "profiles", "docs"):
        files += [p for p in (REPO / folder).rglob("*")
                  if p.is_file() and p.suffix in (".py", ".yaml", ".md", "") and ".egg-info" not in str(p)]
    cited = [f"{p.relative_to(REPO)}:{n}" for p in files if p.is_file()
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if re.search(r"\bSPEC\b", line)]
    assert not cited, "cites SPEC, which is not in the repository: " + ", ".join(cited)
