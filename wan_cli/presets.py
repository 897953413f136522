"""Presets and settings: pydantic models for the YAML files in ``presets/`` and the merge of every settings layer.

Precedence, lowest first: built-in defaults < the model's preset < a user preset file (``-p my.yaml``)
< environment (``WAN_MODEL``, ``WAN_DEVICE``, ``WAN_DTYPE``) < command-line flags < per-item overrides of a JSONL
batch line. Every layer is a :class:`Values` (all fields optional); :func:`resolve` folds them into one
:class:`Settings` (all fields set) and :func:`sources` tells which layer each value came from.

A preset named with ``-p NAME`` replaces the model's own preset; a file (``-p my.yaml``) is layered over it, so
``steps: 20`` alone keeps the model's guidance and shift. Presets ship inside the wheel as ``wan_cli.preset_data``; a
user may add or shadow named presets with YAML files in ``$WAN_CLI_HOME/presets/``. An unknown key or a bad value
names the field and file. ``seed: -1`` means a random seed (as in the official ``generate.py``); as a layer it
overrides a lower layer's seed, and :class:`Settings` holds it as None.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from .engine.errors import InputError
from .engine.request import Solver as SolverName
from .engine.request import Task, check_frame_count, check_seed, check_size

DeviceName = Literal["auto", "cuda", "cpu", "mps"]
DtypeName = Literal["auto", "bf16", "fp16", "fp32", "fp8"]
CacheName = Literal["none", "teacache", "magcache", "easycache"]  # engine.request.CACHES


def parse_size(value: object) -> tuple[int, int]:
    """'832x480' (also '832*480', the official spelling, or [832, 480]) → (width, height)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        w, h = value
    elif isinstance(value, str):
        parts = value.lower().replace("*", "x").replace("×", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size must look like 832x480 (width x height), got {value!r}")
        w, h = (int(p) for p in parts)
    else:
        raise ValueError(f"size must look like 832x480 (width x height), got {value!r}")
    if not (isinstance(w, int) and isinstance(h, int)) or w <= 0 or h <= 0:
        raise ValueError(f"size must be two positive integers, got {value!r}")
    return w, h


Size = Annotated[tuple[int, int], BeforeValidator(parse_size)]


def _rule(check: Callable[[Any], None], value: Any) -> Any:
    """Run an engine rule inside a pydantic validator: its InputError becomes the ValueError pydantic reports."""
    try:
        check(value)
    except InputError as exc:
        raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
    return value


class Values(BaseModel):
    """One settings layer: every field optional; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    description: str | None = None
    model: str | None = None  # a registry name (`wan models`) or a local file/folder
    task: Task | None = None
    size: Size | None = None  # t2v: exact width x height; i2v/flf2v: the pixel area (aspect from the image)
    frames: int | None = Field(default=None, ge=1, le=1001)  # 4n + 1
    fps: float | None = Field(default=None, gt=0, le=240)
    steps: int | None = Field(default=None, ge=1, le=1000)
    guidance: float | None = Field(default=None, ge=0, le=100)
    shift: float | None = Field(default=None, gt=0, le=100)
    solver: SolverName | None = None
    negative_prompt: str | None = None
    seed: int | None = None  # 0 … 2^63 − 1, or -1: random (kept as -1 here so that it overrides a lower layer)
    device: DeviceName | None = None
    dtype: DtypeName | None = None
    loras: list[str] | None = None  # "PATH[:SCALE]" each, in order (an empty list: none, overriding a lower layer)
    cache: CacheName | None = None
    cache_threshold: float | None = Field(default=None, ge=0, le=10)

    # the rules are the engine's (engine/request.py): one rule, one message, wherever a setting comes from

    @field_validator("frames")
    @classmethod
    def _frames_4n_plus_1(cls, v: int | None) -> int | None:
        return _rule(check_frame_count, v) if v is not None else v

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int | None) -> int | None:
        return _rule(lambda s: check_seed(s, random_ok=True), v) if v is not None else v

    @field_validator("size")
    @classmethod
    def _size_multiple_of_16(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        return _rule(lambda wh: check_size(*wh), v) if v is not None else v

    def set_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class Settings(BaseModel):
    """Every setting of one generation after the merge (what the record and the sidecar report)."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    preset: str | None
    model: str | None
    task: Task
    size: tuple[int, int]
    frames: int
    fps: float
    steps: int
    guidance: float
    shift: float
    solver: SolverName
    negative_prompt: str | None
    seed: int | None
    device: DeviceName
    dtype: DtypeName
    loras: tuple[str, ...] = ()
    cache: CacheName = "none"
    cache_threshold: float | None = None

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]


# Built-in defaults: the official t2v values (wan21-architecture.md §1.6); presets refine them per model.
DEFAULTS = Values(task="t2v", size=(832, 480), frames=81, fps=16, steps=50, guidance=5.0, shift=5.0,
                  solver="unipc", device="auto", dtype="auto")  # fmt: skip

ENV_VARS = {"WAN_MODEL": "model", "WAN_DEVICE": "device", "WAN_DTYPE": "dtype"}


def describe_error(exc: ValidationError, where: str) -> InputError:
    """The first pydantic error as one line naming the field and where it came from."""
    err = exc.errors()[0]
    field = ".".join(str(x) for x in err["loc"]) or "value"
    if err["type"] == "extra_forbidden":
        known = ", ".join(k for k in Values.model_fields if k != "description")
        return InputError(f"{where}: unknown key {field!r}", hint=f"known keys: {known}")
    msg = str(err["msg"]).removeprefix("Value error, ")
    return InputError(f"{where}: bad value for {field!r}: {msg}", hint="fix the value, or leave the key out")


def values_from(data: Mapping[str, Any], where: str) -> Values:
    try:
        return Values.model_validate(dict(data))
    except ValidationError as exc:
        raise describe_error(exc, where) from None


def env_values(environ: Mapping[str, str] | None = None) -> Values:
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    for var, key in ENV_VARS.items():
        value = env.get(var, "").strip()
        if value:
            data[key] = value
    try:
        return Values.model_validate(data)
    except ValidationError as exc:
        key = str(exc.errors()[0]["loc"][0])
        var = next(v for v, k in ENV_VARS.items() if k == key)
        hint = f"unset {var} or give it one of the values `--help` lists for --{key}"
        raise InputError(f"environment variable {var}={env.get(var)!r} is not valid", hint=hint) from None


# --------------------------------------------------------------------------------------------------------------------
# Preset files
# --------------------------------------------------------------------------------------------------------------------


def user_preset_dir() -> Path:
    from .paths import wan_home

    return wan_home() / "presets"


def preset_files() -> dict[str, Path | Any]:
    """name → file: shipped presets, shadowed by the user's ``$WAN_CLI_HOME/presets/*.yaml``."""
    found: dict[str, Path | Any] = {}
    try:
        shipped: Any = files("wan_cli.preset_data")
    except ModuleNotFoundError:  # running from a source checkout that was not pip-installed
        shipped = Path(__file__).parents[1] / "presets"
    for entry in shipped.iterdir():
        if entry.name.endswith(".yaml"):
            found[entry.name.removesuffix(".yaml")] = entry
    user = user_preset_dir()
    if user.is_dir():
        for p in sorted(user.glob("*.yaml")):
            found[p.stem] = p
    return dict(sorted(found.items()))


def list_presets() -> list[str]:
    return list(preset_files())


def is_preset_file(spec: str) -> bool:
    """``-p my.yaml`` (a file, layered over the model's preset) rather than ``-p NAME`` (a preset replacing it)."""
    return spec.endswith((".yaml", ".yml")) or os.sep in spec or "/" in spec


def load_preset(spec: str) -> tuple[str, Values]:
    """A preset by name or by YAML path → (name, values). Errors name the file and the field."""
    import yaml

    if is_preset_file(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise InputError(f"preset file {path} does not exist", hint="check the path, or `wan presets list`")
        name, source, where = path.stem, path, str(path)
    else:
        known = preset_files()
        if spec not in known:
            close = difflib.get_close_matches(spec, list(known), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise InputError(f"unknown preset {spec!r}", hint=hint + "`wan presets list` shows them all")
        name, source = spec, known[spec]
        where = f"preset {spec}"
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {where}: {exc}", hint="check the file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise InputError(f"{where} is not valid YAML{at}: {problem}",
                         hint="a preset is a mapping of keys to values, e.g. `steps: 40`") from None  # fmt: skip
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a mapping of keys to values, got {type(data).__name__}",
                         hint="e.g. `steps: 40` on its own line")  # fmt: skip
    return name, values_from(data, where)


# --------------------------------------------------------------------------------------------------------------------
# The merge
# --------------------------------------------------------------------------------------------------------------------


def _user_layer(model_preset: Values, user: tuple[str, Values]) -> Values:
    name, values = user
    if model_preset.task is not None and values.task not in (None, model_preset.task):
        raise InputError(f"preset file {name} is for {values.task}, not {model_preset.task}",
                         hint="remove its `task:` line, or use it with the command for that task")  # fmt: skip
    return values


def resolve(*layers: Values, preset: str | None = None, user: tuple[str, Values] | None = None) -> Settings:
    """Fold layers (lowest first) over the defaults into complete settings.

    ``user``: a preset file's (name, values) (``-p my.yaml``), layered right over the first layer (the model's own
    preset) and under the others (environment, flags, item); it names the run's preset. A seed of -1 becomes None
    (random)."""
    stack = list(layers)
    if user is not None:
        stack.insert(min(1, len(stack)), _user_layer(stack[0] if stack else Values(), user))
    merged: dict[str, Any] = DEFAULTS.set_fields()
    for layer in stack:
        merged.update(layer.set_fields())
    merged.pop("description", None)
    merged.setdefault("model", None)
    merged.setdefault("negative_prompt", None)
    if merged.get("seed") == -1:
        merged["seed"] = None
    merged.setdefault("seed", None)
    return Settings(preset=user[0] if user is not None else preset, **merged)


def sources(*layers: tuple[str, Values]) -> dict[str, str]:
    """For each setting, the label of the highest layer that sets it ("default" when none does): what
    `wan presets show` prints beside each value."""
    found = dict.fromkeys(Settings.model_fields, "default")
    del found["preset"]
    for label, values in layers:
        for key in values.set_fields():
            if key in found:
                found[key] = label
    return found
