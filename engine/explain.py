"""Why this image: where each content word of a query looked in a gallery image.

``explain`` reads a query with an image through the fusion layers and returns, per content
word, the cross-attention weights of that word's tokens on the image patches: the last
fusion layer's (or the mean over all fusion layers), averaged over heads and over the
word's tokens, as a [grid_h, grid_w] map (token 0 of the image, the pooled token, is left
out). They show what the ITM re-ranker read, not why it scored as it did: attention is
not a causal attribution (docs/design.md). engine/explain_figure.py draws them.

Words: the query is cleaned and tokenized as search and evaluation do. A SentencePiece
piece starting with "▁" starts a word; a piece holding a CJK character is a word of its
own (Chinese is written without spaces, and XLM-R's Chinese pieces are mostly words);
special tokens (``<s>``, ``</s>``, ``<unk>`` ...) belong to no word; pieces without a letter
or digit (punctuation) stay in the word's text but not in its map. Content words are those
left once the language's stop words are removed (``STOP_WORDS``; a language without a
list keeps every word).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from data.datasets import GalleryDataset
from data.text import tokenize_caption
from utils.config import Config

LAYERS = ("last", "mean")
MAX_WORDS = 6
SPACE = "\u2581"  # SentencePiece's word-start mark
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")

# Function words: articles, prepositions, pronouns, conjunctions, auxiliaries and the
# "wearing"-type verbs nearly every caption has. Nouns, adjectives and colours stay.
_EN = """a an the and or but nor with without in on at of to from by for over under into onto up down
around near behind beside across along his her hers he she him they them their theirs its it this that
these those is are was were be been being has have having had who whom whose which while also there as
some any one pair wearing wears wear worn dressed appears looks seems can see seen visible very""".split()
_FR = """le la les l un une des du de d et ou avec sans dans en sur sous à au aux par pour vers chez il elle
ils elles lui leur leurs son sa ses se s qui que qu est sont a ont été être porte portant portent vêtu
vêtue habillé habillée ce cette ces cet y très""".split()
_DE = """der die das den dem des ein eine einen einem einer eines und oder mit ohne in im an am auf aus bei
von vom zu zum zur für über unter um er sie es ihm ihn ihr ihre ihren ihrem ihrer sein seine seinen
seinem seiner ist sind hat haben war trägt tragen trug gekleidet welche welcher welches auch sehr""".split()
_ZH = """的 和 了 着 在 是 一个 一 个 有 他 她 穿 穿着 也 与 及 并 还 把 被 戴 戴着 一件 一条 一双 件 条
双 名 位 这 那 其 这位 这个 一位 一名 一顶 一把 一部 一本 戴了 身穿 上身 下身 脚上 脚穿 手上 手里 头戴 留着
扎着 身材""".split()
STOP_WORDS: dict[str, frozenset[str]] = {"en": frozenset(_EN), "fr": frozenset(_FR), "de": frozenset(_DE),
                                         "ch": frozenset(_ZH), "zh": frozenset(_ZH)}


@dataclass(frozen=True)
class Explanation:
    """One gallery image and, per content word of the query in query order, its heat map:
    the cross-attention weights of the word on the image patches, [grid_h, grid_w] (not
    normalised; the drawing scales each map to its own maximum)."""
    path: str
    words: list[tuple[str, torch.Tensor]]


def _edge_trimmed(text: str) -> str:
    """``text`` without punctuation or symbols at either end (what a reader calls the word)."""
    keep = [unicodedata.category(c)[0] not in "PS" for c in text]
    if not any(keep):
        return ""
    first, last = keep.index(True), len(keep) - 1 - keep[::-1].index(True)
    return text[first:last + 1]


def group_words(pieces: Sequence[str | None]) -> list[tuple[str, list[int]]]:
    """(word, positions of its tokens in ``pieces``) in query order; None marks a special token.

    The grouping rules are the module docstring's; a word whose pieces are all punctuation
    has no positions.
    """
    words: list[tuple[str, list[int]]] = []
    boundary = True
    for pos, piece in enumerate(pieces):
        if piece is None:
            continue
        text = piece[1:] if piece.startswith(SPACE) else piece
        boundary = boundary or piece.startswith(SPACE)
        if not text:  # a lone "▁" only marks where a word starts
            continue
        alone = _CJK.search(text) is not None
        has_content = any(c.isalnum() for c in text)
        if boundary or alone or not words:
            words.append((text, [pos] if has_content else []))
        else:
            prev, positions = words[-1]
            words[-1] = (prev + text, positions + [pos] if has_content else positions)
        boundary = alone
    return [(_edge_trimmed(w), positions) for w, positions in words]


def content_words(pieces: Sequence[str | None], lang: str, max_words: int = MAX_WORDS) -> list[tuple[str, list[int]]]:
    """The first ``max_words`` words of ``pieces`` (see ``group_words``) that are not stop
    words of ``lang`` and have tokens to average."""
    stop = STOP_WORDS.get(lang, frozenset())
    kept = [(w, p) for w, p in group_words(pieces) if p and w and w.lower() not in stop]
    return kept[:max_words]


def query_pieces(tokenizer, ids: Sequence[int]) -> list[str | None]:
    """The SentencePiece piece of each id, None for special tokens."""
    special = set(tokenizer.all_special_ids)
    return [None if i in special else p for i, p in zip(ids, tokenizer.convert_ids_to_tokens(list(ids)))]


def word_maps(probs: list[torch.Tensor], words: list[tuple[str, list[int]]], grid: tuple[int, int],
              layers: str) -> torch.Tensor:
    """[B, W, grid_h, grid_w]: per word, the mean over its tokens of the head-averaged
    attention on the patches; ``probs`` per fusion layer [B, heads, L, 1 + N]."""
    chosen = probs[-1] if layers == "last" else torch.stack(probs).mean(0)
    patches = chosen.mean(1)[:, :, 1:]  # [B, L, N]; token 0 of the image is the pooled token
    if patches.shape[-1] != grid[0] * grid[1]:
        raise ValueError(f"{patches.shape[-1]} image tokens for a {grid[0]}x{grid[1]} patch grid")
    per_word = [patches[:, positions].mean(1) for _, positions in words]
    b = patches.shape[0]
    if not per_word:
        return patches.new_zeros(b, 0, *grid)
    return torch.stack(per_word, 1).view(b, len(words), *grid)


def load_images(cfg: Config, paths: Sequence[str]) -> torch.Tensor:
    """[B, 3, H, W] with the test-time transform (an unreadable image follows ``data.on_bad_image``)."""
    data = GalleryDataset(cfg, list(paths))
    return torch.stack([data[i][0] for i in range(len(data))])


@torch.no_grad()
def explain(model, tokenizer, cfg: Config, query: str, lang: str, image_paths: list[str], device: torch.device,
            layers: str = "last", max_words: int = MAX_WORDS) -> list[Explanation]:
    """Per image of ``image_paths`` (in order), the heat maps of the first ``max_words``
    content words of ``query`` (in language ``lang``, which picks the stop words).

    ``model`` is the plain BiIRRA (not a DDP wrapper); it runs in fp32 and eval mode, and
    its training mode is restored afterwards. ``layers``: "last" (the last fusion layer)
    or "mean" (the mean over all fusion layers). Images go through in batches of
    ``data.test_batch_size``.
    """
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
    ids, mask = (t.to(device) for t in tokenize_caption(tokenizer, cfg, query))
    words = content_words(query_pieces(tokenizer, ids[0].tolist()), lang, max_words)
    h, w = cfg.experiment.input_resolution
    grid = (h // cfg.patch_size, w // cfg.patch_size)
    was_training = model.training
    model.eval()
    try:
        text = model.encode_text(ids, mask)
        out: list[Explanation] = []
        step = cfg.data.test_batch_size
        for start in range(0, len(image_paths), step):
            paths = image_paths[start:start + step]
            images = model.encode_image(load_images(cfg, paths).to(device))
            n = images.shape[0]
            probs = model.cross_attention(text.expand(n, -1, -1), mask.expand(n, -1), images)
            maps = word_maps(probs, words, grid, layers).float().cpu()
            out += [Explanation(p, [(word, maps[i, j]) for j, (word, _) in enumerate(words)])
                    for i, p in enumerate(paths)]
        return out
    finally:
        model.train(was_training)


__all__ = ["Explanation", "LAYERS", "MAX_WORDS", "STOP_WORDS", "content_words", "explain", "group_words",
           "query_pieces", "word_maps"]
