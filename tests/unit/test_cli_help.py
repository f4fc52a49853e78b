"""`--help` works on every command of the `pvc` tree, and the connection settings resolve in order."""

import click
import pytest
from click.testing import CliRunner

from pvccli import connection
from pvccli.main import cli


def walk(command: click.Command, path=()):
    yield path
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, path + (name,))


COMMANDS = list(walk(cli))


def test_tree_has_the_promised_commands():
    names = {" ".join(p) for p in COMMANDS}
    for expected in ("cluster status", "node list", "node info", "node flush", "node ready", "node primary",
                     "node secondary", "node fence-config", "vm define", "vm meta",
                     "vm list", "vm info", "vm start", "vm shutdown", "vm stop", "vm restart", "vm disable",
                     "vm migrate", "vm unmigrate", "vm move", "vm undefine", "vm placement", "selector list",
                     "plugin list"):
        assert expected in names


def command_at(path) -> click.Command:
    command = cli
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "pvc")
def test_help(path):
    """Each command says what it does, and names and explains every option and argument it takes."""
    command = command_at(path)
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="pvc", terminal_width=200)
    assert result.exit_code == 0, result.output
    usage = result.output.splitlines()[0]
    assert usage.startswith(f"Usage: pvc {' '.join(path)}".rstrip()), usage
    assert (command.help or "").strip(), f"pvc {' '.join(path)} has no description"
    assert command.help.strip().splitlines()[0] in result.output
    for param in command.params:
        if isinstance(param, click.Argument):
            assert param.human_readable_name in usage, param.name
        elif not param.hidden:
            assert param.opts[0] in result.output, param.name
            assert param.help and param.help.split()[0] in result.output, f"{param.opts[0]} has no help"


def test_connection_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("PVC_CONFIG", str(tmp_path / "cli.toml"))
    monkeypatch.delenv("PVC_API_URL", raising=False)
    monkeypatch.delenv("PVC_API_KEY", raising=False)
    monkeypatch.delenv("PVC_API_CA", raising=False)
    assert connection.resolve(None, None, None) == (connection.DEFAULT_URL, None, None)
    connection.save_connection("demo", "http://10.0.0.1:7370", "k1")
    connection.save_connection("prod", "https://prod:7370", "k2")
    assert connection.resolve(None, None, None) == ("http://10.0.0.1:7370", "k1", None)  # the first saved is default
    assert connection.resolve(None, None, "prod") == ("https://prod:7370", "k2", None)
    monkeypatch.setenv("PVC_API_URL", "http://env:1")
    monkeypatch.setenv("PVC_API_CA", "/env/ca.pem")
    assert connection.resolve(None, None, None) == ("http://env:1", "k1", "/env/ca.pem")  # env over the default
    assert connection.resolve(None, None, "prod") == ("https://prod:7370", "k2", "/env/ca.pem")  # a name over env
    assert connection.resolve("http://flag:2", "kf", "prod", "/f.pem") == ("http://flag:2", "kf", "/f.pem")
    with pytest.raises(ValueError, match="no connection named 'nope'"):
        connection.resolve(None, None, "nope")
    assert oct((tmp_path / "cli.toml").stat().st_mode & 0o777) == "0o600"


def test_saved_connections_are_escaped(tmp_path, monkeypatch):
    """Names, URLs and keys with quotes, backslashes or newlines read back as written (TOML written by tomli-w)."""
    monkeypatch.setenv("PVC_CONFIG", str(tmp_path / "cli.toml"))
    for var in ("PVC_API_URL", "PVC_API_KEY", "PVC_API_CA"):
        monkeypatch.delenv(var, raising=False)
    name, key = 'lab "1".x]\n[y', 'k"\\\n = "evil"'
    connection.save_connection(name, "http://h:1", key, make_default=True)
    connection.save_connection("other", "http://o:2", None)
    cfg = connection.read_config()
    assert cfg["default"] == name and set(cfg["connections"]) == {name, "other"}
    assert connection.resolve(None, None, None) == ("http://h:1", key, None)
    assert connection.resolve(None, None, "other") == ("http://o:2", None, None)
