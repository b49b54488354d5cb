"""MkDocs hook: the site works with no network.

* **Math.** MathJax 3 ships inside the site: the ``django-static-mathjax``
  package (installed by the ``docs`` extra, no Django needed) carries the
  MathJax build, and ``on_post_build`` copies the parts the pages use
  (``tex-mml-chtml.js``, the TeX extensions, the CHTML woff fonts) to
  ``assets/mathjax/`` in the site. ``mkdocs.yml`` loads that copy.
* **No CDN.** ``on_post_build`` fails the (strict) build if any built page
  loads a script or stylesheet from another host, so a CDN reference for the
  math renderer, or any other, cannot creep back in.
* **No machine paths.** ``on_page_markdown`` fails the build if a page names
  an absolute path of a developer's machine (under the top-level ``work``,
  ``tmp``, ``root`` or ``home`` folders): a reader has none of them.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

log = logging.getLogger("mkdocs.plugins.newt_offline")

#: Where the site keeps its MathJax; ``mkdocs.yml``'s ``extra_javascript`` points here.
MATHJAX_DIR = "assets/mathjax"
#: What the pages need from the MathJax build (relative to its ``es5/`` folder).
MATHJAX_PARTS = ("tex-mml-chtml.js", "input/tex/extensions", "output/chtml/fonts/woff-v2")

# <script src="https://…"> or <link … href="//…"> (stylesheets, fonts, preloads).
_REMOTE = re.compile(
    r"""<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*["']((?:https?:)?//[^"']+)["']""",
    re.IGNORECASE)
# An absolute path of a developer's machine, as a word of its own (not in a URL).
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:work|tmp|root|home)/")


def mathjax_source() -> Path:
    """The ``es5/`` folder of the installed MathJax build (``django-static-mathjax``)."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise PluginError("MathJax is not installed: `pip install -e .[docs]` installs it "
                          "(package django-static-mathjax).")
    es5 = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise PluginError(f"no MathJax build in {es5}: reinstall django-static-mathjax.")
    return es5


def remote_assets(html: str) -> list[str]:
    """The scripts and stylesheets a page loads from another host."""
    return _REMOTE.findall(html)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    for number, line in enumerate(markdown.splitlines(), 1):
        if MACHINE_PATH.search(line):
            raise PluginError(f"{page.file.src_path}:{number} names a path of a developer's "
                              f"machine, which no reader has: {line.strip()!r}. Link a page "
                              "of the site or a file of the repository instead.")
    return markdown


def on_post_build(config: Any, **_: Any) -> None:
    site = Path(config["site_dir"])
    source = mathjax_source()
    target = site / MATHJAX_DIR
    for part in MATHJAX_PARTS:
        src, dst = source / part, target / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    shutil.copyfile(source.parent / "LICENSE", target / "LICENSE")
    offenders = {}
    for page in site.rglob("*.html"):
        found = remote_assets(page.read_text(encoding="utf-8"))
        if found:
            offenders[str(page.relative_to(site))] = found
    if offenders:
        listing = "; ".join(f"{p}: {', '.join(urls)}" for p, urls in sorted(offenders.items()))
        raise PluginError("the site must work offline, but pages load assets from another "
                          f"host: {listing}. Ship the file in the site "
                          "(see docs/hooks/offline.py).")
    log.info("MathJax copied to %s; no page loads a remote asset", MATHJAX_DIR)
