"""``python -m attnbench``: the same command line as the ``attnbench`` script."""
from .cli import main

main()
