"""The web dashboard and its event stream, against pvcapid under gunicorn on the service-test cluster.

The HTTP tests read the files, the roles of keys and the event stream with a plain HTTP client; the
browser test drives Debian's Chromium through its WebDriver (selenium; nothing is downloaded).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import time
import urllib.parse

import pytest

from pvccli.client import ApiError, Client
from pvccore.demo.cluster import sample_domain_xml
from tests.tools.pvcapid import start_pvcapid
from tests.tools.sse import Stream

T = 30.0  # seconds any one wait of this module may take at most
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _conn(live) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(urllib.parse.urlsplit(live.url).netloc, timeout=T)


def _get(live, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = _conn(live)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def samples(live):
    """Three sample VMs, one per node; the middle one tagged."""
    client = Client(live.url, live.key)
    for name, node, meta in (("dash1", "hv1", {"node_limit": ["hv1", "hv2"], "node_selector": "mem"}),
                             ("dash2", "hv2", {"tags": ["web", "blue"]}),
                             ("dash3", "hv3", {"node_selector": "vms"})):
        client.define_vm(sample_domain_xml(name, 256, 1), target=node, **meta)
    assert live.view.wait_for(lambda c: all(n in c.nodes[c.vms[n].node].running_vms
                                            for n in ("dash1", "dash2", "dash3") if n in c.vms)
                              and {"dash1", "dash2", "dash3"} <= set(c.vms), T)
    return client


# -- files, keys, roles -------------------------------------------------------------------------------


def test_the_dashboard_files_need_no_key_and_load_nothing_from_elsewhere(live):
    status, headers, _ = _get(live, "/")
    assert status == 302 and headers["location"].endswith("/dashboard")
    status, headers, page = _get(live, "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html")
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"
    refs = re.findall(rb'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith(b"/dashboard/") or r.startswith(b"#") for r in refs), refs
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css"), ("icon.svg", "image/svg+xml")):
        status, headers, body = _get(live, f"/dashboard/{name}")
        assert status == 200 and headers["content-type"].startswith(kind) and body
        if name != "icon.svg":  # (its xmlns is a name, not fetched)
            assert b"http://" not in body and b"https://" not in body  # nothing fetched from elsewhere
    assert _get(live, "/dashboard/nosuch.js")[0] == 404
    for path in ("/dashboard/../api/v1/node", "/dashboard/%2e%2e/app.js", "/dashboardx"):  # not the dashboard's
        assert _get(live, path)[0] in (401, 404), path
    conn = _conn(live)
    conn.request("POST", "/dashboard", body=b"{}", headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 405
    conn.close()
    # the data stays behind the key, however the path is written (falcon routes "//api/v1/node" to the API)
    for path in ("/api/v1/node", "/api/v1/events", "/api/v1/vm", "//api/v1/node", "///api/v1/vm/dash1",
                 "//api/v1/cluster/status", "/api/v1//node", "//dashboard", "/Dashboard", "/dashboard//app.js"):
        assert _get(live, path)[0] in (401, 404), path
    conn = _conn(live)
    conn.request("POST", "//api/v1/cluster/status", body=b'{"maintenance": true}',
                 headers={"Content-Type": "application/json"})
    assert conn.getresponse().status == 401
    conn.close()


def test_a_read_only_key_reads_and_changes_nothing(live, samples):
    status, headers, body = _get(live, "/api/v1/vm", {"X-Api-Key": live.read_key})
    assert status == 200 and headers["x-pvc-role"] == "read-only" and {"dash1", "dash2"} <= {
        v["name"] for v in json.loads(body)}
    assert _get(live, "/api/v1/node", {"X-Api-Key": live.key})[1]["x-pvc-role"] == "full"
    reader = Client(live.url, live.read_key)
    before = Client(live.url, live.key).vm("dash2")
    for attempt in (lambda: reader.set_meta("dash2", node_autostart=True),
                    lambda: reader.vm_state("dash2", "stop"),
                    lambda: reader.vm_node("dash2", "migrate", "hv1"),
                    lambda: reader.node_domain_state("hv2", "flush"),
                    lambda: reader.undefine("dash2"),
                    lambda: reader.set_cluster(maintenance=True)):
        with pytest.raises(ApiError) as err:
            attempt()
        assert err.value.status == 403 and "read-only" in err.value.message
    after = Client(live.url, live.key).vm("dash2")
    assert after == before
    assert Client(live.url, live.key).cluster_status()["maintenance"] is False


# -- the event stream ---------------------------------------------------------------------------------


def test_the_event_stream_starts_with_the_cluster_and_follows_each_change(live, samples):
    stream = Stream(urllib.parse.urlsplit(live.url).netloc, live.key)
    try:
        assert stream.status == 200 and stream.response.getheader("Content-Type") == "text/event-stream"
        kind, snap = stream.next()
        assert kind == "snapshot" and {n["name"] for n in snap["nodes"]} == {"hv1", "hv2", "hv3"}
        vms = {v["name"]: v for v in snap["vms"]}
        assert {"dash1", "dash2", "dash3"} <= set(vms) and "xml" not in vms["dash1"]
        assert sorted(vms["dash2"]["meta"]["tags"]) == ["blue", "web"] and vms["dash1"]["running"] is True
        assert snap["status"]["nodes"]["total"] == 3
        took = []
        for i in range(5):
            tag = f"seen{i}"
            started = time.monotonic()
            samples.tag_vm("dash3", add=[tag])
            delta = stream.until(lambda d: any(tag in v["meta"]["tags"] for v in d["vms"]), started + T)
            took.append(time.monotonic() - started)
            assert [v["name"] for v in delta["vms"]] == ["dash3"]  # only what changed
            samples.tag_vm("dash3", remove=[tag])
        print(f"change -> event: {', '.join(f'{t * 1000:.0f} ms' for t in took)}")
        # a VM defined and undefined: it comes, then goes
        samples.define_vm(sample_domain_xml("dash9", 128, 1), start=False)
        stream.until(lambda d: any(v["name"] == "dash9" for v in d["vms"]), time.monotonic() + T)
        samples.undefine("dash9")
        stream.until(lambda d: "dash9" in d["gone"]["vms"], time.monotonic() + T)
    finally:
        stream.close()


def test_streams_are_capped_per_worker_and_end_when_pvcapid_stops(zk_server, live, tmp_path):
    """4 threads: one stream at most (a quarter); beyond it 503 at once while the rest of the API answers; a
    stop ends the open stream at once rather than after gunicorn's graceful timeout (10 s)."""
    proc, port, client = start_pvcapid(zk_server.hosts, live.store.paths.root, tmp_path, threads=4)
    netloc = f"127.0.0.1:{port}"
    try:
        first = Stream(netloc, "k")
        assert first.status == 200 and first.next()[0] == "snapshot"
        second = Stream(netloc, "k")
        assert second.status == 503 and second.response.getheader("Retry-After") == "5"
        assert "event streams" in json.loads(second.response.read())["message"]
        second.close()
        assert client.cluster_status()["nodes"]["total"] == 3  # the other threads answer
        first.close()
        closed = time.monotonic()
        while True:  # the server notices the hang-up within a second (it peeks at the socket each second)
            again = Stream(netloc, "k")
            if again.status == 200:
                break
            again.close()
            assert time.monotonic() < closed + 10, "the closed stream's slot did not come back within 10 s"
            time.sleep(0.2)
        assert again.next()[0] == "snapshot"
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(T) == 0
        stopped = time.monotonic() - started
        assert stopped < 5.0, f"pvcapid took {stopped:.1f}s to stop with a stream open"
        again.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- in a browser -------------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(DRIVER), "make deps installs chromium and chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,800", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER, log_output=str(tmp_path / "chromedriver.log")), options=options)
    driver.set_window_size(1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_dashboard_in_chromium(live, samples, browser, tmp_path):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = browser
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def wait(test, what: str):
        def attempt(_driver):
            try:
                return test()
            except StaleElementReferenceException:  # the page redrew it meanwhile (it is live): look again
                return False
        return WebDriverWait(d, T, poll_frequency=0.05).until(attempt, message=what)

    # Reads run in the page in one go: the page redraws its parts as the cluster changes.
    def text(selector: str) -> str | None:
        return d.execute_script("const e = document.querySelector(arguments[0]); return e && e.innerText", selector)

    def texts(selector: str) -> list[str]:
        return d.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => e.innerText)", selector)

    def attr(selector: str, name: str) -> str | None:
        return d.execute_script("const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1])",
                                selector, name)

    def count(selector: str) -> int:
        return d.execute_script("return document.querySelectorAll(arguments[0]).length", selector)

    def click(selector: str) -> None:
        """A real click (through WebDriver) on the element, found afresh if the page redrew it meanwhile."""
        def attempt():
            found = d.find_elements(By.CSS_SELECTOR, selector)
            if not found or not found[0].is_enabled():
                return False
            found[0].click()
            return True
        wait(attempt, f"a click on {selector}")

    def shot(name: str) -> None:
        d.save_screenshot(str(shots / f"{name}.png"))

    def confirm() -> None:
        wait(lambda: d.find_element(By.ID, "confirm").is_displayed(), "the confirmation dialog")
        click("#confirm-ok")

    def sign_in(key: str) -> None:
        wait(lambda: count("#apikey"), "the sign-in form")
        field = d.find_element(By.ID, "apikey")
        field.clear()
        field.send_keys(key)
        click("#signin-button")

    # 1. nothing without a key; a wrong key is refused
    d.get(live.url + "/")
    assert d.current_url.endswith("/dashboard")
    sign_in("not-a-key")
    wait(lambda: "Unknown API key" in text("#signin-error"), "the refusal")
    assert not d.find_element(By.ID, "top").is_displayed() and not count("[data-node]")
    shot("signin")

    # 2. the overview: a tile per node, live
    sign_in(live.key)
    wait(lambda: count("[data-node]") == 3, "three node tiles")
    wait(lambda: text("#live") == "live", "the live feed")
    d.execute_script("window.pvcTestMarker = 'not reloaded'")
    tile = text("[data-node=hv1]")
    assert "daemon run" in tile and "domain ready" in tile and "total 16 GiB" in tile, tile
    assert text("[data-summary=primary] .value") in ("hv1", "hv2", "hv3")
    shot("overview")

    # 3. the VM table: sortable, filterable
    click("[data-nav=vms]")
    wait(lambda: {"dash1", "dash2", "dash3"} <= set(d.execute_script(
        "return [...document.querySelectorAll('#vm-rows tr')].map(r => r.dataset.vm)")), "VM rows")
    assert "blue" in text("tr[data-vm=dash2] td[data-col=tags]")
    d.find_element(By.ID, "vm-filter").send_keys("dash2")
    wait(lambda: texts("#vm-rows td[data-col=name]") == ["dash2"], "the filter")
    d.find_element(By.ID, "vm-filter").send_keys(*["\b"] * 5)
    wait(lambda: count("#vm-rows tr") >= 3, "the filter cleared")
    click("th[data-sort=node]")
    wait(lambda: (nodes := texts("#vm-rows td[data-col=node]")) == sorted(nodes) and len(set(nodes)) > 1, "sorted")
    click("th[data-sort=node]")
    wait(lambda: (nodes := texts("#vm-rows td[data-col=node]")) == sorted(nodes, reverse=True), "sorted back")
    shot("vms")

    # 4. a VM's page: metadata, XML, placement with the excluded nodes and why
    click("tr[data-vm=dash1] a")
    wait(lambda: count("#placement [data-target-node=hv3]"), "the placement explanation")
    assert attr("#placement [data-target-node=hv3]", "data-eligible") == "no"
    assert "outside the VM's node limit" in text("#placement [data-target-node=hv3]")
    assert attr("#placement [data-target-node=hv1]", "data-eligible") == "no"  # where it runs
    assert attr("#placement [data-target-node=hv2]", "data-eligible") == "yes"
    wait(lambda: "<name>dash1</name>" in text("#vm-xml"), "the XML")
    assert text("[data-meta='node limit']") == "hv1, hv2"
    shot("vm")

    # 5. migrate it from the page (target from the placement), and watch its row change without a reload
    click("#placement [data-target-node=hv2]")
    wait(lambda: text("[data-action=migrate]") == "Migrate to hv2", "hv2 chosen")
    click("[data-action=migrate]")
    confirm()
    click("[data-nav=vms]")
    wait(lambda: text("tr[data-vm=dash1] td[data-col=node]") == "hv2", "dash1's row on hv2")
    assert text("tr[data-vm=dash1] td[data-col=home]") == "hv1"  # migrate remembers the home node
    assert live.view.wait_for(lambda c: c.vms["dash1"].node == "hv2", T)
    shot("vms-migrated")

    # 6. flush a node from its tile and watch the tile empty; then make it ready again
    click("[data-nav=overview]")
    click("[data-node=hv3] [data-action=flush]")
    confirm()
    wait(lambda: attr("[data-node=hv3] [data-field=domain-state]", "data-value") == "flushed"
         and attr("[data-node=hv3] [data-field=vm-count]", "data-value") == "0", "hv3 flushed")
    assert live.view.wait_for(lambda c: not c.nodes["hv3"].running_vms, T)
    wait(lambda: any("flush hv3" in t and "done" in t for t in texts("[data-task]")), "the flush's progress")
    shot("flushed")
    click("[data-node=hv3] [data-action=ready]")
    confirm()
    wait(lambda: attr("[data-node=hv3] [data-field=domain-state]", "data-value") == "ready", "hv3 ready")
    assert d.execute_script("return window.pvcTestMarker") == "not reloaded"

    # 7. a phone's width: no page-wide sideways scrolling
    d.set_window_size(390, 844)
    for page, rows in (("overview", "[data-node]"), ("vms", "#vm-rows tr")):
        click(f"[data-nav={page}]")
        wait(lambda: count(rows), page)
        width = d.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], (page, width)
        shot(f"phone-{page}")
    d.set_window_size(1280, 800)

    # 8. a read-only key sees everything and no action
    click("#signout")
    sign_in(live.read_key)
    click("[data-nav=overview]")  # (signed in again on the page it was on: the VMs)
    wait(lambda: count("[data-node]") == 3, "tiles for the read-only key")
    assert text("#role") == "read-only" and not count("[data-action]")
    d.get(live.url + "/dashboard#/vm/dash2")
    wait(lambda: count("#placement [data-target-node]"), "a VM page for the read-only key")
    assert not count("[data-action]")
    shot("read-only")

    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert not errors, errors  # no script error; the one refusal above is the wrong key's


def test_the_dashboard_in_firefox(live, samples, tmp_path):
    """The same page in Firefox ESR (over WebDriver BiDi): sign in, the tiles, live; a VM's placement, a
    migration from the page and its row changing without a reload; a phone's width; no script error."""
    from tests.tools.bidi import FIREFOX, Firefox

    assert os.path.exists(FIREFOX), "make deps installs firefox-esr"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    ff = Firefox(tmp_path)

    def wait(test, what: str):
        deadline = time.monotonic() + T
        while not (value := test()):
            assert time.monotonic() < deadline, f"Firefox: {what} not within {T:g}s"
            time.sleep(0.05)  # polling the page, under a deadline
        return value

    def text(selector: str):
        return ff.js(f"(e => e && e.innerText)(document.querySelector({json.dumps(selector)}))")

    def sign_in(key: str) -> None:
        wait(lambda: ff.click("#apikey"), "the sign-in form")
        ff.js("document.getElementById('apikey').value = ''")
        ff.type(key)
        wait(lambda: ff.click("#signin-button"), "the sign-in button")

    try:
        ff.go(live.url + "/")
        assert ff.js("location.pathname") == "/dashboard"
        sign_in("wrong")
        wait(lambda: "Unknown API key" in (text("#signin-error") or ""), "the refusal")
        sign_in(live.key)
        wait(lambda: ff.js("document.querySelectorAll('[data-node]').length") == 3, "three node tiles")
        wait(lambda: text("#live") == "live", "the live feed")
        ff.js("window.pvcTestMarker = 'not reloaded'")
        ff.screenshot(shots / "firefox-overview.png")

        wait(lambda: ff.click("[data-nav=vms]"), "the VMs link")
        wait(lambda: ff.click("tr[data-vm=dash2] a"), "dash2's row")
        target = wait(lambda: ff.js("(e => e && e.dataset.targetNode)(document.querySelector("
                                    "'#placement [data-eligible=yes]:not(.selected)') || "
                                    "document.querySelector('#placement [data-eligible=yes]'))"), "an eligible node")
        current = live.view.snapshot().vms["dash2"].node
        assert target != current
        wait(lambda: ff.click(f"#placement [data-target-node={target}]"), "the target's bar")
        wait(lambda: text("[data-action=migrate]") == f"Migrate to {target}", "the target chosen")
        ff.screenshot(shots / "firefox-vm.png")
        wait(lambda: ff.click("[data-action=migrate]"), "the migrate button")
        wait(lambda: ff.js("document.getElementById('confirm').open"), "the confirmation")
        wait(lambda: ff.click("#confirm-ok"), "the confirm button")
        wait(lambda: ff.click("[data-nav=vms]"), "the VMs link")
        wait(lambda: text("tr[data-vm=dash2] td[data-col=node]") == target, "dash2's row on its new node")
        assert text("tr[data-vm=dash2] td[data-col=home]") == current
        assert ff.js("window.pvcTestMarker") == "not reloaded"
        ff.screenshot(shots / "firefox-vms.png")

        ff.viewport(390, 844)
        width = wait(lambda: ff.js("[document.documentElement.scrollWidth, window.innerWidth]"), "the phone's width")
        assert width[0] <= width[1], width
        ff.screenshot(shots / "firefox-phone.png")
        assert not ff.errors, ff.errors
    finally:
        ff.close()
