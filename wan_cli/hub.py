"""Downloading the registry's models into the Hugging Face cache, and finding what is already there.

- :func:`download` fetches one variant through ``huggingface_hub`` (so ``HF_HOME``/``HF_HUB_CACHE``, ``HF_TOKEN``,
  ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` apply): the file list and sizes first (one ``model_info`` call per repo, pinned
  to the commit it reports), then a disk-space check, then each missing file, then its hash against the hub's.
- :func:`resolve_model` turns a registry name or a local path into :class:`ModelFiles`, from the cache only (never
  the network).

Own state lives in ``$WAN_CLI_HOME/installed.json`` (``paths.wan_home()``): which variant was downloaded from which
source and precision, and when (the most recent one is preferred by :func:`resolve_model`), and which blobs have
already been hashed (so that a second ``wan download`` does not re-read 30 GB). Nothing here imports Typer or torch;
``huggingface_hub`` is imported only where the network is used.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .engine.errors import CheckpointError, WanError
from .paths import hf_cache, wan_home
from .registry import ModelSpec

Log = Callable[[str], None]

STATE_FILE = "installed.json"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf", ".json")
# preference when several copies are in the cache and none was downloaded by `wan download` (or it is gone)
PREFERENCE = (("comfy", "bf16"), ("official", "bf16"), ("diffusers", "bf16"), ("comfy", "fp8"))
_HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's components are on disk: a checkpoint folder (``root``) and/or one path per component."""

    name: str | None  # registry name, or None for a local path
    root: Path | None  # a checkpoint folder (official/diffusers snapshot, or the user's folder); None for split files
    dit: Path | None
    vae: Path | None
    text_encoder: Path | None
    tokenizer: Path | None
    image_encoder: Path | None
    source: str  # "comfy" | "official" | "diffusers" | "local"
    precision: str | None
    repo: str | None
    revision: str | None  # commit hash of what is in the cache

    @property
    def components(self) -> dict[str, Path]:
        """component → path, for the components that are set."""
        names = ("dit", "text_encoder", "tokenizer", "vae", "image_encoder")
        return {n: p for n in names if (p := getattr(self, n)) is not None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "precision": self.precision,
            "repo": self.repo,
            "revision": self.revision,
            "root": str(self.root) if self.root else None,
            "files": {k: str(v) for k, v in self.components.items()},
        }


@dataclass(frozen=True)
class HubFile:
    """One file of a download, as the hub lists it."""

    component: str
    repo: str
    path: str
    revision: str  # the commit the download is pinned to
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git object id (every file)

    @property
    def etag(self) -> str | None:
        """The name huggingface_hub gives the blob in the cache (sha256 for LFS files, else the git id)."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class Plan:
    """What a download will fetch, before the first byte: files, sizes, commits."""

    model: ModelSpec
    source: str
    precision: str
    revisions: dict[str, str]  # repo → commit
    files: tuple[HubFile, ...]
    cache: Path

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def missing(self) -> list[HubFile]:
        """Files neither in the snapshot nor as a blob in the cache."""
        out = []
        for f in self.files:
            folder = repo_folder(f.repo, self.cache)
            if (folder / "snapshots" / f.revision / f.path).is_file():
                continue
            if f.etag and (folder / "blobs" / f.etag).is_file():
                continue
            out.append(f)
        return out


@dataclass(frozen=True)
class DownloadResult:
    model: ModelFiles
    revisions: dict[str, str]  # repo → commit, for every repo the download used
    bytes: int  # size of all the files of this model
    fetched: int  # bytes transferred this time
    notes: tuple[str, ...] = ()  # e.g. "no bf16 file, using the fp16 one"

    def to_dict(self) -> dict[str, Any]:
        record = self.model.to_dict()
        record["revisions"] = self.revisions
        record["bytes"] = self.bytes
        record["fetched"] = self.fetched
        record["notes"] = list(self.notes)
        return record


# --------------------------------------------------------------------------------------------------------------------
# Environment and cache layout
# --------------------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """The huggingface_hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``), absolute as huggingface_hub makes it."""
    return Path(os.path.abspath(hf_cache()))


def _truthy(value: str) -> bool:
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (huggingface_hub reads it once, at import)."""
    env = os.environ.get("HF_HUB_OFFLINE")
    if env is not None:
        return _truthy(env)
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def endpoint() -> str:
    """``HF_ENDPOINT`` as set now, else huggingface_hub's default."""
    env = os.environ.get("HF_ENDPOINT", "").strip()
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return str(constants.ENDPOINT).rstrip("/")


def repo_folder(repo: str, cache: Path) -> Path:
    """``models--org--name`` in the cache (huggingface_hub's layout: blobs/, refs/, snapshots/<commit>/)."""
    return cache / ("models--" + repo.replace("/", "--"))


def state_path() -> Path:
    return wan_home() / STATE_FILE


def _read_state() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {"downloads": [], "verified": {}}
    if not isinstance(data, dict):
        return {"downloads": [], "verified": {}}
    data.setdefault("downloads", [])
    data.setdefault("verified", {})
    return data


def _write_state(state: dict[str, Any]) -> None:
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_ref(cache: Path, repo: str, ref: str, commit: str) -> None:
    """Point ``refs/<ref>`` at ``commit``, as huggingface_hub does after a download by branch name."""
    path = repo_folder(repo, cache) / "refs" / ref
    if path.is_file() and path.read_text() == commit:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ref}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(commit)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------------------------
# What is in the cache
# --------------------------------------------------------------------------------------------------------------------


def _snapshots(repo: str, cache: Path, prefer: Iterable[str] = ()) -> list[Path]:
    """Snapshot folders of ``repo``: the preferred commits first, then ``refs/main``, then the newest."""
    folder = repo_folder(repo, cache)
    snaps = folder / "snapshots"
    if not snaps.is_dir():
        return []
    order = [c for c in prefer if c]
    main = folder / "refs" / "main"
    if main.is_file():
        order.append(main.read_text().strip())
    rest = sorted((p for p in snaps.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    order += [p.name for p in rest]
    seen: list[Path] = []
    for commit in order:
        path = snaps / commit
        if path.is_dir() and path not in seen:
            seen.append(path)
    return seen


def _weights_complete(folder: Path) -> bool:
    """A weights folder holds a single file, or an index whose shards are all there."""
    if not folder.is_dir():
        return False
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        try:
            shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return bool(shards) and all((folder / s).is_file() for s in shards)
    return any(p.is_file() for p in (*folder.glob("*.safetensors"), *folder.glob("*.bin")))


def _tokenizer_ok(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("spiece.model", "tokenizer.json"))


def _official_dit(root: Path) -> Path | None:
    index = root / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        return index if shards and all((root / s).is_file() for s in shards) else None
    single = root / "diffusion_pytorch_model.safetensors"
    return single if single.is_file() else None


def find_copy(
    model: ModelSpec, source: str, precision: str, cache: Path | None = None, prefer: dict[str, str] | None = None
) -> ModelFiles | None:
    """A complete copy of ``model`` from ``source``/``precision`` in the cache, or None (no network)."""
    cache = cache or cache_dir()
    prefer = prefer or {}
    needs_image = model.task != "t2v"
    if source == "comfy":
        try:
            specs = model.files("comfy", precision)
        except WanError:
            return None
        wanted = [f for f in specs if f.repo == registry.COMFY_REPO and f.required]
        for snap in _snapshots(registry.COMFY_REPO, cache, [prefer.get(registry.COMFY_REPO, "")]):
            if all((snap / f.pattern).is_file() for f in wanted):
                break
        else:
            return None
        tok = next(
            (
                s / registry.TOKENIZER_DIR
                for s in _snapshots(model.repo, cache, [prefer.get(model.repo, "")])
                if _tokenizer_ok(s / registry.TOKENIZER_DIR)
            ),
            None,
        )
        if tok is None:
            return None
        by = {f.component: snap / f.pattern for f in wanted}
        return ModelFiles(
            name=model.name,
            root=None,
            dit=by["dit"],
            vae=by["vae"],
            text_encoder=by["text_encoder"],
            tokenizer=tok,
            image_encoder=by.get("image_encoder"),
            source="comfy",
            precision=precision,
            repo=registry.COMFY_REPO,
            revision=snap.name,
        )
    if precision != "bf16":
        return None
    if source == "official":
        for root in _snapshots(model.repo, cache, [prefer.get(model.repo, "")]):
            dit = _official_dit(root)
            t5, vae, clip = root / registry.OFFICIAL_T5, root / registry.OFFICIAL_VAE, root / registry.OFFICIAL_CLIP
            tok = root / registry.TOKENIZER_DIR
            ok = dit is not None and (root / "config.json").is_file() and t5.is_file() and vae.is_file()
            ok = ok and _tokenizer_ok(tok) and (not needs_image or clip.is_file())
            if ok:
                return ModelFiles(
                    name=model.name,
                    root=root,
                    dit=dit,
                    vae=vae,
                    text_encoder=t5,
                    tokenizer=tok,
                    image_encoder=clip if needs_image else None,
                    source="official",
                    precision=precision,
                    repo=model.repo,
                    revision=root.name,
                )
        return None
    if source == "diffusers":
        for root in _snapshots(model.diffusers_repo, cache, [prefer.get(model.diffusers_repo, "")]):
            folders = ["transformer", "vae", "text_encoder"] + (["image_encoder"] if needs_image else [])
            ok = (root / "model_index.json").is_file() and all(_weights_complete(root / f) for f in folders)
            ok = ok and _tokenizer_ok(root / "tokenizer") and (root / "scheduler").is_dir()
            if ok:
                return ModelFiles(
                    name=model.name,
                    root=root,
                    dit=root / "transformer",
                    vae=root / "vae",
                    text_encoder=root / "text_encoder",
                    tokenizer=root / "tokenizer",
                    image_encoder=root / "image_encoder" if needs_image else None,
                    source="diffusers",
                    precision=precision,
                    repo=model.diffusers_repo,
                    revision=root.name,
                )
        return None
    return None


def installed(model: ModelSpec | str) -> list[ModelFiles]:
    """Every complete copy of ``model`` in the cache, the preferred first: the source/precision most recently
    downloaded by ``wan download``, then comfy bf16, official, diffusers, comfy fp8."""
    spec = registry.get(model) if isinstance(model, str) else model
    cache = cache_dir()
    mine = [
        d
        for d in _read_state()["downloads"]
        if isinstance(d, dict) and d.get("name") == spec.name and d.get("cache") == str(cache)
    ]
    mine.sort(key=lambda d: float(d.get("time", 0)), reverse=True)
    order: list[tuple[str, str, dict[str, str]]] = [
        (str(d.get("source")), str(d.get("precision")), dict(d.get("revisions") or {})) for d in mine
    ]
    order += [(s, p, {}) for s, p in PREFERENCE]
    copies: list[ModelFiles] = []
    seen: set[tuple[str, str]] = set()
    for source, precision, revisions in order:
        if (source, precision) in seen:
            continue
        seen.add((source, precision))
        copy = find_copy(spec, source, precision, cache, revisions)
        if copy is not None:
            copies.append(copy)
    return copies


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or "\\" in spec or spec.startswith(("~", ".")) or spec.lower().endswith(WEIGHT_SUFFIXES)


def resolve_model(spec: str | Path) -> ModelFiles:
    """A local file or folder as is, or a registry name → its copy in the cache (never the network).

    Raises CheckpointError when the model is not downloaded (hint: the `wan download` command) or the path does
    not exist, InputError for an unknown name (naming the closest one).
    """
    path = Path(spec).expanduser()
    if path.exists():
        is_dir = path.is_dir()
        return ModelFiles(
            name=None,
            root=path if is_dir else None,
            dit=None if is_dir else path,
            vae=None,
            text_encoder=None,
            tokenizer=None,
            image_encoder=None,
            source="local",
            precision=None,
            repo=None,
            revision=None,
        )
    text = str(spec)
    model = registry.find(text)
    if model is None:
        if isinstance(spec, Path) or _looks_like_path(text):
            raise CheckpointError(
                f"{text}: no such file or folder", hint="check the path, or pass a model name from `wan models`"
            )
        model = registry.get(text)  # raises InputError with a suggestion
    copies = installed(model)
    if not copies:
        raise CheckpointError(f"{model.name} is not downloaded", hint=f"wan download {model.name}")
    return copies[0]


# --------------------------------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------------------------------


def plan_download(model: ModelSpec, source: str, precision: str) -> Plan:
    """Ask the hub for the file list, sizes and hashes of every repo the download needs (one call per repo)."""
    from huggingface_hub import HfApi

    specs = model.files(source, precision)
    api = HfApi(endpoint=endpoint())
    revisions: dict[str, str] = {}
    files: list[HubFile] = []
    for repo in dict.fromkeys(f.repo for f in specs):
        try:
            info = api.model_info(repo, revision="main", files_metadata=True)
        except Exception as exc:
            known = _hub_error(exc, model, repo)
            if known is None:
                raise
            raise known from exc
        commit = str(info.sha)
        revisions[repo] = commit
        listing = {s.rfilename: s for s in info.siblings or []}
        chosen: dict[str, HubFile] = {}
        for spec in (s for s in specs if s.repo == repo):
            if spec.is_pattern:
                hits = [p for p in listing if fnmatch.fnmatchcase(p, spec.pattern)]
            else:
                hits = [spec.pattern] if spec.pattern in listing else []
            if not hits and spec.required and not spec.is_pattern:
                raise CheckpointError(
                    f"{spec.pattern} is not in {repo} (commit {commit[:10]})",
                    hint="the repo layout changed since this wan was released: try another --source, and report it",
                )
            for p in hits:
                s = listing[p]
                sha = s.lfs.sha256 if s.lfs is not None else None
                size = s.lfs.size if s.lfs is not None else s.size
                chosen.setdefault(p, HubFile(spec.component, repo, p, commit, int(size or 0), sha, s.blob_id))
        for comp in dict.fromkeys(s.component for s in specs if s.repo == repo):
            if not any(f.component == comp for f in chosen.values()):
                patterns = ", ".join(s.pattern for s in specs if s.repo == repo and s.component == comp)
                raise CheckpointError(
                    f"{repo} (commit {commit[:10]}) has no {comp} files ({patterns})",
                    hint="the repo layout changed since this wan was released: try another --source, and report it",
                )
        files += chosen.values()
    return Plan(model, source, precision, revisions, tuple(files), cache_dir())


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds ``path`` (its first existing parent)."""
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return shutil.disk_usage(Path.cwd()).free


def check_disk(plan: Plan) -> int:
    """Bytes still to fetch; CheckpointError if the cache's disk cannot hold them."""
    need = sum(f.size for f in plan.missing())
    if need == 0:
        return 0
    free = free_space(plan.cache)
    if free < need:
        raise CheckpointError(
            f"not enough disk space for {plan.model.name}: it needs {human_bytes(need)} more, "
            f"and {plan.cache} has {human_bytes(free)} free",
            hint="free some space, or set HF_HOME (or HF_HUB_CACHE) to a folder on a bigger disk",
        )
    return need


def human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _silent_tqdm() -> type:
    from huggingface_hub.utils import tqdm as hf_tqdm

    class SilentTqdm(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _fetch(f: HubFile, cache: Path, tqdm_class: type | None) -> Path:
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(
        f.repo,
        f.path,
        revision=f.revision,
        cache_dir=cache,
        endpoint=endpoint(),
        tqdm_class=tqdm_class,
    )
    return Path(local)


def file_hash(path: Path, algo: str) -> str:
    """sha256 of the bytes, or (``algo="git"``) the git blob id."""
    size = path.stat().st_size
    digest = hashlib.sha1(b"blob %d\0" % size) if algo == "git" else hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(f: HubFile, local: Path, verified: dict[str, Any], log: Log | None = None) -> None:
    """Check ``local`` against the hub's sha256 (LFS) or git id; delete it and raise CheckpointError on a mismatch.

    ``verified`` (from the state file) maps a hash to the blob it was checked on (path, size, mtime): those are not
    read again.
    """
    expected = f.sha256 or f.blob_id
    if not expected:
        return
    blob = Path(os.path.realpath(local))
    st = blob.stat()
    seen = verified.get(expected)
    if isinstance(seen, dict) and seen == {"path": str(blob), "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
        return
    what = "sha256" if f.sha256 else "git id"
    if st.st_size != f.size:
        problem = f"it has {st.st_size:,} bytes, the hub says {f.size:,}"
    else:
        if log and f.size > 100_000_000:
            log(f"verifying {f.path} ({human_bytes(f.size)})")
        got = file_hash(blob, "sha256" if f.sha256 else "git")
        problem = "" if got == expected else f"its {what} is {got[:12]}…, the hub says {expected[:12]}…"
    if problem:
        for p in (local, blob):
            p.unlink(missing_ok=True)
        raise CheckpointError(
            f"{f.path} from {f.repo} is corrupt ({problem}); the bad copy was deleted",
            hint=f"run the download again; if it fails the same way, the server at {endpoint()} serves bad data",
        )
    verified[expected] = {"path": str(blob), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _local_bytes(copy: ModelFiles) -> int:
    paths = [copy.root] if copy.root else list(copy.components.values())
    blobs: dict[str, int] = {}
    for p in paths:
        assert p is not None
        for f in [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]:
            blob = os.path.realpath(f)
            blobs[blob] = os.path.getsize(blob)
    return sum(blobs.values())


def download(
    name: str,
    *,
    source: str = registry.DEFAULT_SOURCE,
    precision: str = registry.DEFAULT_PRECISION,
    progress: bool = False,
    log: Log | None = None,
) -> DownloadResult:
    """Fetch ``name`` from ``source`` at ``precision`` into the Hugging Face cache and verify it.

    ``progress``: huggingface_hub's progress bars on stderr. ``log``: where to say what is happening (stderr).
    Raises InputError (unknown name, unpublished precision) or CheckpointError (hub, network, disk, integrity),
    each with a hint.
    """
    say = log or (lambda _msg: None)
    model = registry.get(name)
    model.check(source, precision)
    note = model.precision_note(source, precision)
    notes = (note,) if note else ()
    if note:
        say(note)
    cache = cache_dir()
    if offline():
        copy = find_copy(model, source, precision, cache)
        if copy is None:
            raise CheckpointError(
                f"{model.name} ({source}, {precision}) is not in the cache ({cache}) and offline mode is on",
                hint="unset HF_HUB_OFFLINE to download it, or point HF_HOME at a cache that has it",
            )
        say(f"offline (HF_HUB_OFFLINE): {model.name} is already in the cache")
        revisions = {copy.repo: copy.revision} if copy.repo and copy.revision else {}
        return DownloadResult(copy, revisions, _local_bytes(copy), 0, notes)

    plan = plan_download(model, source, precision)
    need = check_disk(plan)
    say(
        f"{model.name} ({source}, {precision}): {len(plan.files)} files, {human_bytes(plan.total_bytes)}"
        + (f", {human_bytes(need)} to fetch into {plan.cache}" if need else ", all in the cache already")
    )
    tqdm_class = None if progress else _silent_tqdm()
    state = _read_state()
    verified: dict[str, Any] = state["verified"]
    try:
        for f in sorted(plan.files, key=lambda f: (f.size, f.path)):
            try:
                local = _fetch(f, cache, tqdm_class)
            except Exception as exc:
                known = _hub_error(exc, model, f.repo, f.path)
                if known is None:
                    raise
                raise known from exc
            verify(f, local, verified, log)
    finally:
        _write_state(state)  # keep what was verified, even after a failure or Ctrl-C
    for repo, commit in plan.revisions.items():
        _write_ref(cache, repo, "main", commit)
    copy = find_copy(model, source, precision, cache, plan.revisions)
    if copy is None:  # every listed file is in place, so the layout check disagrees with the registry
        raise CheckpointError(
            f"{model.name} was downloaded but its files do not form a complete {source} checkpoint",
            hint="the repo layout may have changed: try another --source, and report it",
        )
    state = _read_state()
    state["downloads"] = [
        d
        for d in state["downloads"]
        if not (
            isinstance(d, dict)
            and (d.get("name"), d.get("source"), d.get("precision"), d.get("cache"))
            == (model.name, source, precision, str(cache))
        )
    ]
    state["downloads"].append(
        {
            "name": model.name,
            "source": source,
            "precision": precision,
            "revisions": plan.revisions,
            "cache": str(cache),
            "time": time.time(),
        }
    )
    _write_state(state)
    return DownloadResult(copy, plan.revisions, plan.total_bytes, need, notes)


# --------------------------------------------------------------------------------------------------------------------
# Errors: huggingface_hub / HTTP failures → one message and a hint
# --------------------------------------------------------------------------------------------------------------------

_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError", "TransportError", "Timeout"}


def _is_network_error(exc: BaseException) -> bool:
    # by class name: huggingface_hub has used requests, httpx and httpx2 in turn
    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & _NETWORK_ERRORS) or isinstance(exc, (ConnectionError, TimeoutError))


def _hub_error(exc: BaseException, model: ModelSpec, repo: str, path: str | None = None) -> WanError | None:
    """A CheckpointError for a known hub failure, or None (a bug: the caller re-raises ``exc``)."""
    from huggingface_hub import errors

    where = endpoint()
    login = "`hf auth login`, or set HF_TOKEN to a token that can read it"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.OfflineModeIsEnabled) or (isinstance(exc, errors.LocalEntryNotFoundError) and offline()):
        return CheckpointError(
            f"{model.name} is not in the cache ({cache_dir()}) and offline mode is on",
            hint="unset HF_HUB_OFFLINE to download it, or point HF_HOME at a cache that has it",
        )
    if isinstance(exc, errors.GatedRepoError):
        return CheckpointError(
            f"{repo} is gated: this account has no access to it (HTTP {status})",
            hint=f"accept its conditions on {where}/{repo}, then {login}",
        )
    if isinstance(exc, errors.RepositoryNotFoundError):
        if status in (401, 403):
            return CheckpointError(f"{repo} is private or gated (HTTP {status})", hint=login)
        return CheckpointError(
            f"repository {repo} not found on {where}",
            hint="check HF_ENDPOINT (a mirror may not have it), or try another --source",
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return CheckpointError(f"{repo} has no revision main on {where}", hint="try another --source, and report it")
    if isinstance(exc, errors.EntryNotFoundError) and not isinstance(exc, errors.LocalEntryNotFoundError):
        return CheckpointError(
            f"{path or 'a file'} not found in {repo} on {where}",
            hint="the repo layout changed since this wan was released: try another --source, and report it",
        )
    if isinstance(exc, errors.HfHubHTTPError) and status in (401, 403):
        return CheckpointError(f"the hub refused access to {repo} (HTTP {status})", hint=login)
    if isinstance(exc, errors.HfHubHTTPError) and status is not None and status >= 500:
        return CheckpointError(f"the hub at {where} failed (HTTP {status})", hint="try again in a few minutes")
    if isinstance(exc, errors.LocalEntryNotFoundError) or _is_network_error(exc):
        return CheckpointError(
            f"cannot reach the Hugging Face Hub at {where}",
            hint="check the connection (and HF_ENDPOINT or proxy settings); "
            "to use a copy already downloaded, set HF_HUB_OFFLINE=1",
        )
    if isinstance(exc, OSError) and exc.errno == 28:
        return CheckpointError(
            f"the disk holding {cache_dir()} is full",
            hint="free some space, or set HF_HOME (or HF_HUB_CACHE) to a folder on a bigger disk",
        )
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return CheckpointError(f"the transfer of {path} from {repo} was incomplete", hint="run the download again")
    return None
