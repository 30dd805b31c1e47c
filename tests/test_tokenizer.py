"""tokenizer.py against OpenAI's reference tokenizer (clip/simple_tokenizer.py from the openai-clip package).

Our tokenizer is written independently; these tests check that it gives the same ids and the same decoded text
as OpenAI's on a broad corpus plus a seeded random fuzz, and that `tokenize` follows OpenAI's clip.tokenize
semantics ([sot] + encode(text) + [eot], zero padded, error or truncation when too long).
"""
import os
import random

import pytest
import regex
import torch

import tokenizer

# HMDB-51 class names, from the authors' labels file shipped in splits/ (names as they are in the CSV, "_" as " ").
HMDB51_CSV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "splits", "labels",
                          "hmdb_51_labels.csv")
with open(HMDB51_CSV, encoding="utf-8") as _f:
    HMDB51_CLASSES = [line.split(",", 1)[1].strip().replace("_", " ") for line in _f.read().strip().splitlines()[1:]]

CORPUS = {
    "plain": ["a photo of a cat.", "A video of a person doing push ups", "hello world", "x", "I"],
    "mixed_case": ["Hello World", "hELLo WoRLD", "NASA JPEG iPhone McDonald", "CamelCaseWordsLikeThis", "ÉCOLE Über"],
    "accents": ["café naïve résumé", "São Paulo, Kraków, Zürich", "crème brûlée", "ñandú pingüino", "Ångström"],
    "unicode_scripts": [
        "Привет, мир", "Γειά σου Κόσμε", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีชาวโลก",
        "İstanbul ıı", "straße STRASSE ß", "ﬁ ligature", "Ⅻ ½ ² ①", "e\u0301 combining acute", "zero\u200bwidth",
    ],
    "cjk": ["東京タワーの写真", "一只猫的照片", "한국어 텍스트", "日本語とEnglishの混在", "ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ"],
    "emoji": ["😀", "a photo of a 🐶 and a 🐱!", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "❤️🔥✨", "thumbs 👍🏽 up"],
    "html_entities": [
        "Tom &amp; Jerry", "&lt;b&gt;bold&lt;/b&gt;", "it&#39;s", "it&amp;#39;s double", "&amp;amp; twice",
        "&amp;lt;tag&amp;gt;", "&quot;quoted&quot;", "a&nbsp;b", "&#x27;hex&#x27;", "&copy; 2023 &euro;5",
        "&amp;amp;amp; three times",
    ],
    "numbers": ["123", "3.14159", "1,000,000", "2023-06-18", "v2.0.1", "0x1F600", "50% off", "-42", "1st 2nd 3rd"],
    "punctuation": [
        "!!!", "?!?!", "...", "a -- b", "(nested [brackets {here}])", "@#$%^&*", "'''", "\"\"", "a...b!!!c???",
        "~`|\\/<>", "—–‒", "«quotes» “curly” ‘single’",
    ],
    "contractions": [
        "it's", "don't", "we're", "they've", "I'm", "we'll", "he'd", "IT'S DON'T WE'RE", "'s 't 're 've 'm 'll 'd",
        "rock'n'roll", "o'clock", "ma'am", "y'all'd've", "the dogs' bones", "it’s curly",
    ],
    "whitespace": ["", " ", "   ", "\t", "\n", "\r\n", "\t \n \r", "\u00a0", "\u3000", "a\tb\nc", "  padded  ",
                   "line1\n\nline2", "a\x0bb\x0cc", "a\x1cb", "a\u2028b\u2029c", "\u200b"],
    "special_token_text": ["<|startoftext|>", "<|endoftext|>", "a <|endoftext|> b", "<|ENDOFTEXT|>",
                           "x<|startoftext|>y", "!<|endoftext|>", "<|endoftext"],
    "mojibake": [
        "cafÃ©", "The Mona Lisa doesnâ€™t have eyebrows.", "â€œquotedâ€\x9d", "Ã¼ber", "Ã\xa0 la carte",
        "ÃƒÂ©lan", "&amp;lt;3 â€” dash", "\ufeffbyte order mark",
    ],
    "long": [
        "a photo of a person riding a horse " * 60,
        "supercalifragilisticexpialidocious" * 30,
        "1234567890" * 80,
        "!?" * 300,
        "東京" * 200,
        "😀" * 100,
        "word " * 2000,
    ],
    "hmdb_prompts": [f"a photo of a {name}." for name in HMDB51_CLASSES],
}

# Characters for the random fuzz: letters of several scripts, digits, punctuation, whitespace of several kinds,
# combining marks, emoji (with joiners and modifiers), and pieces of HTML entities and contractions.
FUZZ_ALPHABET = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
    + list(" \t\n\r\x0b\x0c\x1c\x85\u00a0\u2003\u3000")
    + list("éèêëàâäôöüçñßøåæœÉÀÜ\u0301\u0308ıİ")
    + list("абвгдЖЗИλμπΩאבגمنهकखग")
    + list("東京日本語猫写真한국어ｆｕ")
    + ["😀", "🐶", "👍", "🏽", "\u200d", "\ufe0f", "🇫", "🇷", "½", "²", "Ⅻ", "\u200b", "\ufeff", "\x00", "\x7f"]
    + ["&amp;", "&lt;", "&gt;", "&#39;", "&quot;", "&amp;amp;", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
    + ["Ã©", "â€™", "<|endoftext|>"]
)


def fuzz_strings(count=400, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(FUZZ_ALPHABET) for _ in range(rng.randint(0, 40))) for _ in range(count)]


@pytest.fixture(scope="module")
def ref(openai_tokenizer_module):
    return openai_tokenizer_module.SimpleTokenizer()


@pytest.fixture(scope="module")
def ours():
    return tokenizer.Tokenizer()


def reference_tokenize(ref, texts, context_length=77, truncate=False):
    """OpenAI's clip.tokenize semantics, rebuilt on the reference SimpleTokenizer (clip/clip.py is not importable)."""
    sot, eot = ref.encoder["<|startoftext|>"], ref.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [sot] + ref.encode(text) + [eot]
        if len(ids) > context_length:
            assert truncate, "reference would raise"
            ids = ids[:context_length]
            ids[-1] = eot
        result[i, : len(ids)] = torch.tensor(ids)
    return result


def first_mismatch(texts, ours_fn, ref_fn):
    for text in texts:
        got, want = ours_fn(text), ref_fn(text)
        if got != want:
            return f"text {text!r}:\n ours {got}\n ref  {want}"
    return None


# ---------------------------------------------------------------- vocabulary and tables


def test_special_ids_and_vocab_size(ours):
    assert ours.sot_token == 49406
    assert ours.eot_token == 49407
    assert ours.vocab_size == 49408
    assert ours.decoder[0] == "!"  # printable bytes come first in the byte table


def test_byte_table_matches_openai_in_order(openai_tokenizer_module):
    # Order matters: it fixes the ids 0..255.
    assert list(tokenizer.bytes_to_unicode().items()) == list(openai_tokenizer_module.bytes_to_unicode().items())
    assert tokenizer.bytes_to_unicode()[ord(" ")] == "Ġ"


def test_vocab_and_merges_match_openai(ours, ref):
    assert ours.encoder == ref.encoder
    assert ours.bpe_ranks == ref.bpe_ranks
    assert len(ours.bpe_ranks) == 49152 - 256 - 2


def test_merge_pair_is_left_to_right_without_overlap():
    assert tokenizer.merge_pair(["a", "a", "a"], ("a", "a")) == ["aa", "a"]
    assert tokenizer.merge_pair(["t", "h", "e", "t", "h"], ("t", "h")) == ["th", "e", "th"]
    assert tokenizer.merge_pair(["a", "b"], ("b", "a")) == ["a", "b"]


def test_clean_text_matches_openai(openai_tokenizer_module):
    m = openai_tokenizer_module
    texts = [t for group in CORPUS.values() for t in group] + fuzz_strings(100, seed=1)
    for text in texts:
        assert tokenizer.clean_text(text) == m.whitespace_clean(m.basic_clean(text)).lower(), repr(text)


# ---------------------------------------------------------------- encode / decode against OpenAI


@pytest.mark.parametrize("group", list(CORPUS))
def test_encode_matches_openai(ours, ref, group):
    problem = first_mismatch(CORPUS[group], ours.encode, ref.encode)
    assert problem is None, problem


@pytest.mark.parametrize("group", list(CORPUS))
def test_decode_of_encode_matches_openai(ours, ref, group):
    problem = first_mismatch(CORPUS[group], lambda t: ours.decode(ours.encode(t)), lambda t: ref.decode(ref.encode(t)))
    assert problem is None, problem


def test_fuzz_encode_and_decode_match_openai(ours, ref):
    texts = fuzz_strings(400, seed=0)
    problem = first_mismatch(texts, ours.encode, ref.encode)
    assert problem is None, problem
    problem = first_mismatch(texts, lambda t: ours.decode(ours.encode(t)), lambda t: ref.decode(ref.encode(t)))
    assert problem is None, problem


def test_decode_of_random_ids_matches_openai(ours, ref):
    # Random ids include cut multi-byte characters (decoded as U+FFFD) and the special tokens.
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(ours.vocab_size) for _ in range(rng.randint(0, 20))]
        assert ours.decode(ids) == ref.decode(ids), ids
    assert ours.decode(torch.tensor([320, 1125])) == ref.decode([320, 1125])  # tensors of ids work too


def test_some_known_ids(ours):
    # A few hand-checkable facts: whole common words are single tokens with "</w>".
    assert ours.encode("a photo of a") == [ours.encoder["a</w>"], ours.encoder["photo</w>"],
                                           ours.encoder["of</w>"], ours.encoder["a</w>"]]
    assert ours.encode("") == [] and ours.encode(" \t\n ") == []
    assert ours.encode("2023") == ours.encode("2 0 2 3")  # numbers are spelled one digit at a time


def test_cleaning_effects(ours):
    assert ours.encode("Tom &amp;amp; Jerry") == ours.encode("tom & jerry")  # unescaped twice, lower-cased
    assert ours.encode("cafÃ©") == ours.encode("café")  # ftfy repairs mojibake
    assert ours.encode("  a \t\n photo  ") == ours.encode("a photo")  # whitespace folded


def test_literal_special_token_text_is_encoded_as_the_special_token(ours, ref):
    # OpenAI quirk, matched on purpose: the split pattern and BPE cache treat "<|endoftext|>" in the text as the
    # special token itself, not as punctuation and letters.
    assert ours.encode("<|endoftext|>") == ref.encode("<|endoftext|>") == [49407]
    assert ours.encode("a <|startoftext|>") == ref.encode("a <|startoftext|>") == [ours.encoder["a</w>"], 49406]


def test_round_trip_keeps_every_non_space_character(ours):
    # decode(encode(x)) gives back the cleaned text up to spacing: every word ends in a space, and punctuation
    # becomes its own word.
    texts = [t for group in CORPUS.values() for t in group if "<|" not in t] + fuzz_strings(100, seed=2)
    for text in texts:
        cleaned = tokenizer.clean_text(text)
        decoded = ours.decode(ours.encode(text))
        assert regex.sub(r"\s", "", decoded) == regex.sub(r"\s", "", cleaned), repr(text)
    assert ours.decode(ours.encode("A Photo of a CAT.")) == "a photo of a cat . "


def test_bpe_cache_is_used(ours):
    ours.encode("somersault somersault")
    before = ours.bpe.cache_info().hits
    ours.encode("somersault")
    assert ours.bpe.cache_info().hits == before + 1


def test_hmdb_class_names_are_all_there():
    assert len(HMDB51_CLASSES) == 51 and "brush hair" in HMDB51_CLASSES and "ride horse" in HMDB51_CLASSES


# ---------------------------------------------------------------- tokenize()


def test_tokenize_shape_dtype_and_padding():
    out = tokenizer.tokenize("a photo of a cat.")
    assert out.shape == (1, 77) and out.dtype == torch.long
    n = 2 + 6  # sot, 6 tokens, eot
    assert out[0, 0].item() == 49406
    assert out[0, n - 1].item() == 49407
    assert out[0, n - 1].item() == out[0].max().item()  # CLIP finds eot with argmax
    assert (out[0, n:] == 0).all()

    batch = tokenizer.tokenize(["a", "b c", ""], context_length=16)
    assert batch.shape == (3, 16)
    assert batch[2, :2].tolist() == [49406, 49407] and (batch[2, 2:] == 0).all()
    assert tokenizer.tokenize([]).shape == (0, 77)


def test_tokenize_matches_openai_semantics(ref):
    texts = [t for group in CORPUS.values() for t in group if len(ref.encode(t)) <= 75] + fuzz_strings(50, seed=3)
    assert torch.equal(tokenizer.tokenize(texts), reference_tokenize(ref, texts))
    hmdb = CORPUS["hmdb_prompts"]
    assert torch.equal(tokenizer.tokenize(hmdb, context_length=12), reference_tokenize(ref, hmdb, 12))


def test_tokenize_exact_fit_and_overflow_error():
    fits = "a " * 75  # 75 tokens + sot + eot = 77
    row = tokenizer.tokenize(fits)[0]
    assert row[-1].item() == 49407 and (row[1:-1] == tokenizer.default_tokenizer().encoder["a</w>"]).all()

    too_long = "a " * 76 + "final words that do not fit"
    with pytest.raises(ValueError) as error:
        tokenizer.tokenize(["ok", too_long])
    message = str(error.value)
    assert "84 tokens" in message  # 76 + 6 words + sot + eot
    assert "context_length=77" in message
    assert "'a a a" in message and "..." in message  # names the text, shortened
    assert len(message) < 250


def test_tokenize_truncate_ends_in_eot(ref):
    long_texts = CORPUS["long"]
    out = tokenizer.tokenize(long_texts, truncate=True)
    assert out.shape == (len(long_texts), 77)
    assert (out[:, 0] == 49406).all() and (out[:, -1] == 49407).all()
    assert torch.equal(out, reference_tokenize(ref, long_texts, truncate=True))
    for row, text in zip(out, long_texts):
        assert row[1:-1].tolist() == ref.encode(text)[:75]


def test_tokenize_rejects_too_small_context():
    with pytest.raises(ValueError, match="context_length"):
        tokenizer.tokenize("a", context_length=1)


def test_default_tokenizer_is_created_once():
    assert tokenizer.default_tokenizer() is tokenizer.default_tokenizer()
