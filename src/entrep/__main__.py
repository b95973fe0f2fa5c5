"""`python -m entrep ...` runs the command line."""

from entrep.cli import main

main()
