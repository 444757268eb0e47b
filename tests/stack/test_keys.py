"""Key files and `chat-keys`: the format, clear errors, permissions, no overwrite."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

from stack.certs import KeyFileError, load_key_pair, load_public_key, parse_zpl, write_key_pair
from stack.curve import load_client_keys, load_clients
from stack.keys import main


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would let everyone read: the secret file must still be 0600."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_key_pair_modes_and_content(tmp_path: Path, open_umask: None) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "gw-a", "gateway")
    assert mode(secret_path) == 0o600 and mode(public_path) == 0o644
    pair, public = load_key_pair(secret_path), load_public_key(public_path)
    assert (pair.name, pair.role, public.name, public.role) == ("gw-a", "gateway", "gw-a", "gateway")
    assert pair.public == public.public and zmq.curve_public(pair.secret) == pair.public
    assert "secret-key" not in public_path.read_text()


def test_pyzmq_reads_ours_and_we_read_pyzmqs(tmp_path: Path) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "ours", "worker")
    assert zmq.auth.load_certificate(secret_path) == (load_key_pair(secret_path).public, load_key_pair(secret_path).secret)
    assert zmq.auth.load_certificate(public_path) == (load_public_key(public_path).public, None)
    theirs_public, theirs_secret = zmq.auth.create_certificates(tmp_path, "theirs", metadata={"role": "publisher"})
    assert load_key_pair(theirs_secret).role == "publisher"
    assert load_public_key(theirs_public).role == ""  # pyzmq writes metadata to the secret file only
    assert load_public_key(theirs_public).public == zmq.auth.load_certificate(theirs_public)[0]


def test_never_overwrites(tmp_path: Path) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "b", "broker")
    before = (public_path.read_bytes(), secret_path.read_bytes())
    with pytest.raises(KeyFileError, match="already exists"):
        write_key_pair(tmp_path, "b", "broker")
    public_path.unlink()
    with pytest.raises(KeyFileError, match="already exists"):  # the secret alone is enough to refuse
        write_key_pair(tmp_path, "b", "gateway")
    assert secret_path.read_bytes() == before[1] and not public_path.exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "", ".hidden", "x" * 65, "sp ace", "nul\x00"])
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyFileError, match="invalid key name"):
        write_key_pair(tmp_path, name, "gateway")
    assert list(tmp_path.iterdir()) == []


def test_load_errors_say_what_is_wrong(tmp_path: Path) -> None:
    public_path, secret_path = write_key_pair(tmp_path, "k", "gateway")
    nonascii = ('curve\n    public-key = "' + "\u00e9" * 40 + '"\n').encode()
    cases: dict[str, tuple[bytes | None, str]] = {
        "missing.key_secret": (None, "no such key file"),
        "junk": (b"\x00\xff\xfe binary", "not UTF-8"),
        "empty": (b"", "no public-key under 'curve'"),
        "big": (b"#" * 70_000, "too large"),
        "short": (b'curve\n    public-key = "abc"\n', "public-key is not a 40-character Z85 key"),
        "badchar": (b'curve\n    public-key = "' + b"~" * 40 + b'"\n', "not a 40-character Z85 key"),
        "nonascii": (nonascii, "not a 40-character Z85 key"),
        "role": (secret_path.read_bytes().replace(b'"gateway"', b'"admin"'), "unknown role 'admin'"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(KeyFileError, match=message):
            load_key_pair(path)
    with pytest.raises(KeyFileError, match="is a public key file; give the secret one"):
        load_key_pair(public_path)
    with pytest.raises(KeyFileError, match="is a directory"):
        load_key_pair(tmp_path)
    other_public, _ = zmq.curve_keypair()
    mismatched = tmp_path / "mismatch.key_secret"
    mismatched.write_text(secret_path.read_text().replace(load_key_pair(secret_path).public.decode(),
                                                          other_public.decode()))
    with pytest.raises(KeyFileError, match="does not belong"):
        load_key_pair(mismatched)


def test_zpl_values_quoted_or_not_and_hash_in_keys() -> None:
    text = "# comment\nmetadata\n    role = gateway\ncurve\n    public-key = 'ab#cd'\n"
    assert parse_zpl(text) == {"metadata": {"role": "gateway"}, "curve": {"public-key": "ab#cd"}}


def test_a_secret_file_others_may_read_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_key_pair(tmp_path, "b", "broker")
    _, secret = write_key_pair(tmp_path, "g", "gateway")
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="chat.curve"):
        load_client_keys(secret, tmp_path / "b.key")
    assert any("chmod 600" in r.getMessage() for r in caplog.records)


def test_clients_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(KeyFileError, match="no such directory"):
        load_clients(tmp_path / "nowhere")
    with pytest.raises(KeyFileError, match="no client keys"):
        load_clients(tmp_path)
    write_key_pair(tmp_path, "b", "broker")
    with pytest.raises(KeyFileError, match="no client keys"):  # a broker key is not a client
        load_clients(tmp_path)
    write_key_pair(tmp_path, "g", "gateway")
    with caplog.at_level(logging.WARNING, logger="chat.curve"):
        clients = load_clients(tmp_path)
    assert [k.name for k in clients.values()] == ["g"]
    assert any("secret key files" in r.getMessage() for r in caplog.records)
    (tmp_path / "copy.key").write_text((tmp_path / "g.key").read_text().replace('"gateway"', '"worker"'))
    with pytest.raises(KeyFileError, match="another role"):
        load_clients(tmp_path)
    (tmp_path / "copy.key").unlink()
    zmq.auth.create_certificates(tmp_path, "pyzmq-made")
    with pytest.raises(KeyFileError, match="has no role"):
        load_clients(tmp_path)


def test_cli_new_and_list(tmp_path: Path, open_umask: None) -> None:
    runner = CliRunner()
    keys = tmp_path / "keys"
    result = runner.invoke(main, ["new", str(keys), "w1", "--role", "worker"])
    assert result.exit_code == 0, result.output
    assert mode(keys / "w1.key_secret") == 0o600 and mode(keys) == 0o700
    assert runner.invoke(main, ["new", str(keys), "gw1"]).exit_code == 0  # gateway by default
    listing = runner.invoke(main, ["list", str(keys)])
    assert listing.exit_code == 0
    lines = [line.split() for line in listing.output.splitlines()]
    assert [(name, role) for name, role, _ in lines] == [("gw1", "gateway"), ("w1", "worker")]
    assert lines[1][2].encode() == load_key_pair(keys / "w1.key_secret").public


def test_cli_refuses_clearly(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["new", str(tmp_path), "a"]).exit_code == 0
    again = runner.invoke(main, ["new", str(tmp_path), "a"])
    assert again.exit_code == 1 and "already exists" in again.output
    bad_role = runner.invoke(main, ["new", str(tmp_path), "b", "--role", "admin"])
    assert bad_role.exit_code == 2 and "admin" in bad_role.output
    bad_name = runner.invoke(main, ["new", str(tmp_path), "../x"])
    assert bad_name.exit_code == 1 and "invalid key name" in bad_name.output
    missing = runner.invoke(main, ["list", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no such directory" in missing.output
    (tmp_path / "broken.key").write_text("garbage")
    listing = runner.invoke(main, ["list", str(tmp_path)])
    assert listing.exit_code == 0 and "broken.key" in listing.output and "a " in listing.output
