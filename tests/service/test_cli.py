"""Every `pvc` command through click's CliRunner, against pvcapid under a real gunicorn and real daemons."""

import json
import time
from dataclasses import replace

import pytest
from click.testing import CliRunner

from pvccli.main import cli
from pvccore.demo.cluster import sample_domain_xml as domain

T = 20


@pytest.fixture
def pvc(live, tmp_path):
    env = {"PVC_API_URL": live.url, "PVC_API_KEY": live.key, "PVC_CONFIG": str(tmp_path / "none.toml")}
    runner = CliRunner()

    def run(*args, ok=True):
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, (args, result.output, result.stderr)
        return result

    return run


def settled(live, vm, **want):
    return live.view.wait_for(lambda c: (v := c.vms.get(vm)) is not None and v.migration is None
                              and all(getattr(v, k) == x for k, x in want.items()), T)


def test_real_gunicorn_serves_the_api(live):
    from pvccli.client import ApiError, Client

    client = Client(live.url, live.key)
    assert client.health()["name"] == "pvc"
    assert client.cluster_status()["nodes"]["total"] == 3
    with pytest.raises(ApiError) as err:
        Client(live.url, "nope").nodes()
    assert err.value.status == 401
    # gunicorn's access log is written just after the answer: poll it under a deadline
    deadline = time.monotonic() + 5
    while '"GET /api/v1/node HTTP/1.1" 401' not in live.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"GET /api/v1/node HTTP/1.1" 401' in live.log.read_text()


def test_cluster_status_and_set(pvc):
    out = pvc("cluster", "status").output
    assert "health:" in out and "healthy" in out and "nodes:" in out and "run 3" in out
    assert json.loads(pvc("cluster", "status", "-f", "json").output)["nodes"]["total"] == 3
    assert "updated" in pvc("cluster", "set", "--default-selector", "mem").output
    pvc("cluster", "set", "--fence-grace", "2.5", "--failed-fence", "none")
    assert json.loads(pvc("cluster", "status", "-f", "json").output)["config"]["fence_grace"] == 2.5
    bad = pvc("cluster", "set", "--fence-grace", "-1", ok=False)
    assert bad.exit_code == 1 and "fence_grace must be a number of seconds from 0 to 300" in bad.stderr
    bad = pvc("cluster", "set", "--default-selector", "nosuch", ok=False)
    assert bad.exit_code == 1 and bad.stderr.startswith("pvc: error: unknown selector 'nosuch'")
    assert len(bad.stderr.strip().splitlines()) == 1


def test_node_list_info(pvc):
    out = pvc("node", "list").output.splitlines()
    assert out[0].split()[:4] == ["NODE", "DAEMON", "COORDINATOR", "DOMAIN"] and len(out) == 4
    assert [n["name"] for n in json.loads(pvc("node", "list", "-f", "json").output)] == ["hv1", "hv2", "hv3"]
    assert "daemon:" in pvc("node", "info", "hv1").output
    bad = pvc("node", "info", "hv9", ok=False)
    assert bad.exit_code == 1 and bad.stderr == "pvc: error: node 'hv9' not found\n"


def test_vm_define_meta_info_list(pvc, live, tmp_path):
    xml = tmp_path / "web.xml"
    xml.write_text(domain("cweb", 512))
    out = pvc("vm", "define", str(xml), "--limit", "hv1,hv2", "--node-selector", "vms", "--method", "shutdown",
              "--autostart", "--max-downtime", "200").output
    assert "VM cweb defined on hv1" in out
    info = json.loads(pvc("vm", "info", "cweb", "-f", "json").output)
    assert info["meta"] == {"node_limit": ["hv1", "hv2"], "node_selector": "vms", "node_autostart": True,
                            "migration_method": "shutdown", "migration_max_downtime": 200, "tags": [],
                            "protected_tags": []}
    table = pvc("vm", "info", "cweb").output
    assert "limit:" in table and "hv1,hv2" in table and "selector:" in table and "method:" in table
    assert "downtime:" in table and "200" in table
    bad = pvc("vm", "meta", "cweb", "--max-downtime", "-5", ok=False)
    assert bad.exit_code == 1 and "migration_max_downtime must be an integer from 0 to 60000" in bad.output
    assert "<domain" in pvc("vm", "info", "cweb", "--xml").output

    pvc("vm", "meta", "cweb", "--limit", "hv2,hv3", "--node-selector", "mem", "--no-autostart")
    listed = pvc("vm", "list").output
    assert "cweb" in listed and "hv2,hv3" in listed and "LIMIT" in listed and "SELECTOR" in listed
    assert json.loads(pvc("vm", "list", "cw*", "--state", "start", "-f", "json").output)[0]["meta"][
        "node_selector"] == "mem"
    assert json.loads(pvc("vm", "list", "--node", "hv3", "-f", "json").output) == []
    bad = pvc("vm", "meta", "cweb", "--node-selector", "nosuch", ok=False)
    assert bad.exit_code == 1 and "unknown selector" in bad.stderr
    assert pvc("vm", "meta", "cweb", ok=False).exit_code == 2  # nothing to change: usage error
    assert "selector mem" in pvc("vm", "placement", "cweb").output
    assert json.loads(pvc("vm", "placement", "cweb", "-f", "json").output)["selector"] == "mem"
    # Its selector's plugin removed (written behind the API's back): placed by the default, and said so.
    live.store.update_vm("cweb", lambda v: replace(v, meta=replace(v.meta, node_selector="gone")))
    assert live.view.wait_for(lambda c: c.vms["cweb"].meta.node_selector == "gone", 10)
    assert "note: selector 'gone' is not registered" in pvc("vm", "placement", "cweb").output


def test_vm_lifecycle_and_migration_commands(pvc, live, tmp_path):
    xml = tmp_path / "app.xml"
    xml.write_text(domain("capp", 256))
    pvc("vm", "define", str(xml), "--target", "hv1")
    assert settled(live, "capp", node="hv1", state="start")
    for state in ("shutdown", "start", "restart", "stop", "start", "disable", "start"):
        pvc("vm", state, "capp", "--wait")
    assert settled(live, "capp", state="start")
    assert "VM capp" in pvc("vm", "migrate", "capp", "--target", "hv2", "--wait").output
    assert settled(live, "capp", node="hv2", last_node="hv1")
    pvc("vm", "unmigrate", "capp", "--wait")
    assert settled(live, "capp", node="hv1", last_node="")
    pvc("vm", "move", "capp", "--wait")
    assert settled(live, "capp", last_node="") and live.store.get_vm("capp").node != "hv1"
    bad = pvc("vm", "undefine", "capp", ok=False)
    assert bad.exit_code == 1 and "running" in bad.stderr
    assert "undefined" in pvc("vm", "undefine", "capp", "--force").output
    assert "capp" not in live.store.vm_names()


def test_node_flush_and_ready_with_progress(pvc, live, tmp_path):
    xml = tmp_path / "fl.xml"
    xml.write_text(domain("cflush", 256))
    pvc("vm", "define", str(xml), "--target", "hv3", "--limit", "hv3", "--no-autostart")
    assert settled(live, "cflush", node="hv3", state="start")
    out = pvc("node", "flush", "hv3", "--wait").output
    assert "node hv3 is flushed" in out and "running VM(s) left" in out
    vm = live.store.get_vm("cflush")
    assert (vm.state, vm.meta.node_autostart) == ("stop", True)  # no other node in its limit: parked
    assert "node hv3 is ready" in pvc("node", "ready", "hv3", "--wait").output
    assert settled(live, "cflush", state="start")


def test_selector_and_plugin_list(pvc):
    out = pvc("selector", "list").output
    assert "SELECTOR" in out and "memprov" in out
    names = [p["name"] for p in json.loads(pvc("plugin", "list", "-f", "json").output)]
    assert {"mem", "load", "vcpus", "vms", "memprov"} <= set(names)


def test_unreachable_api_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["--api", "http://127.0.0.1:9", "node", "list"],
                                env={"PVC_CONFIG": str(tmp_path / "none.toml")})
    assert result.exit_code == 1
    assert result.stderr.startswith("pvc: error: cannot reach the API at http://127.0.0.1:9/api/v1")


def test_node_primary_and_secondary(pvc, live):
    assert live.view.wait_for(lambda c: c.primary is not None and
                              c.nodes[c.primary.node].coordinator_state == "primary", T)
    old = live.view.snapshot().primary.node
    new = next(n for n in ("hv1", "hv2", "hv3") if n != old)
    assert f"{new} is primary" in pvc("node", "primary", new, "--wait").output
    assert f"primary:          {new}" in pvc("cluster", "status").output  # the API waited for all of it
    bad = pvc("node", "primary", new, ok=False)
    assert bad.exit_code == 1 and "already primary" in bad.stderr
    assert "is primary" in pvc("node", "secondary", new, "--wait").output
    assert live.view.wait_for(lambda c: c.primary.node != new, T)  # this test's own view follows


def test_node_fence_config(pvc, live, tmp_path):
    cfg = tmp_path / "fence.json"
    cfg.write_text(json.dumps([{"fencer": "ipmi", "params": {"host": "10.1.1.1", "password": "pw-123"}}]))
    out = pvc("node", "fence-config", "hv2", "--set", str(cfg)).output
    assert "ipmi" in out and "password=***" in out and "pw-123" not in out
    assert "host=10.1.1.1" in pvc("node", "fence-config", "hv2").output
    assert json.loads(pvc("node", "fence-config", "hv3", "-f", "json").output)["entries"] == []
    cfg.write_text("not json")
    bad = pvc("node", "fence-config", "hv2", "--set", str(cfg), ok=False)
    assert bad.exit_code == 1 and "not valid JSON" in bad.stderr


def test_maintenance_mode_and_the_what_if_of_a_node_failure(pvc, live, tmp_path):
    xml = tmp_path / "pin.xml"
    xml.write_text(domain("cpin", 512))
    pvc("vm", "define", str(xml), "--limit", "hv2", "--target", "hv2")
    xml.write_text(domain("cfree", 512))
    pvc("vm", "define", str(xml), "--target", "hv2")
    assert settled(live, "cpin", node="hv2") and settled(live, "cfree", node="hv2")
    plan = json.loads(pvc("node", "what-if-fail", "hv2", "-f", "json").output)
    moves, parked = {m["vm"]: m["target"] for m in plan["moves"]}, {p["vm"]: p["reason"] for p in plan["parked"]}
    assert moves["cfree"] in ("hv1", "hv3") and "outside the VM's node limit" in parked["cpin"]
    out = pvc("node", "what-if-fail", "hv2").output.splitlines()
    assert out[0] == f"if hv2 failed now: {len(moves)} VM(s) recovered elsewhere, {len(parked)} left stopped"
    rows = {line.split()[0]: line for line in out[2:]}
    assert f"-> {moves['cfree']}" in rows["cfree"] and "STOPPED" in rows["cpin"]
    bad = pvc("node", "what-if-fail", "hv9", ok=False)
    assert bad.exit_code == 1 and bad.stderr == "pvc: error: node 'hv9' not found\n"
    assert "cpin" in json.loads(pvc("cluster", "status", "-f", "json").output)["n_plus_one"]["stranded"]["hv2"]
    assert any(line.startswith("warning: N+1: losing node hv2 would leave") and "cpin" in line
               for line in pvc("cluster", "status").output.splitlines())

    assert pvc("cluster", "maintenance", "on").output.startswith("maintenance mode on")
    status = pvc("cluster", "status").output.splitlines()
    assert status[0].split() == ["maintenance:", "ON:", "nobody", "is", "fenced"]
    assert json.loads(pvc("cluster", "status", "-f", "json").output)["maintenance"] is True
    bad = pvc("cluster", "maintenance", "maybe", ok=False)
    assert bad.exit_code == 2
    pvc("cluster", "maintenance", "off")
    assert json.loads(pvc("cluster", "status", "-f", "json").output)["maintenance"] is False


def test_tags_filters_and_the_devices_of_a_vm(pvc, live, tmp_path):
    xml = tmp_path / "t.xml"
    xml.write_text(domain("tweb", 256).replace("</domain>", "<devices><disk type='file' device='disk'><source "
                                                "file='/srv/tweb.img'/><target dev='vda' bus='virtio'/></disk>"
                                                "<interface type='bridge'><source bridge='br0'/></interface>"
                                                "</devices></domain>"))
    pvc("vm", "define", str(xml), "--tag", "web,blue", "--protected-tag", "prod", "--target", "hv1")
    xml.write_text(domain("tdb", 256))
    pvc("vm", "define", str(xml), "--tag", "db", "--target", "hv2", "--no-start")
    assert settled(live, "tweb", node="hv1")
    tags = json.loads(pvc("vm", "tag", "get", "tweb", "-f", "json").output)
    assert (tags["tags"], tags["protected_tags"]) == (["blue", "web"], ["prod"])
    info = pvc("vm", "info", "tweb").output
    assert "disk vda:" in info and "disk /srv/tweb.img bus=virtio" in info and "net 0:" in info and "br0" in info

    # Protected tags go only on purpose; a careless remove changes nothing.
    bad = pvc("vm", "tag", "remove", "tweb", "prod", ok=False)
    assert bad.exit_code == 1 and "is protected" in bad.stderr
    bad = pvc("vm", "meta", "tweb", "--protected-tag", "other", ok=False)
    assert bad.exit_code == 1 and "tag 'prod' is protected" in bad.stderr
    bad = pvc("vm", "tag", "remove", "tweb", "nosuch", ok=False)
    assert bad.exit_code == 1 and "has no tag 'nosuch'" in bad.stderr
    bad = pvc("vm", "tag", "add", "tweb", "no spaces", ok=False)
    assert bad.exit_code == 1 and "invalid tag name" in bad.stderr
    assert json.loads(pvc("vm", "tag", "get", "tweb", "-f", "json").output)["protected_tags"] == ["prod"]
    pvc("vm", "tag", "add", "tweb", "green")
    pvc("vm", "tag", "remove", "tweb", "blue")
    pvc("vm", "tag", "remove", "tweb", "prod", "--protected")
    tags = json.loads(pvc("vm", "tag", "get", "tweb", "-f", "json").output)
    assert (tags["tags"], tags["protected_tags"]) == (["green", "web"], [])

    def names(*args) -> set[str]:
        return {v["name"] for v in json.loads(pvc("vm", "list", *args, "-f", "json").output)} & {"tweb", "tdb"}

    assert names("--tag", "web") == {"tweb"} and names("--tag", "db", "--tag", "web") == {"tweb", "tdb"}
    assert names("--tag", "web", "--negate") == {"tdb"}
    assert names("--node", "hv2") == {"tdb"} and names("--state", "stop") == {"tdb"}
    assert names("--state", "stop", "--negate") == {"tweb"}
    uuid = json.loads(pvc("vm", "info", "tdb", "-f", "json").output)["uuid"]
    assert names(uuid[:13]) == {"tdb"} and names("t[dw]*") == {"tweb", "tdb"}
    assert "PROTECTED" in pvc("vm", "list").output.splitlines()[0]


def test_shell_completion_from_the_api_and_yaml_output(pvc, live, tmp_path):
    import yaml

    xml = tmp_path / "c.xml"
    xml.write_text(domain("compl1", 256))
    pvc("vm", "define", str(xml), "--target", "hv1", "--no-start")
    assert "_PVC_COMPLETE" in pvc("completion", "bash").output and "compdef" in pvc("completion", "zsh").output
    assert "complete" in pvc("completion", "fish").output
    assert pvc("completion", "tcsh", ok=False).exit_code == 2

    def complete(line: str, env=None) -> list[str]:
        words = line.split(" ")
        result = CliRunner().invoke(cli, [], prog_name="pvc", env={"_PVC_COMPLETE": "bash_complete", "COMP_WORDS": line,
                                                  "COMP_CWORD": str(len(words) - 1), "PVC_API_URL": live.url,
                                                  "PVC_API_KEY": live.key, "PVC_CONFIG": str(tmp_path / "no.toml"),
                                                  **(env or {})})
        assert result.exit_code == 0, (result.output, result.exception)
        return [row.split(",", 1)[1] for row in result.output.splitlines() if row]  # "type,value" lines

    assert complete("pvc vm info compl") == ["compl1"]
    assert complete("pvc node flush hv") == ["hv1", "hv2", "hv3"]
    assert complete("pvc vm migrate compl1 --target hv") == ["hv1", "hv2", "hv3"]
    assert complete("pvc vm info compl", {"PVC_API_KEY": "wrong"}) == []  # refused: nothing, and no error
    assert complete("pvc vm info compl", {"PVC_API_URL": "http://127.0.0.1:1"}) == []  # no API: nothing
    assert "tag" in complete("pvc vm t")
    as_yaml = yaml.safe_load(pvc("node", "list", "-f", "yaml").output)
    assert as_yaml == json.loads(pvc("node", "list", "-f", "json").output) and len(as_yaml) == 3
    assert yaml.safe_load(pvc("vm", "info", "compl1", "-f", "yaml").output)["name"] == "compl1"


def test_modify_shows_a_diff_and_saves_once_confirmed_and_a_migrated_vm_moved_where_it_is_stays(pvc, live, tmp_path):
    xml = tmp_path / "m.xml"
    xml.write_text(domain("mod1", 256))
    pvc("vm", "define", str(xml), "--target", "hv1")
    assert settled(live, "mod1", node="hv1")
    saved = live.store.get_vm_xml("mod1")
    bigger = tmp_path / "bigger.xml"
    bigger.write_text(saved.replace('<memory unit="MiB">256</memory>', '<memory unit="MiB">384</memory>'))
    assert bigger.read_text() != saved
    no = CliRunner().invoke(cli, ["vm", "modify", "mod1", str(bigger)], input="n\n", env={
        "PVC_API_URL": live.url, "PVC_API_KEY": live.key, "PVC_CONFIG": str(tmp_path / "none.toml")})
    lines = no.output.splitlines()
    assert no.exit_code == 1 and "nothing saved" in no.stderr and "--- mod1 (saved)" in lines
    assert any(x.startswith("-") and ">256<" in x for x in lines) and any(x.startswith("+") and ">384<" in x
                                                                         for x in lines)
    assert live.store.get_vm_xml("mod1") == saved  # refused: nothing changed
    out = pvc("vm", "modify", "mod1", str(bigger), "--yes", "--restart").output
    assert "XML replaced" in out and live.store.get_vm("mod1").memory_mib == 384
    assert "no change" in pvc("vm", "modify", "mod1", str(bigger), "--yes").output
    edited = CliRunner().invoke(cli, ["vm", "modify", "mod1"], input="y\n", env={  # through $EDITOR
        "PVC_API_URL": live.url, "PVC_API_KEY": live.key, "PVC_CONFIG": str(tmp_path / "none.toml"),
        "EDITOR": "sed -i s/384/448/", "VISUAL": ""})
    assert edited.exit_code == 0, edited.output
    assert "XML replaced" in edited.output and live.store.get_vm("mod1").memory_mib == 448
    bad = tmp_path / "bad.xml"
    bad.write_text(saved.replace("<name>mod1</name>", "<name>other</name>"))
    assert pvc("vm", "modify", "mod1", str(bad), "--yes", ok=False).exit_code == 1

    pvc("vm", "migrate", "mod1", "--target", "hv2", "--wait")
    assert settled(live, "mod1", node="hv2", last_node="hv1")
    assert "hv2" in pvc("vm", "move", "mod1", "--target", "hv2").output
    assert settled(live, "mod1", node="hv2", last_node="")  # for good: no way back to hv1 now
    bad = pvc("vm", "move", "mod1", "--target", "hv2", ok=False)
    assert bad.exit_code == 1 and "no last node to forget" in bad.stderr


def test_node_and_vm_logs_through_the_api(pvc, live, tmp_path):
    deadline = time.monotonic() + T
    while "node hv1 running" not in (out := pvc("node", "log", "hv1", "--lines", "500").output):
        assert time.monotonic() < deadline, out  # the daemon's own log, published by it every 2 s
        time.sleep(0.2)
    assert len(pvc("node", "log", "hv1", "-n", "1").output.splitlines()) == 1
    bad = pvc("node", "log", "hv9", ok=False)
    assert bad.exit_code == 1 and "node 'hv9' not found" in bad.stderr
    assert pvc("node", "log", "hv1", "-n", "0", ok=False).exit_code == 2

    console = tmp_path / "con1.log"
    xml = tmp_path / "con1.xml"
    xml.write_text(domain("con1", 256).replace("</domain>", f"<devices><serial type='file'><source path='{console}'/>"
                                               "</serial></devices></domain>"))
    pvc("vm", "define", str(xml), "--target", "hv2")
    assert settled(live, "con1", node="hv2")
    # libvirt's test driver runs no guest: the lines a guest's console would get are written here, and the
    # daemon of the VM's node publishes the file's tail as it would a real one's.
    console.write_text("".join(f"boot line {i}\n" for i in range(300)) + "login: \n")
    deadline = time.monotonic() + T
    while "login:" not in (out := pvc("vm", "log", "con1", "--lines", "3").output):
        assert time.monotonic() < deadline, out
        time.sleep(0.2)
    assert out.splitlines() == ["boot line 298", "boot line 299", "login: "]
    xml.write_text(domain("nocon", 256))
    pvc("vm", "define", str(xml), "--target", "hv2", "--no-start")
    nothing = pvc("vm", "log", "nocon")  # no file console: nothing, said on stderr
    assert nothing.stdout == "" and "nothing published yet" in nothing.stderr


def test_rename_of_a_stopped_vm_moves_it_whole_and_it_starts_under_its_new_name(pvc, live, tmp_path):
    xml = tmp_path / "rn.xml"
    xml.write_text(domain("rn-old", 256))
    pvc("vm", "define", str(xml), "--target", "hv3", "--tag", "keep")
    assert settled(live, "rn-old", node="hv3") and live.view.wait_for(lambda c: "rn-old" in c.nodes["hv3"].running_vms, T)
    bad = pvc("vm", "rename", "rn-old", "rn-new", ok=False)
    assert bad.exit_code == 1 and "only a stopped VM is renamed" in bad.stderr  # running: refused, nothing changed
    pvc("vm", "stop", "rn-old", "--wait")
    uuid = live.store.get_vm("rn-old").uuid
    xml.write_text(domain("rn-taken", 256))
    pvc("vm", "define", str(xml), "--target", "hv1", "--no-start")
    for new, why in (("rn-taken", "exists already"), ("bad name", "invalid VM name"), ("rn-old", "that name")):
        bad = pvc("vm", "rename", "rn-old", new, ok=False)
        assert bad.exit_code == 1 and why in bad.stderr, (new, bad.stderr)
    assert live.store.get_vm("rn-old").uuid == uuid

    assert "renamed to rn-new" in pvc("vm", "rename", "rn-old", "rn-new").output
    moved = live.store.get_vm("rn-new")
    assert (moved.uuid, moved.node, moved.meta.tags) == (uuid, "hv3", ("keep",))
    assert "<name>rn-new</name>" in live.store.get_vm_xml("rn-new")
    assert not live.store.client.exists(live.store.paths.vm("rn-old"))
    assert live.store.client.exists(live.store.paths.placed_vm("hv3", "rn-new"))
    assert not live.store.client.exists(live.store.paths.placed_vm("hv3", "rn-old"))
    pvc("vm", "start", "rn-new", "--wait")  # its node drops the old name's definition and starts the new
    assert live.view.wait_for(lambda c: "rn-new" in c.nodes["hv3"].running_vms
                              and "rn-old" not in c.nodes["hv3"].running_vms, T)
    assert live.store.get_vm("rn-new").state == "start"
