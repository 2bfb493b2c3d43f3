"""`python -m wisparse_export ...` is the `wisparse` command."""

from .cli import main

main()
