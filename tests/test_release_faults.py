"""Release downloads under hostile or broken servers: deadlines, byte caps, memory, verification.

Everything runs against harness/release_server.py, a real HTTP server on
127.0.0.1, in its fault modes: trickling (a byte every fraction of a second,
never silent long enough for a per-read timeout), streams longer or shorter
than the API declares, bodies of hundreds of MB made on the fly, releases
without checksums. Deadlines are shortened with monkeypatch; no test bounds
how long anything takes: the proof that a deadline ended a request is its
message and that the server had not finished sending when the client gave up.
"""

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import threading
import zlib
from pathlib import Path

import pytest

from fabfile.host import release
from fabfile.host.release import (
    AssetProblem,
    DownloadCache,
    ReleaseBinaries,
    ReleaseError,
    asset_deadline,
    extract_binary,
    github_session,
    resolve_release,
)
from harness.cli import API_KEY, fab_json
from harness.cli import REPO as REPO_DIR
from harness.release_server import Generated
from harness.standin import standin_archive
from harness.testbed import installed_binary

REPO = "sipeed/picoclaw"
X86 = "picoclaw_Linux_x86_64.tar.gz"
MiB = 1024 * 1024


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def shorten(monkeypatch):
    """shorten(): one-second total deadlines from now on (an asset's size term made negligible).

    Called once the test's healthy requests are done, so a busy machine
    cannot make those miss it. The per-read timeout stays far longer than
    a trickle's interval, so only the total deadline can end a trickled request.
    """
    def apply():
        monkeypatch.setattr(release, "API_DEADLINE", 1.0)
        monkeypatch.setattr(release, "CHECKSUMS_DEADLINE", 1.0)
        monkeypatch.setattr(release, "ASSET_DEADLINE_FLOOR", 1.0)
        monkeypatch.setattr(release, "ASSET_MIN_RATE", 1 << 40)
    return apply


#: One byte every quarter second: far inside any per-read timeout, yet a response of a
#: few KB would take many minutes.
EVERY = 0.25


def binaries_for(server, cache, **kwargs):
    session = github_session()
    return ReleaseBinaries(resolve_release(server.url, REPO, None, None, session), session, cache, **kwargs)


def cache_files(cache):
    """Every file under the cache, temporary ones included."""
    return sorted(p.relative_to(cache.root).as_posix() for p in cache.root.rglob("*") if p.is_file()) \
        if cache.root.exists() else []


def gave_up_early(trickle):
    """The server had not sent the whole response when the client went away (it noticed by now)."""
    trickle.ended.wait(30)  # the server notices the hang-up at its next byte
    return not trickle.done and trickle.hung_up


# ---- the deadlines are constants derived from the size --------------------------------------


def test_deadline_constants_are_sensible():
    assert release.API_DEADLINE == 60 and release.API_MAX_BYTES == 4 * MiB
    assert release.CHECKSUMS_MAX_BYTES <= MiB and release.ASSET_MAX_BYTES == 512 * MiB
    assert release.HTTP_TIMEOUT[1] <= release.API_DEADLINE  # a silence alone cannot outlast the deadline
    upstream = asset_deadline(11_411_663)  # upstream's picoclaw_Linux_x86_64.tar.gz
    assert upstream == release.ASSET_DEADLINE_FLOOR + 11_411_663 / release.ASSET_MIN_RATE
    assert 120 < upstream < 300  # at 1 Mbit/s, plus the floor
    assert asset_deadline(None) == asset_deadline(release.ASSET_MAX_BYTES)


# ---- trickling servers end at the total deadline ------------------------------------------------


@pytest.mark.parametrize("after", [12, 400], ids=["in-the-headers", "in-the-json"])
def test_trickling_api_ends_at_its_deadline(server, shorten, after):
    server.publish(REPO, "v0.2.0", {X86: standin_archive("0.2.0", "Linux_x86_64")})
    server.trickle(after=after, every=EVERY, which="api")
    shorten()
    with pytest.raises(ReleaseError) as raised:
        resolve_release(server.url, REPO)
    message = str(raised.value)
    assert "no complete answer within its 1 s deadline" in message and server.url in message
    assert "\n" not in message
    (trickle,) = server.trickles
    assert gave_up_early(trickle)


def test_trickling_asset_ends_at_its_deadline_as_download_failed(server, cache, shorten):
    assets = {X86: standin_archive("0.2.0", "Linux_x86_64")}
    server.publish(REPO, "v0.2.0", assets)
    binaries = binaries_for(server, cache)
    binaries.checksums()
    server.trickle(after=300, every=EVERY, which=X86)
    shorten()
    for _ in range(2):  # every host of the arch gets the same answer, after one download
        with pytest.raises(AssetProblem) as raised:
            binaries.for_arch("amd64")
        assert raised.value.status == "download-failed"
        message = str(raised.value)
        assert f"cannot download {X86}: not complete within its 1 s deadline" in message
        assert f"of {len(assets[X86])} bytes saved" in message
    (trickle,) = server.trickles
    assert gave_up_early(trickle)
    assert len(server.downloads(X86)) == 1
    assert cache_files(cache) == []  # the partial download is gone


def test_trickling_checksum_file_ends_at_its_deadline(server, cache, shorten):
    server.publish(REPO, "v0.2.0", {X86: standin_archive("0.2.0", "Linux_x86_64")})
    binaries = binaries_for(server, cache)
    server.trickle(after=0, every=EVERY, which="checksums.txt")
    shorten()
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("amd64")
    assert raised.value.status == "download-failed"
    assert "cannot fetch checksums.txt: not complete within its 1 s deadline" in str(raised.value)
    with pytest.raises(AssetProblem):
        binaries.for_arch("arm64")  # another arch: the same failure, not another wait
    assert len(server.downloads("checksums.txt")) == 1 and server.downloads(X86) == []
    assert gave_up_early(server.trickles[0])


def test_the_deadline_covers_a_redirect_too(server, cache, shorten):
    """GitHub redirects asset downloads to its CDN: the deadline spans both hops."""
    server.publish(REPO, "v0.2.0", {X86: standin_archive("0.2.0", "Linux_x86_64")})
    server.redirect_downloads()
    binaries = binaries_for(server, cache)
    assert binaries.for_arch("amd64").data.startswith(b"#!")  # redirects are followed
    assert server.requests_log[-1].path.startswith("/cdn/download/")
    binaries = binaries_for(server, DownloadCache(cache.root.parent / "other-cache"))
    binaries.checksums()
    server.trickle(after=200, every=EVERY, which=X86)
    shorten()
    with pytest.raises(AssetProblem, match="not complete within its 1 s deadline"):
        binaries.for_arch("amd64")
    assert gave_up_early(server.trickles[-1])


def test_one_trickling_arch_does_not_cut_another(server, cache, monkeypatch):
    """Hosts of two arches download at once on one session: the deadline of one never cuts the other."""
    arm = "picoclaw_Linux_arm64.tar.gz"
    assets = {X86: Generated.repeat(MiB), arm: standin_archive("0.2.0", "Linux_arm64")}
    server.publish(REPO, "v0.2.0", assets)
    binaries = binaries_for(server, cache)
    binaries.checksums()
    server.trickle(after=300, every=EVERY, which=X86)
    monkeypatch.setattr(release, "asset_deadline", lambda size: 1.0 if size == MiB else 60.0)  # amd64's alone
    results = {}

    def fetch(arch):
        try:
            results[arch] = binaries.for_arch(arch)
        except AssetProblem as problem:
            results[arch] = problem

    threads = [threading.Thread(target=fetch, args=(arch,)) for arch in ("amd64", "arm64", "arm64")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert isinstance(results["amd64"], AssetProblem) and "deadline" in str(results["amd64"])
    assert results["arm64"].data == extract_binary(assets[arm], "x")
    assert gave_up_early(server.trickles[0])


def test_download_streams_into_a_temporary_file_in_the_cache(server, cache, monkeypatch):
    """Stalled after 192 KiB, the download is on disk beside the cache entries, not in memory;
    cut off at its deadline, the temporary file is gone."""
    monkeypatch.setattr(release, "ASSET_DEADLINE_FLOOR", 3.0)
    monkeypatch.setattr(release, "ASSET_MIN_RATE", 1 << 40)
    server.publish(REPO, "v0.2.0", {X86: Generated.repeat(1 * MiB)})
    binaries = binaries_for(server, cache)
    binaries.checksums()
    server.trickle(after=3 * 64 * 1024 + 200, every=EVERY, which=X86)
    seen = []

    def watch():
        while not done.is_set():
            seen.extend((p.name, p.stat().st_size) for p in (cache.root / "sha256").glob(".partial-*")
                        if p.exists() and p.stat().st_size >= 128 * 1024)
            if seen:
                return
            done.wait(0.02)

    done = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.raises(AssetProblem, match="not complete within its 3 s deadline"):
            binaries.for_arch("amd64")
    finally:
        done.set()
        watcher.join()
    assert seen, "no partial download in the cache directory while it stalled"
    assert cache_files(cache) == []


def test_unwritable_cache_still_installs_through_a_temporary_file(server, tmp_path):
    (tmp_path / "not-a-directory").write_text("")
    cache = DownloadCache(tmp_path / "not-a-directory" / "cache")
    assets = {X86: standin_archive("0.2.0", "Linux_x86_64")}
    server.publish(REPO, "v0.2.0", assets)
    before = set(Path(tempfile.gettempdir()).glob("picoclaw-fleet-download-*"))
    assert binaries_for(server, cache).for_arch("amd64").data == extract_binary(assets[X86], "x")
    assert set(Path(tempfile.gettempdir()).glob("picoclaw-fleet-download-*")) == before  # removed after use


# ---- byte caps ----------------------------------------------------------------------------------


def test_stream_longer_than_the_declared_size_is_cut_and_fails(server, cache):
    declared = 1 * MiB
    server.publish(REPO, "v0.2.0", {X86: Generated.repeat(64 * MiB)}, sizes={X86: declared})
    binaries = binaries_for(server, cache)
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("amd64")
    assert raised.value.status == "download-failed"
    message = str(raised.value)
    assert f"longer than the {declared} bytes the release declares" in message and "cut off" in message
    assert cache_files(cache) == []


def test_stream_shorter_than_the_declared_size_fails(server, cache):
    archive = standin_archive("0.2.0", "Linux_x86_64")
    server.publish(REPO, "v0.2.0", {X86: archive}, sizes={X86: len(archive) + 1000}, checksums=False, digests=True)
    with pytest.raises(AssetProblem) as raised:
        binaries_for(server, cache).for_arch("amd64")
    assert raised.value.status == "download-failed"
    assert f"ended after {len(archive)} of the {len(archive) + 1000} bytes" in str(raised.value)


def test_undeclared_size_is_capped_at_the_fixed_limit(server, cache, monkeypatch):
    monkeypatch.setattr(release, "ASSET_MAX_BYTES", 2 * MiB)
    server.publish(REPO, "v0.2.0", {X86: Generated.repeat(8 * MiB)}, sizes={X86: None})
    binaries = binaries_for(server, cache)
    assert next(a for a in binaries.release.assets if a.name == X86).size is None
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("amd64")
    assert raised.value.status == "download-failed" and "longer than 2 MiB" in str(raised.value)
    small = standin_archive("0.2.0", "Linux_x86_64")
    server.publish(REPO, "v0.3.0", {X86: small}, sizes={X86: None})
    session = github_session()
    ok = ReleaseBinaries(resolve_release(server.url, REPO, "v0.3.0", None, session), session, cache)
    assert ok.for_arch("amd64").data == extract_binary(small, "x")  # under the cap: fine


def test_api_answer_over_the_cap_is_a_release_error(server, monkeypatch):
    monkeypatch.setattr(release, "API_MAX_BYTES", 2048)
    server.publish(REPO, "v0.2.0", {f"picoclaw-linux-amd64-{i:03d}": b"x" for i in range(40)})
    with pytest.raises(ReleaseError, match="answered with more than .* not a GitHub release"):
        resolve_release(server.url, REPO)


def test_checksum_file_over_its_cap_fails(server, cache, monkeypatch):
    monkeypatch.setattr(release, "CHECKSUMS_MAX_BYTES", 100)
    server.publish(REPO, "v0.2.0", {X86: standin_archive("0.2.0", "Linux_x86_64")},
                   checksums=b"0" * 64 + b"  padding\n" * 50)
    with pytest.raises(AssetProblem, match="cannot fetch checksums.txt: larger than") as raised:
        binaries_for(server, cache).for_arch("amd64")
    assert raised.value.status == "download-failed"


# ---- streaming to the cache in bounded memory -------------------------------------------------------


def stored_gzip_tar(members):
    """A .tar.gz made on the fly, uncompressed (deflate level 0): `members` is [(name, size, chunks)]."""
    def chunks():
        gz = zlib.compressobj(0, zlib.DEFLATED, 31)  # wbits 31: a gzip file
        for name, size, body in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = size, 0o755
            yield gz.compress(info.tobuf(tarfile.GNU_FORMAT))
            for chunk in body():
                yield gz.compress(chunk)
            yield gz.compress(b"\0" * (-size % 512))
        yield gz.compress(b"\0" * 1024) + gz.flush()
    return Generated(chunks)


MEASURE = """
import json, resource, sys
from fabfile.host.release import DownloadCache, ReleaseBinaries, github_session, resolve_release
url, root = sys.argv[1], sys.argv[2]
session = github_session()
found = resolve_release(url, "sipeed/picoclaw", None, None, session)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
binary = ReleaseBinaries(found, session, DownloadCache(root)).for_arch("amd64")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_kib": before, "after_kib": after, "sha256": binary.sha256}))
"""


def test_a_200_mb_archive_downloads_in_bounded_memory(server, tmp_path, guarded_env):
    """The archive streams to the cache, hashed on the way; only the binary is read into memory."""
    binary = standin_archive("0.2.0", "Linux_x86_64")
    binary = extract_binary(binary, "x")
    padding = 200 * MiB
    zeros = bytes(1024 * 1024)
    archive = stored_gzip_tar([
        ("picoclaw_0.2.0/README.padding", padding, lambda: (zeros for _ in range(padding // len(zeros)))),
        ("picoclaw_0.2.0/picoclaw", len(binary), lambda: [binary]),
    ])
    assert len(archive) > padding
    server.publish(REPO, "v0.2.0", {X86: archive})
    root = tmp_path / "cache"
    ran = subprocess.run([sys.executable, "-c", MEASURE, server.url, str(root)], cwd=REPO_DIR, env=guarded_env,
                         capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    measured = json.loads(ran.stdout)
    assert measured["sha256"] == sha(binary)
    growth_mib = (measured["after_kib"] - measured["before_kib"]) / 1024
    assert growth_mib < 40, f"peak RSS grew {growth_mib:.0f} MiB for a {len(archive) / MiB:.0f} MiB download"
    stored = root / "sha256" / archive.sha256
    assert stored.stat().st_size == len(archive)  # the whole archive, in the cache under its sha256
    assert sorted(p.name for p in (root / "sha256").iterdir()) == [archive.sha256]  # no temporary file left


# ---- verification: the CLI -----------------------------------------------------------------------------


@pytest.fixture
def deploy_env(guarded_env, tmp_path):
    env = dict(guarded_env)
    for name in ("GITHUB_TOKEN", "PROVIDER", "API_KEY_ENV", "OPENAI_API_KEY"):
        env.pop(name, None)
    env["ANTHROPIC_API_KEY"] = API_KEY
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg-cache")
    return env


def test_cli_refuses_an_unverified_release_unless_allowed(testbed, fleet_config, server, deploy_env):
    hosts = testbed.add_hosts(2, prefix="rf")
    server.publish(REPO, "v0.7.0", {X86: standin_archive("0.7.0", "Linux_x86_64")}, checksums=False)
    path = fleet_config(hosts, github_api=server.url, release_repo=REPO)

    result, data, by_name = fab_json(["deploy", "--config", path], deploy_env)
    assert result.returncode == 1, result.stderr
    for host in hosts:
        h = by_name[host.name]
        assert h["status"] == "unverified"
        assert "no checksum file and no digest" in h["message"] and "--allow-unverified" in h["message"]
        assert not installed_binary(host).exists()
    assert data["release"]["verification"] == release.UNVERIFIED_REFUSED
    assert server.downloads() == []  # nothing was even downloaded

    result, data, by_name = fab_json(["deploy", "--config", path, "--allow-unverified"], deploy_env)
    assert result.returncode == 0, result.stderr
    assert data["release"] == {"repo": REPO, "tag": "v0.7.0", "version": "0.7.0",
                               "verification": "unverified (--allow-unverified)"}
    for host in hosts:
        assert (by_name[host.name]["status"], by_name[host.name]["version"]) == ("ok", "0.7.0")
        assert installed_binary(host).read_bytes() == extract_binary(standin_archive("0.7.0", "Linux_x86_64"), "x")
    assert len(server.downloads(X86)) == 1
