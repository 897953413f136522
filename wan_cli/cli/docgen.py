"""Writes (or checks) docs/cli.md from the commands' own --help, so the reference never drifts from the code.

python -m wan_cli.cli.docgen docs/cli.md           # regenerate
python -m wan_cli.cli.docgen --check docs/cli.md   # fail if stale (run by `make lint`)
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from .app import app

WIDTH = 100
HEADER = (
    "# `wan` command reference\n\n"
    "Generated from `--help` by `make docs` (`python -m wan_cli.cli.docgen docs/cli.md`); "
    "`make lint` fails when it is out of date.\n"
)


def _help(args: list[str]) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], prog_name="wan", terminal_width=WIDTH, color=False)
    if result.exit_code != 0:
        raise RuntimeError(f"wan {' '.join(args)} --help failed: {result.output}")
    return result.output.rstrip() + "\n"


def render() -> str:
    group = typer.main.get_command(app)
    names = sorted(getattr(group, "commands", {}))
    parts = [HEADER, "## wan\n\n```text\n" + _help([]) + "```\n"]
    for name in names:
        parts.append(f"## wan {name}\n\n```text\n" + _help([name]) + "```\n")
    return "\n".join(parts)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    target = Path(paths[0] if paths else "docs/cli.md")
    text = render()
    if check:
        if not target.is_file() or target.read_text() != text:
            print(f"{target} is out of date: run `make docs`", file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
