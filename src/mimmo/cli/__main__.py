"""``python -m mimmo.cli``: the same command line as the ``mimmo`` entry point."""

from mimmo.cli import main

main()
