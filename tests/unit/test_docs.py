"""The documentation site (mkdocs.yml, docs/) builds with ``mkdocs build --strict``: a broken
link, a page missing from the navigation or a missing source file fails the tests, not only
``make docs``.  The pages made at build time (docs/mkdocs_hooks.py) carry their sources."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from zeus.config.options import FIELDS, cli_flag, meta

ROOT = Path(__file__).resolve().parents[2]


def _hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("zeus_docs_hooks",
                                                  ROOT / "docs" / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    # Not --quiet: it hides the warnings that --strict counts, and the build would pass.
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}{done.stderr}"
    return out


def test_site_builds_strict(site: Path) -> None:
    """Every page of the navigation is built; the hook's own source is not published."""
    pages = ["index.html"] + [
        f"{page}/index.html"
        for page in ("quickstart", "reference/configuration", "deployment", "deployment-systemd",
                     "scale-out", "metrics", "logging", "hooks", "reliability", "architecture",
                     "protocol", "benchmarks")]
    for page in pages:
        assert (site / page).is_file(), page
    assert not list(site.rglob("mkdocs_hooks.py"))


def test_configuration_reference_is_generated_from_the_declarations(site: Path) -> None:
    """Every command-line setting of ``zeus.config.options`` is on the reference page."""
    page = (site / "reference" / "configuration" / "index.html").read_text()
    missing = [cli_flag(name) for name in FIELDS if meta(name).cli and cli_flag(name) not in page]
    assert missing == []
    assert not (ROOT / "docs" / "reference" / "configuration.md").exists(), \
        "the reference is generated at build time: no copy in docs/"


def test_included_pages_carry_the_repository_files(site: Path) -> None:
    """protocol, benchmarks and reliability are PROTOCOL.md, BENCHMARKS.md, RELIABILITY.md."""
    for source, page in (("PROTOCOL.md", "protocol"), ("BENCHMARKS.md", "benchmarks"),
                         ("RELIABILITY.md", "reliability")):
        heading = re.search(r"^#+ (.+)$", (ROOT / source).read_text(), re.MULTILINE)
        assert heading is not None, source
        title = heading.group(1).split("`")[0].strip()
        html = (site / page / "index.html").read_text()
        assert title.replace("&", "&amp;") in html, (source, title)


def test_links_of_included_files_point_into_the_site() -> None:
    """A link to another top-level document becomes a link to its page; a link to a source
    file the site does not carry becomes its path; URLs, anchors and images are kept."""
    rewrite = _hooks().rewrite_links
    assert rewrite("[the protocol](PROTOCOL.md#rings)") == "[the protocol](protocol.md#rings)"
    assert rewrite("see [README](./README.md)") == "see [README](index.md)"
    assert rewrite("[`src/zeus/channel.py`](src/zeus/channel.py)") == "`src/zeus/channel.py`"
    assert rewrite("[the ring](src/zeus/core/ring.py)") == "the ring (`src/zeus/core/ring.py`)"
    for kept in ("[RFC 9112](https://www.rfc-editor.org/rfc/rfc9112)", "[below](#layout)",
                 "![plot](img/plot.png)"):
        assert rewrite(kept) == kept
