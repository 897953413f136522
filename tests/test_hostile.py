"""Hostile inputs, signals and limits (issue 11): never lose work, never run foreign code, never report failure as
success. In-process cases run the CLI with CliRunner and make a phase fail or be interrupted; the signal cases also
run the real `wan` process and send it SIGTERM / SIGHUP / SIGINT."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import (
    random_dit,
    random_vae,
    tiny_dit_config,
    tiny_vae_config,
    write_comfy_dit,
    write_comfy_vae,
    write_diffusers_pipeline,
)
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from wan_cli.cli.app import app
from wan_cli.engine import CheckpointError, load_transformer
from wan_cli.engine.errors import Interrupted

runner = CliRunner()
TINY = ["--size", "64x32", "--frames", "5", "--steps", "2", "--seed", "1"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_diffusers_pipeline(tmp_path_factory.mktemp("m") / "t2v", "t2v", seed=1)


def files_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- signals and failures at every phase: nothing left, the right exit code --------------------------------------------

PHASES = {  # where to raise: (module, attribute)
    "load": ("wan_cli.engine.pipeline", "load_transformer"),
    "encode": ("wan_cli.engine.conditioning.TextEncoder", "encode"),
    "denoise": ("wan_cli.engine.pipeline", "denoise_with_record"),
    "decode": ("wan_cli.engine.video.VideoWriter", "write"),
    "write": ("wan_cli.cli.generate", "write_json_atomic"),
}
STOPS = {
    "SIGINT": (KeyboardInterrupt(), 130),
    "SIGTERM": (Interrupted(signal.SIGTERM), 143),
    "SIGHUP": (Interrupted(signal.SIGHUP), 129),
}


def _raise_in(monkeypatch: pytest.MonkeyPatch, phase: str, exc: BaseException) -> None:
    import importlib

    where, name = PHASES[phase]
    try:
        owner = importlib.import_module(where)
    except ModuleNotFoundError:
        module, cls = where.rsplit(".", 1)
        owner = getattr(importlib.import_module(module), cls)

    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(owner, name, boom)


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_signal_at_any_phase_leaves_nothing(
    model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch, phase: str, stop: str
) -> None:
    exc, code = STOPS[stop]
    _raise_in(monkeypatch, phase, exc)
    out = tmp / "new" / "nested" / "dog.mp4"
    result = runner.invoke(
        app,
        [
            "t2v",
            "a dog",
            "-m",
            str(model),
            *TINY,
            "-o",
            str(out),
            "--save-latents",
            str(tmp / "lat" / "dog.safetensors"),
            "-q",
        ],
    )
    assert result.exit_code == code, result.output
    assert result.stderr.strip() == "Error: interrupted" and result.stdout == ""
    assert files_in(tmp) == []  # no video, sidecar, latents, temp file — and not the folders the run made


def test_a_failure_after_the_latents_keeps_nothing_and_the_rerun_works(
    model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's bug: an interrupt during decode kept the latents file, and the identical rerun failed with 'already
    exists'. The item's files appear together or not at all."""
    args = [
        "t2v",
        "a dog",
        "-m",
        str(model),
        *TINY,
        "-o",
        str(tmp / "dog.mp4"),
        "--save-latents",
        str(tmp / "dog.safetensors"),
    ]
    with monkeypatch.context() as m:
        _raise_in(m, "decode", RuntimeError("ffmpeg died"))
        assert runner.invoke(app, args).exit_code == 1
    assert files_in(tmp) == []
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert files_in(tmp) == ["dog.json", "dog.mp4", "dog.safetensors"]


def test_force_keeps_the_old_files_until_the_new_ones_are_complete(
    model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["t2v", "a dog", "-m", str(model), *TINY, "-o", str(tmp / "dog.mp4")]
    assert runner.invoke(app, args).exit_code == 0
    before = (tmp / "dog.mp4").read_bytes(), (tmp / "dog.json").read_text()
    _raise_in(monkeypatch, "write", Interrupted(signal.SIGTERM))
    assert runner.invoke(app, [*args, "--force", "--seed", "2"]).exit_code == 143
    assert ((tmp / "dog.mp4").read_bytes(), (tmp / "dog.json").read_text()) == before
    assert files_in(tmp) == ["dog.json", "dog.mp4"]


def _wan(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "wan_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_the_real_process_stopped_mid_run_leaves_nothing(model: Path, tmp: Path, sig: int, code: int) -> None:
    """`kill`, `docker stop`, a Slurm time limit (SIGTERM), a closed terminal (SIGHUP), Ctrl-C (SIGINT)."""
    out = tmp / "runs" / "dog.mp4"
    proc = _wan(
        "t2v",
        "a dog",
        "-m",
        str(model),
        "--size",
        "128x64",
        "--frames",
        "9",
        "--steps",
        "1000",
        "--seed",
        "1",
        "-o",
        str(out),
        "--save-latents",
        str(tmp / "runs" / "dog.safetensors"),
    )
    assert proc.stderr is not None
    seen = ""
    while "seed 1" not in seen and proc.poll() is None:  # the run's description: planning is over, loading begins
        seen += proc.stderr.readline()
    assert "seed 1" in seen, seen
    time.sleep(1.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.strip().endswith("Error: interrupted") and "Traceback" not in err
    assert files_in(tmp) == [], files_in(tmp)


# -- inputs are never outputs ------------------------------------------------------------------------------------------


def _video(path: Path) -> Path:
    from wan_cli.engine.video import VideoWriter

    with VideoWriter(path, 32, 32, 16) as w:
        w.write(torch.zeros(3, 5, 32, 32))
    return path


def test_encode_never_writes_over_its_input(tmp: Path) -> None:
    vae = write_comfy_vae(random_vae(tiny_vae_config()), tmp / "vae.safetensors")
    clip = _video(tmp / "clip.mp4")
    before = clip.read_bytes()
    result = runner.invoke(app, ["encode", str(clip), "-o", str(clip), "--force", "--vae", str(vae)])
    assert result.exit_code == 2 and ".safetensors" in result.stderr  # the format and the name disagree
    (tmp / "lat.safetensors").symlink_to(clip)
    os.link(clip, tmp / "hard.safetensors")
    for out in ("lat.safetensors", "hard.safetensors"):
        result = runner.invoke(app, ["encode", str(clip), "-o", str(tmp / out), "--force", "--vae", str(vae)])
        assert result.exit_code == 1 and "is the input" in result.stderr, result.output
    assert clip.read_bytes() == before


def test_generation_never_writes_over_its_inputs(model: Path, tmp: Path) -> None:
    prompts = tmp / "p.txt"
    prompts.write_text("a dog\n")
    (tmp / "out").mkdir()
    (tmp / "out" / "a-dog-1.mp4").symlink_to(prompts)  # the default name of the only item is the prompts file
    result = runner.invoke(
        app, ["t2v", "--prompts", str(prompts), "-m", str(model), *TINY, "-o", str(tmp / "out"), "--force"]
    )
    assert result.exit_code == 1 and "is the input" in " ".join(result.stderr.split())
    assert prompts.read_text() == "a dog\n"


# -- batches: outputs stay inside -o, no two items write the same file -------------------------------------------------


@pytest.mark.parametrize("name", ["/tmp/elsewhere.mp4", "../up.mp4", "a/../../up.mp4", "~/home.mp4"])
def test_a_jsonl_output_stays_inside_the_output_folder(model: Path, tmp: Path, name: str) -> None:
    prompts = tmp / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "a dog", "output": name}) + "\n")
    result = runner.invoke(app, ["t2v", "--prompts", str(prompts), "-m", str(model), *TINY, "-o", str(tmp / "o") + "/"])
    assert result.exit_code == 1 and "leaves the output folder" in " ".join(result.stderr.split())
    assert files_in(tmp) == ["p.jsonl"]


def test_two_items_with_one_output_are_refused_before_any_generation(
    model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts = tmp / "p.jsonl"
    prompts.write_text('{"prompt": "a dog", "output": "same.mp4"}\n{"prompt": "a cat", "output": "same.mp4"}\n')
    calls: list[str] = []
    from wan_cli.engine.pipeline import Pipeline

    real = Pipeline.generate
    monkeypatch.setattr(Pipeline, "generate", lambda self, req, **kw: calls.append(req.prompt) or real(self, req, **kw))
    result = runner.invoke(
        app, ["t2v", "--prompts", str(prompts), "-m", str(model), *TINY, "-o", str(tmp) + "/", "--force"]
    )
    err = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "p.jsonl line 2: writes" in err and "as p.jsonl line 1 does" in err
    assert calls == ["a dog"]  # refused at planning: the second item never ran
    assert json.loads((tmp / "same.json").read_text())["prompt"] == "a dog"


def test_an_unwritable_output_folder_is_reported_once(model: Path, tmp: Path) -> None:
    prompts = tmp / "p.txt"
    prompts.write_text("a dog\n" * 500)
    (tmp / "file").write_text("x")
    t0 = time.perf_counter()
    result = runner.invoke(
        app, ["t2v", "--prompts", str(prompts), "-m", str(model), *TINY, "-o", str(tmp / "file" / "{index}.mp4")]
    )
    assert result.exit_code == 1 and result.stderr.count("Error:") == 1, result.stderr[:500]
    assert time.perf_counter() - t0 < 10


def test_planning_a_long_batch_costs_milliseconds_per_item(model: Path, tmp: Path) -> None:
    from wan_cli.cli import options, plan
    from wan_cli.cli.items import read_prompts_file
    from wan_cli.presets import env_values

    prompts = tmp / "p.txt"
    prompts.write_text("".join(f"prompt number {i}\n" for i in range(300)))
    opts = options.Options(
        model=str(model), output=str(tmp) + "/", prompts=str(prompts), size="64x32", frames=5, steps=2
    )
    run = plan.Run("t2v", opts, options.flag_values(opts), env_values(), None, batch=True)
    items = read_prompts_file(str(prompts))
    t0 = time.perf_counter()
    jobs, failures = plan.plan_all(run, items)
    per_item = (time.perf_counter() - t0) / len(items)
    assert (len(jobs), failures) == (300, 0) and per_item < 0.02, per_item


# -- late failures are early -------------------------------------------------------------------------------------------


def test_a_lone_surrogate_fails_at_planning_not_after_generation(model: Path, tmp: Path) -> None:
    prompts = tmp / "p.jsonl"
    prompts.write_text('{"prompt": "bad \\ud800 text"}\n{"prompt": "a good one"}\n')
    result = runner.invoke(app, ["t2v", "--prompts", str(prompts), "-m", str(model), *TINY, "-o", str(tmp) + "/"])
    err = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "line 1" in err and "surrogate" in err and "1 of 2 items failed" in err
    assert sorted(p.suffix for p in tmp.iterdir()) == [".json", ".jsonl", ".mp4"]


def test_a_100k_character_prompt_is_a_video(model: Path, tmp: Path) -> None:
    # past Linux's 128 KiB limit for one command-line argument once UTF-8 encoded (CJK: 3 bytes a character)
    prompt = ("镜头晃动，色调艳丽; with = signs # and \\ backslashes\n" * 2900)[:100_000]
    assert len(prompt.encode()) > 131072
    out = tmp / "long.mp4"
    result = runner.invoke(app, ["t2v", prompt, "-m", str(model), *TINY, "-o", str(out)])
    assert result.exit_code == 0, result.output[-2000:]
    assert json.loads(out.with_suffix(".json").read_text())["prompt"] == prompt


# -- failures that look like success -----------------------------------------------------------------------------------


def test_nan_latents_are_an_error_not_a_black_video(model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wan_cli.engine import pipeline

    real = pipeline.denoise_with_record
    monkeypatch.setattr(pipeline, "denoise_with_record", lambda *a, **k: (real(*a, **k)[0] * float("nan"), None))
    result = runner.invoke(app, ["t2v", "a dog", "-m", str(model), *TINY, "-o", str(tmp / "x.mp4")])
    err = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "NaN/Inf" in err and "--dtype bf16" in err
    assert files_in(tmp) == []


def test_weights_in_integer_or_unknown_dtypes_are_refused_by_name(tmp: Path) -> None:
    path = write_comfy_dit(random_dit(tiny_dit_config("t2v")), tmp / "dit.safetensors")
    state = load_file(str(path))
    key = "model.diffusion_model.blocks.0.ffn.0.weight"
    state[key] = state[key].to(torch.int32)
    save_file(state, str(tmp / "int.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.0\.weight.*int32.*floating point"):
        load_transformer(tmp / "int.safetensors")
    arrays = {k: v.float().numpy() for k, v in load_file(str(path)).items()}
    arrays[key] = arrays[key].astype(np.uint16)  # a dtype torch's safetensors reader does not map
    save_numpy(arrays, str(tmp / "u16.safetensors"))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.0\.weight.*U16"):
        load_transformer(tmp / "u16.safetensors")


# -- messages, not bugs ------------------------------------------------------------------------------------------------


def test_allocation_failures_are_out_of_memory(model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _raise_in(
        monkeypatch,
        "denoise",
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: "
            "not enough memory: you tried to allocate 1099511627776 bytes."
        ),
    )
    result = runner.invoke(app, ["t2v", "a dog", "-m", str(model), *TINY, "-o", str(tmp / "x.mp4")])
    err = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "ran out of memory" in err and "bug" not in err


def test_file_system_errors_are_messages(model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["t2v", "a dog", "-m", str(model), *TINY, "-o", str(tmp / ("x" * 300 + ".mp4"))])
    assert result.exit_code == 1 and "too long" in result.stderr and "bug" not in result.stderr
    (tmp / "hf").write_text("not a folder")
    monkeypatch.setenv("HF_HOME", str(tmp / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp / "hf" / "hub"))  # as read at import
    result = runner.invoke(app, ["t2v", "a dog", "-m", "1.3b-t2v", *TINY, "-o", str(tmp / "y.mp4")])
    err = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "Traceback" not in result.output and "bug in wan" not in err, err


def test_pickled_code_is_refused_with_the_whole_message(tmp: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned",))

    torch.save({"w": Evil()}, tmp / "evil.pth")  # the zip format torch writes today
    (tmp / "legacy.pth").write_bytes(pickle.dumps({"w": Evil()}))  # and a bare pickle (no mmap possible)
    with pytest.raises(CheckpointError) as err:
        load_transformer(tmp / "evil.pth")
    assert err.value.message.endswith("holds pickled code (a call to posix.system), which wan never runs")
    with pytest.raises(CheckpointError) as err:  # torch cannot tell this one from garbage: its reason, whole
        load_transformer(tmp / "legacy.pth")
    assert err.value.message.endswith("is not a readable PyTorch weights file (Unsupported operand 149)")


def test_help_and_version_import_no_torch() -> None:
    for args in (["--help"], ["--version"], ["t2v", "--help"], ["encode", "--help"], ["bench", "--help"]):
        code = "\n".join(
            [
                "import sys",
                "from wan_cli.cli.app import app",
                "try:",
                f"    app({args!r})",
                "except SystemExit:",
                "    pass",
                "print('torch' in sys.modules)",
            ]
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == "False", args


def test_a_remote_code_tokenizer_folder_runs_nothing_and_reads_no_stdin(tmp: Path) -> None:
    """A tokenizer folder whose config names custom code: with `yes |` on stdin, no prompt on stdout, no code run."""
    from builders import tiny_spiece_model
    from test_tokenizer import write_umt5_folder

    folder = write_umt5_folder(tiny_spiece_model(tmp / "spm"), tmp / "tok")
    (folder / "evil.py").write_text(f"open({str(tmp / 'PWNED')!r}, 'w').write('x')\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    code = "\n".join(
        [
            "from wan_cli.engine.tokenizer import load_tokenizer",
            f"print(load_tokenizer({str(folder)!r})('a dog')['input_ids'])",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], input="y\n" * 10, capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("[") and "custom code" not in out.stdout + out.stderr
    assert not (tmp / "PWNED").exists()


# -- limits before allocation -----------------------------------------------------------------------------------------


def test_a_size_that_cannot_fit_is_refused_before_loading(
    model: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _raise_in(monkeypatch, "load", AssertionError("nothing may be loaded for a size that cannot fit"))
    result = runner.invoke(app, ["t2v", "a dog", "-m", str(model), "--size", "16384x16384", "--frames", "81",
                                 "-o", str(tmp / "x.mp4")])  # fmt: skip
    err = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "needs at least" in err and "GiB on cpu" in err, err
    assert "--size" in err and files_in(tmp) == []


def _sparse_latents(tmp: Path, latent_hw: tuple[int, int]) -> Path:
    """A latents file whose header declares [16, 1, h, w] latents, the data a sparse hole (no disk used)."""
    import struct

    from wan_cli.engine.latents import save_latents

    small = save_latents(tmp / "small.safetensors", torch.zeros(16, 1, 2, 2), fps=16, source="t2v", model="m",
                         record={}) or tmp / "small.safetensors"  # fmt: skip
    raw = small.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    size = 16 * latent_hw[0] * latent_hw[1] * 4
    header["latents"] = {"dtype": "F32", "shape": [16, 1, *latent_hw], "data_offsets": [0, size]}
    meta = header["__metadata__"]
    meta.update(width=str(8 * latent_hw[1]), height=str(8 * latent_hw[0]))  # a consistent header, just huge
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = tmp / "huge.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + size)
    return path


def test_a_latents_file_declaring_huge_frames_is_refused_before_reading(tmp: Path) -> None:
    path = _sparse_latents(tmp, (4096, 4096))  # 32768² pixels
    t0 = time.perf_counter()
    result = runner.invoke(app, ["decode", str(path), "-o", str(tmp / "x.mp4")])
    err = " ".join(result.stderr.split())
    assert result.exit_code == 1 and "32768x32768" in err and "needs at least" in err, err
    assert "--vae-tile" in err and time.perf_counter() - t0 < 5  # refused from the header, not after a 1 GiB scan


# -- manners ----------------------------------------------------------------------------------------------------------


def test_verbose_shows_the_engine_log_and_stderr_is_not_hard_wrapped(model: Path, tmp: Path) -> None:
    out = tmp / ("a-rather-long-folder-name-" * 4) / "dog.mp4"
    result = runner.invoke(app, ["t2v", "a dog", "-m", str(model), *TINY, "-o", str(out), "-v"])
    assert result.exit_code == 0, result.output
    assert "wan_cli.engine.pipeline: load dit from" in result.stderr
    assert any("seed 1" in line and str(out) in line for line in result.stderr.splitlines())  # one line, unwrapped
    record = json.loads(out.with_suffix(".json").read_text())
    assert {"load_s", "text_encode_s", "denoise_s"} <= set(record["timings"])


def test_decode_writes_a_sidecar_like_every_video(tmp: Path) -> None:
    from wan_cli.engine.latents import save_latents

    vae = write_comfy_vae(random_vae(tiny_vae_config()), tmp / "vae.safetensors")
    lat = tmp / "gen.safetensors"
    save_latents(lat, torch.randn(16, 2, 4, 6) * 0.5, fps=16, source="t2v", model="tiny", record={"seed": 5})
    out = tmp / "clip.mp4"
    result = runner.invoke(app, ["decode", str(lat), "-o", str(out), "--vae", str(vae), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text()) == json.loads(result.stdout)
    assert json.loads(result.stdout)["sidecar"] == str(out.with_suffix(".json"))
    again = runner.invoke(app, ["decode", str(lat), "-o", str(out), "--vae", str(vae)])
    assert again.exit_code == 1 and "already exists" in again.stderr  # the sidecar is not clobbered either


def test_help_shows_the_defaults_of_the_commands_preset() -> None:
    t2v = " ".join(runner.invoke(app, ["t2v", "--help"]).stdout.split())
    i2v = " ".join(runner.invoke(app, ["i2v", "--help"]).stdout.split())
    # presets/t2v-1.3b-480p.yaml: 50 steps, guidance 6, shift 8; presets/i2v-14b-480p.yaml: 40 steps, shift 3
    assert "Sampling steps. Default: 50 (preset t2v-1.3b-480p" in t2v and "Default: 6 (preset t2v-1.3b-480p" in t2v
    assert "Sampling steps. Default: 40 (preset i2v-14b-480p" in i2v and "Default: 3 (preset i2v-14b-480p" in i2v
    assert "Usage: wan i2v [OPTIONS] [IMAGE]" in i2v
    encode = runner.invoke(app, ["encode", "--help"]).stdout
    assert "Usage: wan encode [OPTIONS] VIDEO" in encode and "{VIDEO}" not in encode


@pytest.mark.parametrize("stop", list(STOPS))
def test_encode_and_decode_stopped_leave_nothing(tmp: Path, monkeypatch: pytest.MonkeyPatch, stop: str) -> None:
    from wan_cli.engine.latents import LatentsWriter, save_latents
    from wan_cli.engine.video import VideoWriter

    exc, code = STOPS[stop]
    inputs = tmp / "in"
    inputs.mkdir()
    vae = write_comfy_vae(random_vae(tiny_vae_config()), inputs / "vae.safetensors")
    clip = _video(inputs / "clip.mp4")
    lat = save_latents(inputs / "lat.safetensors", torch.randn(16, 2, 4, 4) * 0.5, fps=16, source="t2v", model="m",
                       record={}) or inputs / "lat.safetensors"  # fmt: skip
    before = files_in(tmp)

    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    with monkeypatch.context() as m:
        m.setattr(LatentsWriter, "append", boom)
        result = runner.invoke(app, ["encode", str(clip), "-o", str(tmp / "a" / "b" / "x.safetensors"), "--vae",
                                     str(vae), "-q"])  # fmt: skip
    assert (result.exit_code, result.stderr.strip()) == (code, "Error: interrupted")
    with monkeypatch.context() as m:
        m.setattr(VideoWriter, "write", boom)
        result = runner.invoke(app, ["decode", str(lat), "-o", str(tmp / "c" / "y.mp4"), "--vae", str(vae), "-q"])
    assert (result.exit_code, result.stderr.strip()) == (code, "Error: interrupted")
    assert files_in(tmp) == before  # no latents, video, sidecar, temp file or folder
