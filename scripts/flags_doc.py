"""Write docs/flags.md from the scripts' own argument parsers, so that the flags are documented in one place.

    python scripts/flags_doc.py            # rewrite docs/flags.md
    python scripts/flags_doc.py --check    # exit 1 if docs/flags.md is not what the parsers say

Every script in SCRIPTS that exists is listed, in that order; each must have a get_args_parser().
tests/test_docs.py runs the check and also finds any script with a parser that SCRIPTS leaves out.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_original_models.py", "methods/DC_DSA_DM/main.py", "methods/DC_DSA_DM/main_DM.py", "validate.py",
           "summarize.py", "quickstart.py", "methods/MTT/buffer.py", "methods/MTT/distill.py")
DOC = ROOT / "docs" / "flags.md"

HEAD = """# Flags

Every script's flags, with their defaults. This file is written by `python scripts/flags_doc.py` from the
scripts' own parsers (`tests/test_docs.py` fails when it is out of date); `python <script> --help` prints the
same. Flags named after the paper code's keep its names and defaults.
"""


def load_parser(script: str) -> argparse.ArgumentParser:
    """The parser of a script, imported from its file (not run)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    name = "flags_doc_" + script.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_args_parser"):
        raise SystemExit(f"error: {script} has no get_args_parser(); scripts/flags_doc.py documents scripts by it")
    return module.get_args_parser()


def _cell(text: str, code: bool = False) -> str:
    """One table cell: one line, pipes escaped; outside code also * (emphasis) and < > (read as HTML tags)."""
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if code else text.replace("*", "\\*").replace("<", "&lt;").replace(">", "&gt;")


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "on" if action.default else "off"
    value = action.default
    if value is None or value is argparse.SUPPRESS:
        return "–"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    return str(value) if str(value) else "''"


def script_section(script: str, parser: argparse.ArgumentParser) -> str:
    plain = argparse.HelpFormatter(parser.prog, width=10_000)
    summary = (parser.description or "").strip().split("\n\n")[0]
    lines = [f"## {script}", "", _cell(summary), "", f"`python {script} --help`", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
        if not actions:
            continue
        if group.title not in ("options", "optional arguments", "positional arguments"):
            lines += [f"*{group.title}*", ""]
        lines += ["| flag | default | meaning |", "|---|---|---|"]
        for action in actions:
            invocation = plain._format_action_invocation(action)
            meaning = _cell(plain._expand_help(action))
            lines.append(f"| `{_cell(invocation, code=True)}` | {_cell(_default(action))} | {meaning} |")
        lines.append("")
    return "\n".join(lines)


def render(scripts=SCRIPTS) -> str:
    present = [script for script in scripts if (ROOT / script).is_file()]
    index = ", ".join(f"[{script}](#{anchor(script)})" for script in present)
    sections = [script_section(script, load_parser(script)) for script in present]
    return "\n".join([HEAD, f"Scripts: {index}.", "", *sections]).rstrip() + "\n"


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation other than - and _ dropped, spaces to -."""
    kept = "".join(ch for ch in heading.lower() if ch.isalnum() or ch in " -_")
    return kept.replace(" ", "-")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that docs/flags.md is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            sys.stderr.write("error: docs/flags.md is out of date: run python scripts/flags_doc.py\n")
            return 1
        return 0
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
