"""The registry's models in the Hugging Face cache: downloading them, and finding what is already there.

huggingface_hub does the work, with the settings it read at import (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``,
``HF_ENDPOINT``, ``HF_TOKEN``): ``resolve_revision`` pins a commit (and keeps ``refs/main``), ``model_info`` lists
sizes and hashes, ``hf_hub_download`` says what is missing (``dry_run``) and fetches it, ``scan_cache_dir`` finds the
snapshots. Here is only what it does not do: the files each variant needs (``registry``) and whether a snapshot holds
them all; refusing a download the disk cannot hold (it only warns, mid-transfer); hashing what was fetched (it checks
sizes); ``$WAN_CLI_HOME/installed.json`` (what ``wan download`` fetched last, preferred by :func:`resolve_model`);
hub failures as a message and a hint.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2  # huggingface_hub's HTTP client: its transport errors mean the hub is out of reach
from huggingface_hub import constants, errors, scan_cache_dir
from huggingface_hub.utils import disable_progress_bars, filter_repo_objects
from huggingface_hub.utils.sha import git_hash, sha_fileobj

from . import registry
from .engine.errors import CheckpointError
from .paths import wan_home
from .registry import FileSpec, ModelSpec

if TYPE_CHECKING:
    from huggingface_hub import CachedRevisionInfo, HfApi

Log = Callable[[str], None]
Snapshots = dict[str, list["CachedRevisionInfo"]]  # repo id → its snapshots in the cache

STATE_FILE = "installed.json"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".gguf", ".json")
# preference when several copies are in the cache and none was downloaded by `wan download` (or its record is gone)
PREFERENCE = (("comfy", "bf16"), ("official", "bf16"), ("diffusers", "bf16"), ("comfy", "fp8"))
LAYOUT_HINT = "the repo layout changed since this wan was released: try another --source, and report it"
DISK_HINT = "free some space, or set HF_HOME (or HF_HUB_CACHE) to a folder on a bigger disk"
OFFLINE_HINT = "unset HF_HUB_OFFLINE to download it, or point HF_HOME at a cache that has it"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's components are on disk: a checkpoint folder (``root``) and/or one path per component."""

    name: str | None  # registry name, or None for a local path
    source: str  # "comfy" | "official" | "diffusers" | "local"
    root: Path | None = None  # a checkpoint folder (official/diffusers snapshot, or the user's); None for split files
    dit: Path | None = None
    vae: Path | None = None
    text_encoder: Path | None = None
    tokenizer: Path | None = None
    image_encoder: Path | None = None
    precision: str | None = None
    repo: str | None = None
    revision: str | None = None  # commit hash of what is in the cache

    @property
    def components(self) -> dict[str, Path]:
        """component → path, for the components that are set."""
        names = ("dit", "text_encoder", "tokenizer", "vae", "image_encoder")
        return {n: p for n in names if (p := getattr(self, n)) is not None}

    def to_dict(self) -> dict[str, Any]:
        files = {k: str(v) for k, v in self.components.items()}
        keys = ("name", "source", "precision", "repo", "revision")
        return {**{k: getattr(self, k) for k in keys}, "root": str(self.root) if self.root else None, "files": files}


@dataclass(frozen=True)
class HubFile:
    """One file of a download, as the hub lists it at the pinned commit."""

    repo: str
    path: str
    commit: str
    size: int
    sha256: str | None  # LFS files
    blob_id: str | None  # git object id (every file)
    cached: bool = False  # in the cache already (in this snapshot, or the same blob under another commit)


@dataclass(frozen=True)
class DownloadResult:
    model: ModelFiles
    revisions: dict[str, str]  # repo → commit, for every repo the download used
    bytes: int  # size of all the files of this model
    fetched: int  # bytes transferred this time
    notes: tuple[str, ...] = ()  # e.g. "no bf16 file, using the fp16 one"

    def to_dict(self) -> dict[str, Any]:
        extra = {"revisions": self.revisions, "bytes": self.bytes, "fetched": self.fetched, "notes": list(self.notes)}
        return {**self.model.to_dict(), **extra}


def cache_dir() -> Path:
    """huggingface_hub's cache folder, resolved as its downloads resolve it (so the paths they return compare equal)."""
    return Path(constants.HF_HUB_CACHE).expanduser().resolve()


def human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# -- wan's own record: what `wan download` fetched ---------------------------------------------------------------------
def state_path() -> Path:
    return wan_home() / STATE_FILE


def _downloads() -> list[dict[str, Any]]:
    try:
        found = json.loads(state_path().read_text()).get("downloads")
    except (OSError, ValueError, AttributeError):  # no record yet, or not one wan wrote
        return []
    return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []


def _record(model: ModelSpec, source: str, precision: str, revisions: dict[str, str], cache: Path) -> None:
    entry = {"name": model.name, "source": source, "precision": precision, "cache": str(cache)}
    kept = [d for d in _downloads() if any(d.get(k) != v for k, v in entry.items())]
    kept.append({**entry, "revisions": revisions, "time": time.time()})
    path = state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")  # replaced whole: no reader sees half of it
    tmp.write_text(json.dumps({"downloads": kept}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- what is in the cache (never the network) -------------------------------------------------------------------------
def _scan(cache: Path) -> Snapshots:
    try:
        info = scan_cache_dir(cache)
    except errors.CacheNotFound:
        return {}
    # a repo that huggingface_hub finds corrupt (a dangling link) is left out of info.repos; a download repairs it
    return {r.repo_id: list(r.revisions) for r in info.repos if r.repo_type == "model"}


def _snapshots(snaps: Snapshots, repo: str, prefer: dict[str, str]) -> list[Path]:
    """``repo``'s snapshot folders: the commit ``wan download`` used first, then ``refs/main``, then the newest."""
    first = prefer.get(repo)
    revs = sorted(snaps.get(repo, []), key=lambda r: (r.commit_hash != first, "main" not in r.refs, -r.last_modified))
    return [r.snapshot_path for r in revs]


def _weights(folder: Path, stem: str = "*") -> Path | None:
    """The weights in ``folder``: a ``.safetensors.index.json`` if all its shards are there, else one weights file."""
    index = next(iter(sorted(folder.glob(f"{stem}.safetensors.index.json"))), None)
    if index is None:
        return next((p for p in sorted(folder.glob(f"{stem}.safetensors")) + sorted(folder.glob(f"{stem}.bin"))), None)
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None
    return index if shards and all((folder / s).is_file() for s in shards) else None


def _tokenizer_ok(folder: Path) -> bool:
    return any((folder / n).is_file() for n in ("spiece.model", "tokenizer.json"))


def _present(component: str, path: Path | None) -> bool:
    """A tokenizer folder with its model, a file, or a weights folder with all its shards."""
    if path is None:
        return False
    return _tokenizer_ok(path) if component == "tokenizer" else path.is_file() or _weights(path) is not None


def _comfy_copy(model: ModelSpec, precision: str, snaps: Snapshots, prefer: dict[str, str]) -> ModelFiles | None:
    if model.comfy_dit(precision) is None:  # not published at this precision
        return None
    want = {f.component: f.pattern for f in model.files("comfy", precision) if f.repo == registry.COMFY_REPO}
    full = (s for s in _snapshots(snaps, registry.COMFY_REPO, prefer) if all((s / p).is_file() for p in want.values()))
    toks = (s / registry.TOKENIZER_DIR for s in _snapshots(snaps, model.repo, prefer))
    snap, tok = next(full, None), next((t for t in toks if _tokenizer_ok(t)), None)
    if snap is None or tok is None:
        return None
    at = {c: snap / p for c, p in want.items()}
    return ModelFiles(model.name, "comfy", tokenizer=tok, precision=precision, repo=registry.COMFY_REPO,
                      revision=snap.name, **at)  # fmt: skip


# where each component sits in an official or a diffusers snapshot (checkpoint-formats.md §2, §3), and the file that
# marks the layout; the official DiT is its index or single file, found by _weights
_LAYOUTS = {
    "official": ("config.json", {"text_encoder": registry.OFFICIAL_T5, "vae": registry.OFFICIAL_VAE,
                                 "image_encoder": registry.OFFICIAL_CLIP, "tokenizer": registry.TOKENIZER_DIR}),
    "diffusers": ("model_index.json", {"dit": "transformer", "vae": "vae", "text_encoder": "text_encoder",
                                       "image_encoder": "image_encoder", "tokenizer": "tokenizer"}),
}  # fmt: skip


def _folder_copy(model: ModelSpec, source: str, snaps: Snapshots, prefer: dict[str, str]) -> ModelFiles | None:
    """An official or diffusers copy: one snapshot that holds every component the task needs."""
    marker, where = _LAYOUTS[source]
    repo = model.repo if source == "official" else model.diffusers_repo
    for root in _snapshots(snaps, repo, prefer):
        at = {c: root / where[c] if c in where else _weights(root, "diffusion_pytorch_model") for c in model.components}
        ok = (root / marker).is_file() and (source == "official" or (root / "scheduler").is_dir())
        if ok and all(_present(c, p) for c, p in at.items()):
            return ModelFiles(model.name, source, root, precision="bf16", repo=repo, revision=root.name, **at)
    return None


def find_copy(
    model: ModelSpec, source: str, precision: str, snaps: Snapshots, prefer: dict[str, str] | None = None
) -> ModelFiles | None:
    """A complete copy of ``model`` from ``source``/``precision`` among ``snaps``, or None; ``prefer``: repo →
    the commit to look at first."""
    if source == "comfy":
        return _comfy_copy(model, precision, snaps, prefer or {})
    # the official and diffusers repos hold one precision
    return _folder_copy(model, source, snaps, prefer or {}) if source in _LAYOUTS and precision == "bf16" else None


def installed(model: ModelSpec | str) -> list[ModelFiles]:
    """Every complete copy of ``model`` in the cache, the preferred first: the source/precision most recently
    downloaded by ``wan download``, then comfy bf16, official, diffusers, comfy fp8."""
    spec = registry.get(model) if isinstance(model, str) else model
    cache = cache_dir()
    snaps = _scan(cache)
    mine = [d for d in _downloads() if d.get("name") == spec.name and d.get("cache") == str(cache)]
    mine.sort(key=lambda d: float(d.get("time", 0)), reverse=True)
    order = [(str(d.get("source")), str(d.get("precision")), dict(d.get("revisions") or {})) for d in mine]
    copies: dict[tuple[str, str], ModelFiles | None] = {}
    for source, precision, revisions in order + [(s, p, {}) for s, p in PREFERENCE]:
        if (source, precision) not in copies:
            copies[(source, precision)] = find_copy(spec, source, precision, snaps, revisions)
    return [c for c in copies.values() if c is not None]


def resolve_model(spec: str | Path) -> ModelFiles:
    """A local file or folder as is, or a registry name → its copy in the cache (never the network). Raises
    CheckpointError when it is not downloaded or the path does not exist, InputError for an unknown name."""
    path = Path(spec).expanduser()
    if path.exists():
        return ModelFiles(None, "local", root=path) if path.is_dir() else ModelFiles(None, "local", dit=path)
    text, model = str(spec), registry.find(str(spec))
    pathish = "/" in text or "\\" in text or text.startswith(("~", ".")) or text.lower().endswith(WEIGHT_SUFFIXES)
    if model is None and (isinstance(spec, Path) or pathish):
        raise CheckpointError(
            f"{text}: no such file or folder", hint="check the path, or pass a model name from `wan models`"
        )
    model = model or registry.get(text)  # raises InputError with a suggestion
    copies = installed(model)
    if not copies:
        raise CheckpointError(f"{model.name} is not downloaded", hint=f"wan download {model.name}")
    return copies[0]


# -- downloading -------------------------------------------------------------------------------------------------------
def _listed(api: HfApi, specs: list[FileSpec], repo: str, commit: str) -> list[HubFile]:
    """The files of ``repo`` at ``commit`` that ``specs`` ask for, with the hub's sizes and hashes."""
    listing = {s.rfilename: s for s in api.model_info(repo, revision=commit, files_metadata=True).siblings or []}
    chosen: dict[str, str] = {}  # path → component (of the first spec that matches it)
    for spec in specs:
        hits = list(filter_repo_objects(listing, allow_patterns=spec.pattern))
        if not hits and spec.required and not spec.is_pattern:
            raise CheckpointError(f"{spec.pattern} is not in {repo} (commit {commit[:10]})", hint=LAYOUT_HINT)
        chosen.update({p: spec.component for p in hits if p not in chosen})
    for comp in dict.fromkeys(s.component for s in specs):
        if comp not in chosen.values():
            patterns = ", ".join(s.pattern for s in specs if s.component == comp)
            raise CheckpointError(f"{repo} (commit {commit[:10]}) has no {comp} files ({patterns})", hint=LAYOUT_HINT)
    files = []
    for path in chosen:
        s, lfs = listing[path], listing[path].lfs
        size, sha = (lfs.size, lfs.sha256) if lfs is not None else (s.size, None)
        files.append(HubFile(repo, path, commit, int(size or 0), sha, s.blob_id))
    return files


def plan_download(model: ModelSpec, source: str, precision: str, cache: Path) -> list[HubFile]:
    """Every file a download needs, pinned to one commit per repo, and whether the cache has it already. Only
    metadata travels (two API calls per repo, a HEAD per file not in the snapshot), and every repo is listed before
    the first file request, so that a layout problem stops the download before anything else."""
    from huggingface_hub import HfApi, hf_hub_download

    api, specs, files = HfApi(), model.files(source, precision), []
    for repo in dict.fromkeys(s.repo for s in specs):
        with _hub_errors(model, repo):
            # one commit for every file of the repo, kept in refs/main as snapshot_download keeps it
            commit = api.resolve_revision(repo, revision="main", cache_dir=cache).resolved
            files += _listed(api, [s for s in specs if s.repo == repo], repo, commit)
    planned = []
    for f in files:
        with _hub_errors(model, f.repo, f.path):
            dry = hf_hub_download(f.repo, f.path, revision=f.commit, cache_dir=cache, dry_run=True)
        planned.append(replace(f, cached=not dry.will_download))
    return planned


def check_disk(files: list[HubFile], cache: Path, model: ModelSpec) -> int:
    """Bytes still to fetch; CheckpointError, before the first byte, if the cache's disk cannot hold them."""
    need = sum(f.size for f in files if not f.cached)
    free = shutil.disk_usage(next(p for p in (cache, *cache.parents, Path.cwd()) if p.exists())).free if need else 0
    if free < need:
        raise CheckpointError(
            f"not enough disk space for {model.name}: it needs {human_bytes(need)} more, "
            f"and {cache} has {human_bytes(free)} free",
            hint=DISK_HINT,
        )
    return need


def file_hash(path: Path, lfs: bool) -> str:
    """The sha256 (LFS files) or the git blob id (the others), as the hub lists them; huggingface_hub's helpers."""
    if not lfs:
        return git_hash(path.read_bytes())  # files outside LFS are small (the hub caps them at 10 MB)
    with path.open("rb") as fh:
        return sha_fileobj(fh, chunk_size=8 * 1024 * 1024).hex()


def verify(f: HubFile, local: Path, log: Log | None = None) -> None:
    """Check the size of every file and the hash of each one fetched now; delete a bad one (CheckpointError). A file
    already in the cache is not read again: its blob is named after that hash (`hf cache verify` re-reads them)."""
    blob = Path(os.path.realpath(local))
    size, expected = blob.stat().st_size, f.sha256 or f.blob_id
    problem = f"it has {size:,} bytes, the hub says {f.size:,}" if size != f.size else ""
    if not problem and not f.cached and expected:
        if log and f.size > 100_000_000:
            log(f"verifying {f.path} ({human_bytes(f.size)})")
        if (got := file_hash(blob, lfs=f.sha256 is not None)) != expected:
            problem = f"its {'sha256' if f.sha256 else 'git id'} is {got[:12]}…, the hub says {expected[:12]}…"
    if problem:
        for p in (local, blob):  # link and blob: a rerun fetches it again rather than trusting the name
            p.unlink(missing_ok=True)
        raise CheckpointError(
            f"{f.path} from {f.repo} is corrupt ({problem}); the bad copy was deleted",
            hint=f"run the download again; if it fails the same way, {constants.ENDPOINT} serves bad data",
        )


def _local_bytes(copy: ModelFiles) -> int:
    """Bytes of a copy in the cache, each blob once (snapshot files are links to them)."""
    paths = [copy.root] if copy.root else list(copy.components.values())
    blobs = {os.path.realpath(f) for p in paths if p for f in [p, *p.rglob("*")] if f.is_file()}
    return sum(os.path.getsize(b) for b in blobs)


def download(
    name: str,
    *,
    source: str = registry.DEFAULT_SOURCE,
    precision: str = registry.DEFAULT_PRECISION,
    progress: bool = False,
    log: Log | None = None,
) -> DownloadResult:
    """Fetch ``name`` from ``source`` at ``precision`` into the Hugging Face cache and verify it; ``progress``:
    huggingface_hub's bars on stderr, ``log``: progress lines (stderr). Raises InputError (unknown name, unpublished
    precision) or CheckpointError (hub, network, disk, integrity), each with a hint."""
    from huggingface_hub import hf_hub_download  # (and HfApi) the heavy part: only where the network is used

    say = log or (lambda _msg: None)
    model = registry.get(name)
    model.check(source, precision)
    notes = tuple(n for n in [model.precision_note(source, precision)] if n)
    for note in notes:
        say(note)
    cache = cache_dir()
    if constants.is_offline_mode():  # the copy in the cache, or an error: no request would get through
        if (copy := find_copy(model, source, precision, _scan(cache), {})) is None:
            what = f"{model.name} ({source}, {precision})"
            raise CheckpointError(f"{what} is not in the cache ({cache}) and offline mode is on", hint=OFFLINE_HINT)
        say(f"offline (HF_HUB_OFFLINE): {model.name} is already in the cache")
        revisions = {copy.repo: copy.revision} if copy.repo and copy.revision else {}
        return DownloadResult(copy, revisions, _local_bytes(copy), 0, notes)
    files = plan_download(model, source, precision, cache)
    need, total = check_disk(files, cache, model), sum(f.size for f in files)
    fetch = f", {human_bytes(need)} to fetch into {cache}" if need else ", all in the cache already"
    say(f"{model.name} ({source}, {precision}): {len(files)} files, {human_bytes(total)}{fetch}")
    # one file at a time in this thread, so that Ctrl-C stops at once (snapshot_download's workers would carry on)
    with nullcontext() if progress else disable_progress_bars():
        for f in sorted(files, key=lambda f: (f.size, f.path)):
            with _hub_errors(model, f.repo, f.path):
                local = hf_hub_download(f.repo, f.path, revision=f.commit, cache_dir=cache)
            verify(f, Path(local), log)
    commits = {f.repo: f.commit for f in files}
    copy = find_copy(model, source, precision, _scan(cache), commits)
    if copy is None:  # every listed file is in place, so the layout check disagrees with the registry
        raise CheckpointError(
            f"{model.name} was downloaded but its files do not form a complete {source} checkpoint",
            hint="the repo layout may have changed: try another --source, and report it",
        )
    _record(model, source, precision, commits, cache)
    return DownloadResult(copy, commits, total, need, notes)


# -- huggingface_hub / HTTP failures → one message and a hint ---------------------------------------------------------
@contextmanager
def _hub_errors(model: ModelSpec, repo: str, path: str | None = None) -> Iterator[None]:
    """Known hub failures in the block become a CheckpointError with a hint; anything else (a bug) goes through."""
    try:
        yield
    except Exception as exc:
        where, status = constants.ENDPOINT, getattr(getattr(exc, "response", None), "status_code", None)
        login = "`hf auth login`, or set HF_TOKEN to a token that can read it"
        http = isinstance(exc, errors.HfHubHTTPError)
        # RevisionResolutionError, LocalEntryNotFoundError: the hub was out of reach and the cache had nothing
        lost = (errors.RevisionResolutionError, errors.LocalEntryNotFoundError, httpx2.TransportError, TimeoutError)
        if isinstance(exc, errors.OfflineModeIsEnabled):
            message, hint = f"{model.name} is not in the cache ({cache_dir()}) and offline mode is on", OFFLINE_HINT
        elif isinstance(exc, errors.GatedRepoError):
            message = f"{repo} is gated: this account has no access to it (HTTP {status})"
            hint = f"accept its conditions on {where}/{repo}, then {login}"
        elif isinstance(exc, errors.RepositoryNotFoundError) and status in (401, 403):
            message, hint = f"{repo} is private or gated (HTTP {status})", login
        elif isinstance(exc, errors.RepositoryNotFoundError):
            message = f"repository {repo} not found on {where}"
            hint = "check HF_ENDPOINT (a mirror may not have it), or try another --source"
        elif isinstance(exc, errors.RevisionNotFoundError):
            message, hint = f"{repo} has no revision main on {where}", "try another --source, and report it"
        elif isinstance(exc, errors.RemoteEntryNotFoundError):
            message, hint = f"{path or 'a file'} not found in {repo} on {where}", LAYOUT_HINT
        elif http and status in (401, 403):
            message, hint = f"the hub refused access to {repo} (HTTP {status})", login
        elif http and status is not None and status >= 500:
            message, hint = f"the hub at {where} failed (HTTP {status})", "try again in a few minutes"
        elif isinstance(exc, lost):
            message = f"cannot reach the Hugging Face Hub at {where}"
            hint = "check the connection (and HF_ENDPOINT or proxy settings); "
            hint += "to use a copy already downloaded, set HF_HUB_OFFLINE=1"
        elif isinstance(exc, OSError) and exc.errno == 28:
            message, hint = f"the disk holding {cache_dir()} is full", DISK_HINT
        elif isinstance(exc, OSError) and "Consistency check failed" in str(exc):
            message, hint = f"the transfer of {path} from {repo} was incomplete", "run the download again"
        else:
            raise
        raise CheckpointError(message, hint=hint) from exc
