"""CLIP's text tokenizer: byte-level byte-pair encoding (BPE), written from scratch.

CLIP's text encoder reads a sequence of integer ids, one per *token*. This module turns a caption such as
"a photo of a brush hair." into those ids, exactly as OpenAI's CLIP does, so that pretrained weights see the
inputs they were trained on.

How byte-level BPE works, in four steps:

1. Clean the text: repair broken unicode (ftfy), undo HTML escaping (twice, because web captions are often
   escaped twice), fold runs of whitespace into one space, strip, and lower-case.
2. Split the text into "words" with a regular expression: runs of letters, single digits, runs of punctuation,
   and English contractions ('s, 't, ...). BPE never merges across these words.
3. Write each word as its UTF-8 bytes. Each of the 256 bytes gets its own printable unicode character (see
   `bytes_to_unicode`), so any string, in any script or with emoji, can be written with a 256-symbol alphabet and
   no "unknown" token is ever needed. The last symbol of a word gets a "</w>" suffix, which marks the word end
   (so "a" at the end of a word and "a" inside a word are different symbols).
4. Apply the learned merges: a ranked list of symbol pairs ("i n", "t h", ...), learned on CLIP's training
   captions, most frequent first. Repeatedly merge the adjacent pair that has the best (lowest) rank until no
   adjacent pair is in the list. Each remaining symbol is a vocabulary entry; its index is the token id.

The vocabulary (49408 entries) is: the 256 byte symbols, the same 256 with "</w>", one entry per merge (48894),
then the start-of-text (49406) and end-of-text (49407) tokens.

`Tokenizer.encode` returns the ids of a text without start/end tokens; `tokenize` builds the fixed-length
[N, 77] batch the text encoder takes: [sot] + ids + [eot], zero padded.
"""
from __future__ import annotations

import functools
import gzip
import html
import os
import reprlib

import ftfy
import regex  # the `regex` package, not `re`: it knows unicode classes such as \p{L} (any letter)
import torch

BPE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "bpe_simple_vocab_16e6.txt.gz")

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"

# CLIP uses the first 49152 - 256 - 2 = 48894 merges of the file, so the vocabulary has 256 + 256 + 48894 + 2 =
# 49408 entries.
NUM_MERGES = 49152 - 256 - 2

# How a cleaned text is cut into words. In order: the two special tokens (so they survive as one piece), English
# contractions, runs of letters, a single digit (numbers are spelled digit by digit), runs of anything that is
# neither whitespace, letter nor digit (punctuation, symbols, emoji). Whitespace is dropped; BPE's "</w>" keeps the
# word boundaries instead. IGNORECASE matters little since the text is lower-cased first, but CLIP compiled it so.
WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable unicode character.

    BPE works on strings, and the merges file is text, so every byte needs a visible stand-in. Bytes that are
    already printable, non-space characters (ASCII "!" to "~" and Latin-1 "¡" to "¬", "®" to "ÿ") stand for
    themselves; the others (control codes, space, soft hyphen, ...) get the characters 256, 257, ... in order.
    Example: the space byte 32 becomes "Ġ" (chr(288)).

    The dict's order matters: it is the order of token ids 0..255, printable bytes first ("!" is id 0), then the
    others in byte order.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {byte: chr(byte) for byte in printable}
    next_free = 256
    for byte in range(256):
        if byte not in table:
            table[byte] = chr(next_free)
            next_free += 1
    return table


def clean_text(text: str) -> str:
    """CLIP's text normalisation: fix unicode, unescape HTML twice, fold whitespace, strip, lower-case."""
    text = ftfy.fix_text(text)
    # Twice, because scraped captions are often escaped twice ("&amp;amp;" -> "&amp;" -> "&").
    text = html.unescape(html.unescape(text))
    # regex's \s (unicode White_Space), not re's, so that exactly the same characters count as whitespace.
    text = regex.sub(r"\s+", " ", text.strip())
    return text.strip().lower()


def load_merges(path: str = BPE_PATH) -> list[tuple[str, str]]:
    """Read the ranked merge list: line 0 is a version header, each next line is "left right"."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]


def merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every adjacent occurrence of `pair` in `symbols` by the joined symbol, scanning left to right.

    Occurrences do not overlap: with pair ("a", "a"), ["a", "a", "a"] becomes ["aa", "a"].
    """
    first, second = pair
    merged = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


class Tokenizer:
    """CLIP's byte-level BPE tokenizer: `encode` text to ids and `decode` ids back to text."""

    def __init__(self, bpe_path: str = BPE_PATH, cache_size: int = 2**16):
        merges = load_merges(bpe_path)
        # Rank = position in the merges list; lower rank = learned earlier = more frequent = merged first.
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}

        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}

        byte_symbols = list(self.byte_encoder.values())
        vocab = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
        vocab += ["".join(pair) for pair in merges]
        vocab += [SOT_TEXT, EOT_TEXT]
        self.encoder: dict[str, int] = {symbol: i for i, symbol in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: symbol for symbol, i in self.encoder.items()}

        self.sot_token: int = self.encoder[SOT_TEXT]  # 49406
        self.eot_token: int = self.encoder[EOT_TEXT]  # 49407
        self.vocab_size: int = len(vocab)  # 49408

        # Captions reuse the same words over and over, and BPE on a word is the slow part: remember the results.
        # One cache per instance (wrapping the bound method), so instances do not share or pin each other.
        self.bpe = functools.lru_cache(maxsize=cache_size)(self._bpe)

    def _bpe(self, word: str) -> tuple[str, ...]:
        """Split one byte-encoded word into vocabulary symbols by applying merges, best rank first."""
        # The special tokens are whole vocabulary entries of their own (and carry no "</w>"). As in OpenAI's
        # code, this also means a caption containing the literal text "<|endoftext|>" encodes it as token 49407.
        if word in (SOT_TEXT, EOT_TEXT):
            return (word,)
        symbols = list(word[:-1]) + [word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pairs = zip(symbols, symbols[1:])
            best = min(pairs, key=lambda pair: self.bpe_ranks.get(pair, float("inf")))
            if best not in self.bpe_ranks:  # no adjacent pair is a known merge: done
                break
            symbols = merge_pair(symbols, best)
        return tuple(symbols)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without start/end tokens (like OpenAI's SimpleTokenizer.encode)."""
        ids = []
        for word in WORD_PATTERN.findall(clean_text(text)):
            byte_word = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(byte_word))
        return ids

    def decode(self, ids: list[int]) -> str:
        """Text of token ids: join the symbols, map them back to bytes, decode UTF-8, turn "</w>" into spaces.

        Cleaning is lossy (case, whitespace), so this gives back the cleaned text, with a space after each word
        and spaces where punctuation met letters. Byte sequences that are not valid UTF-8 (a cut multi-byte
        character) become U+FFFD.
        """
        symbols = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[char] for char in symbols)
        return raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")


@functools.lru_cache(maxsize=None)
def default_tokenizer() -> Tokenizer:
    """The shared Tokenizer, built on first use (reading the merges takes a moment, so not at import time)."""
    return Tokenizer()


def tokenize(texts: str | list[str], context_length: int = 77, truncate: bool = False) -> torch.LongTensor:
    """Token ids for CLIP's text encoder: a LongTensor [N, context_length], one row per text.

    Each row is [sot] + encode(text) + [eot], then zeros. The text encoder reads its output at the eot token,
    found as the row's largest id (eot = 49407 is the largest id), so every row must contain it. A text too long
    for `context_length` raises ValueError, unless `truncate=True`: then the row is cut and its last id is
    replaced by eot.
    """
    if isinstance(texts, str):
        texts = [texts]
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2 (start and end tokens), got {context_length}")
    tok = default_tokenizer()
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [tok.sot_token] + tok.encode(text) + [tok.eot_token]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {reprlib.repr(text)} is {len(ids)} tokens long (start/end tokens included), more than "
                    f"context_length={context_length}; shorten it or pass truncate=True"
                )
            ids = ids[:context_length]
            ids[-1] = tok.eot_token
        result[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return result
