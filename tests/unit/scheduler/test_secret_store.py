"""The scheduler's secrets at rest: sealed under the home's key, bound to their names, and
one-line errors for what cannot be stored or opened."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faas.protocol.errors import InvalidInput, NotFound
from faas.scheduler.secret_store import SecretStore

pytestmark = pytest.mark.timeout(30)


def test_a_secret_is_sealed_and_opens_only_under_its_name_and_key(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    store.set("api_key", "s3cr3t-value", "alice")
    assert b"s3cr3t-value" not in (tmp_path / "secrets.json").read_bytes()
    assert store.get("api_key") == "s3cr3t-value" and store.get("other") is None
    assert [(n, b) for n, b, _ in store.describe()] == [("api_key", "alice")]
    value, digest = store.lookup("api_key")  # type: ignore[misc]
    assert value == "s3cr3t-value" and digest == store.digest("api_key", "s3cr3t-value")
    assert digest != store.digest("api_key", "another")

    # A sealed value moved to another name does not open.
    data = json.loads((tmp_path / "secrets.json").read_text())
    data["secrets"]["moved"] = data["secrets"]["api_key"]
    (tmp_path / "secrets.json").write_text(json.dumps(data))
    with pytest.raises(InvalidInput, match="secret 'moved' does not open with"):
        SecretStore(tmp_path).get("moved")

    # Nor under another key: a replaced key says what to do.
    (tmp_path / "secrets.key").write_bytes(b"k" * 32)
    with pytest.raises(InvalidInput, match="set it again with faas secret set api_key"):
        SecretStore(tmp_path).get("api_key")


@pytest.mark.parametrize(("name", "value", "needle"), [
    ("bad-name", "v", "secret name 'bad-name' must be letters"),
    ("ok", "", "secret 'ok' has an empty value"),
    ("big", "x" * (64 * 1024 + 1), "secret 'big' is over 64 KiB"),
])
def test_what_cannot_be_stored_is_refused(tmp_path: Path, name: str, value: str,
                                          needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        SecretStore(tmp_path).set(name, value, "alice")
    assert not (tmp_path / "secrets.json").exists()


def test_damaged_files_and_unknown_names_are_one_line(tmp_path: Path) -> None:
    store = SecretStore(tmp_path)
    with pytest.raises(NotFound, match="no secret 'nope'"):
        store.remove("nope")
    (tmp_path / "secrets.json").write_text("{not json")
    with pytest.raises(InvalidInput, match="secrets file .* is damaged"):
        store.get("x")
    (tmp_path / "secrets.json").write_text("{}")
    (tmp_path / "secrets.key").write_bytes(b"short")
    store = SecretStore(tmp_path)
    (tmp_path / "secrets.json").write_text('{"secrets": {"x": {"sealed": "AAAA"}}}')
    with pytest.raises(InvalidInput, match="is damaged \\(not 32 bytes\\)"):
        store.get("x")
