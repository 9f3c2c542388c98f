"""mkdocs hooks (``hooks:`` in mkdocs.yml): pages made at build time, so that each fact has one
source in the repository and the site cannot drift from it.

* ``reference/configuration.md`` is ``zeus.config.reference.markdown()``: the option
  declarations in ``src/zeus/config/options.py`` are the only source of the reference.  Nothing
  is written into ``docs/``: the page exists only in the build.
* ``protocol.md``, ``benchmarks.md`` and ``reliability.md`` are the repository's top-level
  ``PROTOCOL.md``, ``BENCHMARKS.md`` and ``RELIABILITY.md`` (mkdocs reads only ``docs/``; a
  hook works on every checkout, where a symbolic link would not).  Their links to each other
  and to ``README.md`` are pointed at the site's pages; a link to any other file of the
  repository (the site does not carry it) becomes its path in code type.

A missing top-level file is an error, not an empty page: ``mkdocs build --strict`` (``make
docs``, ``tests/unit/test_docs.py``) fails and names it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT: Final = Path(__file__).resolve().parent.parent

#: repository file -> page of the site
INCLUDED: Final = {
    "PROTOCOL.md": "protocol.md",
    "BENCHMARKS.md": "benchmarks.md",
    "RELIABILITY.md": "reliability.md",
}
GENERATED_REFERENCE: Final = "reference/configuration.md"
_PAGES: Final = {**INCLUDED, "README.md": "index.md"}
_LINK: Final = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def rewrite_links(text: str) -> str:
    """Links of a top-level file, made valid in the site (see the module docstring)."""

    def one(m: re.Match[str]) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return m.group(0)  # a URL, or an anchor of the same page
        path, hash_, anchor = target.partition("#")
        page = _PAGES.get(path.removeprefix("./"))
        if page is not None:
            return f"[{label}]({page}{hash_}{anchor})"
        return f"`{path}`" if label.strip("`") == path else f"{label} (`{path}`)"

    return _LINK.sub(one, text)


def reference_markdown() -> str:
    """The configuration reference, from the option declarations."""
    from zeus.config.reference import markdown

    return markdown()


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated and the included pages to the build."""
    docs = Path(config.docs_dir)
    pages = {GENERATED_REFERENCE: reference_markdown()}
    for source, page in INCLUDED.items():
        path = ROOT / source
        if not path.is_file():
            raise PluginError(f"{source} is missing: docs/{page} is made from it")
        pages[page] = rewrite_links(path.read_text(encoding="utf-8"))
    for page, content in pages.items():
        if (docs / page).exists():
            raise PluginError(f"docs/{page} is generated at build time: delete the copy")
        files.append(File.generated(config, page, content=content))
    return files
