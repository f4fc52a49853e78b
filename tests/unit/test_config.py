"""Daemon configuration: the example file parses, flags override, bad input is one clear error."""

import argparse
from pathlib import Path

import pytest

from pvccore import config
from pvccore.errors import ValidationError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "pvcnoded.example.toml"


def parse(argv):
    parser = argparse.ArgumentParser()
    config.DAEMON.add_flags(parser)
    return config.DAEMON.from_args(parser.parse_args(argv))


def test_example_config_sets_every_key():
    cfg = parse(["--config", str(EXAMPLE)])
    assert set(config.load_file(str(EXAMPLE))) == {o.key for o in config.DAEMON.options}
    assert cfg.node == "hv1" and cfg.coordinator is True
    assert cfg.migration_uri == "qemu+tcp://10.0.0.1/system"


def test_flags_override_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('node = "a"\nflush_parallel = 3\n')
    cfg = parse(["-c", str(f), "--node", "b", "--no-coordinator", "--keepalive-interval", "2"])
    assert (cfg.node, cfg.flush_parallel, cfg.coordinator, cfg.keepalive_interval) == ("b", 3, False, 2.0)
    assert cfg.migration_uri == ""  # no address: no live migration into this node


@pytest.mark.parametrize("text, message", [
    ('flush_parallel = 2', "node: required"),
    ('node = "a"\nzookeeper_hosts = 5', "zookeeper_hosts must be a string; got 5"),
    ('node = "a"\nflush_parallel = 0', "flush_parallel must be an integer from 1 to 64; got 0"),
    ('node = "a"\nkeepalive_interval = "1"', "keepalive_interval must be a number from 0.1 to 10; got '1'"),
    ('node = "a"\ncoordinator = 1', "coordinator must be true or false; got 1"),
    ('node = "a"\ncolour = "red"', "unknown configuration key 'colour'"),
    ('node = "a"\nlog_level = "loud"', "log_level must be one of debug, info, warning, error"),
    ('node = "a"\nzookeeper_root = "pvc"', "invalid ZooKeeper root"),
    ('node = "a"\nmigration_uri_template = "qemu+tcp://x/system"', "must contain {address}"),
    ('node = ', "not valid TOML"),
    ('node = "a"\nkeepalive_interval = nan', "keepalive_interval must be a number from 0.1 to 10; got nan"),
    ('node = "a"\nshutdown_timeout = inf', "shutdown_timeout must be a number from 0 to 3600; got inf"),
    ('node = "a"\nkeepalive_interval = 1e308', "keepalive_interval must be a number from 0.1 to 10; got 1e"),
    ('node = "a"\nzookeeper_session_timeout = 0.5', "zookeeper_session_timeout must be a number from 1 to 60"),
    ('node = "a"\nflush_timeout = nan', "flush_timeout must be a number from 1 to 600; got nan"),
    ('node = "a"\nflush_timeout = 0', "flush_timeout must be a number from 1 to 600; got 0"),
    ('node = "a"\nflush_timeout = -5', "flush_timeout must be a number from 1 to 600; got -5"),
    ('node = "a"\nflush_timeout = 1e12', "flush_timeout must be a number from 1 to 600; got 1"),
    ('node = "a"\nflush_on_shutdown = "yes"', "flush_on_shutdown must be true or false"),
    ('node = "a"\nready_on_boot = 1', "ready_on_boot must be true or false; got 1"),
])
def test_bad_config_is_one_clear_error(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ValidationError, match=message.replace("{", r"\{").replace("(", r"\(")):
        parse(["-c", str(f)])


def test_pvcnoded_bad_config_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    f = tmp_path / "c.toml"
    f.write_text('node = "a/b"\n')
    exe = Path(sys.executable).parent / "pvcnoded"
    out = subprocess.run([str(exe), "-c", str(f)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["pvcnoded: error: invalid node name 'a/b': use 1-64 letters, "
                                               "digits, '.', '_' or '-', starting with a letter or digit"]


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_pvcapid_bad_number_exits_2_with_one_line(value):
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "pvcapid"
    out = subprocess.run([str(exe), "--wait-timeout", value, "--api-key", "k"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("pvcapid: error: wait_timeout must be") and value.lstrip("-") in line


@pytest.mark.parametrize("text, message", [
    ('read_only_keys = ["k"]\napi_keys = ["k"]', "read_only_keys: 1 key\\(s\\) also in api_keys; a key has one role"),
    ('api_keys = ["k"]\nread_only_keys = [""]', "read_only_keys must be a list of non-empty strings"),
    ('api_keys = [""]', "api_keys must be a list of non-empty strings"),
    ('api_keys = ["k"]\nread_only_keys = "k2"', "read_only_keys must be a list of non-empty strings"),
    ('api_keys = ["k"]\nread_only_keys = [1]', "read_only_keys must be a list of non-empty strings"),
    ('api_keys = []', "api_keys: required while auth is on"),
])
def test_bad_api_keys_are_one_clear_error(tmp_path, text, message):
    from pvcapi.config import API

    f = tmp_path / "api.toml"
    f.write_text(text)
    with pytest.raises(ValidationError, match=message):
        API.from_file(str(f))


def test_read_only_keys_alone_are_enough_to_start():
    from pvcapi.config import API

    parser = argparse.ArgumentParser()
    API.add_flags(parser)
    cfg = API.from_args(parser.parse_args(["--read-only-key", "watch", "--read-only-key", "look"]))
    assert cfg.api_keys == () and cfg.read_only_keys == ("watch", "look")
