"""Where wan keeps its own state (weights stay in the Hugging Face cache, see ``hub.py``)."""

from __future__ import annotations

import os
from pathlib import Path


def wan_home() -> Path:
    """``$WAN_CLI_HOME``, else the platform's app dir (e.g. ``~/.config/wan`` on Linux). Not created here."""
    env = os.environ.get("WAN_CLI_HOME", "").strip()
    if env:
        return Path(env).expanduser()
    import typer

    return Path(typer.get_app_dir("wan"))


def hf_cache() -> Path:
    """The huggingface_hub cache directory, as huggingface_hub itself resolved it (HF_HUB_CACHE, HF_HOME, XDG)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()
