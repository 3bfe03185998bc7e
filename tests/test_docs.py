"""The documentation stays true: docs/flags.md is what the parsers say, every relative link in README.md and
docs/ leads somewhere, and the text speaks of the project (what was measured, where, how), not of how the
work on it was organised."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")


def flags_doc():
    spec = importlib.util.spec_from_file_location("flags_doc", ROOT / "scripts/flags_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flags_doc_is_what_the_parsers_say():
    doc = flags_doc()
    assert (ROOT / "docs/flags.md").read_text() == doc.render(), "run python scripts/flags_doc.py"


def test_flags_doc_lists_every_script_with_a_parser():
    listed = set(flags_doc().SCRIPTS)
    candidates = [*ROOT.glob("*.py"), *ROOT.glob("methods/**/*.py")]
    scripts = {str(path.relative_to(ROOT)) for path in candidates
               if "def get_args_parser(" in (text := path.read_text()) and '__name__ == "__main__"' in text}
    assert scripts and scripts <= listed, sorted(scripts - listed)


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file (a repeated heading gets -1, -2, ...)."""
    found: dict[str, int] = {}
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else HEADING.match(line)
        if match:
            text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", match.group(1))
            slug = "".join(ch for ch in text.lower() if ch.isalnum() or ch in " -_").replace(" ", "-")
            count = found.get(slug, 0)
            found[slug] = count + 1
            if count:
                found[f"{slug}-{count}"] = 1
    return set(found)


def links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # not inside code blocks
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    assert doc.is_file()
    broken = []
    for target in links(doc):
        file, _, anchor = target.partition("#")
        where = (doc.parent / file).resolve() if file else doc
        if not where.exists():
            broken.append(target)
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(target)
    assert not broken, broken


def test_readme_links_every_doc():
    readme_links = {(ROOT / target.partition("#")[0]).resolve() for target in links(ROOT / "README.md")}
    for doc in DOCS[1:]:
        assert doc.resolve() in readme_links, doc.name


def test_link_check_can_fail(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n[ok](a.md#title) [gone](b.md) [no anchor](a.md#other)\n")
    assert links(tmp_path / "a.md") == ["a.md#title", "b.md", "a.md#other"]
    assert anchors(tmp_path / "a.md") == {"title"}


# Words about how the work was organised, not about the project. Code may say "this run" of a program's run;
# prose and benchmarks say what was measured, where and how.
PROCESS_WORDS = re.compile(r"the issue|issue[- ]?\d+|session|\bloans?\b|previous run|earlier run|developer machine",
                           re.I)
PROSE_WORDS = re.compile(r"this run\b|\bgoal", re.I)


def texts():
    skip = {"data", "pretrained_model", "condensed", "gpu_out", "gpu_work", "quickstart_runs"}
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if path.is_file() and path.suffix in (".py", ".sh", ".md", ".txt", ".toml") and parts[0] not in skip \
                and not any(part.startswith(".") for part in parts) and path != Path(__file__):
            yield path


def test_no_text_speaks_of_how_the_work_was_organised():
    hits = []
    for path in texts():
        prose = path.suffix == ".md" or path.parts[len(ROOT.parts)] == "benchmarks"
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if PROCESS_WORDS.search(line) or (prose and PROSE_WORDS.search(line)):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)
