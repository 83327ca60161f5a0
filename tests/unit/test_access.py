"""The access token file as the broker and its clients read it."""

from __future__ import annotations

import pathlib

import pytest
import structlog

from broker import access, exceptions


def test_a_token_is_one_word_of_printable_ascii_around_which_whitespace_is_dropped(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cr3t-T0ken/+=\n\n")
    path.chmod(0o600)
    assert access.read_token(str(path)) == "s3cr3t-T0ken/+="
    assert access.read_token("") == ""  # no file named: no token


@pytest.mark.parametrize(("content", "why"), [
    (b"two words\n", "holds spaces, line breaks or control characters"),
    (b"line\nline\n", "holds spaces, line breaks or control characters"),
    (b"caf\xc3\xa9\n", "is not text"),
    (b" \n\t", "is empty"),
])
def test_a_token_file_grpc_metadata_cannot_carry_is_refused_saying_why(
    tmp_path: pathlib.Path, content: bytes, why: str
) -> None:
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(exceptions.ConfigError, match=f"token-file: {path} {why}"):
        access.read_token(str(path))


def test_a_token_file_others_can_read_is_used_with_a_warning(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "token"
    path.write_text("t0ken")
    path.chmod(0o644)
    with structlog.testing.capture_logs() as logs:
        assert access.read_token(str(path)) == "t0ken"
    assert [e["event"] for e in logs] == [
        "the token file can be read by other users of this host; chmod 600 it"]
    path.chmod(0o600)
    with structlog.testing.capture_logs() as logs:
        access.read_token(str(path))
    assert logs == []
