"""The OpenClaw skill (skill/picoclaw-fleet/) installs and runs from ClawHub, and declares what it uses.

* **Frontmatter**, parsed as OpenClaw parses it (a port of openclaw/openclaw
  ``src/markdown/frontmatter.ts`` ``parseFrontmatterBlock``, ``src/shared/frontmatter.ts``
  and ``src/agents/skills/frontmatter.ts``) and as ClawHub parses it (openclaw/clawhub
  ``convex/lib/skills/index.ts``), checked against the keys their docs define
  (openclaw ``docs/tools/skills.md``; clawhub ``docs/skill-format.md``, ``docs/publishing.md``).
* **Environment variables**: every one the uploaded code reads is found in that code by an
  AST scan, and the frontmatter declares exactly those; ClawHub's own pattern scan finds no
  more.
* **The published folder**: ``make skill`` builds it with the program and nothing of tests,
  bench or demo, and lists what ClawHub would upload, by ClawHub's rules.
* **Every command SKILL.md shows** runs through the built folder's
  ``scripts/picoclaw_fleet.py`` (the ``{baseDir}`` fallback) against the loopback doc fleet
  of tests/test_docs_commands.py.
* **The config path** follows OpenClaw's workspace, as SKILL.md and README.md say.
"""

import ast
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from fabfile.core.config import DEFAULT_PATH, DEFAULTS, config_path, openclaw_workspace
from fabfile.core.errors import UsageError
from tests import test_docs_commands as docs
from tests.test_docs_commands import code_block_lines, doc_env, parse_cli, reset_to_deployed, runnable, verb_of

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "skill" / "picoclaw-fleet"
SKILL_MD = SOURCE / "SKILL.md"
RUNNER = "scripts/picoclaw_fleet.py"
BASEDIR_RUNNER = "{baseDir}/" + RUNNER
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
TIMEOUT = 300

#: The doc fleet (pi-1..pi-3 @lab, a release server, a private HOME): test_docs_commands.py's fixture.
doc_fleet = docs.doc_fleet


def load_builder():
    spec = importlib.util.spec_from_file_location("skill_build", REPO / "skill" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = load_builder()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The publishable folder, built as `make skill` builds it."""
    return builder.build(tmp_path_factory.mktemp("skill") / "picoclaw-fleet")


# --- frontmatter as OpenClaw parses it (src/markdown/frontmatter.ts) ------------------------------

LINE_KEY = re.compile(r"^([\w-]+):\s*(.*)$", re.A)


def strip_quotes(value):
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def coerce_frontmatter_value(value):
    """`coerceFrontmatterValue`: strings trimmed, scalars as JS String(), objects as JSON.stringify."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return None


def parse_yaml_frontmatter(block):
    """`parseYamlFrontmatter` (PyYAML for the `yaml` package; the test below keeps to what both read alike)."""
    try:
        parsed = yaml.safe_load(block)
    except yaml.YAMLError:
        return None
    if not isinstance(parsed, dict):
        return None
    result = {}
    for raw_key, value in parsed.items():
        key = str(raw_key).strip()
        coerced = coerce_frontmatter_value(value)
        if key and coerced is not None:
            result[key] = coerced
    return result


def extract_multiline_value(lines, start):
    match = LINE_KEY.match(lines[start])
    if not match:
        return "", 1
    inline = match.group(2).strip()
    if inline:
        return inline, 1
    values, i = [], start + 1
    while i < len(lines):
        line = lines[i]
        if line and not line.startswith((" ", "\t")):
            break
        values.append(line)
        i += 1
    return "\n".join(values).strip(), i - start


def parse_line_frontmatter(block):
    """`parseLineFrontmatter`: the single-line parser older loaders rely on alone."""
    frontmatter, lines, i = {}, block.split("\n"), 0
    while i < len(lines):
        match = LINE_KEY.match(lines[i])
        if not match:
            i += 1
            continue
        key, inline = match.group(1), match.group(2).strip()
        if not inline and i + 1 < len(lines) and lines[i + 1].startswith((" ", "\t")):
            value, consumed = extract_multiline_value(lines, i)
            if value:
                frontmatter[key] = value
            i += consumed
            continue
        value = strip_quotes(inline)
        if value:
            frontmatter[key] = value
        i += 1
    return frontmatter


def frontmatter_block(content):
    normalized = content.replace("\r\n", "\n").replace("\r", "\n")
    if not normalized.startswith("---"):
        return None
    end = normalized.find("\n---", 3)
    return None if end == -1 else normalized[4:end]


def openclaw_frontmatter(content):
    """`parseFrontmatterBlock`: YAML, with the line parser's JSON-looking values preferred."""
    block = frontmatter_block(content)
    if block is None:
        return {}
    line_parsed, yaml_parsed = parse_line_frontmatter(block), parse_yaml_frontmatter(block)
    if yaml_parsed is None:
        return line_parsed
    merged = dict(yaml_parsed)
    for key, value in line_parsed.items():
        if value.startswith(("{", "[")):
            merged[key] = value
        elif key in merged and merged[key].startswith("{") and "\n" not in value and value not in ("|", ">"):
            merged[key] = value
    return merged


def openclaw_manifest(frontmatter):
    """`resolveOpenClawManifestBlock`: metadata parsed (JSON5 there; strict JSON is a subset), its openclaw object."""
    parsed = json.loads(frontmatter["metadata"])
    manifest = parsed.get("openclaw")
    return manifest if isinstance(manifest, dict) else None


def string_list(value):
    """`normalizeStringList`: an array, or a comma-separated string."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return []


UV_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-\[\]=<>!~+,]*$")
OPENCLAW_INSTALL_KINDS = ("brew", "node", "go", "uv", "download")


def openclaw_install_spec(raw):
    """`parseInstallSpec` (src/agents/skills/frontmatter.ts) for the kinds a Python tool can use; None = dropped."""
    kind = str(raw.get("kind", raw.get("type", ""))).strip().lower()
    if kind not in OPENCLAW_INSTALL_KINDS:
        return None
    spec = {"kind": kind, "id": raw.get("id"), "label": raw.get("label"), "bins": string_list(raw.get("bins"))}
    if kind == "uv":
        package = raw.get("package")
        if not isinstance(package, str):
            return None
        package = package.strip()
        if not package or package.startswith("-") or "\\" in package or "://" in package:
            return None
        if not UV_PACKAGE.match(package):
            return None
        spec["package"] = package
    return spec


# --- frontmatter as ClawHub parses it (convex/lib/skills/index.ts) --------------------------------


def clawhub_frontmatter(content):
    """`parseSkillMarkdown`: the block between `---` lines, YAML, keys of word characters and dashes."""
    lines = content.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    delimiter = re.compile(r"^---[\t ]*$")
    if not delimiter.match(lines[0]):
        return {}
    closing = next((i for i in range(1, len(lines)) if delimiter.match(lines[i])), None)
    if closing is None:
        return {}
    parsed = yaml.safe_load("\n".join(lines[1:closing]))
    return {k: v for k, v in parsed.items() if re.fullmatch(r"[\w-]+", k, re.A)} if isinstance(parsed, dict) else {}


def clawhub_manifest(frontmatter):
    """`getFrontmatterMetadata` then `parseClawdisMetadata`'s choice of block (clawdbot, clawdis, openclaw)."""
    metadata = frontmatter.get("metadata")
    if isinstance(metadata, str):
        metadata = json.loads(re.sub(r",\s*([\]}])", r"\1", metadata))
    for key in ("clawdbot", "clawdis", "openclaw"):
        if isinstance(metadata.get(key), dict):
            return metadata[key]
    return None


def clawhub_declared_env(frontmatter, manifest):
    """`collectDeclaredEnvNames` (convex/lib/moderationEngine.ts): primaryEnv, envVars, env, requires.env."""
    names = set()
    for record in (frontmatter, manifest):
        names.add(record.get("primaryEnv"))
        for key in ("envVars", "env"):
            for entry in record.get(key) or []:
                names.add(entry.get("name") if isinstance(entry, dict) else entry)
        names.update((record.get("requires") or {}).get("env") or [])
    return {n.strip().upper() for n in names if isinstance(n, str) and n.strip()}


#: `collectReferencedEnvNames`: the patterns ClawHub's scan uses on uploaded code.
CLAWHUB_ENV_PATTERNS = (
    r"process\.env\.([A-Za-z_][A-Za-z0-9_]*)",
    r"process\.env\[\s*[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']\s*\]",
    r"os\.environ(?:\.get)?\s*(?:\[\s*|\(\s*)[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']",
    r"(?:os\.)?getenv\s*\(\s*[\"']([A-Za-z_][A-Za-z0-9_]*)[\"']",
)


# --- the documented keys ----------------------------------------------------------------------------

#: Top-level keys: openclaw docs/tools/skills.md ("SKILL.md format", "Optional frontmatter keys")
#: and clawhub docs/skill-format.md ("Basic frontmatter": version; "License").
DOCUMENTED_TOP = {"name", "description", "homepage", "user-invocable", "disable-model-invocation",
                  "command-dispatch", "command-tool", "command-arg-mode", "metadata", "version", "license"}
#: metadata.openclaw keys: skills.md "Gating" and clawhub skill-format.md "Full field reference".
DOCUMENTED_MANIFEST = {"always", "emoji", "homepage", "os", "requires", "primaryEnv", "install", "skillKey",
                       "envVars", "nix", "config"}
DOCUMENTED_REQUIRES = {"bins", "anyBins", "env", "config"}
#: Install kinds both accept: OpenClaw's parseInstallSpec and ClawHub's ("brew", "node", "go", "uv").
SHARED_INSTALL_KINDS = {"brew", "node", "go", "uv"}
SLUG = re.compile(r"[a-z0-9](?:(?!--)[a-z0-9-])*[a-z0-9]")


def skill_text():
    return SKILL_MD.read_text(encoding="utf-8")


def project_version():
    return PYPROJECT["project"]["version"]


def console_script():
    (name,) = PYPROJECT["project"]["scripts"]
    return name


def test_openclaw_reads_every_key_the_docs_define():
    front = openclaw_frontmatter(skill_text())
    assert set(front) <= DOCUMENTED_TOP, set(front) - DOCUMENTED_TOP
    assert {"name", "description", "version", "license", "homepage", "metadata"} <= set(front)
    assert front["name"] == SOURCE.name == console_script()
    assert SLUG.fullmatch(front["name"]) and len(front["name"]) <= 64  # AgentSkills: the folder's name, 1-64
    assert 40 < len(front["description"]) <= 1024  # AgentSkills' limit; ClawHub shows it as the summary
    assert front["version"] == project_version() and re.fullmatch(r"\d+\.\d+\.\d+", front["version"])
    assert front["license"] == "MIT-0"  # clawhub docs/skill-format.md: every published skill is MIT-0
    assert re.fullmatch(r"https://[^\s]+", front["homepage"])


def test_yaml_and_the_line_parser_read_the_same_frontmatter():
    """Older loaders read single lines only: every key must mean the same to both parsers."""
    block = frontmatter_block(skill_text())
    by_line, by_yaml = parse_line_frontmatter(block), parse_yaml_frontmatter(block)
    assert by_yaml is not None, "the frontmatter must be valid YAML (ClawHub drops it all otherwise)"
    assert set(by_line) == set(by_yaml)
    raw = yaml.safe_load(block)
    for key, value in raw.items():
        if key == "metadata":
            continue
        assert isinstance(value, str), f"{key}: keep it a plain string, as YAML 1.1 and 1.2 both read it"
        assert by_line[key] == value, key
    assert json.loads(by_line["metadata"]) == raw["metadata"]
    metadata_lines = [line for line in block.split("\n") if line.startswith("metadata:")]
    assert len(metadata_lines) == 1 and metadata_lines[0].endswith("}"), "metadata must be one line of JSON"


def test_manifest_keys_requirements_and_installer():
    front = openclaw_frontmatter(skill_text())
    manifest = openclaw_manifest(front)
    assert manifest is not None
    assert set(manifest) <= DOCUMENTED_MANIFEST, set(manifest) - DOCUMENTED_MANIFEST
    assert manifest["homepage"] == front["homepage"]
    assert set(manifest.get("os", [])) <= {"darwin", "linux", "win32"}
    requires = manifest["requires"]
    assert set(requires) <= DOCUMENTED_REQUIRES
    # A ClawHub install copies the folder only: the console script must not be required, or the skill hides.
    assert console_script() not in string_list(requires.get("bins"))
    assert string_list(requires.get("anyBins")) == [console_script(), "python3"]
    assert not string_list(requires.get("env")), "no variable is needed by every verb (only deploy needs the key)"

    installers = [openclaw_install_spec(raw) for raw in manifest["install"]]
    assert None not in installers, "OpenClaw would drop an installer spec"
    assert [spec["kind"] for spec in installers] == ["uv"]
    assert set(spec["kind"] for spec in installers) <= SHARED_INSTALL_KINDS
    (uv,) = installers
    assert uv["package"] == f"{PYPROJECT['project']['name']}=={project_version()}"
    assert uv["bins"] == [console_script()]


def test_primary_env_is_the_configs_default_key_variable():
    manifest = openclaw_manifest(openclaw_frontmatter(skill_text()))
    assert manifest["primaryEnv"] == DEFAULTS["api_key_env"]
    declared = {entry["name"]: entry for entry in manifest["envVars"]}
    assert declared[DEFAULTS["api_key_env"]]["required"] is False


def test_env_var_declarations_have_the_form_clawhub_reads():
    manifest = openclaw_manifest(openclaw_frontmatter(skill_text()))
    names = [entry["name"] for entry in manifest["envVars"]]
    assert len(names) == len(set(names))
    for entry in manifest["envVars"]:
        assert set(entry) == {"name", "required", "description"}
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", entry["name"])
        assert entry["required"] is False and len(entry["description"]) > 20


def test_clawhub_reads_the_same_metadata():
    text = skill_text()
    front = clawhub_frontmatter(text)
    assert front["name"] == SOURCE.name and front["version"] == project_version()
    manifest = clawhub_manifest(front)
    assert manifest == openclaw_manifest(openclaw_frontmatter(text))
    for spec in manifest["install"]:
        assert spec["kind"] in SHARED_INSTALL_KINDS and spec["package"]


def test_the_body_points_at_the_runner_in_the_folder(built):
    body = skill_text().split("\n---\n", 1)[1]
    assert BASEDIR_RUNNER in body
    assert (SOURCE / RUNNER).is_file() and (built / RUNNER).is_file()
    for step in ("status", "deploy", "dispatch", "batch", "teardown", "--json"):
        assert step in body


# --- every environment variable the code reads ------------------------------------------------------


def is_os_environ(node):
    return (isinstance(node, ast.Attribute) and node.attr == "environ"
            and isinstance(node.value, ast.Name) and node.value.id == "os")


def contains_os_environ(node):
    return any(is_os_environ(child) for child in ast.walk(node))


def string_constants(tree):
    """Module-level NAME = "text" (and A, B = "a", "b") assignments."""
    constants = {}
    for node in tree.body:
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            for name, value in pairs:
                if isinstance(name, ast.Name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
                    constants[name.id] = value.value
    return constants


class EnvReads(ast.NodeVisitor):
    """Reads of the environment: os.environ / a name bound to it, .get/.pop/.setdefault, [...], `in`, getenv().

    `names` collects the variable names resolved to text; `unresolved` the reads whose
    name is computed, as (function, expression). Every `os.environ` must sit in a read
    or in a value bound to a name (which then counts as the environment too), so a
    read in another shape fails the scan instead of slipping past it.
    """

    def __init__(self, tree):
        self.constants = string_constants(tree)
        self.receivers = {"environ"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and contains_os_environ(node.value):
                self.receivers.update(t.id for t in node.targets if isinstance(t, ast.Name))
        self.names, self.unresolved, self.stray, self.function = set(), [], [], "<module>"
        self.used = set()
        self.visit(tree)
        self.stray = [n.lineno for n in ast.walk(tree) if is_os_environ(n) and id(n) not in self.used]

    def is_env(self, node):
        if is_os_environ(node):
            self.used.add(id(node))
            return True
        return isinstance(node, ast.Name) and node.id in self.receivers

    def record(self, key):
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            self.names.add(key.value)
        elif isinstance(key, ast.Name) and key.id in self.constants:
            self.names.add(self.constants[key.id])
        else:
            self.unresolved.append((self.function, ast.unparse(key)))

    def visit_FunctionDef(self, node):
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Assign(self, node):
        for child in ast.walk(node.value):
            if is_os_environ(child):
                self.used.add(id(child))
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if (isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault")
                and self.is_env(func.value) and node.args):
            self.record(node.args[0])
        elif ((isinstance(func, ast.Attribute) and func.attr == "getenv")
              or (isinstance(func, ast.Name) and func.id == "getenv")) and node.args:
            self.record(node.args[0])
        self.generic_visit(node)

    def visit_Subscript(self, node):
        if isinstance(node.ctx, ast.Load) and self.is_env(node.value):
            self.record(node.slice)
        self.generic_visit(node)

    def visit_Compare(self, node):
        if isinstance(node.ops[0], (ast.In, ast.NotIn)) and self.is_env(node.comparators[0]):
            self.record(node.left)
        self.generic_visit(node)


def env_reads(folder):
    """(names, unresolved, stray) over every Python file ClawHub would upload from `folder`."""
    names, unresolved, stray = set(), [], []
    for rel, _ in builder.upload_list(folder):
        if rel.endswith(".py"):
            scan = EnvReads(ast.parse((folder / rel).read_text(), rel))
            names |= scan.names
            unresolved += [(rel, *read) for read in scan.unresolved]
            stray += [(rel, line) for line in scan.stray]
    return names, unresolved, stray


def test_the_scan_finds_each_shape_of_read():
    source = '''
import os
from os import getenv
NAME = "FROM_CONSTANT"
A, B = "FROM_TUPLE_A", "FROM_TUPLE_B"
def f(environ=None, key="x"):
    environ = os.environ if environ is None else environ
    env = os.environ
    return (os.environ.get("DIRECT"), os.environ["SUBSCRIPT"], environ.get(NAME), environ.pop(A, None),
            env.setdefault(B, ""), os.getenv("GETENV"), getenv("BARE_GETENV"), "MEMBER" in os.environ,
            environ.get(key))
def g():
    return dict(os.environ)
'''
    scan = EnvReads(ast.parse(source))
    assert scan.names == {"FROM_CONSTANT", "FROM_TUPLE_A", "FROM_TUPLE_B", "DIRECT", "SUBSCRIPT", "GETENV",
                          "BARE_GETENV", "MEMBER"}
    assert scan.unresolved == [("f", "key")]
    assert scan.stray == [source.split("\n").index("    return dict(os.environ)") + 1]


def code_env_vars(folder):
    """Every variable the code reads: the names it spells, plus the API key variable (computed from the config)."""
    names, unresolved, stray = env_reads(folder)
    assert not stray, f"os.environ used outside a recognised read (the scan cannot see what it reads): {stray}"
    # The one computed read: the API key, from $API_KEY_ENV or defaults.api_key_env (default below).
    assert unresolved == [("fabfile/host/install.py", "key_settings", "key_env")], (
        f"a new computed environment read: make the name a constant, or teach this test its default: {unresolved}")
    return names | {DEFAULTS["api_key_env"]}


def test_every_env_var_the_code_reads_is_declared_and_nothing_else(built):
    found = code_env_vars(built)
    assert {"GITHUB_TOKEN", "PICOCLAW_FLEET_CONFIG", "PROVIDER", "API_KEY_ENV", "ANTHROPIC_API_KEY",
            "OPENCLAW_PROFILE"} <= found  # the ones issue #14 names, as a check on the scan itself
    text = skill_text()
    front = clawhub_frontmatter(text)
    declared = clawhub_declared_env(front, clawhub_manifest(front))
    assert found == declared, f"read, not declared: {found - declared}; declared, not read: {declared - found}"


def test_clawhubs_own_scan_finds_nothing_undeclared(built):
    front = clawhub_frontmatter(skill_text())
    declared = clawhub_declared_env(front, clawhub_manifest(front))
    referenced = set()
    for rel, _ in builder.upload_list(built):
        if re.search(r"\.(js|ts|mjs|cjs|py|sh|bash|zsh|rb|go)$", rel):
            text = (built / rel).read_text()
            for pattern in CLAWHUB_ENV_PATTERNS:
                referenced |= {m.upper() for m in re.findall(pattern, text)}
    assert referenced and referenced <= declared, referenced - declared


# --- the published folder and `make skill` ----------------------------------------------------------


def expected_upload():
    package = {p.relative_to(REPO).as_posix() for p in builder.package_files()}
    return {"SKILL.md", RUNNER, "requirements.txt"} | package


def test_the_built_folder_is_the_skill_and_the_program_only(built):
    files = {rel for rel, _ in builder.upload_list(built)}
    assert files == expected_upload()
    assert "fabfile/core/fleet.schema.json" in files and "fabfile/cli.py" in files
    assert not any(rel.split("/")[0] in ("tests", "bench", "demo", "harness") for rel in files)
    assert (built / "SKILL.md").read_bytes() == SKILL_MD.read_bytes()
    requirements = [line for line in (built / "requirements.txt").read_text().splitlines()
                    if line and not line.startswith("#")]
    assert requirements == PYPROJECT["project"]["dependencies"]


def test_make_skill_builds_and_lists_what_clawhub_uploads(tmp_path, home_env):
    out = tmp_path / "out" / "picoclaw-fleet"
    result = subprocess.run(["make", "-s", "-C", str(REPO), "skill", f"SKILL_OUT={out}"], env=home_env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    listed = [line.split(None, 1) for line in result.stdout.splitlines()[:-1]]
    assert [(rel, int(size)) for size, rel in listed] == builder.upload_list(out)
    assert {rel for _, rel in listed} == expected_upload()
    assert result.stdout.splitlines()[-1].startswith(f"{len(listed)} files, ")
    assert f"clawhub skill publish {out} --slug picoclaw-fleet --version {project_version()}" in result.stderr
    again = subprocess.run(["make", "-s", "-C", str(REPO), "skill", f"SKILL_OUT={out}"], env=home_env,
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert again.returncode == 0 and again.stdout == result.stdout  # a rebuild replaces the previous one


def test_the_listing_follows_clawhubs_rules(built, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(built, folder, symlinks=True)
    before = builder.upload_list(folder)
    (folder / "fabfile" / "__pycache__").mkdir()
    (folder / "fabfile" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"\0")
    (folder / "scripts" / "stale.pyc").write_bytes(b"\0")
    (folder / ".env").write_text("SECRET=1\n")
    (folder / "node_modules" / "x").mkdir(parents=True)
    (folder / "node_modules" / "x" / "index.js").write_text("")
    (folder / "skill-card.md").write_text("generated by ClawHub\n")
    (folder / "linked.md").symlink_to(folder / "SKILL.md")
    assert builder.upload_list(folder) == before
    (folder / "notes.bin").write_bytes(b"\x00\x01")  # any file type is uploaded
    assert ("notes.bin", 2) in builder.upload_list(folder)
    (folder / ".clawhubignore").write_text("*.bin\n!keep.bin\ndocs/\n")
    (folder / "keep.bin").write_bytes(b"k")
    (folder / "docs").mkdir()
    (folder / "docs" / "a.md").write_text("a")
    listed = {rel for rel, _ in builder.upload_list(folder)}
    assert "keep.bin" in listed and "notes.bin" not in listed and "docs/a.md" not in listed


def test_the_build_refuses_a_skill_that_disagrees_with_pyproject(tmp_path):
    source = tmp_path / "picoclaw-fleet"
    shutil.copytree(SOURCE, source)
    text = SKILL_MD.read_text()
    (source / "SKILL.md").write_text(text.replace(f"version: {project_version()}", "version: 9.9.9", 1))
    with pytest.raises(builder.BuildError, match="version '9.9.9' is not pyproject.toml's"):
        builder.build(tmp_path / "out", source=source)
    pinned = f'"package": "picoclaw-fleet=={project_version()}"'
    (source / "SKILL.md").write_text(text.replace(pinned, '"package": "picoclaw-fleet"'))
    with pytest.raises(builder.BuildError, match="must install picoclaw-fleet=="):
        builder.build(tmp_path / "out", source=source)
    assert not (tmp_path / "out").exists()


def test_the_repository_root_is_not_publishable():
    with pytest.raises(builder.BuildError, match="SKILL.md required"):
        builder.upload_list(REPO)


# --- every command SKILL.md shows, through the folder's runner ------------------------------------


def skill_commands():
    """Each command line of SKILL.md as (argv as written, argv of the program it runs)."""
    commands = []
    for line in code_block_lines(skill_text()):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        if words[0] == console_script():
            commands.append((words, words))
        elif words[:2] == ["python3", BASEDIR_RUNNER]:
            commands.append((words, [console_script(), *words[2:]]))
        else:
            raise AssertionError(f"SKILL.md shows a command this test does not know how to run: {line}")
    return commands


def test_skill_md_shows_the_runner_and_every_verb():
    commands = skill_commands()
    assert any(written[0] == "python3" for written, _ in commands)
    assert {verb_of(program) for _, program in commands} >= {"init", "status", "deploy", "dispatch", "batch",
                                                              "teardown"}
    assert sum(runnable(program) for _, program in commands) >= 8


def run_runner(folder, args, env, cwd, python=sys.executable, extra=()):
    return subprocess.run([python, *extra, str(folder / RUNNER), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("written, program", [pytest.param(w, p, id=shlex.join(w)) for w, p in skill_commands()])
def test_skill_command_runs_from_the_built_folder(written, program, built, testbed, doc_fleet, guarded_env,
                                                  tmp_path):
    config = tmp_path / "fleet.json" if verb_of(program) == "init" else doc_fleet["config"]
    env = doc_env(guarded_env, doc_fleet, config)
    parse_cli(program)
    if not runnable(program):
        return  # a real fleet's address or key file: parsed above, and by tests/test_docs_commands.py
    reset_to_deployed(testbed, doc_fleet["hosts"])
    result = run_runner(built, program[1:], env, doc_fleet["workdir"])
    assert result.returncode == 0, f"{shlex.join(written)}\n{result.stdout}\n{result.stderr}"
    if "--json" in program:
        json.loads(result.stdout)
    if verb_of(program) == "init":
        assert config.exists()
    assert "sk-docs-test-not-real" not in result.stdout + result.stderr
    assert not list(built.rglob("__pycache__")), "the runner wrote into the skill folder"


def test_the_runner_runs_the_folders_own_copy(built, tmp_path, home_env):
    """Not the checkout's fabfile: a copy whose CLI says something else is what runs."""
    folder = tmp_path / "copy"
    shutil.copytree(built, folder)
    cli = folder / "fabfile" / "cli.py"
    cli.write_text(cli.read_text().replace('NAME = "picoclaw-fleet"', 'NAME = "picoclaw-fleet-copy"'))
    result = run_runner(folder, ["--version"], home_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("picoclaw-fleet-copy "), result.stdout


def assert_one_line_exit_2(result, fragment):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert fragment in lines[-1], lines[-1]
    return lines


def test_the_runner_in_the_source_folder_says_to_build(home_env, tmp_path):
    result = run_runner(SOURCE, ["status", "--json"], home_env, tmp_path)
    lines = assert_one_line_exit_2(result, "holds no program")
    assert len(lines) == 1 and "make skill" in lines[0]


def test_a_failed_first_install_is_one_line_and_leaves_nothing(built, tmp_path, home_env):
    """A Python without the requirements (-S: no site-packages) and no index to install from."""
    wheels = tmp_path / "no-wheels"
    wheels.mkdir()
    cache = tmp_path / "cache"
    env = dict(home_env, XDG_CACHE_HOME=str(cache), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels),
               PIP_CONFIG_FILE=os.devnull)
    result = run_runner(built, ["status", "--json"], env, tmp_path, extra=("-S",))
    lines = assert_one_line_exit_2(result, "installing its Python requirements failed")
    assert lines[0].startswith("picoclaw-fleet: first run from the skill folder: installing fabric")
    assert "uv tool install picoclaw-fleet" in lines[-1]
    assert list((cache / "picoclaw-fleet").iterdir()) == []  # the half-built virtualenv is gone
    assert not list(built.rglob("__pycache__"))


# --- the config follows OpenClaw's workspace ---------------------------------------------------------


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_config_path_order(home):
    assert config_path(environ={}) == Path(DEFAULT_PATH).expanduser() == home / ".openclaw/workspace/config/picoclaw-fleet.json"
    env = {"OPENCLAW_PROFILE": "work"}
    assert config_path(environ=env) == home / ".openclaw/workspace-work/config/picoclaw-fleet.json"
    env["OPENCLAW_HOME"] = str(home / "svc")
    assert config_path(environ=env) == home / "svc/.openclaw/workspace-work/config/picoclaw-fleet.json"
    env["OPENCLAW_WORKSPACE_DIR"] = str(home / "ws")
    assert config_path(environ=env) == home / "ws/config/picoclaw-fleet.json"
    env["PICOCLAW_FLEET_CONFIG"] = str(home / "env.json")
    assert config_path(environ=env) == home / "env.json"
    assert config_path(str(home / "cli.json"), environ=env) == home / "cli.json"


def test_config_path_reads_openclaw_variables_as_openclaw_does(home):
    """workspace-default.ts: trimmed values, blank = unset, profile "default" (any case) = none."""
    assert openclaw_workspace({"OPENCLAW_PROFILE": " Default "}) == home / ".openclaw/workspace"
    assert openclaw_workspace({"OPENCLAW_PROFILE": "  ", "OPENCLAW_WORKSPACE_DIR": " "}) == home / ".openclaw/workspace"
    assert openclaw_workspace({"OPENCLAW_PROFILE": " lab-2 "}) == home / ".openclaw/workspace-lab-2"
    assert openclaw_workspace({"OPENCLAW_HOME": "~/svc"}) == home / "svc/.openclaw/workspace"
    assert openclaw_workspace({"OPENCLAW_WORKSPACE_DIR": "~/elsewhere"}) == home / "elsewhere"
    for bad in ("../escape", "a/b", "-dash", "x" * 65):
        with pytest.raises(UsageError, match="is not an OpenClaw profile name"):
            openclaw_workspace({"OPENCLAW_PROFILE": bad})


def cli_env(home_env, **values):
    env = {k: v for k, v in home_env.items() if not k.startswith("OPENCLAW_")}
    return dict(env, **values)


def test_init_writes_into_the_profiles_workspace(home_env, tmp_path):
    home = Path(home_env["HOME"])
    runner = str(Path(sys.executable).parent / console_script())
    result = subprocess.run([runner, "init"], env=cli_env(home_env, OPENCLAW_PROFILE="work"), cwd=tmp_path,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    written = home / ".openclaw/workspace-work/config/picoclaw-fleet.json"
    assert written.is_file() and f"wrote a template config at {written}" in result.stdout
    assert not (home / ".openclaw/workspace").exists()

    custom = tmp_path / "custom-ws"
    result = subprocess.run([runner, "init"], env=cli_env(home_env, OPENCLAW_PROFILE="work",
                                                          OPENCLAW_WORKSPACE_DIR=str(custom)),
                            cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert (custom / "config/picoclaw-fleet.json").is_file()

    bad = subprocess.run([runner, "status", "--json"], env=cli_env(home_env, OPENCLAW_PROFILE="../../etc"),
                         cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
    lines = assert_one_line_exit_2(bad, "$OPENCLAW_PROFILE '../../etc' is not an OpenClaw profile name")
    assert len(lines) == 1


def test_the_docs_state_this_order():
    skill = " ".join(skill_text().split())
    readme = " ".join((REPO / "README.md").read_text().split())
    order = ["`$PICOCLAW_FLEET_CONFIG`", "`$OPENCLAW_WORKSPACE_DIR`", "`~/.openclaw/workspace-<profile>`",
             "`$OPENCLAW_PROFILE`", "`~/.openclaw/workspace`", "`$OPENCLAW_HOME`"]
    for text in (skill, readme):
        start = text.index("`$PICOCLAW_FLEET_CONFIG`, else")
        positions = [text.index(item, start) for item in order]
        assert positions == sorted(positions)
