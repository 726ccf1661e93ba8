"""`s2m serve`: one-line errors before anything starts, and a real server process answering until Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the service tests need the service extra: pip install -e '.[test]'")

from retrieval_helpers import cli_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


_error = cli_error


def test_serve_errors_are_one_line(capsys, setup, tmp_path):
    base = ["serve", "--home", str(setup.home), "--model", str(setup.models), "--port", "0"]
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        cases = {
            "--host 0.0.0.0 is reachable from other machines: give --token": base + ["--host", "0.0.0.0"],
            "--token is empty": base + ["--token", " "],
            "give --token or --no-auth, not both": base + ["--token", "x", "--no-auth"],
            "--port must be between 0 and 65535": base[:-1] + ["70000"],
            "cannot listen on 127.0.0.1:": base[:-1] + [str(taken.getsockname()[1])],
            "service limits must be positive integers, got concurrency=0": base + ["--concurrency", "0"],
            "--max-upload-kb and --max-pixels must be >= 1": base + ["--max-pixels", "0"],
            "--log-level must be": base + ["--log-level", "loud"],
            "no index named 'nope'": base + ["--index", "nope"],
        }
        for needle, args in cases.items():
            code, err = _error(capsys, args)
            assert code != 0 and needle in err, (needle, err)
    finally:
        taken.close()


def test_serve_process_answers_then_stops_on_ctrl_c(setup):
    code = "import sys; from cli.main import main; sys.argv = ['s2m'] + sys.argv[1:]; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--home", str(setup.home), "--model",
                             str(setup.models), "--port", "0", "--threads", "1", "--log-level", "warning"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        found = re.search(r"serving index 'default' \(24 images\) at (http://127\.0\.0\.1:\d+)/ \(no token", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
        base = found.group(1)
        with urllib.request.urlopen(base + "/healthz", timeout=10) as r:
            assert json.loads(r.read()) == {"status": "ok", "index": "default", "images": 24}
        query = urllib.request.Request(base + "/v1/retrieve", data=json.dumps({"like": 4, "k": 2}).encode(),
                                       headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(query, timeout=30) as r:
            assert [h["rank"] for h in json.loads(r.read())["hits"]] == [1, 2]
        with urllib.request.urlopen(base + "/", timeout=10) as r:
            assert b'id="canvas"' in r.read()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert out.strip() == "stopped" and "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
