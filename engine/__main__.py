"""`python -m engine` is the `replicalake` command."""

from .cli import main

main()
