"""Stand-in for the paper's DM script (see tests/fake_paper_code/README.md)."""

from run import main

main("DM", 50)
