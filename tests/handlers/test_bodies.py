"""Reading bodies for handlers: the size limit holds for chunked bodies too."""

from __future__ import annotations

import io

import pytest

from caselink.bodies import read_body
from caselink.errors import BadRequestError
from caselink.errors import PayloadTooLargeError

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
