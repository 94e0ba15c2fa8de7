"""`python -m matmtl ...` (e.g. under torchrun): the matmtl command."""

from .cli import main

main()
