"""The docs work offline and the repository names no path of a developer's machine.

- ``docs/hooks/offline.py`` copies MathJax into the built site and fails the
  build on a page that loads a script or stylesheet from another host, or
  that names a machine path: checked here on a two-page site built for the
  test (the real site is built by ``.ci/run``, where the same hook runs).
- No tracked file (``git ls-files``, text files only) contains an absolute
  path of this kind of machine (one that starts at the top-level ``work``,
  ``tmp``, ``root`` or ``home`` folder): no reader or CI machine has them.
  The examples below spell such paths with ``{...}`` so that this file
  passes its own check.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOK = ROOT / "docs" / "hooks" / "offline.py"
# The first component of an absolute path: a slash not preceded by a word, a dot, a colon
# (URLs: "https://host/tmp/" is fine) or another slash.
MACHINE_PATH = re.compile(r"(?<![\w.:/~-])/(?:work|tmp|root|home)/")


def _needs_mkdocs() -> None:
    if os.environ.get("CI"):
        import mkdocs  # noqa: F401  (in CI the docs extra is installed: a failure is real)
    else:
        pytest.importorskip("mkdocs")
        pytest.importorskip("mathjax")


def _hook():
    _needs_mkdocs()
    spec = importlib.util.spec_from_file_location("newt_docs_offline_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- machine paths
def _tracked_text_files() -> list[Path]:
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                            check=False)
    if result.returncode != 0:
        pytest.skip("not a git checkout: no tracked files to check")
    files = []
    for name in result.stdout.decode().split("\0"):
        path = ROOT / name
        if name and path.is_file() and b"\0" not in path.read_bytes()[:8192]:  # not binary
            files.append(path)
    return files


def test_no_tracked_file_names_a_path_of_a_developers_machine():
    offenders = []
    for path in _tracked_text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            if MACHINE_PATH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, "machine paths in tracked files:\n" + "\n".join(offenders)


@pytest.mark.parametrize(("line", "found"), [
    (f"see `/{'work'}/shared/guide/BENCHMARKS.md`", True),
    (f"written to /{'tmp'}/run.json", True),
    (f"cd /{'home'}/me/newt", True),
    (f"(/{'root'}/.cache)", True),
    ("https://example.org/tmp/file", False),   # part of a URL
    ("docs/work/tmp/x", False),                # relative
    (f"~/{'work'}/newt", False),               # the reader's own home
    ("the /workspace folder", False),          # not the folder itself
])
def test_the_machine_path_pattern_finds_absolute_paths_only(line, found):
    assert bool(MACHINE_PATH.search(line)) is found


# ---------------------------------------------------------------- the hook
def test_hook_sees_remote_scripts_and_stylesheets_but_not_local_ones():
    hook = _hook()
    html = textwrap.dedent("""
        <script src="../assets/mathjax/tex-mml-chtml.js"></script>
        <script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>
        <link rel="stylesheet" href="//fonts.example.com/css">
        <a href="https://github.com/">a link is not an asset</a>
    """)
    assert hook.remote_assets(html) == [
        "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js", "//fonts.example.com/css"]


def _site(tmp_path: Path, extra_javascript: list[str], page: str) -> subprocess.CompletedProcess:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(page)
    config = tmp_path / "mkdocs.yml"
    scripts = "".join(f"\n  - {s}" for s in extra_javascript)
    config.write_text(textwrap.dedent(f"""\
        site_name: t
        docs_dir: docs
        site_dir: site
        theme:
          name: material
          font: false
        hooks:
          - {HOOK.as_posix()}
        markdown_extensions:
          - pymdownx.arithmatex:
              generic: true
        """) + (f"extra_javascript:{scripts}\n" if scripts else ""))
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))


def test_built_site_ships_mathjax_and_its_fonts(tmp_path):
    _hook()
    result = _site(tmp_path, ["assets/mathjax/tex-mml-chtml.js"], "# T\n\nInline $\\alpha$.\n")
    assert result.returncode == 0, result.stderr
    mathjax = tmp_path / "site" / "assets" / "mathjax"
    assert (mathjax / "tex-mml-chtml.js").stat().st_size > 100_000
    assert (mathjax / "input" / "tex" / "extensions" / "textmacros.js").is_file()
    assert (mathjax / "output" / "chtml" / "fonts" / "woff-v2" / "MathJax_Main-Regular.woff"
            ).is_file()
    html = (tmp_path / "site" / "index.html").read_text()
    assert 'src="assets/mathjax/tex-mml-chtml.js"' in html
    assert '<span class="arithmatex">\\(\\alpha\\)</span>' in html


def test_build_fails_on_a_cdn_reference_for_the_math(tmp_path):
    _hook()
    cdn = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
    result = _site(tmp_path, [cdn], "# T\n\n$\\alpha$\n")
    assert result.returncode != 0
    assert "load assets from another host" in result.stderr and cdn in result.stderr


def test_build_fails_on_a_machine_path_in_a_page(tmp_path):
    _hook()
    result = _site(tmp_path, [], f"# T\n\nThe protocol is /{'work'}/shared/guide/BENCHMARKS.md.\n")
    assert result.returncode != 0
    assert "index.md:3 names a path of a developer's machine" in result.stderr


def test_the_sites_config_loads_its_scripts_from_the_site():
    config = (ROOT / "mkdocs.yml").read_text()
    block = re.search(r"^extra_javascript:\n((?:  - .*\n)+)", config, re.MULTILINE)
    assert block, "mkdocs.yml has no extra_javascript list"
    scripts = [line.split("- ", 1)[1].strip() for line in block.group(1).splitlines()]
    assert "assets/mathjax/tex-mml-chtml.js" in scripts
    assert not [s for s in scripts if "//" in s], scripts
