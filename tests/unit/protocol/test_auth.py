"""Cluster tokens and the handshake's proofs (protocol/auth.py): files, nonces, HMACs."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from faas.protocol import auth
from faas.protocol.errors import InvalidInput, NotFound


def test_ensure_token_creates_a_private_file_and_is_stable(tmp_path: Path) -> None:
    path = tmp_path / "home" / "nested" / "token"
    token = auth.ensure_token(path)
    assert path.is_file()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(token) == 2 * auth.TOKEN_BYTES
    int(token, 16)  # hex text
    assert auth.ensure_token(path) == token
    assert auth.load_token(path) == token
    assert auth.ensure_token(str(path)) == token


def test_ensure_token_in_a_fresh_dir_gives_a_new_token(tmp_path: Path) -> None:
    assert auth.ensure_token(tmp_path / "a") != auth.ensure_token(tmp_path / "b")


def test_ensure_token_keeps_an_existing_token(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("my-shared-secret\n")
    assert auth.ensure_token(path) == b"my-shared-secret"


def test_ensure_token_when_another_process_creates_it_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scheduler and a worker starting together on one host both call ensure_token:
    # the file appears between the existence check and the exclusive create.
    path = tmp_path / "token"
    path.write_text("written-by-the-other-process\n")
    real_exists = Path.exists
    calls = {"n": 0}

    def exists_racing(self: Path, *args: Any, **kwargs: Any) -> bool:
        if self == path and calls["n"] == 0:
            calls["n"] += 1
            return False
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists_racing)
    assert auth.ensure_token(path) == b"written-by-the-other-process"


def test_load_token_strips_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  abc123 \n\n")
    assert auth.load_token(path) == b"abc123"


def test_load_token_missing_file_is_not_found(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "token"
    with pytest.raises(NotFound) as info:
        auth.load_token(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
def test_load_token_empty_file_is_invalid(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(InvalidInput) as info:
        auth.load_token(path)
    assert str(path) in str(info.value) and "empty" in str(info.value)


def test_load_token_of_a_directory_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        auth.load_token(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_nonces_are_fresh() -> None:
    nonces = {auth.new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == 16 for n in nonces)


TOKEN = b"0123456789abcdef" * 4


def test_proof_verifies_with_the_right_token() -> None:
    nonce = auth.new_nonce()
    given = auth.proof(TOKEN, nonce, "worker", "host-a")
    assert len(given) == 32
    assert auth.verify(TOKEN, nonce, "worker", "host-a", given)


@pytest.mark.parametrize(
    "token, nonce, role, host_id",
    [
        pytest.param(b"another token", b"N" * 16, "worker", "host-a", id="wrong-token"),
        pytest.param(TOKEN, b"M" * 16, "worker", "host-a", id="other-nonce"),
        pytest.param(TOKEN, b"N" * 16, "client", "host-a", id="other-role"),
        pytest.param(TOKEN, b"N" * 16, "worker", "host-b", id="other-host"),
    ],
)
def test_proof_does_not_verify_when_anything_differs(
    token: bytes, nonce: bytes, role: str, host_id: str
) -> None:
    given = auth.proof(TOKEN, b"N" * 16, "worker", "host-a")
    assert not auth.verify(token, nonce, role, host_id, given)


@pytest.mark.parametrize("given", [b"", b"\x00" * 32, b"short"])
def test_verify_rejects_bogus_proofs(given: bytes) -> None:
    assert not auth.verify(TOKEN, b"N" * 16, "worker", "host-a", given)


