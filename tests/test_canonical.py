"""The fast canonical-JSON path is byte-identical to the `rfc8785` package (RFC 8785)."""

from __future__ import annotations

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from featureplane.pipelines.canonical import jcs, same_document, sha256_ref

# any character but lone surrogates (not UTF-8), control characters and NUL included, often
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12) | st.text(st.characters(max_codepoint=0x40),
                                                                                   max_size=8)
scalars = (st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | text)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                      | st.dictionaries(st.text(st.characters(max_codepoint=127), max_size=8), inner, max_size=5),
                      max_leaves=40)


@settings(max_examples=400, deadline=None)
@given(values)
def test_fast_path_equals_rfc8785(value):
    assert jcs(value) == rfc8785.dumps(value)


def test_known_vectors_and_fallbacks():
    assert jcs({"b": 1, "a": [1.5, 100.0, 1e21, 1e-7, -0.0]}) == b'{"a":[1.5,100,1e+21,1e-7,0],"b":1}'
    # where Python's repr and ECMAScript part ways: exponents below 1e-4, integral floats past 2^53
    assert jcs({"\x00\x00": None, "a": "\x00x\x00"}) == rfc8785.dumps({"\x00\x00": None, "a": "\x00x\x00"})
    edges = [6.103515625e-05, 1e-4, 4.837888872075174e16, 2.0**53, 9007199254740991.0, 1e16 + 2, 0.1, 123.456]
    assert jcs(edges) == rfc8785.dumps(edges)
    # non-ASCII keys (UTF-16 order) and integers past 2^53 take the reference implementation itself
    assert jcs({"\U0001f600": 1, "\ufb01": 2}) == rfc8785.dumps({"\U0001f600": 1, "\ufb01": 2})
    assert sha256_ref({"a": 1}) == "sha256:015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"


@settings(max_examples=300, deadline=None)
@given(values, values)
def test_documents_said_to_be_the_same_have_the_same_canonical_bytes(a, b):
    assert same_document(a, a)
    if same_document(a, b):
        assert jcs(a) == jcs(b)


def test_same_document_tells_types_apart_and_ignores_key_order():
    assert same_document({"a": 1, "b": [True, None, "x"]}, {"b": [True, None, "x"], "a": 1})
    assert not same_document({"stale": False}, {"stale": 0})  # equal in Python, not in JSON
    assert not same_document({"n": 1}, {"n": 1.0})
    assert not same_document({"n": 2**64}, {"n": 2**64})  # beyond what it can tell cheaply: not "same"
