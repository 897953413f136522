"""`python -m wan_cli` = `wan`."""

from .cli.app import main

main()
