import os
import re
import stat

import pytest

pytest.importorskip("libp2p")

from transport.libp2p.errors import InsecureKeyFile, KeyFileError
from transport.libp2p.identity import (
    KEY_FILE_NAME,
    load_key_pair,
    load_or_create_key_pair,
    peer_id_of,
)


def test_key_is_created_private_and_reloads_to_the_same_peer_id(tmp_path):
    key_dir = tmp_path / "data" / "identity"
    first = peer_id_of(load_or_create_key_pair(key_dir))
    path = key_dir / KEY_FILE_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_dir.stat().st_mode) & 0o077 == 0
    assert first.startswith("12D3KooW")  # an Ed25519 peer ID
    assert peer_id_of(load_or_create_key_pair(key_dir)) == first
    assert [p.name for p in key_dir.iterdir()] == [KEY_FILE_NAME]  # no temp file left behind


def test_key_readable_by_others_is_refused_with_the_fix_in_the_message(tmp_path):
    load_or_create_key_pair(tmp_path)
    path = tmp_path / KEY_FILE_NAME
    os.chmod(path, 0o644)
    with pytest.raises(InsecureKeyFile, match="chmod 600"):
        load_or_create_key_pair(tmp_path)
    os.chmod(path, 0o600)
    load_key_pair(path)


def test_garbage_key_file_is_a_key_file_error(tmp_path):
    path = tmp_path / KEY_FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(KeyFileError, match="not a libp2p private key"):
        load_or_create_key_pair(tmp_path)


def test_a_key_path_that_is_a_directory_is_a_key_file_error_naming_it(tmp_path):
    (tmp_path / KEY_FILE_NAME).mkdir()
    expected = f"identity key {tmp_path / KEY_FILE_NAME} is not a regular file"
    with pytest.raises(KeyFileError, match=f"^{re.escape(expected)}$"):
        load_or_create_key_pair(tmp_path)


def test_a_key_dir_that_cannot_be_made_is_a_key_file_error_naming_the_key(tmp_path):
    (tmp_path / "file").write_text("")
    key = tmp_path / "file" / "data" / KEY_FILE_NAME
    with pytest.raises(
        KeyFileError, match=f"^{re.escape(f'cannot create identity key {key}: Not a directory')}$"
    ) as info:
        load_or_create_key_pair(key.parent)
    assert isinstance(info.value.__cause__, NotADirectoryError)


def test_a_temp_file_left_by_a_killed_daemon_with_our_pid_does_not_block_the_key(tmp_path):
    # In a container the daemon is pid 1 on every restart: a leftover temp file carries its pid.
    (tmp_path / f".{KEY_FILE_NAME}.{os.getpid()}.tmp").write_bytes(b"half a key")
    key_pair = load_or_create_key_pair(tmp_path)
    assert load_or_create_key_pair(tmp_path).public_key.serialize() == key_pair.public_key.serialize()
