"""``python -m sovereign`` runs the same CLI as the ``sovereign`` console script."""

from sovereign.cli import main

main()
