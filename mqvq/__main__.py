"""`python -m mqvq`: the same as the `mqvq` command."""

from mqvq.cli import main

main()
