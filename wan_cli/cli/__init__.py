"""The `wan` command line: a thin Typer layer over `wan_cli.engine`."""
