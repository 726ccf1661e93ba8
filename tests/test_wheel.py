"""The wheel works outside the checkout: built from the repository's files, installed into a fresh venv in a
temporary folder (its dependencies are this environment's, nothing is downloaded), then `s2m demo`, `s2m serve`
with GET /healthz and `s2m db upgrade` run there from another working directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ["s2m_retrieval/weights/bundle.json", "s2m_retrieval/weights/generator.pt",
           "s2m_retrieval/weights/encoder.pt", "s2m_retrieval/weights/refiner.pt",
           "s2m_retrieval/weights/inverter.pt", "s2m_retrieval/weights/segmenter.pt",
           "s2m_retrieval/service/static/index.html", "s2m_retrieval/service/static/app.js",
           "s2m_retrieval/service/static/style.css", "migrations/env.py", "migrations/script.py.mako",
           "migrations/versions/0001_initial.py"]


def run(cmd, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, (cmd, result.stdout[-2000:], result.stderr[-2000:])
    return result


def copy_sources(dest: Path) -> None:
    """The files git knows of (tracked, or new and not ignored): no venv, runs or build leftovers."""
    listed = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO).stdout
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, fresh venv's python, environment for commands, working directory outside the repository)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("the wheel test builds from a git checkout")
    root = tmp_path_factory.mktemp("wheel")
    copy_sources(root / "src")
    run([sys.executable, "-m", "pip", "wheel", root / "src", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", root / "dist"], timeout=300)
    wheel = next((root / "dist").glob("s2m_retrieval-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # Dependencies from this environment, after the venv's own packages. A plain path line: the .pth files
    # there (this checkout's editable install) are not read, so only the wheel provides s2m_retrieval.
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (site / "s2m-deps.pth").write_text("".join(f"{p}\n" for p in deps))
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])
    work = root / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "S2M_HOME", "S2M_DB_URL")}
    env |= {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "S2M_HOME": str(root / "home")}
    return wheel, venv, env, work


def test_the_wheel_carries_weights_static_page_and_migrations(installed):
    wheel, *_ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(SHIPPED) <= names
    assert not any(n.startswith(("tests/", "runs/", "benchmarks/")) for n in names)


def test_everything_is_imported_from_the_fresh_venv(installed):
    _, venv, env, work = installed
    code = ("import json, cli, index, migrations, s2m_retrieval\n"
            "from s2m_retrieval.model.bundle import shipped_folder\n"
            "from s2m_retrieval.service.app import __file__ as app\n"
            "from s2m_retrieval.storage.migrate import script_location\n"
            "print(json.dumps([m.__file__ for m in (s2m_retrieval, cli, index, migrations)]"
            " + [str(shipped_folder()), app, str(script_location())]))")
    paths = json.loads(run([venv / "bin" / "python", "-c", code], cwd=work, env=env).stdout)
    assert all(Path(p).resolve().is_relative_to(venv.resolve()) for p in paths), paths


def test_demo_serve_and_db_upgrade_from_the_installed_wheel(installed):
    _, venv, env, work = installed
    s2m = venv / "bin" / "s2m"
    demo = run([s2m, "demo", "--n", "12", "--out", "demo", "--threads", "1"], cwd=work, env=env, timeout=300)
    assert "index 'demo': 12 images" in demo.stdout and (work / "demo" / "results" / "query0.png").is_file()

    server = subprocess.Popen([str(s2m), "serve", "--home", "demo/home", "--index", "demo", "--port", "0",
                               "--threads", "1", "--log-level", "warning"], cwd=work, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line, deadline = "", time.monotonic() + 120
        while "serving index" not in line and time.monotonic() < deadline and server.poll() is None:
            line = server.stdout.readline()
        assert "serving index 'demo' (12 images)" in line, line
        url = line.split(" at ")[1].split("/ ")[0]
        with urllib.request.urlopen(f"{url}/healthz", timeout=60) as response:
            assert json.loads(response.read()) == {"status": "ok", "index": "demo", "images": 12}
        with urllib.request.urlopen(f"{url}/", timeout=60) as response:
            assert b"<canvas" in response.read()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    upgraded = run([s2m, "db", "upgrade", "--home", "fresh-home"], cwd=work, env=env)
    current = run([s2m, "db", "current", "--home", "fresh-home"], cwd=work, env=env)
    assert "empty ->" in upgraded.stdout and "(up to date)" in current.stdout
