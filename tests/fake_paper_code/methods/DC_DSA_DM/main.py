"""Stand-in for the paper's DC/DSA script (see tests/fake_paper_code/README.md)."""

from run import main

main("DC", 1)
