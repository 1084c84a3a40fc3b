"""``python -m kubetrade``: the same as the ``kubetrade`` command."""

from kubetrade.cli import main

main()
