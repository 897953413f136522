"""`pip install .` (non-editable) must ship everything the tool reads at run time."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_wheel_ships_presets_and_entry_point(tmp: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel = next(tmp.glob("wan_cli-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    presets = sorted(p.name for p in (ROOT / "presets").glob("*.yaml"))
    assert len(presets) == 8  # 6 models' own + 2 distill presets
    for name in presets:
        assert f"wan_cli/preset_data/{name}" in names
    for module in ("wan_cli/engine/transformer.py", "wan_cli/engine/vae.py", "wan_cli/cli/app.py", "wan_cli/py.typed"):
        assert module in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "wan = wan_cli.cli.app:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith("tests/") for n in names)


def test_presets_are_importable_package_data() -> None:
    from importlib.resources import files

    shipped = sorted(p.name for p in files("wan_cli.preset_data").iterdir() if p.name.endswith(".yaml"))
    assert shipped == sorted(p.name for p in (ROOT / "presets").glob("*.yaml"))
