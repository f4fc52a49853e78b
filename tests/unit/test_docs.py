"""The docs cannot drift: generated references match the code, and every command, option, config key and
make target the README and docs show exists."""

import re
import shlex
import sys
import tomllib
from pathlib import Path

import click
import pytest

from pvcapi.config import API
from pvccli.main import cli
from pvccore.config import DAEMON

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gendocs  # noqa: E402

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("name", sorted(gendocs.PAGES))
def test_generated_reference_is_current(name):
    committed = (ROOT / "docs" / "reference" / name).read_text()
    assert committed == gendocs.PAGES[name](), f"docs/reference/{name} is stale: run `make docs`"


def shell_lines():
    for page in PAGES:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
            for line in block.splitlines():
                yield page.name, line.split(" #")[0]


def pvc_invocations():
    for page, line in shell_lines():
        for part in re.split(r";|&&|\|", line):
            try:
                words = shlex.split(part)
            except ValueError:  # a quote split by ';' (inside a printf): plain words will do
                words = part.split()
            for i, word in enumerate(words):
                if word in ("pvc", "$pvc", ".venv/bin/pvc", "/opt/pvc/venv/bin/pvc"):
                    yield page, words[i + 1:]
                    break


def test_docs_show_pvc_commands():
    assert len(list(pvc_invocations())) >= 20  # the parser finds them (a broken one would find none)


@pytest.mark.parametrize("page, args", list(pvc_invocations()), ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_shown_command_and_option_exists(page, args):
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        assert name in command.commands, f"{page}: `pvc ... {name}` is not a command"
        command = command.commands[name]
    known = {opt for p in command.params for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
    known |= {"--help", "-h"}
    for word in rest:
        if word.startswith("-") and word != "-":
            assert word.split("=")[0] in known, f"{page}: option {word} of `{command.name}` does not exist"


def test_every_config_key_in_the_docs_exists():
    daemon = {o.key for o in DAEMON.options}
    api = {o.key for o in API.options}
    files = sorted((ROOT / "docs").rglob("*.toml"))
    assert files
    for path in files:
        keys = set(tomllib.loads(path.read_text()))
        schema = api if "listen" in keys or "api_keys" in keys else daemon
        assert keys <= schema, f"{path}: unknown keys {keys - schema}"
        (API if schema is api else DAEMON).build(tomllib.loads(path.read_text()))  # and the values are valid


def test_make_targets_mentioned_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    for page in PAGES:
        for target in re.findall(r"`make ([a-z-]+)`", page.read_text()):
            assert target in targets, f"{page.name}: make {target}"
