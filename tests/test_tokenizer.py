"""lstm_vs_gru.tokenizer against Keras 2 behaviour (keras-preprocessing 1.1.2, which Keras 2 re-exported).

Quoted from `keras_preprocessing/text.py`:

    def text_to_word_sequence(text, filters='!"#$%&()*+,-./:;<=>?@[\\\\]^_`{|}~\\t\\n', lower=True, split=" "):
        if lower:
            text = text.lower()
        translate_dict = dict((c, split) for c in filters)
        translate_map = maketrans(translate_dict)
        text = text.translate(translate_map)
        seq = text.split(split)
        return [i for i in seq if i]

    # fit_on_texts: self.word_counts = OrderedDict(); ... self.word_counts[w] += 1 (or = 1)
    wcounts = list(self.word_counts.items())
    wcounts.sort(key=lambda x: x[1], reverse=True)
    # note that index 0 is reserved, never assigned to an existing word
    self.word_index = dict(list(zip(sorted_voc, list(range(1, len(sorted_voc) + 1)))))

    # texts_to_sequences_generator, with oov_token None:
    i = self.word_index.get(w)
    if i is not None:
        if num_words and i >= num_words: (dropped)
        else: vect.append(i)

and from `keras_preprocessing/sequence.py` (pad_sequences, value=0, dtype int32):

    if truncating == 'pre': trunc = s[-maxlen:]    elif truncating == 'post': trunc = s[:maxlen]
    if padding == 'post': x[idx, :len(trunc)] = trunc    elif padding == 'pre': x[idx, -len(trunc):] = trunc
"""
from __future__ import annotations

import json
import string

import numpy as np
import pytest

from lstm_vs_gru.errors import UserError
from lstm_vs_gru.params import KERAS2_FILTERS
from lstm_vs_gru.tokenizer import (
    DEFAULT_FILTERS, Vocabulary, fit, offsets_from_lengths, pad, read_vocabulary, text_to_words,
)

# The Keras 2 docs' own example: 'the' (3 times) first, then every other word in first-seen order.
DOCS_EXAMPLE = ["The cat sat on the mat.", "The dog ate my homework."]
DOCS_EXAMPLE_INDEX = {"the": 1, "cat": 2, "sat": 3, "on": 4, "mat": 5, "dog": 6, "ate": 7, "my": 8, "homework": 9}


def sequences(ids: np.ndarray, offsets: np.ndarray) -> list[list[int]]:
    return [ids[start:end].tolist() for start, end in zip(offsets[:-1], offsets[1:])]


# --- splitting words ---

def test_default_filters_are_keras2_defaults():
    assert DEFAULT_FILTERS == '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n' == KERAS2_FILTERS
    # string.punctuation minus the apostrophe (31), plus tab and newline
    assert len(DEFAULT_FILTERS) == 33 and set(DEFAULT_FILTERS) == set(string.punctuation) - {"'"} | {"\t", "\n"}


@pytest.mark.parametrize("char", list(DEFAULT_FILTERS))
def test_each_default_filter_char_separates_words(char):
    assert text_to_words(f"one{char}two{char}{char}three{char}") == ["one", "two", "three"]


def test_only_space_splits_other_whitespace_and_apostrophe_stay_in_words():
    # split=" " is str.split(" "): carriage returns, form feeds and no-break spaces are word characters.
    assert text_to_words("don't\rstop\x0cnow\xa0please  go") == ["don't\rstop\x0cnow\xa0please", "go"]


def test_lower_false_keeps_case_and_lower_true_folds_it():
    assert text_to_words("The THE the", lower=False) == ["The", "THE", "the"]
    assert text_to_words("The THE the") == ["the", "the", "the"]
    assert fit(["The THE the"], lower=False).counts == (1, 1, 1)


def test_lower_happens_before_filtering():
    # Filtering "a" removes the upper-case A too, because the text is lower-cased first...
    assert text_to_words("bAnAna", filters="a") == ["b", "n", "n"]
    # ...and an upper-case filter character matches nothing once the text is lower-case.
    assert text_to_words("bAnAna", filters="A") == ["banana"]
    assert text_to_words("bAnAna", lower=False, filters="A") == ["b", "n", "na"]


def test_unicode_and_latin1_characters_are_kept():
    assert text_to_words("Café NAÏVE Æsir straße ½ €uro") == ["café", "naïve", "æsir", "straße", "½", "€uro"]


def test_empty_filters_split_on_space_only():
    assert text_to_words("a,b c.", filters="") == ["a,b", "c."]


# --- fitting ---

def test_fit_reproduces_keras_docs_example():
    vocabulary = fit(DOCS_EXAMPLE)
    assert vocabulary.index == DOCS_EXAMPLE_INDEX
    assert vocabulary.counts == (3, 1, 1, 1, 1, 1, 1, 1, 1)
    assert vocabulary.document_count == 2


def test_ties_keep_first_seen_order_across_documents():
    # counts: b 2, a 3, c 2, d 1, e 2 -> a; then b, c, e (first seen in that order); then d
    vocabulary = fit(["b a", "a c b", "d a e c", "e"])
    assert vocabulary.words == ("a", "b", "c", "e", "d")
    assert vocabulary.counts == (3, 2, 2, 2, 1)


def test_counts_are_occurrences_not_documents():
    assert fit(["x x x", "y", "y"]).words == ("x", "y")


def test_empty_documents():
    vocabulary = fit(["", "   ", "!!! ..."])
    assert vocabulary.words == () and vocabulary.document_count == 3
    ids, offsets = vocabulary.encode(["", "anything"], num_words=10)
    assert ids.dtype == np.int32 and ids.tolist() == []
    assert offsets.dtype == np.int64 and offsets.tolist() == [0, 0, 0]


# --- encoding ---

def test_encode_matches_texts_to_sequences_and_drops_unknown_words():
    vocabulary = fit(DOCS_EXAMPLE)
    ids, offsets = vocabulary.encode(["The unicorn sat on THE mat!", "", "zebra", "dog"], num_words=None)
    assert sequences(ids, offsets) == [[1, 3, 4, 1, 5], [], [], [6]]


def test_num_words_boundary_keeps_rank_num_words_minus_one_only():
    vocabulary = fit(DOCS_EXAMPLE)
    text = ["the cat sat on"]  # ranks 1, 2, 3, 4
    assert sequences(*vocabulary.encode(text, num_words=4)) == [[1, 2, 3]]
    assert sequences(*vocabulary.encode(text, num_words=3)) == [[1, 2]]
    assert sequences(*vocabulary.encode(text, num_words=2)) == [[1]]
    assert sequences(*vocabulary.encode(text, num_words=10)) == [[1, 2, 3, 4]]
    assert vocabulary.kept_words(3) == 2 and vocabulary.kept_words(100) == 9 and vocabulary.kept_words(None) == 9


def test_encode_uses_the_vocabulary_settings():
    vocabulary = fit(["Big BIG big!"], lower=False, filters="!")
    assert vocabulary.words == ("Big", "BIG", "big")
    assert sequences(*vocabulary.encode(["big! BIG, Big"], num_words=None)) == [[3, 1]]  # "BIG," is unknown


def test_encode_with_raw_lengths_counts_words_before_dropping():
    vocabulary = fit(DOCS_EXAMPLE)
    ids, offsets, raw = vocabulary.encode_with_raw_lengths(["the cat zebra", "", "homework dog"], num_words=7)
    assert sequences(ids, offsets) == [[1, 2], [], [6]]
    assert raw.tolist() == [3, 0, 2]


def test_offsets_from_lengths():
    assert offsets_from_lengths([2, 0, 3]).tolist() == [0, 2, 2, 5]
    assert offsets_from_lengths([]).tolist() == [0]
    assert offsets_from_lengths([1]).dtype == np.int64


# --- vocabulary JSON ---

def test_json_round_trip_with_awkward_words():
    vocabulary = fit(['Tab\there "quoted" back\\slash naïve ÿ €', "naïve"], lower=False, filters=" ")
    text = vocabulary.to_json()
    assert Vocabulary.from_json(text) == vocabulary
    data = json.loads(text)
    assert data["words"][0] == ["naïve", 2]
    assert data["lower"] is False and data["filters"] == " " and data["split"] == " "
    assert data["document_count"] == 2 and data["size"] == len(vocabulary)


def test_json_is_readable_one_word_per_line():
    text = fit(DOCS_EXAMPLE).to_json()
    lines = text.splitlines()
    assert '    ["the", 3],' in lines and '    ["homework", 1]' in lines
    assert len(lines) == 8 + 1 + 9 + 2  # settings, "words": [, one per word, ], }
    assert Vocabulary.from_json(fit([]).to_json()) == fit([])


@pytest.mark.parametrize("broken", [
    "not json",
    "[]",
    '{"format": "something-else", "version": 1}',
    "DUPLICATE",
    "BAD_COUNT",
    "WRONG_SIZE",
])
def test_json_rejects_malformed_documents(broken):
    good = json.loads(fit(DOCS_EXAMPLE).to_json())
    if broken == "DUPLICATE":
        good["words"][1][0] = "the"
        broken = json.dumps(good)
    elif broken == "BAD_COUNT":
        good["words"][0][1] = "3"
        broken = json.dumps(good)
    elif broken == "WRONG_SIZE":
        good["size"] = 3
        broken = json.dumps(good)
    with pytest.raises(UserError, match="^vocab.json: "):
        Vocabulary.from_json(broken, source="vocab.json")


def test_read_vocabulary(tmp_path):
    path = tmp_path / "vocab.json"
    with pytest.raises(UserError, match="vocab.json: not found"):
        read_vocabulary(path)
    path.write_text(fit(DOCS_EXAMPLE).to_json(), encoding="utf-8")
    assert read_vocabulary(path).index == DOCS_EXAMPLE_INDEX
    path.write_text("{}", encoding="utf-8")
    with pytest.raises(UserError, match=f"^{path}: not a keras2-tokenizer-vocabulary"):
        read_vocabulary(path)


def test_vocabulary_rejects_mismatched_counts():
    with pytest.raises(ValueError):
        Vocabulary(words=("a", "b"), counts=(1,))


# --- padding ---

def reference_pad(seqs: list[list[int]], maxlen: int, padding: str, truncating: str) -> np.ndarray:
    """Keras 2's pad_sequences loop, written out plainly."""
    out = np.zeros((len(seqs), maxlen), dtype=np.int32)
    for row, seq in enumerate(seqs):
        if not seq:
            continue
        kept = seq[-maxlen:] if truncating == "pre" else seq[:maxlen]
        if padding == "post":
            out[row, :len(kept)] = kept
        else:
            out[row, -len(kept):] = kept
    return out


SIDES = [(padding, truncating) for padding in ("pre", "post") for truncating in ("pre", "post")]


@pytest.mark.parametrize("padding,truncating", SIDES)
def test_pad_matches_reference_on_edge_cases(padding, truncating):
    seqs = [[], [7], [1, 2, 3], [4, 5, 6, 8], [9, 10, 11, 12, 13, 14, 15], []]  # empty, short, exact, long
    lengths = [len(seq) for seq in seqs]
    ids = np.array([token for seq in seqs for token in seq], dtype=np.int32)
    got = pad(ids, offsets_from_lengths(lengths), 3, padding, truncating)
    assert got.dtype == np.int32 and got.shape == (6, 3)
    np.testing.assert_array_equal(got, reference_pad(seqs, 3, padding, truncating))


def test_pad_hand_computed():
    ids, offsets = np.array([1, 2, 3, 4, 5, 6], dtype=np.int32), np.array([0, 5, 6])
    assert pad(ids, offsets, 3, "pre", "pre").tolist() == [[3, 4, 5], [0, 0, 6]]
    assert pad(ids, offsets, 3, "post", "post").tolist() == [[1, 2, 3], [6, 0, 0]]
    assert pad(ids, offsets, 3, "pre", "post").tolist() == [[1, 2, 3], [0, 0, 6]]
    assert pad(ids, offsets, 3, "post", "pre").tolist() == [[3, 4, 5], [6, 0, 0]]
    assert pad(ids, offsets, 5, "pre", "pre").tolist() == [[1, 2, 3, 4, 5], [0, 0, 0, 0, 6]]


@pytest.mark.parametrize("padding,truncating", SIDES)
@pytest.mark.parametrize("maxlen", [1, 2, 5, 40])
def test_pad_matches_reference_on_random_sequences(padding, truncating, maxlen):
    rng = np.random.default_rng(maxlen)
    lengths = rng.integers(0, 12, size=50)
    ids = rng.integers(1, 1000, size=int(lengths.sum()), dtype=np.int32)
    offsets = offsets_from_lengths(lengths)
    np.testing.assert_array_equal(pad(ids, offsets, maxlen, padding, truncating),
                                  reference_pad(sequences(ids, offsets), maxlen, padding, truncating))


def test_pad_no_documents():
    got = pad(np.array([], dtype=np.int32), np.array([0]), 4)
    assert got.shape == (0, 4) and got.dtype == np.int32


@pytest.mark.parametrize("kwargs", [{"padding": "middle"}, {"truncating": "both"}, {"maxlen": 0}, {"maxlen": True}])
def test_pad_rejects_bad_arguments(kwargs):
    arguments = {"maxlen": 3, "padding": "pre", "truncating": "pre", **kwargs}
    with pytest.raises(ValueError):
        pad(np.array([1], dtype=np.int32), np.array([0, 1]), **arguments)
