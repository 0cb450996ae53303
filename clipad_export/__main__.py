"""``python -m clipad``: the same as the ``clipad`` command."""

from clipad.cli import main

main()
