"""The docs cannot drift from the code: every file they name exists, every CLI
subcommand and option, policy field, RPC and denial kind is named in the doc
for it, and every example in them parses (policies with the policy parser,
`enforcer` command lines with the CLI's own parser, Python with the compiler)."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def text(name: str) -> str:
    return (REPO / name).read_text()


def fenced(language: str) -> list[tuple[str, str]]:
    """(doc name, block) of every fenced block in that language."""
    return [(doc.name, block) for doc in DOCS for lang, block in FENCE.findall(doc.read_text()) if lang == language]


def test_every_file_the_docs_name_exists():
    named = {(doc.name, path) for doc in DOCS
             for path in re.findall(r"`((?:tests|bench|bpf|enforcer|scripts|docs)/[\w./-]+\.(?:py|c|h|md|sh))`",
                                    doc.read_text())}
    assert named, "no file named in the docs: the pattern is wrong"
    missing = sorted((doc, path) for doc, path in named if not (REPO / path).exists())
    assert not missing, missing


def test_the_readme_is_short_and_links_every_doc():
    readme = text("README.md")
    assert len(readme.encode()) <= 12 * 1024
    assert readme.startswith("# Enforcer") and "make demo" in readme and "make test" in readme
    assert [d.name for d in DOCS[2:] if f"docs/{d.name}" not in readme] == []


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from enforcer.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_cli_subcommand_and_option_is_in_the_docs():
    docs = text("docs/cli.md") + text("docs/operations.md") + text("docs/containers.md")
    missing = [f"enforcer {name}" for name in _subcommands() if f"enforcer {name}" not in docs]
    for name, sub in _subcommands().items():
        missing += [f"enforcer {name} {option}" for action in sub._actions for option in action.option_strings
                    if option.startswith("--") and option != "--help" and option not in docs]
    assert missing == []


def test_every_policy_field_is_in_the_policy_doc():
    from enforcer.policy.parse import FIELDS

    doc = text("docs/policy.md")
    missing = [f"{where}.{field}".lstrip(".") for where, fields in FIELDS.items() for field in fields
               if not re.search(rf"`{field}[`:]|^\s*-?\s*{field}:|[{{ ]{field}:", doc, re.MULTILINE)]
    assert missing == []


def test_every_policy_example_parses():
    from enforcer.policy import PolicyError, parse_policy

    policies = [(doc, block) for doc, block in fenced("yaml") if re.search(r"^sandbox:", block, re.MULTILINE)]
    assert len(policies) >= 2, "the policy examples were not found"
    for doc, block in policies:
        try:
            parse_policy(yaml.safe_load(block))
        except PolicyError as exc:
            pytest.fail(f"{doc}: a policy example is refused: {exc}")


def test_every_enforcer_command_line_in_the_docs_parses():
    from enforcer.cli import build_parser

    lines = [(doc, line.split(" #")[0].strip()) for doc, block in fenced("sh") for line in block.splitlines()
             if line.strip().startswith("enforcer ")]
    assert len(lines) >= 5, "the command examples were not found"
    parser = build_parser()
    for doc, line in lines:
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{doc}: `{line}` does not parse")


def test_every_python_example_compiles():
    blocks = fenced("python")
    assert blocks, "no python example found"
    for doc, block in blocks:
        compile(block, doc, "exec")


def test_every_rpc_and_denial_kind_is_in_the_api_doc():
    from enforcer.v1 import enforcer_pb2 as pb

    doc = text("docs/api.md")
    service = pb.DESCRIPTOR.services_by_name["Enforcer"]
    missing = [m.name for m in service.methods if f"`{m.name}`" not in doc]
    missing += [kind.name for kind in pb.DenialKind.DESCRIPTOR.values
                if kind.name != "DENIAL_KIND_UNSPECIFIED" and kind.name not in doc]
    assert missing == []


def test_export_formats_are_documented_as_they_are():
    from enforcer import export

    doc = " ".join(text("docs/operations.md").split())
    assert ", ".join(export.CSV_COLUMNS) in doc
    assert ", ".join(f"`{kind}`" for kind in export.KINDS) in doc


def test_every_module_is_in_the_design_doc():
    doc = text("docs/design.md")
    modules = [path.relative_to(REPO).as_posix() for pattern in ("enforcer/**/*.py", "bpf/*", "tests/e2e/harness/*.py")
               for path in REPO.glob(pattern)
               if "v1" not in path.parts and "__pycache__" not in path.parts
               and (path.name != "__init__.py" or path.parent.name == "dns")]
    assert len(modules) > 40, "the module pattern is wrong"
    assert sorted(m for m in modules if f"`{m}`" not in doc) == []
