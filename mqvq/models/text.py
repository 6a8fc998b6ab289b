"""Caption tokenizer for text-conditional stage 2 (paper §3.3: text tokens prefix the code sequence).

The paper uses no pretrained text encoder, so the vocabulary is learned from the training
captions: a word-level vocabulary (lower-case words and punctuation marks), the most frequent
first, ties broken alphabetically, so the same captions in any order give the same tokenizer.
Id 0 is padding (a dropped condition is all padding), id 1 stands for a word outside the
vocabulary. It is saved inside the stage-2 checkpoint (`to_dict`).

Extension point: any object with `encode(texts, length) -> LongTensor (B, length)` of ids below
`size`, `decode`, `to_dict` and a `kind` that `from_dict` knows can replace it (a BPE, or the ids
of a frozen pretrained encoder's tokenizer); the Stackformer only sees ids.
"""

from __future__ import annotations

import re
from collections import Counter

import torch

PAD, UNK = 0, 1
SPECIALS = ("<pad>", "<unk>")
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lower-case words and single punctuation marks."""
    return _WORD.findall(text.lower())


class WordTokenizer:
    kind = "word"

    def __init__(self, vocab: list[str]):
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def build(cls, captions: list[str], max_size: int) -> "WordTokenizer":
        """The `max_size - 2` most frequent words of `captions` (ties alphabetical) after the specials."""
        counts = Counter(w for c in captions for w in words(c))
        ranked = sorted(counts, key=lambda w: (-counts[w], w))[: max(0, max_size - len(SPECIALS))]
        return cls([*SPECIALS, *ranked])

    @property
    def size(self) -> int:
        return len(self.vocab)

    def ids(self, text: str) -> list[int]:
        return [self.index.get(w, UNK) for w in words(text)]

    def unknown(self, text: str) -> list[str]:
        """The words of `text` outside the vocabulary (read as <unk>)."""
        return [w for w in words(text) if w not in self.index]

    def encode(self, texts: list[str], length: int) -> torch.Tensor:
        """(B, length) ids, truncated to `length` words, padded with PAD."""
        out = torch.full((len(texts), length), PAD, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = self.ids(t)[:length]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids) -> str:
        """Ids back to words joined by spaces (padding dropped)."""
        return " ".join(self.vocab[i] for i in (ids.tolist() if torch.is_tensor(ids) else ids) if i != PAD)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab": self.vocab}


def from_dict(d: dict) -> WordTokenizer:
    if d.get("kind") != WordTokenizer.kind:
        raise ValueError(f"unknown text tokenizer kind {d.get('kind')!r}")
    return WordTokenizer(d["vocab"])
