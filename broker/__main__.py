"""``python -m broker``: the ``broker`` command (how the supervisor starts its workers)."""

from broker.cli import main

main()
