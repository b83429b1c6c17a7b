"""A principal directory on disk against edits, crashes, loose modes and odd arguments, and
new extensions against invisible and look-alike characters (what a principal receives or
loads is held to the earlier rule: tests/unit/test_security_compat.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ipcclient import codec, errors
from ipcclient.security import (
    BlessingPattern,
    Blessings,
    Certificate,
    Principal,
    caveats,
    is_valid_extension,
    validate_extension,
)
from ipcclient.security.principal import MAX_PASSPHRASE, stored_public_key

ANY = [caveats.unconstrained_use()]
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and owners")


def _saved(directory: Path, name: str = "me", passphrase: bytes | None = None) -> Principal:
    p = Principal.generate()
    b = p.bless_self(name)
    p.store.default = b
    p.add_to_roots(b)
    p.save(directory, passphrase)
    return p


def _set_named_key(file: Path, key_hex: str) -> None:
    doc = json.loads(file.read_text())
    doc["public_key"] = key_hex
    file.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# --- the key a state file names ----------------------------------------------------------------


@pytest.mark.parametrize("state_file", ["store.json", "roots.json"])
def test_a_state_file_naming_another_key_is_refused(tmp_path: Path, state_file: str) -> None:
    """The ``public_key`` field is outside the signature: load once ignored an edit to it,
    while ``ipc principal bless DIR TARGETDIR`` blessed the key the edit named."""
    bob = _saved(tmp_path / "bob")
    mallory = Principal.generate()
    _set_named_key(tmp_path / "bob" / state_file, mallory.public_key.raw.hex())
    with pytest.raises(errors.NotTrustedError, match="names another key"):
        Principal.load(tmp_path / "bob")
    _set_named_key(tmp_path / "bob" / state_file, bob.public_key.raw.hex())
    assert Principal.load(tmp_path / "bob").public_key == bob.public_key


def test_stored_public_key_is_the_key_the_signed_store_names(tmp_path: Path) -> None:
    bob = _saved(tmp_path / "bob")
    carol = _saved(tmp_path / "carol", passphrase=b"carol's")
    mallory = _saved(tmp_path / "mallory")
    assert stored_public_key(tmp_path / "bob") == bob.public_key
    assert stored_public_key(str(tmp_path / "carol")) == carol.public_key  # (key encrypted)

    # Only the named key edited: the signature (bob's) does not verify with it.
    store = tmp_path / "bob" / "store.json"
    good = store.read_bytes()
    _set_named_key(store, mallory.public_key.raw.hex())
    with pytest.raises(errors.NotTrustedError, match="not signed by the key it names"):
        stored_public_key(tmp_path / "bob")
    # A whole store.json of another principal's: consistent, but not the key in key.pem.
    shutil.copy(tmp_path / "mallory" / "store.json", store)
    with pytest.raises(errors.NotTrustedError, match="holds another key"):
        stored_public_key(tmp_path / "bob")
    # A named key that is no key, or not as save writes it.
    for named in (5, "zz", "00" * 31, bob.public_key.raw.hex().upper()):
        store.write_bytes(good)
        _set_named_key(store, named)  # type: ignore[arg-type]
        with pytest.raises(errors.BadArgError, match="names no valid public key"):
            stored_public_key(tmp_path / "bob")
    store.unlink()
    with pytest.raises(errors.NoExistError):
        stored_public_key(tmp_path / "bob")
    with pytest.raises(errors.NoExistError):
        stored_public_key(tmp_path / "none")


# --- temporary files a crash left --------------------------------------------------------------

_DIE_BEFORE_THE_RENAMES = """
import os, sys
from ipcclient.security import Principal
p = Principal.load(sys.argv[1])
os.replace = lambda *a: os._exit(137)  # the process dies (power cut, OOM kill) here
p.save(sys.argv[1])
"""


def test_save_removes_the_temporary_files_a_crash_left(tmp_path: Path) -> None:
    """A save that died before its renames left ``.key.pem.*.tmp`` (the key in plaintext)
    and the state files' temporaries; a later save, encrypted or not, kept them."""
    d = tmp_path / "p"
    p = _saved(d)
    child = subprocess.run(
        [sys.executable, "-c", _DIE_BEFORE_THE_RENAMES, str(d)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 137, child.stderr
    left = sorted(f.name for f in d.iterdir() if f.name.endswith(".tmp"))
    assert [name.split(".")[1] for name in left] == ["key", "roots", "store"], left
    leaked = next(d / name for name in left if name.startswith(".key.pem."))
    assert serialization.load_pem_private_key(leaked.read_bytes(), password=None)
    (d / "notes.tmp").write_text("someone else's")  # (not ours: kept)
    (d / ".key.pem.x.tmp.keep").write_text("not a temporary of ours")

    p.save(d, passphrase=b"now encrypted at rest")
    assert sorted(f.name for f in d.iterdir()) == [
        ".key.pem.x.tmp.keep",
        "key.pem",
        "notes.tmp",
        "roots.json",
        "store.json",
    ]
    assert Principal.load(d, b"now encrypted at rest").public_key == p.public_key


# --- the directory's mode ------------------------------------------------------------------


@posix_only
def test_save_makes_an_existing_directory_private(tmp_path: Path) -> None:
    """save once kept an existing directory's mode (0777 here) as it was."""
    d = tmp_path / "p"
    d.mkdir()
    os.chmod(d, 0o777)
    old = os.umask(0)
    try:
        p = _saved(d)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    assert {stat.S_IMODE(os.stat(f).st_mode) for f in d.iterdir()} == {0o600}
    assert Principal.load(d).public_key == p.public_key
    fresh = tmp_path / "a" / "b"
    _saved(fresh)
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700


@posix_only
@pytest.mark.parametrize("mode", [0o777, 0o707, 0o702, 0o703, 0o1777, 0o772])
def test_load_refuses_a_directory_others_may_write_to(tmp_path: Path, mode: int) -> None:
    """Whoever may write the directory can remove roots.json (it then loads as empty) or
    swap files; load once took such a directory as it was."""
    d = tmp_path / "p"
    p = _saved(d)
    os.chmod(d, mode)
    with pytest.raises(errors.NoAccessError, match=r"writable by others.*chmod 700"):
        Principal.load(d)
    for fine in (0o700, 0o750, 0o755, 0o705):
        os.chmod(d, fine)
        assert Principal.load(d).public_key == p.public_key


@posix_only
@pytest.mark.parametrize("mode", [0o775, 0o770, 0o720, 0o1770], ids=lambda m: f"{m:04o}")
def test_a_directory_only_its_group_may_write_to_loads_with_a_warning_once(
    tmp_path: Path, mode: int, caplog: pytest.LogCaptureFixture
) -> None:
    """``mkdir`` under umask 002 (a group per user: Fedora, RHEL) makes a 0775 directory, as
    it made the directories earlier releases saved principals in; load once refused them.
    The warning names the directory and the fix, once per directory in a process."""
    d = tmp_path / "p"
    p = _saved(d)
    os.chmod(d, mode)
    caplog.set_level(logging.WARNING, logger="ipcclient.security")
    for _ in range(3):
        assert Principal.load(d).public_key == p.public_key
    warned = [r for r in caplog.records if r.name == "ipcclient.security"]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    assert warned[0].levelno == logging.WARNING
    message = warned[0].getMessage()
    assert str(d) in message and "writable by its group" in message and "chmod 700" in message
    other = tmp_path / "q"
    _saved(other)
    os.chmod(other, mode)
    Principal.load(other)
    assert len([r for r in caplog.records if r.name == "ipcclient.security"]) == 2
    p.save(d)  # save, as ever, makes a directory of the current user's private
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700


@posix_only
def test_a_principal_saved_into_a_mkdir_under_umask_002_loads(tmp_path: Path) -> None:
    """As 095ff2d left it: the directory made by ``os.mkdir`` under umask 002 before the
    principal was saved into it (save then kept an existing directory's mode)."""
    from tests.unit.test_security_compat import saved_old_principal

    old_umask = os.umask(0o002)
    try:
        d = tmp_path / "p"
        old = saved_old_principal(d, "bob")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o775
    back = Principal.load(d)
    assert back.public_key == old.public_key and back.store.default == old.store.default


# --- arguments save could not take ----------------------------------------------------------


def test_a_passphrase_too_long_or_a_path_with_nul_is_bad_arg(tmp_path: Path) -> None:
    """Both once escaped save as a bare ValueError (the crypto library's limit on a
    passphrase; a NUL in a file name)."""
    p = Principal.generate()
    longest = b"x" * MAX_PASSPHRASE
    p.save(tmp_path / "ok", passphrase=longest)
    assert Principal.load(tmp_path / "ok", passphrase=longest).public_key == p.public_key
    for where in ("ok", "new"):
        with pytest.raises(errors.BadArgError, match="at most 1023 bytes, not 1024"):
            p.save(tmp_path / where, passphrase=longest + b"x")
        with pytest.raises(errors.BadArgError, match="at most 1023 bytes"):
            Principal.load(tmp_path / where, passphrase=b"x" * 2000)
    assert not (tmp_path / "new").exists()
    for bad in (str(tmp_path / "a\x00b"), tmp_path / "a\x00b"):
        with pytest.raises(errors.BadArgError, match="may not hold a NUL"):
            p.save(bad)
        with pytest.raises(errors.BadArgError, match="may not hold a NUL"):
            Principal.load(bad)


# --- extensions ---------------------------------------------------------------------------

_REFUSED = {
    "U+FE0F variation selector": "alice\ufe0f",
    "U+E0100 variation selector-17": "alice\U000e0100",
    "U+034F combining grapheme joiner": "ali\u034fce",
    "U+115F Hangul choseong filler": "alice\u115f",
    "U+3164 Hangul filler": "alice\u3164",
    "U+FFA0 halfwidth Hangul filler": "alice\uffa0",
    "U+17B4 Khmer vowel inherent": "alice\u17b4",
    "U+180B Mongolian variation selector": "alice\u180b",
    "U+1D173 musical symbol begin beam": "alice\U0001d173",
    "U+E0041 tag letter": "alice\U000e0041",
    "U+2800 Braille blank": "alice\u2800",
    "U+00AD soft hyphen": "ali\u00adce",
    "NFD e + U+0301": "jose\u0301",
    "U+FF1A fullwidth colon": "idp\uff1aalice",
    "U+FE55 small colon": "idp\ufe55alice",
    "U+2236 ratio": "idp\u2236alice",
    "U+A789 modifier letter colon": "idp\ua789alice",
    "U+2215 division slash": "a\u2215b",
    "U+2044 fraction slash": "a\u2044b",
    "U+FF0F fullwidth solidus": "a\uff0fb",
    "U+FF0C fullwidth comma": "a\uff0cb",
    "U+201A low quotation mark": "a\u201ab",
    "U+FF20 fullwidth at": "a\uff20b",
    "U+FF08 fullwidth parenthesis": "a\uff08b",
    "U+2329 angle bracket": "a\u2329b",
    "U+FF1C fullwidth less-than": "a\uff1cb",
    "U+02D0 triangular colon (IPA length mark)": "idp\u02d0alice",
    "U+02F8 raised colon": "idp\u02f8alice",
    "U+066B Arabic decimal separator (looks like ',')": "\u0663\u066b\u0661\u0664",
    "U+3231 (NFKC: '(\u682a)')": "\u3231acme",
    "U+2474 (NFKC: '(1)')": "\u2474",
    "U+2100 account of (NFKC: 'a/c')": "\u2100",
    "keycap 1 + U+FE0F + U+20E3": "1\ufe0f\u20e3",
    "U+FF04 fullwidth dollar (NFKC: '$')": "\uff04",
    "U+2026 ellipsis (NFKC: '...')": "\u2026",
    "U+FF3F fullwidth low lines (NFKC: '__')": "\uff3f\uff3fx",
}


@pytest.mark.parametrize("ext", list(_REFUSED.values()), ids=list(_REFUSED))
def test_invisible_unnormalized_and_look_alike_extensions_are_refused(ext: str) -> None:
    """Each was a valid extension: a name that prints as ``idp:alice`` (or ``idp:josé``)
    but is not it, so no pattern written for it matches, or one that looks like two
    components (``idp`` U+FF1A ``alice``) or like a reserved pattern. Refused in a name this
    SDK makes; a pattern, which names names others made, takes what the received rule takes."""
    assert not is_valid_extension(ext)
    with pytest.raises(errors.BadArgError, match="invalid blessing extension"):
        validate_extension(ext)
    p = Principal.generate()
    with pytest.raises(errors.BadArgError):
        p.bless_self(ext)
    root = p.bless_self("idp")
    with pytest.raises(errors.BadArgError):
        p.bless(Principal.generate().public_key, root, ext, ANY)
    assert BlessingPattern(f"idp:{ext}").is_valid() is is_valid_extension(ext, received=True)


_FORMAT_CHARACTERS = {
    "U+1D173 musical symbol begin beam",
    "U+E0041 tag letter",
    "U+00AD soft hyphen",
}
"""Those of the above the earlier rule refused too (category Cf)."""
_RECEIVED = {k: v for k, v in _REFUSED.items() if k not in _FORMAT_CHARACTERS}


@pytest.mark.parametrize("ext", list(_RECEIVED.values()), ids=list(_RECEIVED))
def test_a_certificate_from_the_wire_with_such_an_extension_is_taken(ext: str) -> None:
    """Earlier releases made such certificates (a peer's, a saved principal's): decoding
    holds them to the rule those releases made them under, and once refused them."""
    p = Principal.generate()
    cert = p.bless_self("idp").chains[0][0]
    other = Blessings([(Certificate(ext, cert.public_key, cert.caveats, cert.signature),)])
    assert codec.decode(codec.encode(other)) == other


@pytest.mark.parametrize("label", sorted(_FORMAT_CHARACTERS))
def test_format_characters_are_refused_from_the_wire_too(label: str) -> None:
    ext = _REFUSED[label]
    assert not is_valid_extension(ext, received=True)
    p = Principal.generate()
    cert = p.bless_self("idp").chains[0][0]
    forged = Blessings([(Certificate(ext, cert.public_key, cert.caveats, cert.signature),)])
    with pytest.raises(errors.BadProtocolError, match="invalid certificate extension"):
        codec.decode(codec.encode(forged))


@pytest.mark.parametrize(
    "ext",
    [
        "jos\u00e9",
        "\u0430lice",
        "\u540d\u524d",
        "\u00fcber-b\u00e4r",
        "a$",
        "x.y",
        "_x",
        # NFKC forms with a space and a combining mark: nothing in the grammar is a space,
        # and none of these looks like a separator (once refused).
        "D\u00b4Angelo",
        "\u309b",
        "a\u00a8b",
        "\u1fbd",
        "\u037a",
        "\ufdfa",
    ],
)
def test_letters_of_every_script_in_nfc_stay_valid(ext: str) -> None:
    assert unicodedata.is_normalized("NFC", ext)
    assert validate_extension(ext) == ext
    p = Principal.generate()
    assert p.bless_self(ext).names == [ext]
