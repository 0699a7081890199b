"""Reading bodies for handlers: the size limit holds for chunked bodies too; JSON is read bounded and checked."""

from __future__ import annotations

import io
from urllib.parse import urlencode

import pytest

from caselink.bodies import MAX_JSON_DEPTH
from caselink.bodies import decode_json
from caselink.bodies import form_body
from caselink.bodies import read_body
from caselink.errors import BadRequestError
from caselink.errors import BrokenBodyError
from caselink.errors import PayloadTooLargeError
from tests.handlers.conftest import webhook

LIMIT = 1024


class Reads(io.BytesIO):
    """wsgi.input that counts what was taken from it."""

    taken = 0

    def read(self, size=-1):
        data = super().read(size)
        self.taken += len(data)
        return data

    def readinto(self, buffer):
        count = super().readinto(buffer)
        self.taken += count
        return count


def environ(body: bytes, *, chunked: bool) -> dict:
    """What gunicorn hands the app: it ends chunked bodies itself (wsgi.input_terminated)."""
    env = {"REQUEST_METHOD": "POST", "wsgi.input": Reads(body), "wsgi.input_terminated": True}
    if not chunked:
        env["CONTENT_LENGTH"] = str(len(body))
    return env


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [0, 1, LIMIT])
def test_a_body_up_to_the_limit_is_read_whole(size, chunked):
    body = b"x" * size

    assert read_body(environ(body, chunked=chunked), LIMIT) == body


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("size", [LIMIT + 1, LIMIT * 50])
def test_a_body_over_the_limit_is_refused_without_being_read_whole(size, chunked):
    env = environ(b"x" * size, chunked=chunked)

    with pytest.raises(PayloadTooLargeError, match=f"MAX_BODY_BYTES \\({LIMIT} bytes\\)") as refused:
        read_body(env, LIMIT)

    assert refused.value.status_code == 413
    assert env["wsgi.input"].taken <= LIMIT + 1


def test_without_a_limit_the_whole_body_is_read():
    body = b"y" * (LIMIT * 10)

    assert read_body(environ(body, chunked=True), None) == body


def test_a_body_shorter_than_its_content_length_is_a_400_naming_both_sizes():
    env = environ(b"x" * 10, chunked=False)
    env["CONTENT_LENGTH"] = "25"

    with pytest.raises(BadRequestError, match="ended after 10 of its 25 bytes") as refused:
        read_body(env, LIMIT)

    assert refused.value.status_code == 400


def test_a_content_length_that_is_not_a_number_is_read_as_if_absent():
    env = environ(b"hello", chunked=True)
    env["CONTENT_LENGTH"] = "five"

    assert read_body(env, LIMIT) == b"hello"


# -- JSON that is valid, or nearly, and that caselink cannot hold ---------------------


def _refusal(body: bytes) -> BadRequestError:
    with pytest.raises(BadRequestError) as caught:
        decode_json(body)
    return caught.value


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 979 + b"]" * 979, "too_deep"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "too_deep"),
        (b'{"a": [' + b"[" * 5000 + b"]" * 5000 + b"]}", "too_deep"),
        (b'{"n": ' + b"1" * 4301 + b"}", "bad_number"),
        (b"[-" + b"9" * 4301 + b"]", "bad_number"),
        (b'{"n": 1e400}', "bad_number"),
        (b'{"n": NaN}', "bad_number"),
        (b'{"n": -Infinity}', "bad_number"),
        (b'{"s": "\\ud800"}', "lone_surrogate"),
        (b'{"s": "a\\udfff"}', "lone_surrogate"),
        (b'{"\\udbff": 1}', "lone_surrogate"),
        (b'{"s": "\xed\xa0\x80"}', "not_utf8"),
        (b'{"s": "a\\u0000b"}', "nul"),
        (b'{"\\u0000": "key"}', "nul"),
        (b'{"s": ["a\x00b"]}', "nul"),
    ],
    ids=lambda value: value[:24].decode("latin-1") if isinstance(value, bytes) else value,
)
def test_json_caselink_cannot_hold_is_400_with_the_reason(body, reason):
    refusal = _refusal(body)

    assert refusal.status_code == 400
    assert refusal.detail["reason"] == reason


def test_json_as_deep_as_the_limit_and_numbers_python_reads_are_read():
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert decode_json(deep) is not None
    assert decode_json(b'{"n": ' + b"1" * 4300 + b"}")["n"] == int("1" * 4300)
    assert decode_json(b'{"s": "\\ud83d\\ude00", "z": -0.0}') == {"s": "\U0001f600", "z": -0.0}


def test_raw_control_characters_inside_strings_are_read_as_datadog_substitutes_them():
    body = b'{"alert": {"message": "Disk full.\nRunbook: see OPS-42\t(tab)"}}'

    assert decode_json(body)["alert"]["message"] == "Disk full.\nRunbook: see OPS-42\t(tab)"


def test_an_unescaped_quote_is_still_400_with_where_it_broke():
    refusal = _refusal(b'{"title": "Disk "data" full"}')

    assert refusal.detail["reason"] == "invalid_json"
    assert "line 1 column" in refusal.message


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ("[" * 979 + "]" * 979, "too_deep"),
        ('{"n": ' + "1" * 4301 + "}", "bad_number"),
        ('["\\ud800"]', "lone_surrogate"),
        ('{"s": "\\u0000"}', "nul"),
        ("plain\x00text", "nul"),
    ],
    ids=["deep", "huge-int", "surrogate", "nul-escape", "nul-byte"],
)
def test_a_form_field_is_held_to_the_same_limits(field, reason):
    body = urlencode({"event": "alert.triggered", "alert": field}).encode()
    request = webhook("datadog", body, content_type="application/x-www-form-urlencoded")

    with pytest.raises(BadRequestError) as caught:
        form_body(request)

    assert caught.value.detail["reason"] == reason


def test_a_form_field_that_only_looks_like_json_stays_text():
    body = urlencode({"title": "[Triggered] disk full", "tags": '["a", "b"]'}).encode()

    fields = form_body(webhook("datadog", body, content_type="application/x-www-form-urlencoded"))

    assert fields == {"title": "[Triggered] disk full", "tags": ["a", "b"]}


# -- framing -----------------------------------------------------------------------------


class Broken(io.BytesIO):
    """wsgi.input of a chunked body whose framing is broken, as gunicorn reports it."""

    def read(self, size=-1):
        raise OSError("chunk size line 'zz' is not hex")

    readinto = read


def test_a_body_whose_framing_breaks_while_read_is_400_and_says_so():
    env = {"REQUEST_METHOD": "POST", "wsgi.input": Broken(), "wsgi.input_terminated": True}

    with pytest.raises(BrokenBodyError) as caught:
        read_body(env, LIMIT)

    assert caught.value.status_code == 400
    assert "could not be read" in caught.value.message


@pytest.mark.parametrize("declared", ["9" * 19, "9" * 5000])
def test_a_declared_length_beyond_64_bits_is_413_not_a_crash(declared):
    env = environ(b"{}", chunked=False)
    env["CONTENT_LENGTH"] = declared

    with pytest.raises(PayloadTooLargeError):
        read_body(env, LIMIT)
