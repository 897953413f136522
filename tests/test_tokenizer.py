"""The UMT5 tokenizer from every place users keep it: the google/umt5-xxl folder, a Diffusers tokenizer/ folder, a
bare spiece.model, and the `spiece_model` tensor of ComfyUI's text encoders (checkpoint-formats.md §4.4).

References: the `sentencepiece` library's own encoding of the model (the ground truth of a SentencePiece vocabulary),
and a tokenizer.json written by transformers' converter (how the real google/umt5-xxl/tokenizer.json was made).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import CORPUS, tiny_spiece_model, tiny_umt5, write_comfy_t5

from wan_cli.engine import CheckpointError, load_text_encoder
from wan_cli.engine.request import DEFAULT_NEGATIVE_PROMPTS
from wan_cli.engine.tokenizer import load_tokenizer, tokenizer_beside

# out-of-vocabulary letters, emoji, CJK outside the tiny corpus, full-width forms (NFKC), combining marks
HARD = [
    "a dog 🐶 meets a zebra 🦓 in Zürich",
    "東京の夜景、ネオンが輝く",
    "Ｆｕｌｌ ｗｉｄｔｈ ＡＢＣ and ﬁ ligatures ①②",
    "e\u0301 combining, tab\tand  double  spaces",
    "quotes “like these” — and dashes",
    *DEFAULT_NEGATIVE_PROMPTS.values(),
    *CORPUS,
]


@pytest.fixture(scope="module")
def spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_spiece_model(tmp_path_factory.mktemp("spm"))


def sentencepiece_ids(spm: Path, text: str) -> list[int]:
    """What the SentencePiece model itself gives, with the `</s>` the T5 tokenizers append."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    return [*sp.encode(text), sp.eos_id()]


def write_umt5_folder(spm: Path, folder: Path) -> Path:
    """A google/umt5-xxl-like folder: spiece.model, a tokenizer.json made by transformers' own SentencePiece converter,
    and the tokenizer_config.json naming `T5Tokenizer` as the real one does."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import SpmConverter

    folder.mkdir(parents=True)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(spm.read_bytes())
    backend = SpmConverter.build_tokenizer_from_spm_proto(proto, [(p.piece, p.score) for p in proto.pieces])
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    backend.save(str(folder / "tokenizer.json"))
    (folder / "spiece.model").write_bytes(spm.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 0,
                                                              "eos_token": "</s>", "unk_token": "<unk>",
                                                              "pad_token": "<pad>"}))  # fmt: skip
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "unk_token": "<unk>",
                                                                "pad_token": "<pad>"}))  # fmt: skip
    return folder


def test_the_stand_in_model_has_umt5_special_ids(spm: Path) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm))
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "</s>", "<s>", "<unk>"]


@pytest.mark.parametrize("text", HARD)
def test_every_source_gives_sentencepieces_ids(spm: Path, tmp: Path, text: str) -> None:
    want = sentencepiece_ids(spm, text)
    folder = write_umt5_folder(spm, tmp / "google" / "umt5-xxl")
    comfy = write_comfy_t5(tiny_umt5(), tmp / "umt5_xxl_fp16.safetensors", spm)
    sources = {
        "tokenizer.json folder": load_tokenizer(folder),
        "bare spiece.model": load_tokenizer(spm),
        "embedded spiece_model": load_text_encoder(comfy).tokenizer,
    }
    for name, tok in sources.items():
        assert tok(text)["input_ids"] == want, name


def test_unknown_characters_are_unk_3_not_bos(spm: Path, tmp: Path) -> None:
    folder = write_umt5_folder(spm, tmp / "tok")
    for tok in (load_tokenizer(folder), load_tokenizer(spm)):
        ids = tok("🐶")["input_ids"]
        assert 3 in ids and 2 not in ids, ids
        assert tok.unk_token_id == 3 and tok.pad_token_id == 0 and tok.eos_token_id == 1


def test_padding_and_truncation_as_the_encoder_calls_it(spm: Path) -> None:
    tok = load_tokenizer(spm)
    out = tok(["a dog", "a cat " * 400], padding="max_length", truncation=True, max_length=512,
              add_special_tokens=True, return_attention_mask=True)  # fmt: skip
    short, long = out["input_ids"]
    assert len(short) == len(long) == 512
    assert short[: sum(out["attention_mask"][0])][-1] == 1 and set(short[sum(out["attention_mask"][0]) :]) == {0}
    assert long[-1] == 1  # the EOS survives truncation


def test_tokenizer_folder_is_taken_only_where_the_layout_puts_it(spm: Path, tmp: Path) -> None:
    (tmp / "models").mkdir()
    comfy = write_comfy_t5(tiny_umt5(), tmp / "models" / "umt5_xxl_fp16.safetensors", spm)
    write_umt5_folder(tiny_spiece_model(tmp / "other-spm"), tmp / "models" / "tokenizer")  # someone else's
    assert tokenizer_beside(comfy) is None  # a stray tokenizer/ beside a ComfyUI file is not its tokenizer
    official = tmp / "Wan2.1-T2V-1.3B"
    write_umt5_folder(spm, official / "google" / "umt5-xxl")
    (official / "models_t5_umt5-xxl-enc-bf16.pth").touch()
    assert tokenizer_beside(official / "models_t5_umt5-xxl-enc-bf16.pth") == official / "google" / "umt5-xxl"
    pipe = tmp / "pipe"
    (pipe / "text_encoder").mkdir(parents=True)
    (pipe / "model_index.json").write_text("{}")
    write_umt5_folder(spm, pipe / "tokenizer")
    assert tokenizer_beside(pipe / "text_encoder" / "model.safetensors") == pipe / "tokenizer"
    (tmp / "loose" / "text_encoder").mkdir(parents=True)  # a text_encoder/ folder outside a pipeline
    write_umt5_folder(spm, tmp / "loose" / "tokenizer")
    assert tokenizer_beside(tmp / "loose" / "text_encoder" / "model.safetensors") is None


def test_a_folder_with_remote_code_runs_nothing(spm: Path, tmp: Path) -> None:
    folder = write_umt5_folder(spm, tmp / "tok")
    (folder / "evil.py").write_text("raise SystemExit('foreign code ran')\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(folder)("a dog")["input_ids"] == sentencepiece_ids(spm, "a dog")


def test_broken_tokenizers_are_clear_errors(tmp: Path) -> None:
    (tmp / "empty").mkdir()
    with pytest.raises(CheckpointError, match="holds no tokenizer"):
        load_tokenizer(tmp / "empty")
    (tmp / "bad.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(CheckpointError) as err:
        load_tokenizer(tmp / "bad.model")
    assert "--tokenizer" in err.value.hint
