"""The stand-in PicoClaw: one program (picoclaw.py), and how it is built, packed and provisioned.

The real PicoClaw is a Go binary that talks to an LLM provider; the fast and
fault tests, the benchmarks and the demo need one that honours the same
command line, prints what the real one prints and answers offline and
deterministically. `PROGRAM` is that stand-in: a stdlib-only Python script
(see its docstring for what it copies from the real binary, and what not).
It is the only one -- the benchmarks run it as every host's PicoClaw, and
the hosts share the controller's CPUs -- so it is kept cheap to start:
``python3 -I -S``, no import the command does not need (the program's
docstring), and no compiling on each start (`standin_binary`).

Here: `build_standin` writes it as an executable with a version, a baked-in
directive and padding (a 15 MB "binary" for upload figures);
`standin_archive` packs it as an upstream release archive;
`write_picoclaw_config` gives a home the ~/.picoclaw a deploy leaves.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import io
import json
import marshal
import random
import re
import tarfile
import zipfile
from pathlib import Path

from ..system import make_dir, write_file

PROGRAM = Path(__file__).resolve().with_name("picoclaw.py")

#: What Testbed.install_standin provisions, as a deploy with the fleet's defaults would:
#: PicoClaw's model_name, its model_list entry, and the key in ~/.picoclaw/.security.yml.
STANDIN_MODEL_NAME = "claude-sonnet-4.6"
STANDIN_PROVIDER = "anthropic"
STANDIN_MODEL_ID = "claude-sonnet-4-6"
STANDIN_API_BASE = "https://api.anthropic.com/v1"
STANDIN_API_KEY = "sk-standin-test"


def standin_commit(version: str) -> str:
    """The git commit a stand-in of `version` reports: 8 hex digits, fixed per version."""
    return hashlib.sha1(version.encode()).hexdigest()[:8]


def standin_source(version: str = "0.1.0", mode: str | None = None, pad_bytes: int = 0) -> str:
    """The program's text with `version`, its commit and the default directive
    `mode` filled in, then `pad_bytes` of comment (runnable as a plain script too)."""
    source = PROGRAM.read_text(encoding="utf-8")
    source = re.sub(r'^VERSION = .*$', lambda _: f"VERSION = {version!r}", source, count=1, flags=re.M)
    source = re.sub(r'^COMMIT = .*$', lambda _: f"COMMIT = {standin_commit(version)!r}", source, count=1, flags=re.M)
    source = re.sub(r'^DEFAULT_MODE = .*$', lambda _: f"DEFAULT_MODE = {mode!r}", source, count=1, flags=re.M)
    return source + padding(pad_bytes)


def padding(pad_bytes: int) -> str:
    """A comment block of exactly pad_bytes (ASCII) bytes.  Hex from a seeded
    PRNG: incompressible like a real binary, yet identical on every build."""
    hexdata = random.Random(pad_bytes).randbytes(pad_bytes // 2 + 1).hex()
    lines = []
    for pos in range(0, max(pad_bytes, 0), 80):
        width = min(80, pad_bytes - pos)
        lines.append(("#" + hexdata[pos:pos + width])[:width - 1] + "\n")
    return "".join(lines)


def standin_binary(version: str = "0.1.0", mode: str | None = None, pad_bytes: int = 0) -> bytes:
    """The stand-in as installed: the program's shebang line, `pad_bytes` of
    padding, then a zip archive holding the program as ``__main__.py`` and its
    bytecode as ``__main__.pyc``.

    Why a zip: Python runs a zip with a ``__main__`` from its bytecode, as
    Python's own zipapps do, while a script is compiled on every start --
    1300 lines, ~9 ms of CPU, more than half of a `version` run, paid by the
    benchmarks' hosts on every task. The bytecode is an unchecked hash-based
    pyc for this interpreter; a python3 with another magic number ignores it
    and compiles ``__main__.py`` instead (slower, same output). Data before a
    zip is allowed (its offsets are found from its end), so the padding sits
    there, after the shebang line. Deterministic: fixed zip timestamps, and
    marshal format 2, which has no reference flags that depend on refcounts.
    """
    return _shebang() + padding(pad_bytes).encode() + _program_zip(version, mode)


def _shebang() -> bytes:
    """The program's first line: ``#!/usr/bin/env -S python3 -I -S``."""
    return PROGRAM.read_bytes().split(b"\n", 1)[0] + b"\n"


@functools.lru_cache(maxsize=None)
def _program_zip(version: str, mode: str | None) -> bytes:
    source = standin_source(version, mode).encode("utf-8")
    code = compile(source, "picoclaw", "exec", dont_inherit=True)
    pyc = (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")  # hash-based, source not checked
           + importlib.util.source_hash(source) + marshal.dumps(code, 2))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as archive:
        for name, data in (("__main__.py", source), ("__main__.pyc", pyc)):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buf.getvalue()


def build_standin(dest: Path, version: str = "0.1.0", pad_bytes: int = 0, mode: str | None = None) -> Path:
    """Write an executable stand-in picoclaw at dest (`standin_binary`).  pad_bytes
    grows it (benchmarks upload a 15 MB 'binary'); mode bakes a default directive
    in, like PICOCLAW_STANDIN_MODE but immune to the product rewriting ~/.picoclaw/.env."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_file(dest, standin_binary(version, mode, pad_bytes), 0o755)
    return dest


def _tar_member(name: str, data: bytes, mode: int) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    info.uname = info.gname = "root"
    return info, io.BytesIO(data)


def standin_archive(version: str = "0.1.0", arch_name: str = "Linux_x86_64") -> bytes:
    """A goreleaser-style release archive (picoclaw_<arch_name>.tar.gz contents:
    binary, README.md, LICENSE at top level).  Byte-for-byte deterministic so
    checksum tests can precompute digests."""
    files = [
        ("README.md", f"# PicoClaw {version} ({arch_name})\n\nStand-in build for tests.\n".encode(), 0o644),
        ("LICENSE", b"MIT License (stand-in)\n", 0o644),
        ("picoclaw", standin_binary(version), 0o755),
    ]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data, mode in files:
                tar.addfile(*_tar_member(name, data, mode))
    return buf.getvalue()


def standin_module():
    """The program imported as a module: its banners, its default config, its help texts."""
    from . import picoclaw

    return picoclaw


def provisioned_picoclaw_config(picoclaw_dir: Path, model_name: str = STANDIN_MODEL_NAME) -> dict:
    """~/.picoclaw/config.json after `picoclaw onboard` and a deploy choosing
    `model_name`: PicoClaw's defaults (version 3, its model_list, which holds
    STANDIN_MODEL_NAME) with that model selected and the sandbox on."""
    config = standin_module().default_config(str(picoclaw_dir))
    config["agents"]["defaults"]["model_name"] = model_name
    config["agents"]["defaults"]["restrict_to_workspace"] = True
    if not any(entry["model_name"] == model_name for entry in config["model_list"]):
        config["model_list"].append({"model_name": model_name, "provider": STANDIN_PROVIDER,
                                     "model": STANDIN_MODEL_ID, "api_base": STANDIN_API_BASE})
    return config


def provisioned_security_yml(config: dict, model_name: str = STANDIN_MODEL_NAME,
                             api_key: str | None = STANDIN_API_KEY) -> str:
    """~/.picoclaw/.security.yml as a deploy leaves it (PyYAML block style): `api_key`
    for every entry of `model_name`, an empty entry for every other model."""
    names, seen = [], {}
    for entry in config["model_list"]:
        index = seen[entry["model_name"]] = seen.get(entry["model_name"], -1) + 1
        names.append((entry["model_name"], f"{entry['model_name']}:{index}"))
    lines = ["model_list:"]
    for name, key in sorted(names, key=lambda pair: pair[1]):
        if name == model_name and api_key:
            lines += [f"  {key}:", "    api_keys:", f"    - {api_key}"]
        else:
            lines.append(f"  {key}: {{}}")
    return "\n".join(lines) + "\n"


def write_picoclaw_config(home: Path, owner: tuple[int, int] | None = None, model_name: str = STANDIN_MODEL_NAME,
                          api_key: str | None = STANDIN_API_KEY) -> Path:
    """Give `home` a provisioned PicoClaw: ~/.picoclaw (0700) with config.json
    and .security.yml (0600) selecting `model_name` with `api_key` (None: no
    key), and the workspace.  Returns the ~/.picoclaw directory."""
    picoclaw_dir = make_dir(Path(home) / ".picoclaw", 0o700, owner)
    config = provisioned_picoclaw_config(picoclaw_dir, model_name)
    write_file(picoclaw_dir / "config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n", 0o600, owner)
    write_file(picoclaw_dir / ".security.yml", provisioned_security_yml(config, model_name, api_key), 0o600, owner)
    make_dir(picoclaw_dir / "workspace", 0o755, owner)
    return picoclaw_dir
