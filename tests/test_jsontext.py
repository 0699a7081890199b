"""JSON on the webhook path: orjson where it agrees with the standard library, `json` where not."""

from __future__ import annotations

import json
import math

import pytest

from caselink import jsontext


@pytest.mark.parametrize(
    "data",
    [
        b'{"id": "1234567890123456789", "n": 42, "x": [true, null, 1.5, -0.0]}',
        b'{"n": 12345678901234567890123}',
        b"[-98765432109876543210, 18446744073709551616]",
        b'{"a": 1, "a": 2}',
        b'"\\ud800"',
        b"[1e400, NaN, -Infinity]",
        '{"a": "b"}'.encode("utf-16"),
        b'{"text": "caf\\u00e9 \xc3\xa9"}',
    ],
    ids=["plain", "big-int", "big-negative", "duplicate-key", "lone-surrogate", "non-finite", "utf-16", "unicode"],
)
def test_decoding_gives_what_the_standard_library_gives(data):
    decoded, expected = jsontext.loads(data), json.loads(data)

    assert repr(decoded) == repr(expected)
    assert type(decoded) is type(expected)


def test_integers_beyond_64_bits_stay_exact():
    assert jsontext.loads(b'{"n": 123456789012345678901234567890}')["n"] == 123456789012345678901234567890


@pytest.mark.parametrize("data", [b'{"a": 1,}', b"{", b"\xff\xfe\xfa"])
def test_bad_json_raises_the_standard_library_error_with_its_position(data):
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)) as raised:
        jsontext.loads(data)

    if isinstance(raised.value, json.JSONDecodeError):
        assert raised.value.lineno == 1
        assert raised.value.colno >= 1


def test_encoding_is_compact_and_falls_back_for_big_integers():
    assert jsontext.dumps({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert jsontext.dumps({"n": 2**70}) == '{"n":1180591620717411303424}'
    assert jsontext.dumps_bytes({"x": math.pi}) == b'{"x":3.141592653589793}'
