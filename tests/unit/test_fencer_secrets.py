"""Which fence params are credentials is the fencer's own declaration, and the built-in fencers' holds."""

from __future__ import annotations

import os
import stat

import pytest

from pvccore.hookspecs import Fencer, FenceResult
from pvcplugins.fencing import fence_agent, ipmi


def _never(node, params):
    return FenceResult(False, "")


@pytest.mark.parametrize("secret, public, shown, masked", [
    ({"password"}, set(), {"host", "user"}, {"password"}),  # names its secrets: the rest is shown
    (set(), {"host"}, {"host"}, {"password", "kg", "pasword"}),  # names what is public: the rest is secret
    ({"host"}, {"host", "user"}, {"user"}, {"host", "password"}),  # secret wins over public
    (set(), set(), set(), {"host", "password"}),  # declares nothing: nothing is shown
])
def test_a_fencer_declares_its_secrets_or_its_public_params(secret, public, shown, masked):
    fencer = Fencer("f", "", _never, secret=frozenset(secret), public=frozenset(public))
    assert {p for p in shown | masked if fencer.is_secret(p)} == masked


def test_built_in_fencers_mask_every_credential_the_issue_found_in_clear():
    agent = fence_agent.FENCER
    for param in ("password", "passwd", "hexadecimal_kg", "kg", "pw", "pwd", "credential", "snmp_priv_passwd",
                  "password_script", "identity_file", "anything_new"):
        assert agent.is_secret(param), param
    for param in ("agent", "ip", "ipaddr", "port", "plug", "username", "login", "lanplus", "cipher"):
        assert not agent.is_secret(param), param
    assert ipmi.FENCER.is_secret("password") and ipmi.FENCER.is_secret("kg")
    assert not ipmi.FENCER.is_secret("host") and not ipmi.FENCER.is_secret("username")


def test_scrub_replaces_secret_values_longest_first_and_leaves_short_ones():
    fencer = Fencer("f", "", _never, public=frozenset({"host"}))
    params = {"host": "bmc1", "password": "hunter2", "kg": "hunter2-extra", "port": "12"}
    text = "login to bmc1 as hunter2 with hunter2-extra on 12"
    assert fencer.scrub(text, params) == "login to bmc1 as *** with *** on 12"


def test_fence_agent_output_never_carries_a_credential(tmp_path, monkeypatch):
    agent = tmp_path / "fence_echo"  # an agent that repeats its stdin in its error output, as verbose ones do
    agent.write_text("#!/bin/sh\nwhile read line; do last=\"$line\"; done\necho \"failed with $last\" >&2\n"
                     "exit 1\n")
    agent.chmod(agent.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    result = fence_agent.fence("hv1", {"agent": "fence_echo", "ip": "10.0.0.1", "secret_thing": "s3cr3t-v4lue"})
    assert not result.off and "failed with secret_thing=***" in result.message
    assert "s3cr3t" not in result.message
