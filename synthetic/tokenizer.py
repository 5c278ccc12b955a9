"""The text_encoder/ folder of a generated dataset: a SentencePiece tokenizer of its captions, a small XLM-R config."""
from __future__ import annotations

import io
import json
import tempfile
from collections import Counter
from pathlib import Path

from synthetic.captions import CH_WORDS

# tokenizer files that an earlier generation (or transformers version) may have left in the folder and that
# from_pretrained would read: removed before saving, so the folder holds only what the new model gives
STALE_TOKENIZER_FILES = ("tokenizer.json", "special_tokens_map.json", "added_tokens.json")


def _is_cjk(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff"


def train_sentencepiece(captions: list[str], vocab_size: int = 4000) -> bytes:
    """A unigram SentencePiece model (xlm-roberta-base's kind) for the cleaned ``captions``.

    SentencePiece's own unigram trainer breaks down on a corpus this repetitive (a few
    hundred distinct words: it keeps ~100 character-like pieces for English and whole
    clauses for Chinese), and a BPE model would be read by Hugging Face's XLM-R tokenizer
    as unigram pieces scored by merge rank, which cuts words into fragments. So the pieces
    come from a BPE run, except for Chinese: BPE would merge whole clauses such as "wears a
    red hat" into one piece, and a shorter cap cuts across words ("穿棕|色的"), so its
    multi-character pieces are replaced by the words of the caption tables
    (``CH_WORDS``; any other character is a piece of its own), which keeps colour and
    garment words consistent and compositional. Each piece is scored by the log of its
    frequency in the corpus segmented into the fewest pieces. SentencePiece and the Hugging
    Face tokenizer then cut every caption the same way, at word boundaries.
    """
    import math

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    from data.text import clean_caption

    bpe = io.BytesIO()  # written from memory: a model_prefix would embed the output path in the file
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(captions), model_writer=bpe, model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, num_threads=1, minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(bpe.getvalue())
    proto.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    normal = pb.ModelProto.SentencePiece.NORMAL
    keep = [p for p in proto.pieces
            if p.type != normal or len(p.piece.lstrip("\u2581")) <= 1 or not any(map(_is_cjk, p.piece))]
    del proto.pieces[:]
    proto.pieces.extend(keep)
    have = {p.piece for p in keep}
    for word in dict.fromkeys(clean_caption(w) for w in CH_WORDS):
        if word not in have:
            proto.pieces.add(piece=word, type=normal)
    for p in proto.pieces:
        p.score = -1.0  # equal scores: the fewest pieces win
    fewest = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
    counts = Counter(p for c in captions for p in fewest.encode(c, out_type=str))
    total = sum(counts.values())
    for p in proto.pieces:
        if p.type == normal:
            p.score = math.log(max(counts[p.piece], 0.5) / total)
    return proto.SerializeToString()


def write_text_encoder(captions: list[str], out: Path, hidden_size: int = 128) -> None:
    """SentencePiece tokenizer in the xlm-roberta-base folder layout plus a small XLM-R config.json.

    SentencePiece ids: unk 0, bos 1, eos 2, no pad; the XLM-R tokenizer maps them to
    ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3 and appends ``<mask>``. Full character
    coverage keeps every Chinese character a piece instead of ``<unk>``. No dropout: the
    demo underfits, and on the CPU attention dropout forces SDPA's math kernel and its
    Bernoulli draws, which took over a third of a demo step (docs/benchmarks.md).

    The Hugging Face tokenizer is built in an empty temporary folder from the new
    SentencePiece model alone, then saved into ``out``: loaded from ``out`` itself, it
    would prefer a ``tokenizer.json`` left there by an earlier generation to the new model.
    """
    from transformers import AutoTokenizer

    from data.text import clean_caption

    captions = [clean_caption(c) for c in captions]  # the pipeline tokenizes cleaned (lower-case) text
    out.mkdir(parents=True, exist_ok=True)
    max_tokens = 128
    model = train_sentencepiece(captions)
    (out / "sentencepiece.bpe.model").write_bytes(model)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sentencepiece.bpe.model").write_bytes(model)
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": max_tokens}, indent=2) + "\n")
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        for name in STALE_TOKENIZER_FILES:
            (out / name).unlink(missing_ok=True)
        tokenizer.save_pretrained(str(out))
    config = {"architectures": ["XLMRobertaForMaskedLM"], "model_type": "xlm-roberta", "vocab_size": len(tokenizer),
              "hidden_size": hidden_size, "num_attention_heads": 4, "intermediate_size": 4 * hidden_size,
              "num_hidden_layers": 2, "max_position_embeddings": max_tokens + 2, "layer_norm_eps": 1e-5,
              "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
              "hidden_act": "gelu", "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
              "initializer_range": 0.02}
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
