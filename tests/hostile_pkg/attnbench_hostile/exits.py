"""Calls sys.exit() on import: attnbench must contain it."""
import sys

sys.exit("hostile plugin exits on import")
