"""`python -m cli` runs the `s2m` application."""

from cli.main import main

main()
