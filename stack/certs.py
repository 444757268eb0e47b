"""CURVE key files: ZeroMQ's certificate format, read and written.

A key pair is two files, as `zmq.auth.create_certificates` writes them:
`NAME.key` (public, to copy to the peers) and `NAME.key_secret` (secret, mode
0600, never leaves its host). Both are ZPL text:

    #   comment lines
    metadata
        role = "gateway"
    curve
        public-key = "<40 characters of Z85>"
        secret-key = "<40 characters of Z85>"     (the secret file only)

The role says which broker sockets a key may use (see `stack.curve`). Unlike
pyzmq, `write_key_pair` puts the metadata in the public file too, because the
broker reads the role from the public files in its `--curve-clients` directory.
Reading is strict: anything that is not a well-formed key is a `KeyFileError`
whose text says which file and what is wrong.
"""

from __future__ import annotations

import datetime
import os
import re
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

ROLES = ("gateway", "worker", "publisher", "broker")
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
MAX_KEY_FILE = 64 * 1024  # bytes: a key file is a few hundred
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

_SECRET_BANNER = """#   ****  Generated on {now} by chat-keys  ****
#   ZeroMQ CURVE **Secret** Certificate
#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions.

"""
_PUBLIC_BANNER = """#   ****  Generated on {now} by chat-keys  ****
#   ZeroMQ CURVE Public Certificate
#   Copy it to the broker's --curve-clients directory (clients) or next to
#   the clients' --curve-server option (the broker's own key).

"""


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not what the caller needs."""


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A public key file's content: the key (Z85, 40 bytes), its name and role."""

    public: bytes
    name: str
    role: str


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A secret key file's content."""

    public: bytes
    secret: bytes
    name: str
    role: str


def _read_text(path: Path) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read it ({exc.strerror})") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path}: too large to be a key file (over {MAX_KEY_FILE} bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a ZeroMQ certificate (not UTF-8 text)") from None


def parse_zpl(text: str) -> dict[str, dict[str, str]]:
    """The sections of a certificate: {"curve": {"public-key": ...}, "metadata": {...}}.

    Only what certificates use: top-level section names, indented
    `name = value` properties, values optionally in double or single quotes.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            current = sections.setdefault(line.strip(), {})
        elif current is not None and "=" in line:
            name, value = line.split("=", 1)
            current[name.strip()] = value.strip().strip("\"'")
    return sections


def _z85_key(path: Path, value: str | None, what: str) -> bytes:
    if value is None:
        raise KeyFileError(f"{path}: not a ZeroMQ certificate (no {what} under 'curve')")
    key = value.encode("utf-8")
    try:
        ok = value.isascii() and len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, struct.error):
        ok = False
    if not ok:
        raise KeyFileError(f"{path}: {what} is not a 40-character Z85 key")
    return key


def _role(path: Path, metadata: dict[str, str]) -> str:
    role = metadata.get("role", "")
    if role and role not in ROLES:
        raise KeyFileError(f"{path}: unknown role {role!r} (one of {', '.join(ROLES)})")
    return role


def key_name(path: Path) -> str:
    name = path.name
    for suffix in (SECRET_SUFFIX, PUBLIC_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Any certificate (public or secret file) -> its public key, name and role."""
    path = Path(path)
    sections = parse_zpl(_read_text(path))
    public = _z85_key(path, sections.get("curve", {}).get("public-key"), "public-key")
    return PublicKey(public, key_name(path), _role(path, sections.get("metadata", {})))


def load_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """A secret certificate -> the key pair. A public file gets a clear error."""
    path = Path(path)
    sections = parse_zpl(_read_text(path))
    curve = sections.get("curve", {})
    public = _z85_key(path, curve.get("public-key"), "public-key")
    if "secret-key" not in curve:
        raise KeyFileError(f"{path}: is a public key file; give the secret one (NAME{SECRET_SUFFIX})")
    secret = _z85_key(path, curve.get("secret-key"), "secret-key")
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"{path}: secret-key does not belong to its public-key")
    return KeyPair(public, secret, key_name(path), _role(path, sections.get("metadata", {})))


def too_open(path: str | os.PathLike[str]) -> bool:
    """True when group or others may read the (secret) file."""
    return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def _key_file_text(banner: str, public: bytes, secret: bytes | None, role: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [banner.format(now=now), "metadata\n", f'    role = "{role}"\n', "curve\n",
             f'    public-key = "{public.decode()}"\n']
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"\n')
    return "".join(lines)


def _write_new(path: Path, text: str, mode: int) -> None:
    """Create `path` with `mode` from the start (no window with wider rights); never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(f.fileno(), mode)  # the umask may have narrowed it; never widened
        f.write(text)


def write_key_pair(directory: str | os.PathLike[str], name: str, role: str) -> tuple[Path, Path]:
    """Make a new key pair: (NAME.key, NAME.key_secret). Refuses to overwrite either."""
    if not NAME_PATTERN.fullmatch(name):
        raise KeyFileError(f"invalid key name {name!r}: 1-64 letters, digits, _ . -, starting with a letter or digit")
    if role not in ROLES:
        raise KeyFileError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    directory = Path(directory)
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    for path in (public_path, secret_path):
        if path.exists() or path.is_symlink():
            raise KeyFileError(f"{path}: already exists; not overwriting a key")
    public, secret = zmq.curve_keypair()
    try:
        _write_new(secret_path, _key_file_text(_SECRET_BANNER, public, secret, role), 0o600)
        _write_new(public_path, _key_file_text(_PUBLIC_BANNER, public, None, role), 0o644)
    except FileExistsError as exc:
        raise KeyFileError(f"{exc.filename}: already exists; not overwriting a key") from None
    except OSError as exc:
        raise KeyFileError(f"{exc.filename or directory}: cannot write the key ({exc.strerror})") from None
    return public_path, secret_path


def public_key_files(directory: str | os.PathLike[str]) -> list[Path]:
    """The NAME.key files of a directory, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"{directory}: no such directory")
    return sorted(p for p in directory.iterdir() if p.name.endswith(PUBLIC_SUFFIX) and p.is_file())
