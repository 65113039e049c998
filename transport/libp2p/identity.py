"""The node's persistent identity: an Ed25519 key pair in the data dir, and the peer ID it yields.

The peer ID is a hash of the public key, so a daemon that keeps its key keeps its ID across restarts
and its peers' address books stay valid. The private key is the node's only secret: it is created
with mode 0600 (never briefly wider), written atomically (a crash leaves either no key or a whole
one), and a key file that other users can read is refused rather than used, as ssh does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair, KeyType
from libp2p.crypto.serialization import deserialize_private_key
from libp2p.peer.id import ID

from transport.base import PeerId
from transport.libp2p.errors import InsecureKeyFile, KeyFileError

__all__ = ["KEY_FILE_NAME", "load_key_pair", "load_or_create_key_pair", "peer_id_of"]

KEY_FILE_NAME = "identity.key"
_MAX_KEY_FILE_BYTES = 4096  # an Ed25519 key in libp2p's protobuf form is 68 bytes


def peer_id_of(key_pair: KeyPair) -> PeerId:
    """The peer ID string (base58, ``12D3KooW...``) that `key_pair` proves ownership of."""
    return ID.from_pubkey(key_pair.public_key).to_base58()


def load_or_create_key_pair(key_dir: str | os.PathLike[str]) -> KeyPair:
    """The key pair stored in `key_dir`, created (with the directory) on first use.

    Raises `InsecureKeyFile` if the key file is readable or writable by group or others, and
    `KeyFileError`, naming the file, if it cannot be created or read (filesystem errors included)
    or is not a libp2p Ed25519 private key.
    """
    directory = Path(key_dir)
    path = directory / KEY_FILE_NAME
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            _create(path)
    except OSError as exc:  # a parent that is a file, a directory we may not write to, a full disk...
        raise KeyFileError(f"cannot create identity key {path}: {exc.strerror or exc}") from exc
    return load_key_pair(path)


def load_key_pair(path: str | os.PathLike[str]) -> KeyPair:
    """The key pair in the key file at `path` (libp2p protobuf private-key bytes), after a mode check."""
    path = Path(path)
    data = _read_key_file(path)
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"identity key {path} is larger than any key ({len(data)}+ bytes)")
    try:
        private_key = deserialize_private_key(data)
    except Exception as exc:  # protobuf DecodeError, ValueError on an unknown key type...
        raise KeyFileError(f"identity key {path} is not a libp2p private key: {exc}") from exc
    if private_key.get_type() is not KeyType.Ed25519:
        raise KeyFileError(f"identity key {path} is a {private_key.get_type().name} key, not Ed25519")
    return KeyPair(private_key, private_key.get_public_key())


def _read_key_file(path: Path) -> bytes:
    """The first bytes of the key file at `path`, once it is known to be a private regular file.

    The file is checked through the descriptor it is read from (no swap in between), and read with
    `os.read`: a file object made of a directory's descriptor fails with "Is a directory: <fd>".
    O_NONBLOCK keeps a FIFO put in the key's place from blocking the open until a writer comes.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise KeyFileError(f"cannot open identity key {path}: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(f"identity key {path} is not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise InsecureKeyFile(
                f"identity key {path} has mode {stat.S_IMODE(info.st_mode):04o}: other users may read "
                f"the node's private key; restrict it with `chmod 600 {path}` (or delete it to make a "
                "new identity, which changes the peer ID)"
            )
        return os.read(fd, _MAX_KEY_FILE_BYTES + 1)  # a regular file: one read gets it all
    except OSError as exc:
        raise KeyFileError(f"cannot read identity key {path}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)


def _create(path: Path) -> None:
    """Write a new key to `path` without ever clobbering one another process wrote meanwhile.

    The key goes to a private temp file first, then is hard-linked into place: link fails if `path`
    exists, and either way the file at `path` is complete.
    """
    key_pair = create_new_key_pair()
    # A random name, not the pid: a daemon killed mid-write leaves its temp file behind, and in a
    # container the restarted daemon has the same pid (1) and would find it in the way every time.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(key_pair.private_key.serialize())
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):  # lost a race: keep the other process's key
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
