"""The layers of docs/architecture.md, enforced: a test fails when an import crosses a layer the wrong way.

Every import statement of every module (top level or inside a function: lazy imports count) is read with ``ast``
and resolved to a ``wan_cli`` module name; the rules below are the map's arrows.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1] / "wan_cli"
NETWORKS = {"transformer", "vae", "layers", "ops", "quant"}
# what a network must not reach: loaders, samplers, I/O
NOT_FOR_NETWORKS = {"checkpoints", "tensors", "layouts", "gguf", "discover", "conditioning", "tokenizer", "sampling",
                    "schedulers", "pipeline", "bench", "memory", "offload", "video", "latents", "ffmpeg", "outputs",
                    "images", "transcode"}  # fmt: skip
CLI_MAY_IMPORT = {"wan_cli", "wan_cli.engine", "wan_cli.presets", "wan_cli.registry", "wan_cli.hub", "wan_cli.paths"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str | None = None) -> set[str]:
    """The wan_cli modules ``path`` (module ``name``) imports, absolute (``from ..engine import X`` in a CLI module
    → ``wan_cli.engine``)."""
    name = name or _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("wan_cli")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("wan_cli"):
                continue
            for alias in node.names:  # `from .. import hub`: the module wan_cli.hub; `from .. import x`: wan_cli
                sub = f"{mod}.{alias.name}"
                is_module = (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                out.add(sub if is_module or (ROOT.parent / sub.replace(".", "/")).is_dir() else mod)
    return out


def _modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py")) if folder else sorted(ROOT.glob("*.py"))


def test_the_resolver_reads_relative_and_lazy_imports(tmp_path: Path) -> None:
    """The checker itself can fail: a deep engine import inside a function is seen."""
    fake = tmp_path / "probe.py"
    fake.write_text("import os\ndef f():\n    from ..engine.pipeline import Pipeline\n    from . import output\n")
    assert _imports(fake, "wan_cli.cli.probe") == {"wan_cli.engine.pipeline", "wan_cli.cli.output"}


@pytest.mark.parametrize("path", _modules("cli"), ids=lambda p: p.name)
def test_the_cli_imports_only_the_engines_api(path: Path) -> None:
    bad = {m for m in _imports(path) if not m.startswith("wan_cli.cli") and m not in CLI_MAY_IMPORT}
    assert not bad, f"{path.name} reaches past the engine API: {sorted(bad)} (export the names from wan_cli.engine)"


@pytest.mark.parametrize("path", [ROOT / "engine" / f"{n}.py" for n in sorted(NETWORKS)], ids=lambda p: p.name)
def test_networks_import_no_loader_sampler_or_io(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith("wan_cli.engine.") and m.split(".")[2] in NOT_FOR_NETWORKS}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules("engine"), ids=lambda p: p.name)
def test_the_engine_knows_nothing_of_the_cli_presets_registry_or_hub(path: Path) -> None:
    bad = {m for m in _imports(path) if not m.startswith("wan_cli.engine")}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", _modules(""), ids=lambda p: p.name)
def test_settings_and_downloads_import_no_command(path: Path) -> None:
    bad = {m for m in _imports(path) if m.startswith("wan_cli.cli")}
    assert not bad or path.name == "__main__.py", f"{path.name} imports {sorted(bad)}"


def test_every_python_file_is_under_450_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"over 450 lines: {long}"
