"""Release resolution, asset choice, checksums and the download cache (fabfile/host/release.py).

Everything network-shaped runs against harness/release_server.py, a real HTTP
server on 127.0.0.1 playing GitHub's API.
"""

import hashlib
import io
import os
import tarfile
import threading
from types import SimpleNamespace

import pytest

from fabfile.core.errors import UsageError
from fabfile.host.release import (
    CHECKSUMS_NAME,
    UNVERIFIED_REFUSED,
    Asset,
    AssetProblem,
    Progress,
    Release,
    ReleaseBinaries,
    ReleaseError,
    binary_from_file,
    cache_dir,
    extract_binary,
    github_session,
    parse_checksums,
    pick_asset,
    release_binaries,
    resolve_release,
)
from harness.cli import drain_terminal
from harness.standin import standin_archive

REPO = "sipeed/picoclaw"
GORELEASER = ["picoclaw_Linux_x86_64.tar.gz", "picoclaw_Linux_arm64.tar.gz", "picoclaw_Linux_riscv64.tar.gz",
              "picoclaw_Linux_armv7.tar.gz", "picoclaw_Darwin_arm64.tar.gz", "picoclaw_Darwin_x86_64.tar.gz",
              "picoclaw_Windows_x86_64.zip", "checksums.txt"]


def release_of(*names):
    return Release(REPO, "v0.2.0", tuple(Asset(n, f"http://127.0.0.1:9/{n}") for n in names))


def upstream_assets(version="0.2.0"):
    """Upstream's Linux archives, each a real goreleaser-style tar.gz."""
    return {f"picoclaw_Linux_{arch}.tar.gz": standin_archive(version, f"Linux_{arch}")
            for arch in ("x86_64", "arm64", "riscv64", "armv7")}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def binaries_for(server, cache, tag=None, token=None, allow_unverified=False):
    session = github_session()
    return ReleaseBinaries(resolve_release(server.url, REPO, tag, token, session), session, cache,
                           allow_unverified=allow_unverified)


# ---- picking the asset -------------------------------------------------------------


@pytest.mark.parametrize("arch, expected", [
    ("amd64", "picoclaw_Linux_x86_64.tar.gz"),
    ("arm64", "picoclaw_Linux_arm64.tar.gz"),
    ("riscv64", "picoclaw_Linux_riscv64.tar.gz"),
    ("armv7", "picoclaw_Linux_armv7.tar.gz"),
])
def test_pick_asset_chooses_upstream_linux_archive_per_arch(arch, expected):
    assert pick_asset(release_of(*GORELEASER), arch).name == expected


@pytest.mark.parametrize("name, arch", [
    ("picoclaw-linux-amd64", "amd64"), ("picoclaw_linux_x86_64", "amd64"), ("picoclaw-linux-arm64", "arm64"),
    ("picoclaw-aarch64", "arm64"), ("picoclaw-linux-riscv64", "riscv64"), ("picoclaw-linux-armv7", "armv7"),
])
def test_pick_asset_accepts_raw_binary_named_by_arch(name, arch):
    release = release_of(name, name + ".sha256", "picoclaw-darwin-arm64", "checksums.txt")
    assert pick_asset(release, arch).name == name


def test_pick_asset_prefers_archive_over_raw_binary():
    release = release_of("picoclaw-linux-arm64", "picoclaw_Linux_arm64.tar.gz")
    assert pick_asset(release, "arm64").name == "picoclaw_Linux_arm64.tar.gz"


def test_pick_asset_does_not_confuse_arm64_and_armv7():
    release = release_of("picoclaw_Linux_arm64.tar.gz")
    with pytest.raises(AssetProblem) as raised:
        pick_asset(release, "armv7")
    assert raised.value.status == "no-asset"


def test_no_asset_lists_the_assets_seen():
    release = release_of("picoclaw_Darwin_arm64.tar.gz", "picoclaw_Linux_x86_64.tar.gz", "checksums.txt")
    with pytest.raises(AssetProblem) as raised:
        pick_asset(release, "arm64")
    message = str(raised.value)
    assert raised.value.status == "no-asset"
    assert "arm64" in message and "v0.2.0" in message
    for name in ("picoclaw_Darwin_arm64.tar.gz", "picoclaw_Linux_x86_64.tar.gz", "checksums.txt"):
        assert name in message


def test_parse_checksums_reads_goreleaser_and_binary_mode_lines():
    a, b = "a" * 64, "B" * 64
    text = f"{a}  picoclaw_Linux_arm64.tar.gz\n{b} *picoclaw-linux-amd64\nnot a line\n\n"
    assert parse_checksums(text) == {"picoclaw_Linux_arm64.tar.gz": a, "picoclaw-linux-amd64": b.lower()}


# ---- extracting -----------------------------------------------------------------------


def test_extract_binary_from_goreleaser_archive():
    archive = standin_archive("0.3.1", "Linux_arm64")
    binary = extract_binary(archive, "picoclaw_Linux_arm64.tar.gz")
    assert binary.startswith(b"#!") and b"VERSION = '0.3.1'" in binary


def test_extract_binary_finds_it_in_a_subdirectory():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("picoclaw_0.2/README.md", b"readme"), ("picoclaw_0.2/picoclaw", b"\x7fELF...")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert extract_binary(buf.getvalue(), "x.tar.gz") == b"\x7fELF..."


def test_extract_binary_passes_raw_binary_through():
    assert extract_binary(b"\x7fELF raw", "picoclaw-linux-arm64") == b"\x7fELF raw"


def test_archive_without_picoclaw_is_a_bad_asset():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("README.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(AssetProblem) as raised:
        extract_binary(buf.getvalue(), "odd.tar.gz")
    assert raised.value.status == "bad-asset" and "README.md" in str(raised.value)


def test_binary_from_file_reads_raw_and_archive(tmp_path, standin_path):
    raw = binary_from_file(standin_path)
    assert raw.data == standin_path.read_bytes() and raw.sha256 == sha(raw.data)
    archive = tmp_path / "picoclaw_Linux_x86_64.tar.gz"
    archive.write_bytes(standin_archive("0.5.0"))
    packed = binary_from_file(archive)
    assert b"VERSION = '0.5.0'" in packed.data and packed.source == str(archive)


def test_binary_from_file_missing_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="--from-file .*No such file"):
        binary_from_file(tmp_path / "nope")


# ---- resolving against the (local) GitHub API --------------------------------------------------


def test_resolve_latest_and_by_tag(server):
    server.publish(REPO, "v0.1.0", upstream_assets("0.1.0"), latest=False)
    server.publish(REPO, "v0.2.0", upstream_assets("0.2.0"))
    latest = resolve_release(server.url, REPO)
    assert latest.tag == "v0.2.0" and latest.version == "0.2.0"
    assert {a.name for a in latest.assets} == set(upstream_assets()) | {"checksums.txt"}
    assert latest.checksums.name == "checksums.txt"
    assert resolve_release(server.url, REPO, "v0.1.0").tag == "v0.1.0"
    assert resolve_release(server.url, REPO, "0.1.0").tag == "v0.1.0"  # the "v" is optional


def test_github_token_is_sent_as_bearer_on_api_requests_only(server, cache):
    server.publish(REPO, "v0.2.0", upstream_assets())
    binaries = binaries_for(server, cache, token="ghp_testtoken123")
    binaries.for_arch("amd64")
    (api,) = server.api_requests()
    assert api.headers["Authorization"] == "Bearer ghp_testtoken123"
    assert server.downloads() and all("Authorization" not in r.headers for r in server.downloads())


def test_no_token_no_authorization_header(server):
    server.publish(REPO, "v0.2.0", upstream_assets())
    resolve_release(server.url, REPO)
    assert "Authorization" not in server.api_requests()[0].headers


def test_release_not_found_is_one_clear_usage_error(server):
    with pytest.raises(ReleaseError) as raised:
        resolve_release(server.url, REPO)
    assert isinstance(raised.value, UsageError)
    assert "latest release not found" in str(raised.value) and "404" in str(raised.value)
    server.publish(REPO, "v0.2.0", upstream_assets())
    with pytest.raises(ReleaseError, match=r"release v9\.9\.9 not found"):
        resolve_release(server.url, REPO, "v9.9.9")


def test_rate_limit_shows_githubs_message_and_reset_time(server):
    import time

    reset = server.rate_limit(reset_in_s=600)
    with pytest.raises(ReleaseError) as raised:
        resolve_release(server.url, REPO)
    message = str(raised.value)
    assert "API rate limit exceeded for 127.0.0.1" in message
    assert time.strftime("%H:%M:%S", time.localtime(reset)) in message and "in 10 min" in message
    assert "set GITHUB_TOKEN" in message


def test_rate_limit_with_token_does_not_leak_it(server):
    server.rate_limit()
    with pytest.raises(ReleaseError) as raised:
        resolve_release(server.url, REPO, token="ghp_secret_value_42")
    assert "ghp_secret_value_42" not in str(raised.value) and "set GITHUB_TOKEN" not in str(raised.value)


def test_bad_credentials_and_other_errors(server):
    server.fail_api(401, "Bad credentials")
    with pytest.raises(ReleaseError, match="rejected GITHUB_TOKEN: Bad credentials"):
        resolve_release(server.url, REPO, token="x")
    server.fail_api(502, "Server Error")
    with pytest.raises(ReleaseError, match="502 Server Error"):
        resolve_release(server.url, REPO)


def test_unreachable_api_is_a_release_error():
    from harness.faults import closed_port

    with pytest.raises(ReleaseError, match="cannot reach the GitHub API"):
        resolve_release(f"http://127.0.0.1:{closed_port()}", REPO)


# ---- per-run binaries: one download per arch, cache, checksums ---------------------------------


def test_concurrent_hosts_of_one_arch_share_one_download(server, cache):
    server.publish(REPO, "v0.2.0", upstream_assets())
    binaries = binaries_for(server, cache)
    results = []
    threads = [threading.Thread(target=lambda: results.append(binaries.for_arch("arm64"))) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 12 and len({id(r) for r in results}) == 1
    assert len(server.downloads("picoclaw_Linux_arm64.tar.gz")) == 1
    assert len(server.downloads("checksums.txt")) == 1
    assert results[0].data == extract_binary(standin_archive("0.2.0", "Linux_arm64"), "x")


def test_cache_is_reused_by_the_next_run(server, cache):
    server.publish(REPO, "v0.2.0", upstream_assets())
    first = binaries_for(server, cache).for_arch("amd64")
    assert len(server.downloads("picoclaw_Linux_x86_64.tar.gz")) == 1
    second = binaries_for(server, cache).for_arch("amd64")
    assert second.sha256 == first.sha256
    assert len(server.downloads("picoclaw_Linux_x86_64.tar.gz")) == 1  # the second run downloaded nothing
    stored = standin_archive("0.2.0", "Linux_x86_64")
    assert (cache.root / "sha256" / sha(stored)).read_bytes() == stored


def test_cache_without_checksums_is_found_by_asset_identity(server, cache):
    server.publish(REPO, "v0.2.0", {"picoclaw-linux-amd64": b"#!/bin/sh\necho raw\n"}, checksums=False)
    binaries_for(server, cache, allow_unverified=True).for_arch("amd64")
    binaries_for(server, cache, allow_unverified=True).for_arch("amd64")
    assert len(server.downloads("picoclaw-linux-amd64")) == 1


def test_corrupted_cache_entry_is_downloaded_again(server, cache):
    server.publish(REPO, "v0.2.0", upstream_assets())
    binaries_for(server, cache).for_arch("amd64")
    blob = cache.root / "sha256" / sha(standin_archive("0.2.0", "Linux_x86_64"))
    blob.write_bytes(b"bit rot")
    assert binaries_for(server, cache).for_arch("amd64").data.startswith(b"#!")
    assert len(server.downloads("picoclaw_Linux_x86_64.tar.gz")) == 2


def test_checksum_mismatch_fails_that_arch_once_and_clearly(server, cache):
    assets = upstream_assets()
    sums = {name: sha(data) for name, data in assets.items()}
    sums["picoclaw_Linux_arm64.tar.gz"] = "0" * 64
    server.publish(REPO, "v0.2.0", assets, checksums=sums)
    binaries = binaries_for(server, cache)
    for _ in range(3):
        with pytest.raises(AssetProblem) as raised:
            binaries.for_arch("arm64")
        assert raised.value.status == "checksum-mismatch"
        assert "picoclaw_Linux_arm64.tar.gz" in str(raised.value) and "0" * 64 in str(raised.value)
    assert len(server.downloads("picoclaw_Linux_arm64.tar.gz")) == 1
    assert binaries.for_arch("amd64").data.startswith(b"#!")  # other arches are unaffected
    assert not (cache.root / "sha256").exists() or not any(
        p.read_bytes() == assets["picoclaw_Linux_arm64.tar.gz"] for p in (cache.root / "sha256").iterdir())


def test_tampered_download_fails_against_githubs_digest(server, cache):
    server.publish(REPO, "v0.2.0", {"picoclaw-linux-amd64": b"#!/bin/sh\necho good\n"}, checksums=False, digests=True)
    binaries = binaries_for(server, cache)
    server.replace_asset(REPO, "v0.2.0", "picoclaw-linux-amd64", b"#!/bin/sh\necho evil\n")
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("amd64")
    assert raised.value.status == "checksum-mismatch"


def test_goreleasers_checksum_file_name_is_recognised_and_used(server, cache):
    assert CHECKSUMS_NAME.search("picoclaw_0.2.0_checksums.txt")
    assets = upstream_assets()
    sums = {name: sha(data) for name, data in assets.items()}
    sums["picoclaw_Linux_arm64.tar.gz"] = "e" * 64
    server.publish(REPO, "v0.2.0", assets, checksums=sums, checksums_name="picoclaw_0.2.0_checksums.txt")
    binaries = binaries_for(server, cache)
    assert binaries.release.checksums.name == "picoclaw_0.2.0_checksums.txt"
    assert binaries.describe()["verification"] == "checksums"
    assert binaries.for_arch("amd64").data.startswith(b"#!")
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("arm64")
    assert raised.value.status == "checksum-mismatch" and "e" * 64 in str(raised.value)
    assert len(server.downloads("picoclaw_0.2.0_checksums.txt")) == 1
    assert pick_asset(binaries.release, "amd64").name == "picoclaw_Linux_x86_64.tar.gz"  # never taken for a build


def test_github_digest_alone_verifies_and_is_reported(server, cache):
    server.publish(REPO, "v0.2.0", upstream_assets(), checksums=False, digests=True)
    binaries = binaries_for(server, cache)
    assert binaries.describe() == {"repo": REPO, "tag": "v0.2.0", "version": "0.2.0", "verification": "digest"}
    assert binaries.for_arch("arm64").data.startswith(b"#!")


def test_release_with_neither_checksums_nor_digest_is_not_installed(server, cache):
    server.publish(REPO, "v0.2.0", upstream_assets(), checksums=False)
    binaries = binaries_for(server, cache)
    for _ in range(2):
        with pytest.raises(AssetProblem) as raised:
            binaries.for_arch("amd64")
        assert raised.value.status == "unverified"
        message = str(raised.value)
        assert "no checksum file and no digest" in message and "picoclaw_Linux_x86_64.tar.gz" in message
        assert "--allow-unverified" in message
    assert server.downloads() == []  # refused before anything was downloaded
    assert binaries.describe()["verification"] == UNVERIFIED_REFUSED
    assert not (cache.root / "sha256").exists()


def test_allow_unverified_installs_it_and_says_so(server, cache):
    assets = upstream_assets()
    server.publish(REPO, "v0.2.0", assets, checksums=False)
    binaries = binaries_for(server, cache, allow_unverified=True)
    assert binaries.describe()["verification"] == "unverified (--allow-unverified)"
    binary = binaries.for_arch("amd64")
    assert binary.data == extract_binary(assets["picoclaw_Linux_x86_64.tar.gz"], "x")
    assert len(server.downloads("picoclaw_Linux_x86_64.tar.gz")) == 1


def test_allow_unverified_still_refuses_a_checksum_mismatch(server, cache):
    assets = upstream_assets()
    server.publish(REPO, "v0.2.0", assets, checksums={name: "0" * 64 for name in assets})
    binaries = binaries_for(server, cache, allow_unverified=True)
    assert binaries.describe()["verification"] == "checksums"
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("amd64")
    assert raised.value.status == "checksum-mismatch"
    server.publish(REPO, "v0.3.0", {"picoclaw-linux-amd64": b"#!/bin/sh\necho good\n"}, checksums=False, digests=True)
    binaries = binaries_for(server, cache, tag="v0.3.0", allow_unverified=True)
    server.replace_asset(REPO, "v0.3.0", "picoclaw-linux-amd64", b"#!/bin/sh\necho evil\n")
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("amd64")
    assert raised.value.status == "checksum-mismatch"


def test_asset_missing_from_checksums_is_refused(server, cache):
    assets = upstream_assets()
    server.publish(REPO, "v0.2.0", assets, checksums={"picoclaw_Linux_x86_64.tar.gz": sha(assets["picoclaw_Linux_x86_64.tar.gz"])})
    with pytest.raises(AssetProblem, match="lists no sha256 for picoclaw_Linux_arm64.tar.gz") as raised:
        binaries_for(server, cache).for_arch("arm64")
    assert raised.value.status == "checksum-mismatch"


def test_download_error_is_download_failed(server, cache):
    server.publish(REPO, "v0.2.0", upstream_assets())
    server.fail_downloads(500)
    with pytest.raises(AssetProblem) as raised:
        binaries_for(server, cache).for_arch("amd64")
    assert raised.value.status == "download-failed" and "cannot fetch checksums.txt: HTTP 500" in str(raised.value)
    server.heal()
    server.publish(REPO, "v0.2.0", upstream_assets(), checksums=False, digests=True)
    binaries = binaries_for(server, cache)
    server.fail_downloads(500)
    with pytest.raises(AssetProblem) as raised:
        binaries.for_arch("amd64")
    assert raised.value.status == "download-failed"
    assert "cannot download picoclaw_Linux_x86_64.tar.gz: HTTP 500" in str(raised.value)


def test_release_binaries_uses_config_and_xdg_cache(server, tmp_path):
    server.publish("acme/claw", "v1.0.0", upstream_assets("1.0.0"))
    defaults = SimpleNamespace(github_api=server.url, release_repo="acme/claw")
    environ = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "GITHUB_TOKEN": "tok"}
    binaries = release_binaries(defaults, None, environ)
    assert binaries.describe() == {"repo": "acme/claw", "tag": "v1.0.0", "version": "1.0.0", "verification": "checksums"}
    binaries.for_arch("riscv64")
    assert cache_dir(environ) == tmp_path / "xdg" / "picoclaw-fleet"
    assert any((cache_dir(environ) / "sha256").iterdir())
    assert cache_dir({"HOME": "/x"}).name == "picoclaw-fleet"


def test_progress_is_shown_on_a_terminal_only(server, cache):
    import pty

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w") as tty:  # closing it ends what the terminal side can read
            progress = Progress("picoclaw_Linux_arm64.tar.gz", 2_000_000, tty)
            progress.advance(1_000_000)
            progress.advance(1_000_000)
            progress.finish()
        shown = drain_terminal(master).decode()
    finally:
        os.close(master)
    assert "downloading picoclaw_Linux_arm64.tar.gz:  50%" in shown and "done (2.0 MB)" in shown
    piped = io.StringIO()
    quiet = Progress("x", 10, piped)
    quiet.advance(10)
    quiet.finish()
    assert piped.getvalue() == ""
