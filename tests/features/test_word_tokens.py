"""word_tokens' ASCII fast path splits exactly as the Unicode letter/number class does."""
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower.features.hashing import _NON_WORD, word_tokens


def _unicode_reference(texts: list[str]) -> list[list[str]]:
    cleaned = pc.replace_substring_regex(pc.utf8_lower(pa.array(texts)), _NON_WORD, " ")
    return [[w for w in s.split(" ") if w] for s in cleaned.to_pylist()]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(max_codepoint=127), max_size=30), min_size=1,
                max_size=8))
def test_ascii_path_equals_unicode_class(texts):
    assert word_tokens(pa.array(texts)).to_pylist() == _unicode_reference(texts)


def test_non_ascii_text_keeps_unicode_words():
    texts = ["Café au lait", "naïve_RÉSUMÉ 2x", "東京 tower", None]
    got = word_tokens(pa.array(texts)).to_pylist()
    assert got == _unicode_reference([t or "" for t in texts])
    assert got[0] == ["café", "au", "lait"] and got[2] == ["東京", "tower"] and got[3] == []
