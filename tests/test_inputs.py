"""Hostile inputs (issue 11): images (EXIF orientation, 16-bit, palette/CMYK/LA, decompression bombs) and prompt
files (a byte-order mark, JSONL lines that are not objects, lone surrogates). Expectations are hand-computed or
Pillow's own decoding of the same file, never `load_image` itself."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from wan_cli.cli.items import Item, parse_prompts, read_prompts_file
from wan_cli.engine.errors import InputError
from wan_cli.engine.images import MAX_PIXELS, load_image

# --------------------------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------------------------


def official(path: Path) -> torch.Tensor:
    """The official rule written out: PIL convert("RGB") → uint8 / 255 → (x − 0.5) / 0.5, [3, H, W]."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5


def from_unit(rgb: list[list[tuple[float, float, float]]]) -> torch.Tensor:
    """Rows of (r, g, b) in [0, 1] → [3, H, W] in [-1, 1]."""
    return (torch.tensor(rgb, dtype=torch.float32).permute(2, 0, 1) - 0.5) / 0.5


def blocks(w: int = 6, h: int = 4) -> Image.Image:
    """A landscape picture with a different colour in each quadrant (so any turn or flip shows)."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (250, 10, 10)
    a[: h // 2, w // 2 :] = (10, 250, 10)
    a[h // 2 :, : w // 2] = (10, 10, 250)
    a[h // 2 :, w // 2 :] = (240, 240, 20)
    return Image.fromarray(a)


@pytest.mark.parametrize(("orientation", "turns"), [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_gives_the_upright_picture(tmp: Path, orientation: int, turns: int) -> None:
    """A phone photo stored landscape, tagged 6 (turn 90° clockwise to view) or 8 (counter-clockwise): portrait."""
    path = tmp / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    blocks(64, 32).save(path, quality=95, exif=exif)
    with Image.open(path) as im:  # Pillow's own decoding of the stored pixels, turned by numpy
        stored = np.asarray(im.convert("RGB"))
    upright = np.ascontiguousarray(np.rot90(stored, k=turns))
    want = (torch.from_numpy(upright).permute(2, 0, 1).float() / 255.0 - 0.5) / 0.5
    got = load_image(path)
    assert got.shape == want.shape == ((3, 64, 32) if orientation != 3 else (3, 32, 64))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp"])
def test_images_without_orientation_are_bit_identical_to_the_official_rule(tmp: Path, suffix: str) -> None:
    path = tmp / f"plain{suffix}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(path)
    got = load_image(path)
    assert got.dtype == torch.float32 and torch.equal(got, official(path))


def test_orientation_1_is_bit_identical_too(tmp: Path) -> None:
    path = tmp / "tagged.jpg"
    exif = Image.Exif()
    exif[0x0112] = 1
    blocks(48, 32).save(path, exif=exif)
    assert torch.equal(load_image(path), official(path))


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_greyscale_is_scaled_not_clipped(tmp: Path, mode: str) -> None:
    values = np.array([[0, 257, 4096, 32768, 65535]], dtype=np.uint16)
    if mode == "I;16":  # Pillow writes and reads a 16-bit greyscale PNG as I;16
        path = tmp / "depth.png"
        Image.fromarray(values).save(path)
    else:  # TIFF keeps big-endian 16 bits (I;16B) and 32-bit integers (I)
        path = tmp / "depth.tif"
        data = values.astype(">u2") if mode == "I;16B" else values.astype(np.int32)
        Image.fromarray(data).save(path)
    with Image.open(path) as im:
        assert im.mode == mode  # the file really is what the test means
    unit = [[(v / 65535,) * 3 for v in (0, 257, 4096, 32768, 65535)]]
    torch.testing.assert_close(load_image(path), from_unit(unit), rtol=0, atol=1e-6)


def test_32_bit_integer_pixels_beyond_16_bits_are_refused(tmp: Path) -> None:
    path = tmp / "wide.tif"
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(path)
    with pytest.raises(InputError, match="32-bit integer pixels") as info:
        load_image(path)
    assert "16-bit" in info.value.hint


def _palette(path: Path) -> None:
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (254 * 3))
    im.putpixel((0, 0), 1)
    im.putpixel((1, 0), 0)
    im.save(path)


def _rgba(path: Path) -> None:
    im = Image.new("RGBA", (2, 1))
    im.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent: the colour is kept (alpha dropped, as convert does)
    im.putpixel((1, 0), (250, 5, 60, 128))
    im.save(path)


def _cmyk(path: Path) -> None:
    im = Image.new("CMYK", (3, 1))
    im.putpixel((0, 0), (55, 0, 255, 0))  # no black: R = 255 − C, G = 255 − M, B = 255 − Y
    im.putpixel((1, 0), (0, 0, 0, 255))  # full black
    im.putpixel((2, 0), (0, 0, 0, 0))  # paper white
    im.save(path)


def _la(path: Path) -> None:
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (100, 7))
    im.putpixel((1, 0), (255, 255))
    im.save(path)


def _l(path: Path) -> None:
    Image.fromarray(np.array([[0, 51, 255]], dtype=np.uint8)).save(path)


@pytest.mark.parametrize(
    ("writer", "name", "pixels"),
    [
        (_palette, "p.png", [(200, 100, 50), (10, 20, 30)]),
        (_rgba, "rgba.png", [(10, 20, 30), (250, 5, 60)]),
        (_cmyk, "cmyk.tif", [(200, 255, 0), (0, 0, 0), (255, 255, 255)]),
        (_la, "la.png", [(100, 100, 100), (255, 255, 255)]),
        (_l, "l.png", [(0, 0, 0), (51, 51, 51), (255, 255, 255)]),
    ],
    ids=["P", "RGBA", "CMYK", "LA", "L"],
)
def test_other_modes_keep_working(tmp: Path, writer, name: str, pixels: list[tuple[int, int, int]]) -> None:  # type: ignore[no-untyped-def]
    path = tmp / name
    writer(path)
    want = from_unit([[tuple(c / 255 for c in px) for px in pixels]])  # type: ignore[misc]
    torch.testing.assert_close(load_image(path), want, rtol=0, atol=1e-6)


def header_only_png(width: int, height: int) -> bytes:
    """A PNG that declares width × height but holds almost no data: what a decompression bomb's header looks like."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("w", "h"), [(30000, 30000), (9000, 8000)])  # over Pillow's hard limit; under its warning
def test_a_decompression_bomb_is_refused_before_decoding(tmp: Path, monkeypatch: pytest.MonkeyPatch, w: int,
                                                         h: int) -> None:  # fmt: skip
    path = tmp / "bomb.png"
    path.write_bytes(header_only_png(w, h))
    assert w * h > MAX_PIXELS == 64_000_000

    def no_decoding(self: object) -> None:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(InputError) as info:
        load_image(path)
    assert f"{w}x{h}" in info.value.message and "64 megapixel" in info.value.message
    assert "smaller image" in info.value.hint
    assert Image.MAX_IMAGE_PIXELS == 89478485  # Pillow's own guard is left as it was


def test_an_image_at_the_limit_is_not_refused(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp / "big.png"
    path.write_bytes(header_only_png(8000, 8000))  # exactly 64 MP: allowed; decoding it is what fails here

    def decoding(self: object) -> None:
        raise OSError("decoding reached")

    monkeypatch.setattr(ImageFile.ImageFile, "load", decoding)
    with pytest.raises(InputError, match="not a readable image"):
        load_image(path)


def test_i2v_refuses_a_bomb_cleanly_before_loading_models(tmp: Path) -> None:
    from builders import write_comfy_model
    from typer.testing import CliRunner

    from wan_cli.cli.app import app

    files = write_comfy_model(tmp / "comfy", "i2v")
    bomb = tmp / "bomb.png"
    bomb.write_bytes(header_only_png(30000, 30000))
    args = ["i2v", str(bomb), "--prompt", "a cat", "-m", str(files["dit"]), "--vae", str(files["vae"]),
            "--text-encoder", str(files["text_encoder"]), "--image-encoder", str(files["image_encoder"]),
            "--size", "32x32", "--frames", "5", "--steps", "1", "-o", str(tmp / "x.mp4")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1 and "30000x30000" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.output and not (tmp / "x.mp4").exists()


# --------------------------------------------------------------------------------------------------------------------
# Prompt files
# --------------------------------------------------------------------------------------------------------------------

BOM = "\ufeff"


@pytest.mark.parametrize("name", ["p.jsonl", "p.txt"])
def test_a_byte_order_mark_is_ignored(tmp: Path, name: str) -> None:
    path = tmp / name
    path.write_text(BOM + '{"prompt": "a cat", "seed": 3}\n{"prompt": "a dog"}\n', encoding="utf-8")
    items = read_prompts_file(str(path))
    assert [(i.prompt, i.values.seed, i.error) for i in items] == [("a cat", 3, None), ("a dog", None, None)]


def test_a_bom_before_a_plain_prompt_is_not_part_of_it(tmp: Path) -> None:
    path = tmp / "p.txt"
    path.write_bytes(b"\xef\xbb\xbfa cat\n")
    assert [i.prompt for i in read_prompts_file(str(path))] == ["a cat"]


def test_in_a_jsonl_file_a_line_that_is_not_an_object_is_an_error_not_a_prompt(tmp: Path) -> None:
    path = tmp / "shots.jsonl"
    path.write_text('a cat\n{"prompt": "a dog"}\n\n# a comment\n[1, 2]\n"a fox"\n{"prompt": "a bird"}\n')
    items = read_prompts_file(str(path))
    assert [i.index for i in items] == [1, 2, 3, 4, 5]  # every line is an item: the batch goes on
    assert [i.prompt for i in items if i.error is None] == ["a dog", "a bird"]
    bad = [i for i in items if i.error is not None]
    assert [i.where for i in bad] == ["shots.jsonl line 1", "shots.jsonl line 5", "shots.jsonl line 6"]
    assert all(i.prompt == "" for i in bad)
    assert "shots.jsonl line 1 is not a JSON object" in bad[0].error.message  # type: ignore[union-attr]
    assert ".txt" in bad[0].error.hint  # type: ignore[union-attr]


def test_a_first_line_that_is_an_object_makes_the_file_jsonl() -> None:
    items = parse_prompts('{"prompt": "a dog"}\na cat\n', "stdin")
    assert items[0].prompt == "a dog" and items[0].error is None
    assert items[1].error is not None and "stdin line 2 is not a JSON object" in items[1].error.message


def test_plain_text_files_keep_one_prompt_per_line(tmp: Path) -> None:
    path = tmp / "p.txt"
    path.write_text('a cat\n  a dog on a "sofa"  \n# skipped\n{"prompt": "a fox", "steps": 3}\n[not an object]\n')
    items = read_prompts_file(str(path))
    assert [(i.prompt, i.values.steps, i.error) for i in items] == [
        ("a cat", None, None),
        ('a dog on a "sofa"', None, None),
        ("a fox", 3, None),
        ("[not an object]", None, None),
    ]


def test_a_utf16_file_says_so(tmp: Path) -> None:
    path = tmp / "p.txt"
    path.write_text("a cat\n", encoding="utf-16")
    with pytest.raises(InputError, match="UTF-16") as info:
        read_prompts_file(str(path))
    assert "UTF-8" in info.value.hint


def test_a_lone_surrogate_is_an_error_for_its_line(tmp: Path) -> None:
    path = tmp / "p.jsonl"
    lines = ['{"prompt": "a cat \\ud800"}', '{"prompt": "a smile \\ud83d\\ude00"}',
             '{"prompt": "a dog", "negative_prompt": "blur \\udfff"}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    items = read_prompts_file(str(path))
    assert items[1].error is None and items[1].prompt == "a smile \U0001f600"  # a proper pair is one character
    for item, line, code in ((items[0], 1, "D800"), (items[2], 3, "DFFF")):
        assert item.error is not None, line
        assert item.error.message.startswith(f"p.jsonl line {line}: ") and f"U+{code}" in item.error.message
    assert "'negative_prompt'" in items[2].error.message  # type: ignore[union-attr]


def test_a_lone_surrogate_from_the_command_line_fails_at_planning() -> None:
    item = Item(1, "", "a cat \udcff")  # an undecodable byte in argv, as Python passes it on
    assert item.error is not None and item.error.message.startswith("the prompt holds a lone surrogate")


def test_a_surrogate_in_a_batch_is_reported_and_the_batch_goes_on(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end up to planning: the bad line fails with its line number, the good ones are planned."""
    from typer.testing import CliRunner

    from wan_cli.cli import plan as planning
    from wan_cli.cli.app import app

    planned: list[str] = []

    def fake_plan(item: Item, run: object) -> object:
        if item.error is not None:
            raise item.error
        planned.append(item.prompt)
        raise InputError("stop here", hint="test")

    monkeypatch.setattr(planning, "plan", fake_plan)
    path = tmp / "p.jsonl"
    path.write_text('{"prompt": "a cat"}\n{"prompt": "bad \\ud800"}\n' + json.dumps({"prompt": "a dog"}) + "\n")
    result = CliRunner().invoke(app, ["t2v", "--prompts", str(path), "-o", str(tmp) + "/"])
    assert planned == ["a cat", "a dog"]
    assert "p.jsonl line 2: 'prompt' holds a lone surrogate" in result.stderr
    assert result.exit_code == 1 and "Traceback" not in result.output


def test_stdin_that_is_not_utf8_is_one_clear_error() -> None:
    from typer.testing import CliRunner

    from wan_cli.cli.app import app

    result = CliRunner().invoke(app, ["t2v", "--prompts", "-"], input=b"a cat\nb\xff\n")
    assert result.exit_code == 1 and "stdin is not UTF-8 text" in result.stderr and "Traceback" not in result.output
