"""`python -m matmtl.cli ...`: the matmtl command."""

from . import main

main()
