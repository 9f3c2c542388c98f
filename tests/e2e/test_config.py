"""The real ``zeus`` command reading its configuration from a TOML file and ``ZEUS_*``
variables: the served process uses what the sources say, ``check-config`` prints it, and a bad
file stops the command with one line naming the key and file:line."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest

from .helpers import APP, ROOT, ZEUS, Server, free_port


def zeus(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
         ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items()
            if not k.startswith("ZEUS_") or k == "ZEUS_ALLOW_ROOT"}
    full.pop("WEB_CONCURRENCY", None)
    return subprocess.run([str(ZEUS), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, env={**full, **(env or {})})


@pytest.mark.timeout(60)
def test_the_server_runs_with_the_file_s_workers_and_the_environment_s_override(
        tmp_path: Path) -> None:
    """workers from the file (3), then ZEUS_WORKERS (overrides the file) -- seen as processes."""
    config = tmp_path / "zeus.toml"
    config.write_text("[server]\nworkers = 3\n[timeouts]\ngraceful_timeout = 5\n")
    for n, (env, workers) in enumerate([({}, 3), ({"ZEUS_WORKERS": "1"}, 1)]):
        (tmp_path / str(n)).mkdir()
        server = Server(["--config", str(config)], tmp_path / str(n), tmp_path / f"{n}.log",
                        env=env)
        try:
            server.wait_ready(workers)
            assert len(server.workers()) == workers
            assert server.stop() == 0
        finally:
            server.kill_all()


@pytest.mark.timeout(60)
def test_check_config_prints_the_effective_configuration_with_origins(tmp_path: Path) -> None:
    """zeus.toml in the working directory is read; env and the command line win over it; the
    output is valid TOML and names where each value came from."""
    (tmp_path / "zeus.toml").write_text(
        f'app = "{APP}"\nchdir = "{ROOT}"\nworkers = 3\ntimeout = 12\nmax_rss = "256M"\n')
    out = zeus("check-config", "--timeout", "9", cwd=tmp_path,
               env={"ZEUS_MAX_REQUESTS": "1000"})
    assert out.returncode == 0, out.stderr
    data = tomllib.loads(out.stdout)
    assert data["server"]["workers"] == 3
    assert data["timeouts"]["timeout"] == 9.0
    assert data["limits"]["max_requests"] == 1000
    assert data["limits"]["max_rss"] == 256 << 20
    assert "workers = 3  # " + str(tmp_path / "zeus.toml") + ":3" in out.stdout
    assert "timeout = 9.0  # command line" in out.stdout
    assert "max_requests = 1000  # env ZEUS_MAX_REQUESTS" in out.stdout


@pytest.mark.timeout(60)
def test_serve_check_config_validates_without_serving(tmp_path: Path) -> None:
    port = free_port()
    out = zeus("serve", APP, "--bind", f"127.0.0.1:{port}", "--check-config")
    assert out.returncode == 0, out.stderr
    assert f'bind = ["127.0.0.1:{port}"]  # command line' in out.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "says"), [
    ("workers = 2\ntimeuot = 3\n", "zeus.toml:2: unknown key 'timeuot' (did you mean 'timeout'?)"),
    ('[limits]\nmemory_limit = "lots"\n', "zeus.toml:2: memory_limit: invalid size 'lots'"),
])
def test_a_bad_file_stops_the_command_with_one_line(tmp_path: Path, text: str,
                                                    says: str) -> None:
    (tmp_path / "zeus.toml").write_text(text)
    for args in (["check-config", APP], ["serve", APP, "--bind", f"127.0.0.1:{free_port()}"]):
        out = zeus(*args, cwd=tmp_path)
        assert out.returncode == 2
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "Traceback" not in out.stderr, out.stderr


@pytest.mark.timeout(60)
def test_a_bad_environment_value_is_one_line() -> None:
    out = zeus("check-config", APP, env={"ZEUS_TIMEOUT": "-3"})
    assert out.returncode == 2
    assert out.stderr.strip() == ("zeus: error: environment variable ZEUS_TIMEOUT: must be >= 0, "
                                  "got -3"), out.stderr


@pytest.mark.timeout(60)
def test_the_app_may_come_from_the_environment() -> None:
    out = zeus("check-config", env={"ZEUS_APP": APP})
    assert out.returncode == 0, out.stderr
    assert f'app = "{APP}"  # env ZEUS_APP' in out.stdout
