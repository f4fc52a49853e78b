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


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "pvc")
def test_help(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and "Show this message and exit." in result.output


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
