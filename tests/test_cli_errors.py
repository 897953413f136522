"""The error catalogue: every bad input → one message and a hint on stderr, exit 1 (2 for usage errors), no
traceback, nothing on stdout, and no partial or overwritten file. Download/network errors: test_download.py."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import random_vae, tiny_vae_config, write_comfy_vae, write_diffusers_pipeline
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from wan_cli.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_diffusers_pipeline(tmp_path_factory.mktemp("m") / "t2v", "t2v", seed=1)


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_comfy_vae(random_vae(tiny_vae_config()), tmp_path_factory.mktemp("v") / "vae.safetensors")


def check_clean_failure(result, code: int, *needles: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.stdout == "", result.stdout
    assert "Traceback" not in result.output
    err = " ".join(result.stderr.split())  # rich wraps long lines
    assert err.count("Error:") == 1, result.stderr  # one message (a run's summary line may precede it)
    err = err[err.index("Error:") :]
    assert "hint:" in err, result.stderr
    for needle in needles:
        assert needle in err, (needle, result.stderr)


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.rglob("*")}


# -- settings and prompts (usage errors: exit 2, before anything is loaded) ------------------------------------------

USAGE = [
    (["--size", "833x480"], "multiples of 16"),
    (["--size", "big"], "832x480"),
    (["--frames", "80"], "4n+1"),
    (["--steps", "0"], "--steps"),
    (["--guidance", "-1"], "--guidance"),
    (["--fps", "0"], "--fps"),
    (["--shift", "0"], "--shift"),
    (["--solver", "ddim"], "'unipc', 'dpm++', 'euler' or 'lcm'"),
    (["--seed", "-2"], "--seed"),
    (["--device", "tpu"], "--device"),
    (["--offload", "disk"], "--offload"),
    (["--vae-tile", "30"], "--vae-tile"),
    (["--dtype", "int4"], "--dtype"),
    (["--json", "-q"], "cannot be used together"),
    (["-o", "out.avi"], "must end in .mp4"),
    (["--prompts", "-"], "not both"),
]


@pytest.mark.parametrize(("extra", "needle"), USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_bad_settings_are_usage_errors(model: Path, tmp: Path, extra: list[str], needle: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp)
    result = runner.invoke(app, ["t2v", "a cat", "-m", str(model), *extra])
    check_clean_failure(result, 2, needle)
    assert files_in(tmp) == set()


def test_batch_output_must_be_a_folder_or_template(model: Path, tmp: Path) -> None:
    (tmp / "p.txt").write_text("a\nb\n")
    result = runner.invoke(app, ["t2v", "--prompts", str(tmp / "p.txt"), "-m", str(model), "-o", str(tmp / "x.mp4")])
    check_clean_failure(result, 2, "a batch writes several", "{index}")


# -- runtime errors: exit 1 ------------------------------------------------------------------------------------------


def _gif(path: Path) -> Path:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    return path


# (case, argv builder (model folder, tmp dir) → a command line, words expected in the message). tmp paths hold no
# spaces, so each command line is written as one string and split.
# fmt: off
RUNTIME: list[tuple[str, Callable[[Path, Path], str], tuple[str, ...]]] = [
    ("empty prompt", lambda m, t: f"t2v '' -m {m}", ("the prompt is empty",)),
    ("missing image", lambda m, t: f"i2v {t}/nope.png --prompt x -m {m}", ("does not exist",)),
    ("not an image", lambda m, t: f"i2v {_text(t / 'a.png')} --prompt x -m {m}", ("not a readable image",)),
    ("animated image", lambda m, t: f"i2v {_gif(t / 'a.gif')} --prompt x -m {m}", ("animated",)),
    ("i2v without image", lambda m, t: f"i2v --prompt x -m {m}", ("no input image",)),
    (
        "t2v model for i2v",
        lambda m, t: f"i2v {_png(t / 'a.png')} --prompt x -m {m} {TINY}",
        ("is a t2v model", "wan inspect"),
    ),
    ("i2v name for t2v", lambda m, t: "t2v x -m 14b-i2v-480p", ("is an i2v model", "wan i2v")),
    ("not downloaded", lambda m, t: "t2v x -m 14b-t2v", ("not downloaded", "wan download 14b-t2v")),
    ("unknown model", lambda m, t: "t2v x -m 1.4b-t2v", ("1.3b-t2v",)),
    ("missing weights path", lambda m, t: f"t2v x -m {t}/w.safetensors", ("no such file",)),
    ("split file alone", lambda m, t: f"t2v x -m {_truncated(m, t)}", ("--vae PATH and --text-encoder",)),
    (
        "corrupt safetensors",
        lambda m, t: f"t2v x -m {_text(t / 'w.safetensors')} {TINY} --vae {m} --text-encoder {m}",
        ("w.safetensors", "safetensors"),
    ),
    (
        "truncated safetensors",
        lambda m, t: f"t2v x -m {_truncated(m, t)} {TINY} --vae {m} --text-encoder {m}",
        ("w.safetensors",),
    ),
    ("unknown preset", lambda m, t: f"t2v x -m {m} -p t2v-1.3b-408p", ("unknown preset", "t2v-1.3b-480p")),
    (
        "bad preset yaml",
        lambda m, t: f"t2v x -m {m} -p {_write(t / 'p.yaml', 'steps: [1,')}",
        ("p.yaml is not valid YAML", "line"),
    ),
    (
        "preset unknown key",
        lambda m, t: f"t2v x -m {m} -p {_write(t / 'p.yaml', 'stepz: 3')}",
        ("unknown key 'stepz'", "p.yaml"),
    ),
    ("preset bad value", lambda m, t: f"t2v x -m {m} -p {_write(t / 'p.yaml', 'frames: 80')}", ("frames", "4n+1")),
    ("missing prompts file", lambda m, t: f"t2v --prompts {t}/p.txt -m {m}", ("does not exist",)),
    (
        "empty prompts file",
        lambda m, t: f"t2v --prompts {_write(t / 'p.txt', '# only a comment')} -m {m}",
        ("holds no prompts",),
    ),
    (
        "unwritable folder",
        lambda m, t: f"t2v x -m {m} -o {_text(t / 'file')}/x.mp4 {TINY}",
        ("cannot create the folder",),
    ),
    ("cuda on a cpu machine", lambda m, t: f"t2v x -m {m} --device cuda", ("no CUDA device",)),
    ("bad env var", lambda m, t: f"t2v x -m {m}", ("WAN_DTYPE",)),
    ("missing video", lambda m, t: f"encode {t}/v.mp4 -o {t}/l.safetensors", ("v.mp4",)),
    ("not a video", lambda m, t: f"encode {_text(t / 'v.mp4')} -o {t}/l.safetensors", ("v.mp4",)),
    ("empty video", lambda m, t: f"encode {_write(t / 'v.mp4', '')} -o {t}/l.safetensors", ("v.mp4",)),
    (
        "latents wrong shape",
        lambda m, t: f"decode {_lat(t, torch.zeros(4, 2, 4, 4))} -o {t}/o.mp4",
        ("[16, F, H/8, W/8]",),
    ),
    (
        "latents int dtype",
        lambda m, t: f"decode {_lat(t, torch.zeros(16, 2, 4, 4, dtype=torch.int32))} -o {t}/o.mp4",
        ("int32",),
    ),
    (
        "latents with NaN",
        lambda m, t: f"decode {_lat(t, torch.full((16, 2, 4, 4), float('nan')))} -o {t}/o.mp4",
        ("NaN",),
    ),
    ("latents not safetensors", lambda m, t: f"decode {_text(t / 'l.safetensors')} -o {t}/o.mp4", ("l.safetensors",)),
    ("latents missing", lambda m, t: f"decode {t}/none.safetensors -o {t}/o.mp4", ("none.safetensors",)),
]
# fmt: on
TINY = "--size 64x32 --frames 5"


def _text(path: Path) -> Path:
    path.write_text("this is not what you think it is\n")
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _png(path: Path) -> Path:
    Image.new("RGB", (64, 32), (10, 20, 30)).save(path)
    return path


def _truncated(model: Path, tmp: Path) -> Path:
    data = (model / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp / "w.safetensors").write_bytes(data[: len(data) // 2])
    return tmp / "w.safetensors"


def _lat(tmp: Path, t: torch.Tensor) -> Path:
    save_file({"latents": t}, str(tmp / "l.safetensors"))
    return tmp / "l.safetensors"


@pytest.mark.parametrize(("case", "args", "needles"), RUNTIME, ids=[c for c, _, _ in RUNTIME])
def test_runtime_errors(model: Path, tmp: Path, monkeypatch, case: str, args, needles) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp)
    if case == "bad env var":
        monkeypatch.setenv("WAN_DTYPE", "fp64")
    argv = shlex.split(args(model, tmp))
    before = files_in(tmp)
    result = runner.invoke(app, argv)
    check_clean_failure(result, 1, *needles)
    assert not [n for n in files_in(tmp) - before if n.endswith((".mp4", ".json", ".tmp"))]


def test_existing_output_is_not_overwritten_without_force(model: Path, tmp: Path) -> None:
    out = tmp / "x.mp4"
    out.write_bytes(b"precious")
    result = runner.invoke(app, ["t2v", "x", "-m", str(model), "--size", "64x32", "--frames", "5", "-o", str(out)])
    check_clean_failure(result, 1, "already exists", "--force")
    assert out.read_bytes() == b"precious"
    result = runner.invoke(app, ["decode", str(_lat(tmp, torch.zeros(16, 1, 4, 4))), "-o", str(out)])
    check_clean_failure(result, 1, "already exists", "--force")
    assert out.read_bytes() == b"precious"


def test_cuda_out_of_memory_names_the_way_out(model: Path, tmp: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from wan_cli.engine.pipeline import Pipeline

    def oom(*_: object, **__: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(Pipeline, "generate", oom)
    out = tmp / "x.mp4"
    result = runner.invoke(app, ["t2v", "x", "-m", str(model), "--size", "64x32", "--frames", "5", "-o", str(out)])
    check_clean_failure(result, 1, "ran out of memory", "--offload blocks")
    assert files_in(tmp) == set()


def test_ctrl_c_while_writing_leaves_nothing(model: Path, tmp: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from wan_cli.engine import video

    real_write = video.VideoWriter.write

    def interrupted(self, chunk) -> None:  # type: ignore[no-untyped-def]
        real_write(self, chunk)
        raise KeyboardInterrupt

    monkeypatch.setattr(video.VideoWriter, "write", interrupted)
    out = tmp / "x.mp4"
    result = runner.invoke(app, ["t2v", "x", "-m", str(model), "--size", "64x32", "--frames", "9", "--steps", "1",
                                 "-o", str(out)])  # fmt: skip
    assert result.exit_code == 130 and "Error: interrupted" in result.stderr and result.stdout == ""
    assert files_in(tmp) == set()  # no video, no temp file, no sidecar


def test_a_failing_batch_item_does_not_stop_the_batch(model: Path, tmp: Path) -> None:
    """A bad image on one line: reported with its line, the other lines still produce videos; exit 1."""
    prompts = tmp / "p.jsonl"
    png = _png(tmp / "ok.png")
    prompts.write_text(f'{{"prompt": "x", "image": "{tmp / "missing.png"}"}}\n{{"prompt": "y", "image": "{png}"}}\n')
    result = runner.invoke(app, ["i2v", "--prompts", str(prompts), "-m", str(model), "-o", str(tmp) + "/"])
    assert result.exit_code == 1
    err = " ".join(result.stderr.split())
    assert "p.jsonl line 1: " in err and "missing.png does not exist" in err
    assert "p.jsonl line 2: " in err and "is a t2v model" in err  # each line fails for its own reason
    assert "2 of 2 items failed" in err and "Traceback" not in result.output


def test_wan_debug_reraises(model: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("WAN_DEBUG", "1")
    result = runner.invoke(app, ["t2v", "x", "-m", "14b-t2v"])
    assert result.exit_code == 1 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_image_helpers_are_what_they_claim(tmp: Path) -> None:
    """Guards the fixtures above: the GIF really is animated, the PNG really is an image."""
    with Image.open(_gif(tmp / "a.gif")) as im:
        assert im.n_frames == 2
    assert np.asarray(Image.open(_png(tmp / "b.png"))).shape == (32, 64, 3)
