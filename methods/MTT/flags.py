"""What the two MTT scripts share on their command lines."""

from __future__ import annotations

import argparse


def true_or_false(text: str) -> bool:
    """MTT's boolean flags (--dsa True|False): exactly 'True' or 'False'."""
    if str(text) not in ("True", "False"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return text == "True"
