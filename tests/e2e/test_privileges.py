"""Who the workers run as, for real: ``--user nobody`` gives workers nobody's uid, gid and
groups while the front stays root (and still signals, reloads and stops them); ``--umask``
reaches the workers; a front started as root refuses root workers unless told; a user or group
that does not exist is one line.  These need root (to switch users) and skip otherwise."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from .helpers import APP, ROOT, ZEUS, StartServer, free_port, wait_until
from .test_sockets import Launch, get, launch  # noqa: F401 - launch is a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching the workers' user needs zeus to run as root")

NOBODY = "nobody"


def nobody_gid() -> int:
    return pwd.getpwnam(NOBODY).pw_gid


def worker_env() -> dict[str, str]:
    """The worker imports zeus and the test app from the source tree (readable by anyone)."""
    return {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}


def runs_as_nobody(python: str) -> bool:
    """Whether ``nobody`` can run ``python`` and import the worker side of zeus with it."""
    try:
        probe = subprocess.run(
            [python, "-c", "import zeus.worker, zeus._native, tests.apps.e2e_native"],
            user=NOBODY, group=nobody_gid(), extra_groups=[], cwd=ROOT,
            env={**os.environ, **worker_env()}, capture_output=True, timeout=60,
        )
    except OSError:
        return False
    return probe.returncode == 0


def interpreter_for_nobody() -> str | None:
    """A Python of this version that nobody can run: this one, else the system's (a Python
    installed under /root, as pyenv does for root, is out of other users' reach)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if Path(candidate).exists() and runs_as_nobody(candidate):
            return candidate
    return None


def status(pid: int) -> dict[str, list[str]]:
    """/proc/PID/status as {key: fields}."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.split()
    return out


def zeus(*args: str, unset_allow: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the zeus command to completion (as root without ZEUS_ALLOW_ROOT by default)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if unset_allow:
        env.pop("ZEUS_ALLOW_ROOT", None)
    return subprocess.run([str(ZEUS), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zeus: error: "), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    return lines[0]


def run_argv(python: str, *options: str, port: int) -> Sequence[str]:
    """``zeus run`` with workers started by ``python`` (one nobody can run)."""
    return [str(ZEUS), "run", "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--graceful-timeout", "5", *options, "--", python, "-m", "zeus.worker", APP,
            "--interface", "native"]


@pytest.mark.timeout(90)
def test_workers_run_as_nobody_while_the_front_stays_root(launch: Launch) -> None:  # noqa: F811
    python = interpreter_for_nobody()
    if python is None:
        pytest.skip("no Python interpreter here that the user nobody may run")
    port = free_port()
    server = launch(run_argv(python, "--user", NOBODY, port=port), port=port,
                    env=worker_env(), unset=["ZEUS_ALLOW_ROOT"])
    server.wait_ready(2)
    gid = nobody_gid()
    groups = sorted(str(g) for g in os.getgrouplist(NOBODY, gid))
    uid = str(pwd.getpwnam(NOBODY).pw_uid)

    def check_workers() -> set[int]:
        pids = server.workers()
        for pid in pids:
            st = status(pid)
            assert st["Uid"] == [uid] * 4, st["Uid"]  # real, effective, saved, filesystem
            assert st["Gid"] == [str(gid)] * 4, st["Gid"]
            assert sorted(st["Groups"]) == groups, st["Groups"]
        return pids

    first = check_workers()
    assert status(server.pid)["Uid"] == ["0"] * 4  # the front keeps root
    answered = {int(get(port, "/pid").body) for _ in range(6)}
    assert answered <= first and answered
    # The root front still drives them: a rolling reload replaces them (new ones drop too) ...
    server.send_signal(signal.SIGHUP)
    wait_until(lambda: len(server.ready_workers() - first) == 2 == len(server.workers()), 30,
               "the reloaded workers")
    assert not check_workers() & first
    assert get(port, "/pid").status == 200
    # ... and TERM stops them all (the fixture checks that none is left behind).
    assert server.stop() == 0


@pytest.mark.timeout(60)
def test_umask_reaches_the_workers(start_server: StartServer) -> None:
    """Workers get --umask; the front keeps the one it was started with."""
    server = start_server("--umask", "027")
    for pid in server.workers():
        assert status(pid)["Umask"] == ["0027"]
    assert status(server.pid)["Umask"] == status(os.getpid())["Umask"] != ["0027"]


@pytest.mark.timeout(60)
def test_root_without_user_or_allow_root_is_refused_in_one_line() -> None:
    for command in (["serve", APP], ["check-config", APP],
                    ["run", "--", sys.executable, "-c", "pass"]):
        line = one_line_error(zeus(*command, "--bind", f"127.0.0.1:{free_port()}"))
        assert "refusing to run workers as root" in line
        assert "--user" in line and "--allow-root" in line


@pytest.mark.timeout(60)
def test_allow_root_from_the_environment_is_an_explicit_yes() -> None:
    out = subprocess.run([str(ZEUS), "check-config", APP], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL,
                         env={**os.environ, "ZEUS_ALLOW_ROOT": "1"})
    assert out.returncode == 0, out.stderr
    assert "allow_root = true  # env ZEUS_ALLOW_ROOT" in out.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("options", "says"), [
    (["--user", "zeus-no-such-user"], "user 'zeus-no-such-user' does not exist"),
    (["--user", NOBODY, "--group", "zeus-no-such-group"],
     "group 'zeus-no-such-group' does not exist"),
    (["--allow-root", "--unix-socket-group", "zeus-no-such-group"],
     "group 'zeus-no-such-group' does not exist"),
])
def test_a_user_or_group_that_does_not_exist_is_one_line(options: list[str], says: str) -> None:
    for command in ("serve", "check-config"):
        line = one_line_error(zeus(command, APP, *options))
        assert line == f"zeus: error: {says}"


@pytest.mark.timeout(60)
def test_an_interpreter_the_user_cannot_run_is_one_line() -> None:
    """zeus serve imports the app as the workers' user before starting: an interpreter or app
    that user cannot reach is a one-line error, not a crash loop of workers."""
    if runs_as_nobody(sys.executable):
        pytest.skip(f"{sys.executable} is reachable by nobody here")
    line = one_line_error(zeus("serve", APP, "--user", NOBODY))
    assert f"as user {NOBODY}: Permission denied" in line


@pytest.mark.timeout(90)
def test_serve_runs_the_app_as_nobody(start_server: StartServer) -> None:
    """``zeus serve --user nobody`` end to end, where this interpreter is reachable by nobody
    (a system Python; not one under /root)."""
    if not runs_as_nobody(sys.executable):
        pytest.skip(f"{sys.executable} is out of nobody's reach (under a private directory)")
    server = start_server("--user", NOBODY)
    uid = str(pwd.getpwnam(NOBODY).pw_uid)
    for pid in server.workers():
        assert status(pid)["Uid"] == [uid] * 4
    assert get(server.port).status == 200


@pytest.mark.timeout(60)
def test_a_worker_program_the_user_cannot_run_is_a_boot_failure_naming_the_user() -> None:
    """``zeus run`` has no import check: the exec itself fails, and zeus stops with the boot
    failure status (4) and a log line saying which user could not run what."""
    if runs_as_nobody(sys.executable):
        pytest.skip(f"{sys.executable} is reachable by nobody here")
    out = zeus("run", "--user", NOBODY, "--bind", f"127.0.0.1:{free_port()}", "--",
               sys.executable, "-m", "zeus.worker", APP)
    assert out.returncode == 4, out.stderr
    assert f"Permission denied (as user {NOBODY})" in out.stderr
    assert "Traceback" not in out.stderr
