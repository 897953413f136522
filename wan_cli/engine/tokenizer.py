"""The UMT5 tokenizer, from wherever a user's files keep it: a folder's ``tokenizer.json``, a bare ``spiece.model``,
or the SentencePiece model ComfyUI embeds in its text-encoder files as a ``spiece_model`` tensor.

Facts: ``checkpoint-formats.md`` §4.4. umt5-xxl's ids: ``<pad>`` 0, ``</s>`` 1, ``<s>`` 2, ``<unk>`` 3. Two traps of
transformers 5 are avoided on purpose: its ``T5Tokenizer`` (what ``AutoTokenizer`` picks for google/umt5-xxl, whose
``tokenizer_config.json`` names it) rebuilds the Unigram model with ``unk_id=2``, even from a ``tokenizer.json``, so
characters outside the vocabulary become ``<s>``; and a folder's config may name remote code. So a ``tokenizer.json``
is read as it is (``tokenizers``), and a SentencePiece model is converted with its own unk id and normaliser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError

TOKENIZER_HINT = "pass the tokenizer folder (google/umt5-xxl, or a Diffusers tokenizer/ folder) with --tokenizer"


def _special_tokens(folder: Path) -> dict[str, str]:
    """eos/pad/unk token strings from the folder's special_tokens_map.json or tokenizer_config.json (T5's defaults)."""
    found = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the map wins: it is what transformers writes
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        for key in found:
            value = data.get(key) if isinstance(data, dict) else None
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                found[key] = value
    return found


def _wrap(backend: Any, special: dict[str, str]) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, **special)


def unigram_tokenizer(
    vocab: list[tuple[str, float]],
    *,
    unk_id: int,
    eos_id: int,
    pad_id: int,
    charsmap: bytes | None,
    remove_extra_whitespaces: bool = True,
    add_dummy_prefix: bool = True,
    byte_fallback: bool = False,
) -> Any:
    """A fast tokenizer for a SentencePiece unigram vocabulary, built the way transformers converts T5's model into a
    ``tokenizer.json``: the pieces and scores with the model's own unk id, its precompiled normaliser, a Metaspace
    pre-tokenizer with the dummy prefix, ``</s>`` appended — so it gives the ids the real folder gives."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    if not vocab or not all(0 <= i < len(vocab) for i in (unk_id, eos_id, pad_id)):
        raise CheckpointError("the embedded tokenizer's vocabulary is empty or its special ids are out of range",
                              hint=TOKENIZER_HINT)  # fmt: skip
    backend = Tokenizer(Unigram(vocab, unk_id=unk_id, byte_fallback=byte_fallback))
    steps: list[normalizers.Normalizer] = []
    if charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    if remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"\A +| +\z"), ""), normalizers.Replace(Regex(" {2,}"), " ")]
    backend.normalizer = normalizers.Sequence(steps)
    scheme = "always" if add_dummy_prefix else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    eos, pad, unk = (vocab[i][0] for i in (eos_id, pad_id, unk_id))
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, eos_id)]
    )
    return _wrap(backend, {"eos_token": eos, "pad_token": pad, "unk_token": unk})


def tokenizer_from_spiece(data: bytes) -> Any:
    """The tokenizer of a serialised SentencePiece model (``spiece.model``, or ComfyUI's ``spiece_model`` tensor)."""
    from sentencepiece import sentencepiece_model_pb2  # protobuf: a dependency of wan for exactly this

    proto = sentencepiece_model_pb2.ModelProto()  # type: ignore[attr-defined]
    try:
        proto.ParseFromString(data)
    except Exception as exc:
        raise CheckpointError(f"the embedded SentencePiece model cannot be read ({exc})", hint=TOKENIZER_HINT) from exc
    if proto.trainer_spec.model_type != 1 or not proto.pieces:  # 1 = UNIGRAM, what every T5 vocabulary is
        raise CheckpointError("the embedded tokenizer is not a SentencePiece unigram model", hint=TOKENIZER_HINT)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    return unigram_tokenizer(
        [(p.piece, p.score) for p in proto.pieces], unk_id=spec.unk_id, eos_id=spec.eos_id, pad_id=max(spec.pad_id, 0),
        charsmap=norm.precompiled_charsmap, remove_extra_whitespaces=norm.remove_extra_whitespaces,
        add_dummy_prefix=norm.add_dummy_prefix, byte_fallback=spec.byte_fallback,
    )  # fmt: skip


def tokenizer_from_gguf(vocab: Any) -> Any:
    """The tokenizer a UMT5 GGUF carries in its ``tokenizer.ggml.*`` metadata (a :class:`gguf.GGUFVocab`)."""
    if vocab.model != "t5":
        raise CheckpointError(f"the GGUF's tokenizer is {vocab.model!r}, not a T5 SentencePiece vocabulary",
                              hint=TOKENIZER_HINT)  # fmt: skip
    ids = vocab.special_ids
    return unigram_tokenizer(
        list(zip(vocab.tokens, vocab.scores, strict=True)), unk_id=ids.get("unk", 3), eos_id=ids.get("eos", 1),
        pad_id=ids.get("pad", 0), charsmap=vocab.precompiled_charsmap,
        remove_extra_whitespaces=vocab.remove_extra_whitespaces is not False,
        add_dummy_prefix=vocab.add_space_prefix is not False,
    )  # fmt: skip


def load_tokenizer(path: str | Path) -> Any:
    """A UMT5 tokenizer from a folder (``google/umt5-xxl/``, Diffusers ``tokenizer/``: its ``tokenizer.json``, else
    its ``spiece.model``) or a ``spiece.model`` file. No remote code can run: nothing is read through ``Auto*``."""
    p = Path(path).expanduser()
    try:
        if p.is_file():  # a bare SentencePiece model
            return tokenizer_from_spiece(p.read_bytes())
        if (p / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            return _wrap(Tokenizer.from_file(str(p / "tokenizer.json")), _special_tokens(p))
        if (p / "spiece.model").is_file():
            return tokenizer_from_spiece((p / "spiece.model").read_bytes())
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"cannot load a tokenizer from {p}: {exc}", hint=TOKENIZER_HINT) from exc
    if not p.exists():
        raise CheckpointError(f"{p} does not exist", hint=TOKENIZER_HINT)
    raise CheckpointError(f"{p} holds no tokenizer (tokenizer.json or spiece.model)", hint=TOKENIZER_HINT)


def tokenizer_beside(weights: Path) -> Path | None:
    """The tokenizer folder a layout puts beside its text-encoder file, or None.

    Official folders keep it in ``google/umt5-xxl/`` next to ``models_t5_umt5-xxl-enc-bf16.pth``; a Diffusers pipeline
    in ``tokenizer/`` next to ``text_encoder/`` (its ``model_index.json`` says so); a transformers model folder (such as
    the google/umt5-xxl repo: ``config.json`` + ``model*.safetensors``) in itself. Any other ``tokenizer/`` that
    happens to sit near a file is not taken: it may belong to another model.
    """
    folder = weights.parent
    if weights.name.startswith("models_t5_") and (folder / "google" / "umt5-xxl").is_dir():
        return folder / "google" / "umt5-xxl"
    if folder.name == "text_encoder" and (folder.parent / "model_index.json").is_file():
        return folder.parent / "tokenizer" if (folder.parent / "tokenizer").is_dir() else None
    own = (folder / "tokenizer.json").is_file() or (folder / "spiece.model").is_file()
    if own and weights.name.startswith("model") and (folder / "config.json").is_file():
        return folder
    return None
