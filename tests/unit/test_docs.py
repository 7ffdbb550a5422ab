"""The docs name tests and files as evidence: every one they name exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_every_file_the_docs_name_exists():
    named = {(doc.name, path) for doc in DOCS
             for path in re.findall(r"`((?:tests|bench|bpf|enforcer|scripts|docs)/[\w./-]+\.(?:py|c|h|md|sh))`",
                                    doc.read_text())}
    assert named, "no file named in the docs: the pattern is wrong"
    missing = sorted((doc, path) for doc, path in named if not (REPO / path).exists())
    assert not missing, missing


def test_the_readme_links_every_doc():
    readme = (REPO / "README.md").read_text()
    assert [d.name for d in DOCS[1:] if f"docs/{d.name}" not in readme] == []
