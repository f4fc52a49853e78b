"""pvcapid serves HTTPS when tls_cert and tls_key are set (a self-signed certificate made here)."""

import json
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from pvccore.demo.zookeeper import free_port
from pvccli.main import cli


def test_api_over_tls(tmp_path, zk_server, zk_root):
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    port = free_port()
    cfg = tmp_path / "api.toml"
    cfg.write_text(f'zookeeper_hosts = "{zk_server.hosts}"\nzookeeper_root = "{zk_root}"\nlisten = "127.0.0.1:{port}"\n'
                   f'workers = 1\napi_keys = ["k"]\ntls_cert = "{cert}"\ntls_key = "{key}"\n')
    api = subprocess.Popen([str(Path(sys.executable).parent / "pvcapid"), "-c", str(cfg)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ctx = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 30
        while True:  # gunicorn starting in another process: poll under a deadline
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/api/v1", context=ctx, timeout=2) as r:
                    assert json.load(r)["name"] == "pvc"
                break
            except OSError:
                assert api.poll() is None and time.monotonic() < deadline, "pvcapid with TLS did not answer"
                time.sleep(0.1)
        with pytest.raises(OSError):  # and plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1", timeout=2)
        # The CLI trusts it given the certificate, and says why not without it.
        args = ["--api", f"https://127.0.0.1:{port}", "--key", "k"]
        ok = CliRunner().invoke(cli, [*args, "--ca", str(cert), "node", "list", "-f", "json"])
        assert ok.exit_code == 0 and json.loads(ok.output) == [], ok.output
        refused = CliRunner().invoke(cli, [*args, "node", "list"])
        assert refused.exit_code == 1 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr
    finally:
        api.terminate()
        api.wait(20)
