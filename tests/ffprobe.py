"""An independent view of a video file for tests: the system ``ffprobe`` plus our own scan of the MP4 boxes.

The code under test only ever runs the ffmpeg bundled with imageio-ffmpeg; these facts come from elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

# CI installs ffprobe (Debian's ffmpeg package) and sets WAN_REQUIRE_FFPROBE=1: there a missing ffprobe fails.
_MISSING = shutil.which("ffprobe") is None and os.environ.get("WAN_REQUIRE_FFPROBE") != "1"
needs_ffprobe = pytest.mark.skipif(_MISSING, reason="ffprobe is not installed (apt-get install ffmpeg)")


def top_level_boxes(path: Path) -> list[str]:
    """The types of the top-level MP4 boxes, in file order (``ftyp``, ``moov``, ``mdat``, …)."""
    boxes = []
    with path.open("rb") as f:
        while header := f.read(8):
            if len(header) < 8:
                break
            size, kind = struct.unpack(">I4s", header)
            if size == 1:  # 64-bit size follows the type
                size = struct.unpack(">Q", f.read(8))[0] - 8
            elif size == 0:  # box runs to the end of the file
                boxes.append(kind.decode("latin-1"))
                break
            boxes.append(kind.decode("latin-1"))
            f.seek(size - 8, 1)
    return boxes


def probe(path: Path) -> dict[str, Any]:
    """codec_name, pix_fmt, width, height, fps (Fraction), frames (decoded and counted), tags, comment, faststart."""
    if _MISSING:
        pytest.skip("ffprobe is not installed (apt-get install ffmpeg)")
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-of", "json", "-show_entries",
         "stream=codec_name,pix_fmt,width,height,avg_frame_rate,nb_read_frames,color_space:format_tags", str(path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    stream = data["streams"][0]
    tags = data.get("format", {}).get("tags", {})
    boxes = top_level_boxes(path)
    return {
        "codec_name": stream["codec_name"],
        "pix_fmt": stream["pix_fmt"],
        "width": stream["width"],
        "height": stream["height"],
        "color_space": stream.get("color_space"),
        "fps": Fraction(stream["avg_frame_rate"]),
        "frames": int(stream["nb_read_frames"]),
        "tags": tags,
        "comment": tags.get("comment"),
        "boxes": boxes,
        "faststart": "moov" in boxes and "mdat" in boxes and boxes.index("moov") < boxes.index("mdat"),
    }
