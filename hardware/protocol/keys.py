"""CURVE keys: generate, write and load z85 key files.

Layout of a key directory (what ``keys_generate`` writes; backs ``robotstack keys generate``):

    <name>.public   40 z85 characters + newline, mode 0644: give it to peers
    <name>.secret   40 z85 characters + newline, mode 0600: never leaves the host

``load_*`` refuse a secret file that group or others can read (like ssh), and check that the public file,
when present, matches the secret. An allow-list is a set of client public keys: a directory of
``*.public`` files, or explicit files.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from robotstack.core.errors import RobotstackError

Z85_KEY_LEN = 40


class KeyFileError(RobotstackError):
    """A key file is missing, malformed or readable by others."""


@dataclass(frozen=True)
class Keypair:
    public: bytes  # z85, 40 bytes
    secret: bytes  # z85, 40 bytes


@dataclass(frozen=True)
class CurveServerKeys:
    """What a server needs: its keypair and the public keys of the clients it lets in."""

    keypair: Keypair
    allowed_clients: frozenset[bytes]


@dataclass(frozen=True)
class CurveClientKeys:
    """What a client needs: its keypair and the server's public key."""

    keypair: Keypair
    server_public: bytes


def _check_z85(key: bytes, where: str) -> bytes:
    key = key.strip()
    if len(key) != Z85_KEY_LEN:
        raise KeyFileError(f"{where}: expected {Z85_KEY_LEN} z85 characters, found {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError) as e:
        raise KeyFileError(f"{where}: not a z85 key ({e})") from None
    return key


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)  # mode applies at creation: no window where a secret is world-readable
    except FileExistsError:
        raise KeyFileError(f"{path} exists; pass overwrite=True to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # also when overwriting an existing file, and regardless of umask


def keys_generate(out_dir: str | os.PathLike, names: list[str] | tuple[str, ...] = ("server", "client"),
                  overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """Write a fresh keypair per name as ``<name>.public`` (0644) / ``<name>.secret`` (0600) under ``out_dir``
    (created 0700). Returns {name: (public_path, secret_path)}. Refuses to overwrite unless asked."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = {}
    for name in names:
        if not name or "/" in name or name.startswith("."):
            raise KeyFileError(f"key name {name!r}: use a plain file stem such as 'server' or 'client'")
        public, secret = zmq.curve_keypair()
        pub_path, sec_path = out / f"{name}.public", out / f"{name}.secret"
        _write(sec_path, secret + b"\n", 0o600, overwrite)
        _write(pub_path, public + b"\n", 0o644, overwrite)
        written[name] = (pub_path, sec_path)
    return written


def allow_client(server_dir: str | os.PathLike, public: str | os.PathLike, name: str | None = None) -> Path:
    """Put a client's public key on a server's allow-list: ``<server_dir>/clients/<name>.public`` (0644)."""
    key = load_public(public)
    clients = Path(server_dir) / "clients"
    clients.mkdir(parents=True, exist_ok=True, mode=0o700)
    dest = clients / f"{name or Path(public).stem}.public"
    _write(dest, key + b"\n", 0o644, overwrite=True)
    return dest


def generate_keys(out_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, tuple[Path, Path]]:
    """The usual pair: ``server`` and ``client`` keypairs in ``out_dir``."""
    return keys_generate(out_dir, ("server", "client"), overwrite=overwrite)


def load_public(path: str | os.PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise KeyFileError(f"{p}: public key file not found")
    return _check_z85(p.read_bytes(), str(p))


def load_keypair(key_dir: str | os.PathLike, name: str) -> Keypair:
    """Load ``<name>.secret`` (must not be group/other readable) and derive/check the public key."""
    sec_path = Path(key_dir) / f"{name}.secret"
    if not sec_path.is_file():
        raise KeyFileError(f"{sec_path}: secret key file not found (create it with keys_generate)")
    mode = stat.S_IMODE(sec_path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{sec_path}: mode {mode:04o} lets others read the secret; chmod 600 it")
    secret = _check_z85(sec_path.read_bytes(), str(sec_path))
    public = zmq.curve_public(secret)
    pub_path = sec_path.with_suffix(".public")
    if pub_path.exists() and load_public(pub_path) != public:
        raise KeyFileError(f"{pub_path} does not match {sec_path}")
    return Keypair(public, secret)


def load_allowlist(sources: str | os.PathLike | list) -> frozenset[bytes]:
    """Client public keys from a directory of ``*.public`` files and/or explicit files or z85 bytes."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    keys = set()
    for src in sources:
        if isinstance(src, bytes):
            keys.add(_check_z85(src, "allow-list entry"))
            continue
        p = Path(src)
        if p.is_dir():
            keys.update(load_public(f) for f in sorted(p.glob("*.public")))
        else:
            keys.add(load_public(p))
    return frozenset(keys)


def load_server_keys(key_dir: str | os.PathLike, name: str = "server",
                     allowed: str | os.PathLike | list | None = None) -> CurveServerKeys:
    """Server keypair ``<name>`` from ``key_dir`` and its allow-list (default: ``<key_dir>/clients/``)."""
    allowed = Path(key_dir) / "clients" if allowed is None else allowed
    clients = load_allowlist(allowed)
    if not clients:
        raise KeyFileError(f"allow-list {allowed} holds no client public keys (*.public)")
    return CurveServerKeys(load_keypair(key_dir, name), clients)


def load_client_keys(key_dir: str | os.PathLike, name: str = "client", server_name: str = "server",
                     server_public: str | os.PathLike | None = None) -> CurveClientKeys:
    """Client keypair ``<name>`` from ``key_dir`` plus the server public key (``<server_name>.public``)."""
    pub = server_public if server_public is not None else Path(key_dir) / f"{server_name}.public"
    return CurveClientKeys(load_keypair(key_dir, name), load_public(pub))
