"""Scale-out behind a load balancer: nginx (Debian's package, run unprivileged from a temporary
prefix) in front of two real ``zeus serve`` instances on loopback ports.

The scenario is ``run_scenario`` of ``scripts/scaleout.py`` (``make scaleout`` runs it longer);
here it runs with short phases.  nginx is found, or installed with apt-get as root; the tests
skip, saying why, where neither is possible.  docs/scale-out.md explains the configuration and
the figures.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .helpers import FIGURES, ROOT


def _script() -> ModuleType:
    path = ROOT / "scripts" / "scaleout.py"
    spec = importlib.util.spec_from_file_location("zeus_scaleout", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scaleout() -> Iterator[ModuleType]:
    yield _script()
    sys.modules.pop("zeus_scaleout", None)


@pytest.fixture(scope="module")
def nginx(scaleout: ModuleType) -> str:
    """The nginx binary; installs Debian's package as root on a machine without it."""
    try:
        return str(scaleout.find_nginx(timeout=240))
    except scaleout.NginxUnavailable as exc:
        pytest.skip(str(exc))


@pytest.mark.timeout(360)  # an apt-get install may come first
def test_term_drain_behind_nginx_loses_no_request(scaleout: ModuleType, nginx: str,
                                                  tmp_path: Path) -> None:
    """GET load through nginx; instance A gets TERM with a request in flight and stays in
    nginx's rotation.  A finishes that request and exits 0; nginx retries on B what A refused
    or reset while it drained; no client request fails; B carries the load while A is down;
    restarted on its port, A is sent traffic again once ``fail_timeout`` has passed."""
    options = scaleout.Options(phase=2.5, clients=8, method="GET", max_ms=30)
    report = scaleout.run_scenario(nginx, options, tmp_path)
    FIGURES["scale-out, TERM in rotation (GET)"] = (
        f"{report.requests} requests, {len(report.failures)} failed, {report.retried} retried "
        f"by nginx, drain {report.drain_seconds:.2f} s")
    assert scaleout.succeeded(report) == [], report.render()
    assert report.stale_retries == 0, report.render()


@pytest.mark.timeout(360)
def test_post_drain_after_removal_from_rotation(scaleout: ModuleType, nginx: str,
                                                tmp_path: Path) -> None:
    """POST load (not idempotent: nginx never resends one whose bytes it sent).  A leaves
    nginx's rotation first (configuration reload, old nginx workers gone), then gets TERM: no
    request fails and nginx never had to retry one; A comes back when put back in rotation."""
    options = scaleout.Options(phase=1.5, clients=8, method="POST", max_ms=5,
                               remove_first=True)
    report = scaleout.run_scenario(nginx, options, tmp_path)
    FIGURES["scale-out, removed before TERM (POST)"] = (
        f"{report.requests} requests, {len(report.failures)} failed, {report.retried} retried "
        f"by nginx, drain {report.drain_seconds:.2f} s")
    assert scaleout.succeeded(report) == [], report.render()
    assert report.per_phase["down"]["A"] == 0
