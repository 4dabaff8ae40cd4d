"""known_hosts looked up by name (`ssh.known_hosts.KnownHosts`): what paramiko finds, without walking every line."""

import base64
import os

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from fabfile.ssh.known_hosts import KnownHosts, hashed_name


def public_line_key(private):
    """``type base64`` of a public key, as a known_hosts line carries it."""
    return private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()


KEYS = [public_line_key(ed25519.Ed25519PrivateKey.generate()) for _ in range(3)] + [
    public_line_key(ec.generate_private_key(ec.SECP256R1())) for _ in range(2)]
NAMES = ["127.0.0.1", "[127.0.0.1]:2201", "[127.0.0.1]:2202", "pi-07.lan", "[::1]:2222"]


def hashed(name, salt):
    """`name` as ``HashKnownHosts yes`` writes it, with a given 20-byte salt."""
    return paramiko.HostKeys.hash_host(name, "|1|" + base64.b64encode(salt).decode())


def paramiko_lookup(lines, name):
    """What paramiko's own HostKeys finds for `name`, given the lines it can parse (as our reader skipped the rest
    before the index)."""
    keys = paramiko.HostKeys()
    for number, text in lines:
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(text, number)
        except Exception:  # noqa: BLE001
            continue
        if entry is not None:
            keys._entries.append(entry)
    return keys.lookup(name)


def as_pairs(found):
    return None if found is None else sorted((kind, key.get_base64()) for kind, key in found.items())


name_fields = st.lists(
    st.one_of(st.sampled_from(NAMES).map(lambda n: ("plain", n)),
              st.tuples(st.sampled_from(NAMES), st.binary(min_size=20, max_size=20)).map(lambda p: ("hashed", p))),
    min_size=1, max_size=3)
line = st.one_of(
    st.tuples(name_fields, st.sampled_from(KEYS)).map(
        lambda p: ",".join(n if kind == "plain" else hashed(*n) for kind, n in p[0]) + " " + p[1]),
    st.sampled_from(["", "# a comment", "127.0.0.1 ssh-ed25519", "127.0.0.1 ssh-ed25519 !!notbase64!!",
                     "127.0.0.1 ssh-unknown AAAA", "@cert-authority *.lan " + KEYS[0],
                     "  [127.0.0.1]:2201   " + KEYS[1]]))


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=12), st.sampled_from(NAMES + ["unknown.lan"]))
def test_a_lookup_finds_what_paramiko_finds(lines, name):
    """Plain and hashed names, several a line, duplicates and unreadable lines: the same keys by type.
    (Hashed names paramiko cannot read make it raise: the next test.)"""
    numbered = list(enumerate(lines, 1))
    assert as_pairs(KnownHosts(numbered).lookup(name)) == as_pairs(paramiko_lookup(numbered, name))


def test_a_hashed_name_paramiko_cannot_read_names_no_host_and_is_no_crash():
    """paramiko raises on a hashed name whose salt is not 20 bytes or not base64; OpenSSH skips the line."""
    good = hashed("[127.0.0.1]:2201", os.urandom(20))
    short_salt = "|1|" + base64.b64encode(b"short").decode() + "|" + good.split("|")[3]
    known = KnownHosts(enumerate([f"{short_salt} {KEYS[0]}", f"|1|%%%|%%% {KEYS[1]}", f"{good} {KEYS[2]}"], 1))
    assert as_pairs(known.lookup("[127.0.0.1]:2201")) == [tuple(KEYS[2].split())]
    assert hashed_name(short_salt) is None and hashed_name("|1|%%%|%%%") is None
    with pytest.raises(AssertionError):
        paramiko_lookup([(1, f"{short_salt} {KEYS[0]}")], "[127.0.0.1]:2201")


def test_only_the_lines_that_name_a_host_are_parsed(monkeypatch):
    """A key is parsed (base64, key object) only for a line that names the host looked up, and once per name."""
    parsed = []
    from_line = paramiko.hostkeys.HostKeyEntry.from_line
    monkeypatch.setattr(paramiko.hostkeys.HostKeyEntry, "from_line",
                        classmethod(lambda cls, text, number=None: parsed.append(number) or from_line(text, number)))
    others = [f"{hashed(f'[127.0.0.1]:{3000 + n}', os.urandom(20))} {KEYS[n % 3]}" for n in range(200)]
    known = KnownHosts(enumerate(others + [f"{hashed('[127.0.0.1]:2201', os.urandom(20))} {KEYS[4]}"], 1))
    for _ in range(3):
        assert as_pairs(known.lookup("[127.0.0.1]:2201")) == [tuple(KEYS[4].split())]
    assert parsed == [201]
