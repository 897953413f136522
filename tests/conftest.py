"""Shared test setup: no network, no writes outside tmp dirs, deterministic CPU math."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read its settings from the environment when it was imported: point them here too
    monkeypatch.setattr(hf_constants, "HF_HOME", str(home / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("WAN_CLI_HOME", str(home / "wan"))
    monkeypatch.delenv("WAN_DEBUG", raising=False)
    torch.manual_seed(0)
    yield


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    return tmp_path
