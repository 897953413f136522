"""`wan download`, `wan models` and `hub.resolve_model` against a loopback fake hub (tests/hubserver.py).

huggingface_hub reads HF_HUB_CACHE, HF_HUB_OFFLINE and HF_ENDPOINT once, at import, and wan uses what it read: the
fixtures set the variables and patch ``huggingface_hub.constants`` to match (the cache: the temporary HF_HOME that
conftest.py sets).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants as hf_constants
import pytest
from hubserver import FakeHub, FakeRepo
from typer.testing import CliRunner

from wan_cli import hub, registry
from wan_cli.cli.app import app
from wan_cli.engine.errors import CheckpointError, InputError

runner = CliRunner()

COMFY = registry.COMFY_REPO
T2V = registry.MODELS["1.3b-t2v"]
DIT = "split_files/diffusion_models/wan2.1_t2v_1.3B_bf16.safetensors"
T5 = "split_files/text_encoders/umt5_xxl_fp16.safetensors"
VAE = "split_files/vae/wan_2.1_vae.safetensors"
TOK = [f"google/umt5-xxl/{n}" for n in registry.TOKENIZER_FILES]


def data(tag: str, n: int = 3000) -> bytes:
    return random.Random(tag).randbytes(n)


def comfy_repo(dit_size: int = 5000) -> FakeRepo:
    return FakeRepo(
        COMFY,
        {
            DIT: data("dit", dit_size),
            DIT.replace("bf16", "fp16"): data("dit16"),
            T5: data("t5"),
            T5.replace("fp16", "fp8_e4m3fn_scaled"): data("t5-fp8"),
            VAE: data("vae"),
            "split_files/clip_vision/clip_vision_h.safetensors": data("clip"),
            "example_workflows/wan_t2v.json": b"{}",
        },
    )


def official_repo() -> FakeRepo:
    tokenizer = {p: data(p, 500) for p in TOK}
    return FakeRepo(
        T2V.repo,
        {
            "config.json": b'{"_class_name": "WanModel", "dim": 1536}',
            "diffusion_pytorch_model.safetensors": data("official-dit"),
            registry.OFFICIAL_T5: data("official-t5"),
            registry.OFFICIAL_VAE: data("official-vae"),
            **tokenizer,
            "assets/logo.png": data("logo"),
            "examples/i2v_input.JPG": data("jpg"),
            "README.md": b"# Wan2.1\n",
        },
    )


def diffusers_repo() -> FakeRepo:
    return FakeRepo(
        T2V.diffusers_repo,
        {
            "model_index.json": b'{"_class_name": "WanPipeline"}',
            "transformer/config.json": b"{}",
            "transformer/diffusion_pytorch_model.safetensors": data("d-dit"),
            "vae/config.json": b"{}",
            "vae/diffusion_pytorch_model.safetensors": data("d-vae"),
            "text_encoder/config.json": b"{}",
            "text_encoder/model.safetensors": data("d-t5"),
            "tokenizer/spiece.model": data("d-spiece", 500),
            "tokenizer/tokenizer_config.json": b"{}",
            "scheduler/scheduler_config.json": b"{}",
            "README.md": b"# diffusers\n",
        },
    )


def online(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", os.path.join(os.environ["HF_HOME"], "hub"))
    offline(monkeypatch)  # as conftest.py sets it; `online` turns it off
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))  # not the developer's token


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    with FakeHub([comfy_repo(), official_repo(), diffusers_repo()]) as server:
        online(monkeypatch, server.url)
        yield server


def wan(*args: str) -> Any:
    return runner.invoke(app, list(args))


def err(result: Any) -> str:
    """stderr without rich's line wrapping (it keeps the space at a wrap, and folds long words without one)."""
    return str(result.stderr).replace("\n", "")


def blobs(repo: str) -> list[Path]:
    folder = hub.cache_dir() / ("models--" + repo.replace("/", "--")) / "blobs"  # huggingface_hub's cache layout
    return sorted(folder.iterdir()) if folder.is_dir() else []


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# -- a fresh download, then the cache ---------------------------------------------------------------------------------


def test_fresh_download_lands_in_the_cache_and_resolves_offline(
    fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    comfy, official = fake_hub.repos[0], fake_hub.repos[1]
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.stdout.splitlines()]
    cache = hub.cache_dir()
    assert cache == Path(os.environ["HF_HOME"]) / "hub"
    snap = cache / f"models--{COMFY.replace('/', '--')}" / "snapshots" / comfy.commit
    assert paths == [
        snap / DIT,
        snap / T5,
        cache / f"models--Wan-AI--Wan2.1-T2V-1.3B/snapshots/{official.commit}/google/umt5-xxl",
        snap / VAE,
    ]
    for p, repo_path in ((paths[0], DIT), (paths[1], T5), (paths[3], VAE)):
        assert p.read_bytes() == comfy.files[repo_path]  # sizes and bytes as served
    assert sorted(p.name for p in paths[2].iterdir()) == sorted(registry.TOKENIZER_FILES)
    assert "1.3b-t2v (comfy, bf16)" in err(result)  # the plan, on stderr
    # refs/main names the commit, as after any huggingface_hub download: other tools find the snapshot offline
    assert (snap.parents[1] / "refs" / "main").read_text() == comfy.commit
    # only what the model needs: no fp16 twin, no workflows, no CLIP for t2v
    fetched = {
        r.path.split("/resolve/")[1].split("/", 1)[1]
        for r in fake_hub.requests
        if r.method == "GET" and "/resolve/" in r.path
    }
    assert fetched == {DIT, T5, VAE, *TOK}

    offline(monkeypatch)
    for spec in ("1.3b-t2v", "T2V-1.3B", "Wan-AI/Wan2.1-T2V-1.3B"):
        files = hub.resolve_model(spec)
        assert (files.name, files.source, files.precision, files.root) == ("1.3b-t2v", "comfy", "bf16", None)
        assert (files.dit, files.text_encoder, files.vae, files.tokenizer) == (paths[0], paths[1], paths[3], paths[2])
        assert files.image_encoder is None and files.repo == COMFY and files.revision == comfy.commit


def test_second_download_fetches_and_hashes_nothing(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    first = wan("download", "1.3b-t2v", "-q")
    assert first.exit_code == 0 and first.stderr == ""  # -q: nothing on stderr
    hashed: list[Path] = []
    real_hash = hub.file_hash
    monkeypatch.setattr(hub, "file_hash", lambda p, lfs: hashed.append(p) or real_hash(p, lfs))
    before = len(fake_hub.requests)
    again = wan("download", "1.3b-t2v", "-q")
    assert again.exit_code == 0 and again.stdout == first.stdout
    comfy, official = (r.commit for r in fake_hub.repos[:2])
    # per repo: where main points, then the file list at that commit; no HEAD or GET of a file
    assert [(r.method, r.path) for r in fake_hub.requests[before:]] == [
        ("GET", f"/api/models/{COMFY}/revision/main"),
        ("GET", f"/api/models/{COMFY}/revision/{comfy}"),
        ("GET", f"/api/models/{T2V.repo}/revision/main"),
        ("GET", f"/api/models/{T2V.repo}/revision/{official}"),
    ]
    assert hashed == []  # files already in the cache are not read again


def test_a_new_commit_reuses_the_blobs(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """main moves on (a file added to the repo): the same bytes are linked into the new snapshot, not fetched again,
    and the disk check counts nothing for them."""
    first = json.loads(wan("download", "1.3b-t2v", "--json").stdout)
    comfy = fake_hub.repos[0]
    comfy.files["split_files/loras/new.safetensors"] = data("lora")
    comfy.commit = "c0ffee" * 6 + "c0ff"

    class Usage:
        total, used, free = 10**12, 10**12 - 1000, 1000  # less than any one file

    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: Usage)
    before = len(fake_hub.requests)
    result = wan("download", "1.3b-t2v", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["revision"] == comfy.commit != first["revision"] and record["fetched"] == 0
    assert not [r for r in fake_hub.requests[before:] if r.method == "GET" and "/resolve/" in r.path]
    assert Path(record["files"]["dit"]).read_bytes() == comfy.files[DIT]
    assert hub.resolve_model("1.3b-t2v").revision == comfy.commit  # the snapshot wan downloaded last


def test_json_record(fake_hub: FakeHub) -> None:
    result = wan("download", "1.3b-t2v", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""  # no progress, no chatter
    record = json.loads(result.stdout)
    comfy, official = fake_hub.repos[0], fake_hub.repos[1]
    assert {k: record[k] for k in ("name", "source", "precision", "repo", "revision")} == {
        "name": "1.3b-t2v",
        "source": "comfy",
        "precision": "bf16",
        "repo": COMFY,
        "revision": comfy.commit,
    }
    assert set(record["files"]) == {"dit", "text_encoder", "tokenizer", "vae"}
    assert record["revisions"] == {COMFY: comfy.commit, T2V.repo: official.commit}
    assert record["bytes"] == sum(len(comfy.files[p]) for p in (DIT, T5, VAE)) + sum(
        len(official.files[p]) for p in TOK
    )
    assert record["fetched"] == record["bytes"]
    assert record["notes"] == []


def test_official_and_diffusers_sources_and_preference(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    assert wan("download", "1.3b-t2v", "-q").exit_code == 0
    assert hub.resolve_model("1.3b-t2v").source == "comfy"
    result = wan("download", "1.3b-t2v", "--source", "official", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    root = Path(record["root"])
    assert record["source"] == "official" and root.name == fake_hub.repos[1].commit
    assert "fp32" in record["notes"][0]  # in JSON mode the notes travel in the record, not on stderr
    assert record["files"]["dit"] == str(root / "diffusion_pytorch_model.safetensors")
    assert not (root / "assets").exists() and not (root / "examples").exists() and not (root / "README.md").exists()
    assert hub.resolve_model("1.3b-t2v").source == "official"  # the most recent download wins

    result = wan("download", "1.3b-t2v", "--source", "diffusers", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    root = Path(record["root"])
    assert record["files"]["dit"] == str(root / "transformer") and (root / "scheduler/scheduler_config.json").is_file()

    offline(monkeypatch)
    assert hub.resolve_model("1.3b-t2v").source == "diffusers"
    assert [c.source for c in hub.installed("1.3b-t2v")] == ["diffusers", "official", "comfy"]  # newest first
    # without wan's own record, the fixed preference decides: comfy bf16 first
    hub.state_path().unlink()
    assert hub.resolve_model("1.3b-t2v").source == "comfy"


# -- interrupted, corrupted ---------------------------------------------------------------------------------------


def test_a_cut_transfer_resumes_with_a_range_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub writes whole chunks (10 MiB): the cut must come after the first one for a Range request
    chunk = hf_constants.DOWNLOAD_CHUNK_SIZE
    comfy = comfy_repo(dit_size=chunk + 70_000)
    with FakeHub([comfy, official_repo()], cut_after={DIT: chunk + 30_000}) as server:
        online(monkeypatch, server.url)
        result = wan("download", "1.3b-t2v", "-q")
    assert result.exit_code == 0, result.output
    assert [g.range for g in server.file_gets(DIT)] == [None, f"bytes={chunk}-"]
    assert Path(result.stdout.splitlines()[0]).read_bytes() == comfy.files[DIT]


def test_corrupt_bytes_are_detected_and_deleted(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.corrupt.add(VAE)
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1 and result.stdout == ""
    assert "wan_2.1_vae.safetensors" in err(result) and "corrupt" in err(result) and "hint:" in err(result)
    good = sha256(fake_hub.repos[0].files[VAE])
    assert good not in {p.name for p in blobs(COMFY)}  # the bad blob is gone, not kept under the good name
    with pytest.raises(CheckpointError, match="not downloaded"):
        hub.resolve_model("1.3b-t2v")
    fake_hub.corrupt.clear()
    assert wan("download", "1.3b-t2v").exit_code == 0  # a rerun repairs it
    assert hub.resolve_model("1.3b-t2v").vae is not None


def test_ctrl_c_leaves_no_partial_file(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.file_download as fd

    real_get = fd.http_get

    def interrupted(url: str, temp_file: Any, **kwargs: Any) -> None:
        if url.endswith(DIT):
            temp_file.write(b"partial")
            raise KeyboardInterrupt
        real_get(url, temp_file, **kwargs)

    monkeypatch.setattr(fd, "http_get", interrupted)
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 130 and "Error: interrupted" in err(result) and result.stdout == ""
    dit_blob = sha256(fake_hub.repos[0].files[DIT])
    names = [p.name for p in blobs(COMFY)]
    assert dit_blob not in names
    # huggingface_hub 2.x writes to <etag>.<random>.incomplete and removes it on failure: nothing half-done stays
    assert not [n for n in names if n.startswith(dit_blob)]


# -- hub errors ---------------------------------------------------------------------------------------------------


def test_gated_repo_asks_for_a_token(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_hub.token = "hf_secret"
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1 and result.stdout == ""
    assert "gated" in err(result) and "HF_TOKEN" in err(result) and "hf auth login" in err(result)
    assert "Traceback" not in result.output
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 0, result.output
    assert fake_hub.requests[-1].authorization == "Bearer hf_secret"


def test_missing_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeHub([official_repo()]) as server:
        online(monkeypatch, server.url)
        result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1
    assert f"repository {COMFY} not found" in err(result) and "hint:" in err(result)


def test_missing_file(fake_hub: FakeHub) -> None:
    fake_hub.gone.add(VAE)  # listed, but 404 when fetched
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1
    assert f"{VAE} not found in {COMFY}" in err(result) and "hint:" in err(result)


def test_file_absent_from_the_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    comfy = comfy_repo()
    del comfy.files[T5]
    with FakeHub([comfy, official_repo()]) as server:
        online(monkeypatch, server.url)
        result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1 and f"{T5} is not in {COMFY}" in err(result)
    assert not [r for r in server.requests if "/resolve/" in r.path]  # failed before the first byte


def test_server_down(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connection refused
    online(monkeypatch, f"http://127.0.0.1:{port}")
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1
    assert "cannot reach the Hugging Face Hub" in err(result) and "HF_HUB_OFFLINE" in err(result)


def test_offline_mode(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    offline(monkeypatch)
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1 and "offline mode is on" in err(result) and "HF_HUB_OFFLINE" in err(result)
    assert fake_hub.requests == []

    online(monkeypatch, fake_hub.url)
    first = wan("download", "1.3b-t2v", "-q")
    assert first.exit_code == 0
    offline(monkeypatch)
    before = len(fake_hub.requests)
    again = wan("download", "1.3b-t2v")
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout and len(fake_hub.requests) == before
    # a source that is not in the cache is still refused
    assert "offline mode is on" in err(wan("download", "1.3b-t2v", "--source", "official"))


def test_not_enough_disk(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    class Usage:
        total, used, free = 10**12, 10**12 - 1000, 1000

    monkeypatch.setattr(hub.shutil, "disk_usage", lambda path: Usage)
    result = wan("download", "1.3b-t2v")
    assert result.exit_code == 1
    assert (
        "not enough disk space" in err(result)
        and "needs 13.0 kB more" in err(result)
        and "has 1.0 kB free" in err(result)
    )
    assert "HF_HOME" in err(result)
    # refused before the first byte: the dry run's HEAD requests only
    assert {r.method for r in fake_hub.requests if "/resolve/" in r.path} == {"HEAD"}


# -- names and options --------------------------------------------------------------------------------------------


def test_unknown_name_suggests_the_closest() -> None:
    result = wan("download", "t2v-1.4b")
    assert result.exit_code == 2
    assert "did you mean 1.3b-t2v" in err(result) and "wan models" in err(result)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1.3b-t2v", "--precision", "fp8"], "no fp8 file for 1.3b-t2v"),
        (["14b-t2v", "--source", "official", "--precision", "fp8"], "fp8 weights exist only in the ComfyUI repack"),
        (["1.3b-t2v", "--json", "-q"], "--json and --quiet"),
    ],
)
def test_bad_combinations_are_usage_errors(args: list[str], message: str) -> None:
    result = wan("download", *args)
    assert result.exit_code == 2 and message in err(result) and "hint:" in err(result)


def test_bad_option_values_exit_2() -> None:
    assert wan("download", "1.3b-t2v", "--precision", "fp4").exit_code == 2
    assert wan("download", "1.3b-t2v", "--source", "civitai").exit_code == 2
    assert wan("download").exit_code == 2


def test_flf2v_bf16_says_it_takes_fp16(fake_hub: FakeHub) -> None:
    note = registry.MODELS["14b-flf2v-720p"].precision_note("comfy", "bf16")
    assert note is not None and "fp16" in note
    result = wan("download", "14b-flf2v-720p")  # not on the fake hub: the note comes first, then the 404
    assert "using the fp16 one" in err(result) and result.exit_code == 1


# -- resolve_model ------------------------------------------------------------------------------------------------


def test_resolve_local_paths(tmp_path: Path) -> None:
    f = tmp_path / "dit.safetensors"
    f.write_bytes(b"x")
    files = hub.resolve_model(f)
    assert (files.source, files.dit, files.root, files.name) == ("local", f, None, None)
    files = hub.resolve_model(str(tmp_path))
    assert (files.root, files.dit) == (tmp_path, None)
    for missing in (str(tmp_path / "nope"), "wan2.1_t2v_1.3B_bf16.safetensors"):
        with pytest.raises(CheckpointError, match="no such file or folder"):
            hub.resolve_model(missing)


def test_resolve_names_not_downloaded() -> None:
    with pytest.raises(CheckpointError) as info:
        hub.resolve_model("1.3b")
    assert info.value.message == "1.3b-t2v is not downloaded" and info.value.hint == "wan download 1.3b-t2v"
    with pytest.raises(InputError, match="did you mean 14b-i2v-480p"):
        hub.resolve_model("i2v-14b-48op")


# -- wan models ---------------------------------------------------------------------------------------------------


def test_models_before_and_after(fake_hub: FakeHub) -> None:
    result = wan("models")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TASK", "PRESET", "BF16", "FP8", "INSTALLED", "PATH"]
    assert len(lines) == 1 + len(registry.MODELS)
    row = next(line for line in lines if line.startswith("1.3b-t2v "))
    assert row.split()[1:] == ["t2v", "t2v-1.3b-480p", "14.5", "GB", "-", "no"]  # exact sizes; no fp8 file
    row = next(line for line in lines if line.startswith("14b-t2v "))
    assert row.split()[3:] == ["~40.2", "GB", "~21.3", "GB", "no"]  # "~": the DiT sizes are rounded

    assert wan("download", "1.3b-t2v", "-q").exit_code == 0
    listing = json.loads(wan("models", "--json").stdout)
    assert [m["name"] for m in listing] == list(registry.MODELS)
    t2v = listing[0]
    assert t2v["download_bytes"]["fp8"] is None and t2v["download_bytes"]["bf16"] > 14 * 10**9
    assert [(c["source"], c["precision"]) for c in t2v["installed"]] == [("comfy", "bf16")]
    assert t2v["path"] == t2v["installed"][0]["files"]["dit"] and Path(t2v["path"]).is_file()
    assert all(m["installed"] == [] for m in listing[1:])
    row = next(line for line in wan("models").stdout.splitlines() if line.startswith("1.3b-t2v "))
    assert "comfy/bf16" in row and t2v["path"] in row


# -- download, then generate by name ----------------------------------------------------------------------------------


def test_download_then_generate_by_name_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole user path: `wan download 1.3b-t2v` fetches real (tiny, random) ComfyUI files and the official
    tokenizer folder from the hub; offline, `wan t2v -m 1.3b-t2v` finds them in the cache and records the name,
    source and revision."""
    from builders import write_comfy_model

    from wan_cli.engine.conditioning import load_tokenizer

    files = write_comfy_model(tmp_path / "src", "t2v", seed=3)
    tok = tmp_path / "tok"
    load_tokenizer(tmp_path / "src" / "spm" / "spiece.model").save_pretrained(str(tok))
    comfy = FakeRepo(COMFY, {DIT: files["dit"].read_bytes(), T5: files["text_encoder"].read_bytes(),
                             VAE: files["vae"].read_bytes()})  # fmt: skip
    (tok / "spiece.model").write_bytes((tmp_path / "src" / "spm" / "spiece.model").read_bytes())
    saved = {p: tok / p.rsplit("/", 1)[1] for p in TOK}  # transformers 5 may not write special_tokens_map.json
    official = FakeRepo(T2V.repo, {p: f.read_bytes() if f.exists() else b"{}" for p, f in saved.items()})
    with FakeHub([comfy, official]) as server:
        online(monkeypatch, server.url)
        result = wan("download", "1.3b-t2v", "-q")
        assert result.exit_code == 0, result.output
    offline(monkeypatch)
    out = tmp_path / "dog.mp4"
    result = wan("t2v", "a dog", "-m", "1.3b-t2v", "--size", "64x32", "--frames", "5", "--steps", "2", "-o", str(out),
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["model"]["name"] == "1.3b-t2v" and record["model"]["source"] == "comfy"
    assert record["model"]["revision"] == comfy.commit
    assert record["preset"] == "t2v-1.3b-480p" and record["guidance"] == 6.0  # the model's own preset
    assert Path(record["model"]["files"]["dit"]).read_bytes() == files["dit"].read_bytes()
    assert out.stat().st_size > 0
    # human mode: a size the model was not trained at is allowed, with a note
    result = wan("t2v", "a dog", "-m", "1.3b-t2v", "--size", "64x32", "--frames", "5", "--steps", "1", "-o",
                 str(tmp_path / "b.mp4"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1.3b-t2v was trained at 832x480, 480x832" in err(result)
