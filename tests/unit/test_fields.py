"""Each field defined once (pvccore.domain.fields): the models, the OpenAPI document, the CLI options and the
reference docs all follow from the tables, and one checker judges every value (hostile ones too)."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import click
import falcon.inspect
import pytest
from click.testing import CliRunner

from pvcapi import routes
from pvcapi.app import Deps, create_app
from pvcapi.errors import BadRequest
from pvcapi.inputs import field as body_field
from pvcapi.openapi import document
from pvccli.client import Client
from pvccli.main import cli
from pvccli.options import field_options, given, option_name
from pvccore.config import DAEMON, Option, _coerce
from pvccore.domain.fields import CLUSTER_SETTINGS, VM_META_FIELDS, Field, Kind, check, table
from pvccore.domain.models import ClusterConfig, VMMeta
from pvccore.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import gendocs  # noqa: E402

TABLES = {"settings": (CLUSTER_SETTINGS, ClusterConfig), "meta": (VM_META_FIELDS, VMMeta)}


def body_props(doc: dict, path: str, method: str = "post") -> dict:
    return doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["properties"]


def options_of(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


# -- the tables and the dataclasses ------------------------------------------------------------


@pytest.mark.parametrize("which", TABLES)
def test_dataclass_fields_and_table_agree(which):
    tbl, cls = TABLES[which]
    assert [f.name for f in fields(cls)] == list(tbl), f"{cls.__name__} and its table list different fields"
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()
        assert tbl[f.name].default == default, f"{f.name}: the table and {cls.__name__} disagree on the default"
        assert check(tbl[f.name], default) == default  # and each default passes its own check
        assert tbl[f.name].help, f"{f.name} has no help text"


# -- every field everywhere --------------------------------------------------------------------


def test_every_cluster_setting_is_in_the_api_the_cli_and_the_docs():
    props = body_props(document("1"), "/api/v1/cluster/status")
    options = options_of(cli.commands["cluster"].commands["set"])
    config_md = (ROOT / "docs" / "reference" / "config.md").read_text()
    assert list(props) == list(CLUSTER_SETTINGS) and list(options) == list(CLUSTER_SETTINGS)
    for name, f in CLUSTER_SETTINGS.items():
        assert props[name]["description"] == f.text
        assert options[name].help.startswith(f.help)
        assert f"| `{name}` |" in config_md and f.text in config_md and option_name(f) in config_md
        if f.low is not None:
            assert (props[name]["minimum"], props[name]["maximum"]) == (f.low, f.high)
        if f.kind is Kind.ENUM:
            assert props[name]["enum"] == list(f.choice_values) == list(options[name].type.choices)


def test_every_vm_meta_field_is_in_the_api_the_cli_and_the_docs():
    doc = document("1")
    config_md = (ROOT / "docs" / "reference" / "config.md").read_text()
    bodies = [body_props(doc, "/api/v1/vm/{vm}"), body_props(doc, "/api/v1/vm/{vm}/meta"),
              body_props(doc, "/api/v1/vm"), doc["components"]["schemas"]["Meta"]["properties"]]
    commands = [cli.commands["vm"].commands["meta"], cli.commands["vm"].commands["define"]]
    for name, f in VM_META_FIELDS.items():
        for props in bodies:
            assert props[name]["description"] == f.text
        for command in commands:
            assert options_of(command)[name].opts == [f"--{f.option}"]
        assert f"| `{name}` |" in config_md and f.text in config_md
    assert set(VM_META_FIELDS) == set(body_props(doc, "/api/v1/vm/{vm}"))


def test_a_new_field_needs_only_its_table_entry():
    """Every derived artefact is built from the table: a field added there shows up everywhere."""
    extra = Field("fence_coffee_break", Kind.FLOAT, 5.0, "Seconds the fencer rests between attempts.",
                  detail="Never more than fence_retry_max.", low=0.5, high=60.0, unit="seconds")
    flag = Field("vm_sparkles", Kind.BOOL, False, "Whether the VM sparkles.", flag="sparkle")
    settings = table(*CLUSTER_SETTINGS.values(), extra)
    meta = table(*VM_META_FIELDS.values(), flag)

    doc = document("1", settings=settings, meta=meta)
    assert body_props(doc, "/api/v1/cluster/status")["fence_coffee_break"] == {
        "type": "number", "minimum": 0.5, "maximum": 60.0,
        "description": "Seconds the fencer rests between attempts. Never more than fence_retry_max."}
    assert body_props(doc, "/api/v1/vm/{vm}")["vm_sparkles"]["type"] == "boolean"
    assert "vm_sparkles" in body_props(doc, "/api/v1/vm")

    seen = {}

    @click.command()
    @field_options(settings)
    def set_(**options):
        seen["settings"] = given(settings, options)

    @click.command()
    @field_options(meta)
    def meta_(**options):
        seen["meta"] = given(meta, options)

    assert CliRunner().invoke(set_, ["--fence-coffee-break", "7"]).exit_code == 0
    assert CliRunner().invoke(meta_, ["--no-sparkle", "--limit", "hv2, hv1"]).exit_code == 0
    assert seen == {"settings": {"fence_coffee_break": 7.0}, "meta": {"vm_sparkles": False, "node_limit": ["hv2", "hv1"]}}
    assert options_of(set_)["fence_coffee_break"].help == "Seconds the fencer rests between attempts. [0.5 to 60]"
    assert "--sparkle / --no-sparkle" in CliRunner().invoke(meta_, ["--help"]).output

    md = gendocs.config_md(settings, meta)
    assert ("| `fence_coffee_break` | `5` | 0.5–60 s | `--fence-coffee-break` | Seconds the fencer rests between "
            "attempts. Never more than fence_retry_max. |") in md
    assert "| `vm_sparkles` | `false` | - | `--sparkle/--no-sparkle` | Whether the VM sparkles. |" in md

    with pytest.raises(ValidationError, match="fence_coffee_break must be a number of seconds from 0.5 to 60"):
        check(extra, 61)


# -- the one checker ---------------------------------------------------------------------------

FLOAT = Field("x", Kind.FLOAT, low=0.0, high=1e300)
INT = Field("n", Kind.INT, low=0, high=10**30)
BOOL = Field("b", Kind.BOOL)
STR = Field("s", Kind.STR)
ENUM = Field("e", Kind.ENUM, choices=("live", "shutdown"))
NAMES = Field("nodes", Kind.NAMES)
STRINGS = Field("strings", Kind.STRINGS)
NAN, INF = float("nan"), float("inf")
NESTED = [[["hv1"]]]

HOSTILE = [
    (FLOAT, [NAN, INF, -INF, True, False, 10**400, -10**400, "3", "nan", None, [1.0], NESTED, {"x": 1}, 2e300]),
    (INT, [True, 2.0, NAN, INF, "3", 10**31, -1, [1], NESTED, None]),
    (BOOL, [1, 0, 1.0, "true", "yes", None, [True], NESTED]),
    (STR, [5, True, None, b"x", ["a"], NESTED, {"a": "b"}]),
    (ENUM, ["teleport", "LIVE", True, 1, ["live"], NESTED, None, "live "]),
    (NAMES, ["hv1", 5, None, [5], [True], NESTED, [["hv1"]], ["bad/name"], ["hv1\n"], ["x" * 65], {"hv1": 1}]),
    (STRINGS, ["a", [""], [5], NESTED, [None], None]),
]


@pytest.mark.parametrize("spec, value", [(s, v) for s, values in HOSTILE for v in values],
                         ids=lambda x: x.name if isinstance(x, Field) else repr(x)[:30])
def test_hostile_values_are_refused_naming_the_field(spec, value):
    with pytest.raises(ValidationError) as exc:
        check(spec, value)
    assert exc.value.field == spec.name
    assert "\n" not in exc.value.message and len(exc.value.message) < 300


def test_good_values_come_back_normalised():
    assert check(FLOAT, 3) == 3.0 and type(check(FLOAT, 3)) is float
    assert check(INT, 10**20) == 10**20
    assert check(BOOL, False) is False
    assert check(ENUM, "live") == "live"
    assert check(NAMES, ["hv2", "hv1", "hv2"]) == ("hv1", "hv2")
    assert check(STRINGS, ["a", "b"]) == ("a", "b")
    method = check(VM_META_FIELDS["migration_method"], "live")
    assert type(method).__name__ == "MigrationMethod"  # a StrEnum's choice reads back as its member


@pytest.mark.parametrize("value", [NAN, INF, -INF, True, 10**400, "3", [3.0], NESTED, None])
def test_seconds_messages_keep_their_meaning(value):
    with pytest.raises(ValidationError) as exc:
        ClusterConfig().updated({"keepalive_limit": value})
    assert exc.value.message.startswith("keepalive_limit must be a number of seconds from 0.3 to 300; got ")
    assert exc.value.field == "keepalive_limit"


def test_an_integer_too_long_to_print_stays_one_short_line():
    with pytest.raises(ValidationError) as exc:
        check(FLOAT, 10**5000)
    assert len(exc.value.message) < 200 and "bits" in exc.value.message


def test_the_models_the_config_files_and_the_api_share_the_checker():
    """True is never a number and 1 never true, wherever a value comes in."""
    with pytest.raises(ValidationError, match="keepalive_interval must be a number from 0.1 to 10; got True"):
        _coerce(next(o for o in DAEMON.options if o.key == "keepalive_interval"), True)
    with pytest.raises(ValidationError, match="coordinator must be true or false; got 1"):
        _coerce(Option("coordinator", bool, False, "."), 1)
    with pytest.raises(ValidationError, match="allow_overcommit must be true or false; got 1"):
        ClusterConfig().updated({"allow_overcommit": 1})
    with pytest.raises(ValidationError, match="node_autostart must be true or false; got 0"):
        VMMeta().updated({"node_autostart": 0})
    for data, kind in (({"wait": 1}, bool), ({"x": True}, float), ({"x": NAN}, float), ({"s": None}, str)):
        with pytest.raises(BadRequest) as exc:
            body_field(data, next(iter(data)), kind)
        assert exc.value.field == next(iter(data))
    with pytest.raises(BadRequest) as exc:
        body_field({"state": "drain"}, "state", str, choices=("flush", "ready"))
    assert exc.value.description == "state must be one of flush, ready; got 'drain'"


def test_cluster_rules_beyond_the_table_stay():
    with pytest.raises(ValidationError, match="unknown cluster setting 'nope'"):
        ClusterConfig().updated({"nope": 1, "keepalive_limit": 5})
    for bad in ("", "default"):
        with pytest.raises(ValidationError, match="default_selector must name a selector"):
            ClusterConfig().updated({"default_selector": bad})
    config = ClusterConfig.from_dict({"keepalive_limit": True, "fence_grace": "2", "fence_retry_max": 30})
    assert (config.keepalive_limit, config.fence_grace, config.fence_retry_max) == (3.0, 2.0, 30.0)
    assert VMMeta().updated({"node_limit": "hv2,hv1"}).node_limit == ("hv1", "hv2")
    assert VMMeta().updated({"node_limit": None}).node_limit == ()
    assert math.isclose(ClusterConfig().updated({"fence_grace": 0}).fence_grace, 0.0)


# -- routes --------------------------------------------------------------------------------------


class _Ops:
    """Just enough of Operations to build the app."""

    class store:
        class connection:
            connected = True

            @staticmethod
            def subscribe(fn):
                pass


def test_the_app_the_openapi_document_and_the_route_table_agree():
    table_routes = {(r.template, m.lower()) for r in routes.ROUTES for m in r.methods}
    app = create_app(Deps(ops=_Ops(), api_keys=("k",)))
    served = {(r.path, m.method.lower()) for r in falcon.inspect.inspect_routes(app) for m in r.methods
              if not m.internal}
    documented = {(p, m) for p, ops in document("1")["paths"].items() for m in ops}
    assert served == table_routes == documented


def test_the_client_asks_only_for_routes_in_the_table(monkeypatch):
    asked = []
    monkeypatch.setattr(Client, "request", lambda self, method, path, body=None, params=None:
                        asked.append((method, path)) or (200, {"message": "ok"}))
    c = Client("http://x:1")
    for call in (c.health, c.cluster_status, c.nodes, c.selectors, c.plugins, lambda: c.set_cluster(fence_grace=1),
                 lambda: c.node("hv/1"), lambda: c.node_domain_state("hv1", "flush"),
                 lambda: c.node_coordinator_state("hv1", "primary"), lambda: c.fence_config("hv1"),
                 lambda: c.set_fence_config("hv1", []), lambda: c.confirm_off("hv1"), c.vms, lambda: c.vm("a b"),
                 lambda: c.define_vm("<domain/>"), lambda: c.set_meta("web1", node_autostart=True),
                 lambda: c.replace_xml("web1", "<domain/>"), lambda: c.undefine("web1"),
                 lambda: c.vm_state("web1", "start"), lambda: c.vm_node("web1", "move"), lambda: c.placement("web1")):
        call()
    assert ("GET", "/node/hv%2F1") in asked and ("GET", "/vm/a%20b") in asked  # names quoted, never a path
    for method, path in asked:
        assert any(method in r.methods and re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", r.path), path)
                   for r in routes.ROUTES), (method, path)


def test_route_urls_need_their_parameters():
    assert routes.url("vm_state", vm="web1") == "/vm/web1/state"
    with pytest.raises(TypeError, match="takes vm"):
        routes.url("vm_state")
    with pytest.raises(TypeError, match="takes no parameters"):
        routes.url("nodes", node="x")
