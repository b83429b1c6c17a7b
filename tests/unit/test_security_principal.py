"""Principals: persistence (atomic, permissions, passphrases), the blessing store and roots."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from ipcclient import errors
from ipcclient.security import (
    PURPOSE_MESSAGE,
    BlessingRoots,
    BlessingStore,
    Principal,
    SecurityCall,
    caveats,
    validate_blessings,
)

ANY = [caveats.unconstrained_use()]


def _populated() -> tuple[Principal, Principal]:
    idp, me = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    mine = idp.bless(me.public_key, root, "me", ANY)
    me.store.default = mine
    me.store.set(mine, "idp:server")
    me.add_to_roots(root)
    me.roots.add(Principal.generate().public_key, "other:$")
    return idp, me


@pytest.mark.parametrize("passphrase", [None, b"correct horse"])
def test_round_trip(tmp_path: Path, passphrase: bytes | None) -> None:
    _, me = _populated()
    d = tmp_path / "p"
    me.save(d, passphrase)
    assert (os.stat(d / "key.pem").st_mode & 0o777) == 0o600
    pem = (d / "key.pem").read_bytes()
    assert (b"ENCRYPTED" in pem) is (passphrase is not None)
    back = Principal.load(d, passphrase)
    assert back.public_key == me.public_key
    assert back.store.default == me.store.default
    assert back.store.peer_blessings() == me.store.peer_blessings()
    assert back.roots.dump() == me.roots.dump()
    sig = back.sign(PURPOSE_MESSAGE, b"m")
    assert me.public_key.verify(sig, PURPOSE_MESSAGE, b"m")
    # readable JSON with names
    store = json.loads((d / "store.json").read_text())
    assert store["data"]["default"]["names"] == ["idp:me"]
    assert repr(back) == repr(me)


def test_missing_directory_and_key(tmp_path: Path) -> None:
    with pytest.raises(errors.NoExistError):
        Principal.load(tmp_path / "nope")
    with pytest.raises(errors.NoExistError):
        Principal.load(tmp_path)


def test_missing_state_files_load_empty(tmp_path: Path) -> None:
    _, me = _populated()
    me.save(tmp_path)
    (tmp_path / "store.json").unlink()
    (tmp_path / "roots.json").unlink()
    back = Principal.load(tmp_path)
    assert back.public_key == me.public_key
    assert back.store.default is None and back.roots.dump() == {}


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    Principal.generate().save(tmp_path)
    os.chmod(tmp_path / "key.pem", 0o644)
    with pytest.raises(errors.NoAccessError, match="chmod 600"):
        Principal.load(tmp_path)


def test_key_symlink_and_directory_refused(tmp_path: Path) -> None:
    Principal.generate().save(tmp_path / "real")
    link_dir = tmp_path / "link"
    link_dir.mkdir()
    (link_dir / "key.pem").symlink_to(tmp_path / "real" / "key.pem")
    with pytest.raises(errors.NoAccessError):
        Principal.load(link_dir)
    dir_key = tmp_path / "dirkey"
    (dir_key / "key.pem").mkdir(parents=True)
    with pytest.raises((errors.BadArgError, errors.NoAccessError)):
        Principal.load(dir_key)


def test_corrupt_key_file(tmp_path: Path) -> None:
    Principal.generate().save(tmp_path)
    key = tmp_path / "key.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(errors.BadArgError):
        Principal.load(tmp_path)


def test_non_ed25519_key_refused(tmp_path: Path) -> None:
    Principal.generate().save(tmp_path)
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "key.pem").write_bytes(pem)
    with pytest.raises(errors.BadArgError, match="Ed25519"):
        Principal.load(tmp_path)
    with pytest.raises(errors.BadArgError):
        Principal(ec.generate_private_key(ec.SECP256R1()))  # type: ignore[arg-type]


def test_passphrase_errors(tmp_path: Path) -> None:
    Principal.generate().save(tmp_path / "enc", b"secret")
    with pytest.raises(errors.NoAccessError):
        Principal.load(tmp_path / "enc", b"wrong")
    with pytest.raises(errors.NoAccessError):
        Principal.load(tmp_path / "enc")
    Principal.generate().save(tmp_path / "plain")
    with pytest.raises(errors.BadArgError):
        Principal.load(tmp_path / "plain", b"unexpected")
    with pytest.raises(errors.BadArgError):
        Principal.generate().save(tmp_path / "x", b"")


def test_corrupt_and_tampered_state_files(tmp_path: Path) -> None:
    _, me = _populated()
    me.save(tmp_path)
    roots = tmp_path / "roots.json"
    good = roots.read_text()
    roots.write_text("{not json")
    with pytest.raises(errors.BadArgError):
        Principal.load(tmp_path)
    doc = json.loads(good)
    doc["data"]["roots"].append({"key": "00" * 32, "patterns": ["..."]})
    roots.write_text(json.dumps(doc))
    with pytest.raises(errors.NotTrustedError):
        Principal.load(tmp_path)
    doc = json.loads(good)
    doc["format"] = "v0"
    roots.write_text(json.dumps(doc))
    with pytest.raises(errors.BadArgError):
        Principal.load(tmp_path)
    # a file signed by another principal is foreign
    other = Principal.generate()
    other.save(tmp_path / "other")
    roots.write_text((tmp_path / "other" / "roots.json").read_text())
    with pytest.raises(errors.NotTrustedError):
        Principal.load(tmp_path)


def test_atomic_write_keeps_old_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Principal.generate()
    first.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(errors.BadArgError, match="disk full"):
        Principal.generate().save(tmp_path)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no temp files left, nothing changed
    assert Principal.load(tmp_path).public_key == first.public_key


_SAVE_UNTIL_THE_DISK_IS_FULL = """
import os, resource, signal, sys
from ipcclient import errors
from ipcclient.security import Principal
p = Principal.generate()
for i in range(20):
    p.store.set(p.bless_self(f"name{i}"), "...")
p.save(sys.argv[1] + "-scratch")
sizes = [os.path.getsize(os.path.join(sys.argv[1] + "-scratch", f))
         for f in ("key.pem", "roots.json", "store.json")]
assert sizes[2] > max(sizes[:2]) + 1, sizes
limit = max(sizes[:2]) + 1  # the key and roots files fit; the store file does not
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
try:
    p.save(sys.argv[1])
except errors.BadArgError as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_save_that_fails_part_way_leaves_the_previous_principal(tmp_path: Path) -> None:
    """A real write failure (the file size limit, as a full disk would) on the last file of
    a save once left the new key beside the old state files: the principal no longer
    loaded (NotTrusted). Every file is now written before any is renamed into place."""
    target = tmp_path / "p"
    first = Principal.generate()
    first.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    child = subprocess.run(
        [sys.executable, "-c", _SAVE_UNTIL_THE_DISK_IS_FULL, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 3 and "cannot save" in child.stdout, child.stderr
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # no temp files
    assert Principal.load(target).public_key == first.public_key


def test_what_is_not_a_small_regular_file_is_refused_at_once(tmp_path: Path) -> None:
    """A FIFO in place of a principal file once made load wait forever for a writer; JSON
    nested 100,000 deep raised a bare RecursionError; a key of an algorithm the crypto
    library does not know raised its UnsupportedAlgorithm."""
    for name in ("key.pem", "roots.json", "store.json"):
        Principal.generate().save(tmp_path / name)
        (tmp_path / name / name).unlink()
        os.mkfifo(tmp_path / name / name, 0o600)
        with pytest.raises(errors.BadArgError, match="not a regular file"):
            Principal.load(tmp_path / name)
    Principal.generate().save(tmp_path / "deep")
    (tmp_path / "deep" / "store.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(errors.BadArgError, match="corrupt"):
        Principal.load(tmp_path / "deep")
    Principal.generate().save(tmp_path / "odd")
    # A PKCS#8 key whose algorithm is OID 1.2.3.4.
    odd = base64.b64encode(bytes.fromhex("3016020100300506032a0304040a04080102030405060708"))
    pem = b"-----BEGIN PRIVATE KEY-----\n" + odd + b"\n-----END PRIVATE KEY-----\n"
    (tmp_path / "odd" / "key.pem").write_bytes(pem)
    with pytest.raises(errors.BadArgError, match="Ed25519"):
        Principal.load(tmp_path / "odd")


def test_save_into_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(errors.BadArgError):
        Principal.generate().save(blocker / "sub")


def test_store_for_peer_default_and_key_binding() -> None:
    idp, me = Principal.generate(), Principal.generate()
    root = idp.bless_self("idp")
    a = idp.bless(me.public_key, root, "a", ANY)
    b = idp.bless(me.public_key, root, "b", ANY)
    store = me.store
    assert store.public_key == me.public_key
    assert store.set(a, "idp:server") is None
    assert store.set(b, "...") is None
    both = store.for_peer("idp:server:x")
    assert both is not None and sorted(both.names) == ["idp:a", "idp:b"]
    only_b = store.for_peer("other")
    assert only_b is not None and only_b.names == ["idp:b"]
    assert store.set(None, "...") == b
    assert store.for_peer("other") is None
    assert store.default is None
    store.default = a
    assert store.default == a
    with pytest.raises(errors.BadArgError):
        store.set(root, "...")  # bound to idp's key
    with pytest.raises(errors.BadArgError):
        store.default = root
    with pytest.raises(errors.BadArgError):
        store.set(a, "bad pattern")
    with pytest.raises(errors.BadArgError):
        store.set("a", "...")  # type: ignore[arg-type]
    with pytest.raises(errors.BadArgError):
        Principal(ed25519.Ed25519PrivateKey.generate(), store=store)


def test_store_and_roots_load_plain_errors() -> None:
    store = BlessingStore(Principal.generate().public_key)
    bad_stores: list[object] = [
        None,
        {"peers": "x"},
        {"peers": ["x"]},
        {"peers": [{"pattern": "...", "blessings": 5}]},
        {"peers": [{"pattern": "...", "blessings": "!!notb64"}]},
        {"peers": [{"pattern": "...", "blessings": "AQ=="}]},  # the integer 1
        {"peers": [], "default": {"blessings": "AQ=="}},
        {"peers": [{"pattern": 3, "blessings": "AQ=="}]},
    ]
    for value in bad_stores:
        with pytest.raises(errors.BadArgError):
            store.load_plain(value)
    roots = BlessingRoots()
    for value in [None, {"roots": [1]}, {"roots": [{"key": "zz", "patterns": []}]}]:
        with pytest.raises(errors.BadArgError):
            roots.load_plain(value)
    with pytest.raises(errors.BadArgError):
        roots.add(b"k" * 32, "...")  # type: ignore[arg-type]


def test_roots_recognized() -> None:
    idp = Principal.generate()
    roots = BlessingRoots()
    assert not roots.recognized(idp.public_key, "idp")
    roots.add(idp.public_key, "idp")
    assert roots.recognized(idp.public_key, "idp:alice")
    assert not roots.recognized(idp.public_key, "idpx")
    assert not roots.recognized(Principal.generate().public_key, "idp")


def test_loaded_principal_validates_like_the_original(tmp_path: Path) -> None:
    idp, me = _populated()
    me.save(tmp_path)
    back = Principal.load(tmp_path)
    server = Principal.generate()
    sb = idp.bless(server.public_key, idp.bless_self("idp"), "server", ANY)
    assert validate_blessings(sb, SecurityCall(), back.roots)[0] == ["idp:server"]
