"""The documentation ships with the code: a short README, no link out of the repository, no broken link.

Plain text checks (no torch): README.md within 20 KB; no ``http(s)://`` in README.md and docs/*.md; every
relative link resolves to a file of the repository and every ``#anchor`` to a heading of its target (GitHub's
slug rules); no reference to files that users of the project do not have.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_LIMIT = 20 * 1024  # bytes

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code spans (links there are not links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case; letters, marks, digits, ``_``, ``-`` kept; spaces to ``-``.

    Like github-slugger, other characters (punctuation, symbols, superscripts such as ``²``) are dropped.
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    kept = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "-_" or cat[0] in "LM" or cat in ("Nd", "Nl"):
            kept.append(ch)
        elif ch == " ":
            kept.append("-")
    return "".join(kept)


def anchors(path: Path) -> set[str]:
    """Every heading anchor of ``path``, duplicates numbered ``-1``, ``-2``, ... as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(title)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    return LINK.findall(prose(path.read_text(encoding="utf-8")))


def test_slug_follows_github():
    assert slug("How the batching works, and why it is exact") == "how-the-batching-works-and-why-it-is-exact"
    assert slug("Explain a dataset: `explain.py`") == "explain-a-dataset-explainpy"
    assert slug("Train the classifier: `train_classifier.py`") == "train-the-classifier-train_classifierpy"
    assert slug("On one GPU (NVIDIA H200)") == "on-one-gpu-nvidia-h200"
    assert slug("W&B run") == "wb-run"
    assert slug("What the stable dynamics cost at 224²") == "what-the-stable-dynamics-cost-at-224"
    assert slug("The papers' own figures") == "the-papers-own-figures"


def test_the_docs_exist():
    names = {p.name for p in DOCS}
    assert {"methods.md", "configuration.md", "results.md", "distribution.md", "extending.md"} <= names


def test_readme_is_short():
    size = README.stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_link_leaves_the_repository(page):
    text = page.read_text(encoding="utf-8")
    found = re.findall(r"https?://\S+", text)
    assert not found, f"{page.name}: cite by title and arXiv id instead of {found}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # mailto:, http: ... (the test above forbids the web)
            broken.append(f"{target} (not a relative link)")
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
            continue
        if not dest.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
            continue
        if anchor:
            if dest.suffix != ".md":
                broken.append(f"{target} (anchor into a non-Markdown file)")
            elif anchor not in anchors(dest):
                broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


def test_pages_link_each_other():
    readme_links = set(links(README))
    for doc in DOCS:
        assert f"docs/{doc.name}" in {t.split("#")[0] for t in readme_links}, f"README does not link {doc.name}"


FORBIDDEN = ("SPEC.md", "papers/00", "../shared")
SHIPPED = [README, *DOCS] + [
    p
    for folder in ("hdm_lightning", "configs", "notebooks", "docs")
    for p in sorted((ROOT / folder).rglob("*"))
    if p.is_file() and p.suffix in {".py", ".md", ".yaml", ".yml", ".ipynb", ".txt"}
]


def test_no_reference_to_files_users_lack():
    hits = [
        f"{p.relative_to(ROOT)}: {word}"
        for p in dict.fromkeys(SHIPPED)
        for word in FORBIDDEN
        if word in p.read_text(encoding="utf-8")
    ]
    assert not hits, f"cite the papers by title and arXiv id, not by the project's private files: {hits}"
