"""`python -m compress` runs the CLI."""

from compress.cli import main

main()
