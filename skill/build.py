"""Build the OpenClaw skill folder that is published to ClawHub, and list what would be uploaded.

    python3 skill/build.py [--out DIR]     build (default dist/skill/picoclaw-fleet) and list it
    python3 skill/build.py --list DIR      only list what `clawhub skill publish DIR` would upload

The built folder is ``skill/picoclaw-fleet/`` (SKILL.md, scripts/, .clawhubignore)
plus the program itself: the ``fabfile`` package as ``pip install .`` would
install it, and ``requirements.txt`` made from pyproject.toml's dependencies.
That is what lets ``python3 {baseDir}/scripts/picoclaw_fleet.py`` run from the
installed skill when the console script is not installed. Tests, bench and demo
are never copied.

Before building, the skill's frontmatter is checked against what the build
promises: its name is the folder's (a valid ClawHub slug), its version is
pyproject.toml's, its ``metadata`` is one line of JSON, and its uv installer
pins that version.

The list mirrors ClawHub's CLI (packages/clawhub/src/skills.ts `listSkillFiles`,
cli/commands/publish.ts): every regular file under the folder, in any format,
except hidden paths (a segment starting with "."), symlinks, ``node_modules``,
what ``.gitignore``/``.clawhubignore``/``.clawdhubignore`` exclude (a subset of
gitignore syntax: ``*``, ``?``, ``**``, trailing ``/``, anchoring ``/``, ``!``),
and ``skill-card.md`` (ClawHub generates it); at most 10 MB a file and 50 MB in
all, and a SKILL.md at the top. A problem is one line on stderr, exit 2.
"""

import argparse
import fnmatch
import json
import re
import shutil
import sys
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ImportError:  # Python 3.10
    print("skill/build.py: needs Python 3.11 or later (tomllib): make skill PYTHON=python3.11", file=sys.stderr)
    sys.exit(2)

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "skill" / "picoclaw-fleet"
PACKAGE = "fabfile"
DEFAULT_OUT = REPO / "dist" / "skill" / "picoclaw-fleet"

#: ClawHub's publish limits (cli/commands/publish.ts) and ignore files (skills.ts).
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_TOTAL_BYTES = 50 * 1024 * 1024
IGNORE_FILES = (".gitignore", ".clawhubignore", ".clawdhubignore")
DEFAULT_IGNORES = (".git/", "node_modules/", ".clawhub/", ".clawdhub/")
GENERATED = "skill-card.md"
#: ClawHub's slug rule for a new skill (convex/lib/skillSlugValidator.ts).
SLUG = re.compile(r"[a-z0-9](?:(?!--)[a-z0-9-]){1,94}[a-z0-9]")


class BuildError(Exception):
    """A problem with the skill or its build; one line."""


# --- what the project says -----------------------------------------------------------------------


def project(repo=REPO):
    """pyproject.toml's [project] table and setuptools' package-data."""
    data = tomllib.loads((repo / "pyproject.toml").read_text())
    return data["project"], data.get("tool", {}).get("setuptools", {}).get("package-data", {})


def frontmatter_lines(skill_md):
    """The top-level ``key: value`` lines of SKILL.md's frontmatter, as a dict of raw text."""
    text = skill_md.read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    if not match:
        raise BuildError(f"{skill_md}: no frontmatter between --- lines at the top")
    return dict(re.findall(r"^([\w-]+):[ \t]*(.*)$", match.group(1), re.M))


def check_skill(source=SOURCE, repo=REPO):
    """What the build promises about SKILL.md (see the module docstring); returns the version."""
    meta, _ = project(repo)
    front = frontmatter_lines(source / "SKILL.md")
    name, version = front.get("name", ""), front.get("version", "")
    if name != source.name or not SLUG.fullmatch(name):
        raise BuildError(f"SKILL.md name {name!r}: must be the folder's name {source.name!r}, a ClawHub slug")
    if version != meta["version"]:
        raise BuildError(f"SKILL.md version {version!r} is not pyproject.toml's {meta['version']!r}")
    try:
        metadata = json.loads(front.get("metadata", ""))
    except json.JSONDecodeError as exc:
        raise BuildError(f"SKILL.md metadata is not one line of JSON: {exc}") from None
    pins = [spec.get("package") for spec in metadata.get("openclaw", {}).get("install", []) if spec.get("kind") == "uv"]
    if pins != [f"{meta['name']}=={version}"]:
        raise BuildError(f"SKILL.md's uv installer must install {meta['name']}=={version}, not {pins}")
    return version


# --- building ------------------------------------------------------------------------------------


def package_files(repo=REPO):
    """The files of the fabfile package `pip install .` installs: its modules and its package-data."""
    _, package_data = project(repo)
    root = repo / PACKAGE
    files = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        package = ".".join((PACKAGE,) + path.parent.relative_to(root).parts)
        if path.suffix == ".py" or any(fnmatch.fnmatchcase(path.name, g) for g in package_data.get(package, ())):
            files.append(path)
    return files


def requirements_text(repo=REPO):
    meta, _ = project(repo)
    lines = ["# The Python packages scripts/picoclaw_fleet.py needs: pyproject.toml's dependencies (skill/build.py)."]
    return "\n".join(lines + list(meta["dependencies"])) + "\n"


def build(out=DEFAULT_OUT, source=SOURCE, repo=REPO):
    """Make `out` the publishable skill folder (replacing a previous build there); returns `out`."""
    check_skill(source, repo)
    out = Path(out)
    if out.exists():
        if not (out / "SKILL.md").is_file() or out.resolve() in (repo.resolve(), source.resolve()):
            raise BuildError(f"{out} exists and is not a previous build: refusing to replace it")
        shutil.rmtree(out)
    for path in sorted(source.rglob("*")):
        if path.is_file() and not path.is_symlink() and "__pycache__" not in path.parts:
            copy(path, out / path.relative_to(source))
    for path in package_files(repo):
        copy(path, out / path.relative_to(repo))
    (out / "requirements.txt").write_text(requirements_text(repo))
    return out


def copy(src, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)


# --- what ClawHub would upload -------------------------------------------------------------------


class IgnoreRules:
    """gitignore-style rules, as the `ignore` package ClawHub uses applies them (the subset in the docstring)."""

    def __init__(self, lines):
        self.rules = []
        for raw in lines:
            line = raw.rstrip("\n").rstrip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            line = line[1:] if negate else line
            dir_only = line.endswith("/")
            line = line.rstrip("/")
            anchored = "/" in line
            self.rules.append((negate, dir_only, anchored, line.lstrip("/")))

    def _matches(self, rule, path, is_dir):
        _, dir_only, anchored, pattern = rule
        if dir_only and not is_dir:
            return False
        regex = glob_regex(pattern)
        return bool(regex.fullmatch(str(path)) if anchored else regex.fullmatch(path.name))

    def ignored(self, relpath):
        """Whether `relpath` (a file) is excluded, itself or through a directory above it."""
        path = PurePosixPath(relpath)
        candidates = [(PurePosixPath(*path.parts[:i]), True) for i in range(1, len(path.parts))] + [(path, False)]
        for candidate, is_dir in candidates:
            verdict = False
            for rule in self.rules:
                if self._matches(rule, candidate, is_dir):
                    verdict = not rule[0]
            if verdict:
                return True
        return False


def glob_regex(pattern):
    """A gitignore glob as a regex: ``*`` and ``?`` stay within a segment, ``**`` crosses them."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def upload_list(folder):
    """[(relative path, size)] that `clawhub skill publish folder` would upload, sorted; BuildError past its limits."""
    folder = Path(folder)
    lines = list(DEFAULT_IGNORES)
    for name in IGNORE_FILES:
        if (folder / name).is_file():
            lines += (folder / name).read_text(encoding="utf-8").splitlines()
    rules = IgnoreRules(lines)
    files = []
    for path in walk(folder):
        rel = path.relative_to(folder).as_posix()
        if rules.ignored(rel) or rel.lower() == GENERATED:
            continue
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise BuildError(f'file "{rel}" exceeds the {MAX_FILE_BYTES >> 20}MB limit')
        files.append((rel, size))
    if sum(size for _, size in files) > MAX_TOTAL_BYTES:
        raise BuildError(f"skill bundle exceeds the {MAX_TOTAL_BYTES >> 20}MB limit")
    if not any(rel.lower() in ("skill.md", "skills.md") for rel, _ in files):
        raise BuildError(f"{folder}: SKILL.md required")
    return sorted(files)


def walk(directory):
    """Regular files under `directory` as ClawHub walks it: no hidden entries, no node_modules, no symlinks."""
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or entry.name == "node_modules":
            continue
        if entry.is_symlink():
            continue
        if entry.is_dir():
            yield from walk(entry)
        elif entry.is_file():
            yield entry


# --- the command ---------------------------------------------------------------------------------


def show(folder, files):
    for rel, size in files:
        print(f"{size:>9}  {rel}")
    total = sum(size for _, size in files)
    print(f"{len(files)} files, {total} bytes: what `clawhub skill publish {folder}` uploads")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to build (default: %(default)s)")
    group.add_argument("--list", type=Path, metavar="DIR", help="only list what publishing DIR would upload")
    args = parser.parse_args(argv)
    try:
        if args.list is not None:
            if not args.list.is_dir():
                raise BuildError(f"{args.list} is not a folder")
            show(args.list, upload_list(args.list))
            return 0
        version = check_skill()
        out = build(args.out)
        files = upload_list(out)
    except (BuildError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"skill/build.py: {exc}", file=sys.stderr)
        return 2
    print(f"built {out}", file=sys.stderr)
    show(out, files)
    print(f"publish with: clawhub skill publish {out} --slug {out.name} --version {version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
