"""The fleet config: where it lives, what it may say, and which hosts a run targets.

The config names hosts and defaults, never secrets: the API key is read from
the environment variable the config names. It is validated against
``fleet.schema.json`` before anything connects, so a typo is a one-line usage
error (exit 2) rather than a half-run fleet.
"""

import copy
import fnmatch
import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .cache import ValidConfigs
from .errors import UsageError, one_line

#: The seed's default: the config inside OpenClaw's default workspace.
DEFAULT_PATH = "~/.openclaw/workspace/config/picoclaw-fleet.json"
ENV_PATH = "PICOCLAW_FLEET_CONFIG"
#: Where the config sits inside an OpenClaw workspace.
WORKSPACE_RELATIVE_PATH = Path("config", "picoclaw-fleet.json")
#: What OpenClaw's own default workspace resolution reads (src/agents/workspace-default.ts,
#: src/infra/home-dir.ts): an explicit workspace, the profile, and the home it resolves under.
ENV_WORKSPACE, ENV_PROFILE, ENV_HOME = "OPENCLAW_WORKSPACE_DIR", "OPENCLAW_PROFILE", "OPENCLAW_HOME"
#: OpenClaw's profile names (src/cli/profile-utils.ts, PROFILE_NAME_RE).
PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.I)
SCHEMA_FILE = Path(__file__).with_name("fleet.schema.json")

#: Limits on the config file itself, checked before the schema: a config is a
#: few kilobytes, and 10000 hosts (the schema's ``maxItems``) fit in a few MB.
MAX_CONFIG_BYTES = 16 << 20
#: JSON nesting a config may have; a real one nests 4 deep (hosts, a host, tags, a tag).
MAX_NESTING = 32
#: Digits an integer in the config may have (a port has 5); Python refuses past 4300 anyway.
MAX_INT_DIGITS = 20
#: Hosts a config may list (the schema's ``hosts.maxItems``), checked before the schema.
MAX_HOSTS = 10000
#: Gateway hops from a host to its last jump host (``h00 -> h01 -> ... ``).
MAX_GATEWAY_HOPS = 8

#: The seed's template. Its example host is not the user's: a config whose
#: hosts are still exactly these is refused before any host is contacted.
TEMPLATE = {
    "hosts": [
        {
            "name": "darth",
            "host": "192.168.50.57",
            "user": "eric",
            "arch": "arm64",
            "ssh_key": "~/.ssh/id_rsa",
        }
    ],
    "defaults": {"provider": "anthropic", "api_key_env": "ANTHROPIC_API_KEY"},
}

DEFAULTS = {
    "provider": "anthropic",
    "api_key_env": "ANTHROPIC_API_KEY",
    "release_repo": "sipeed/picoclaw",
    "github_api": "https://api.github.com",
    "timeout": 120,
    "connect_timeout": 10,
    "parallel": 32,
    "host_key_policy": "accept-new",
    "known_hosts": "~/.ssh/known_hosts",
    "model": None,
    "api_base": None,
    "restrict_to_workspace": True,
    "persist": 0,
}

#: PicoClaw's own ``model_list`` defaults (pkg/config/defaults.go): the model a
#: provider gets when the config names none, and, for each such name, the
#: provider and model id an entry must carry when a host's list lacks it.
PROVIDER_MODELS = {
    "anthropic": ("claude-sonnet-4.6", "claude-sonnet-4-6"),
    "openai": ("gpt-5.4", "gpt-5.4"),
    "zhipu": ("glm-4.7", "glm-4.7"),
    "deepseek": ("deepseek-chat", "deepseek-chat"),
    "gemini": ("gemini-2.0-flash", "gemini-2.0-flash-exp"),
    "qwen": ("qwen-plus", "qwen-plus"),
    "moonshot": ("moonshot-v1-8k", "moonshot-v1-8k"),
    "groq": ("llama-3.3-70b", "llama-3.3-70b-versatile"),
    "openrouter": ("openrouter-auto", "auto"),
    "ollama": ("llama3", "llama3"),
}


@dataclass(frozen=True)
class HostEntry:
    """One host of the fleet, as the config (or an ad-hoc ``user@host``) names it."""

    name: str
    host: str
    user: str
    port: int | None = None
    arch: str | None = None
    ssh_key: str | None = None
    tags: tuple = ()
    gateway: str | None = None
    max_tasks: int = 1
    model: str | None = None
    api_base: str | None = None
    restrict_to_workspace: bool | None = None

    @property
    def address(self):
        """``user@host[:port]``, as reports show where a host is."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        port = f":{self.port}" if self.port else ""
        return f"{self.user}@{host}{port}"


@dataclass(frozen=True)
class Defaults:
    """Fleet-wide settings; every field has the documented default."""

    provider: str = DEFAULTS["provider"]
    api_key_env: str = DEFAULTS["api_key_env"]
    release_repo: str = DEFAULTS["release_repo"]
    github_api: str = DEFAULTS["github_api"]
    timeout: float = DEFAULTS["timeout"]
    connect_timeout: float = DEFAULTS["connect_timeout"]
    parallel: int = DEFAULTS["parallel"]
    host_key_policy: str = DEFAULTS["host_key_policy"]
    known_hosts: str = DEFAULTS["known_hosts"]
    model: str | None = DEFAULTS["model"]
    api_base: str | None = DEFAULTS["api_base"]
    restrict_to_workspace: bool = DEFAULTS["restrict_to_workspace"]
    persist: float = DEFAULTS["persist"]


@dataclass(frozen=True)
class ModelChoice:
    """The PicoClaw model one host uses, and whether its tools stay in their workspace.

    `name` is a PicoClaw ``model_name``; `provider` and `model_id` fill a
    ``model_list`` entry when the host's list has none of that name;
    `api_base` (None: PicoClaw's own default) is set on that entry.
    """

    name: str
    provider: str
    model_id: str
    api_base: str | None
    restrict_to_workspace: bool


def model_choice(defaults, entry, provider=None):
    """The `ModelChoice` for `entry`: the host's own settings over the fleet's.

    `UsageError` when neither names a model and the provider has no default
    one in PicoClaw's list: checked before any host is contacted.
    """
    provider = provider or defaults.provider
    name = entry.model or defaults.model
    if name is None:
        if provider not in PROVIDER_MODELS:
            raise UsageError(f"provider {provider!r} has no default PicoClaw model: set defaults.model to a model_name")
        name = PROVIDER_MODELS[provider][0]
    known = {model: model_id for model, model_id in PROVIDER_MODELS.values()}
    restrict = defaults.restrict_to_workspace if entry.restrict_to_workspace is None else entry.restrict_to_workspace
    return ModelChoice(name, provider, known.get(name, name), entry.api_base or defaults.api_base, restrict)


@dataclass
class FleetConfig:
    """A validated config: its hosts in file order and its defaults."""

    path: Path
    hosts: list = field(default_factory=list)
    defaults: Defaults = field(default_factory=Defaults)

    def host(self, name):
        """The host called `name`, or None."""
        return next((h for h in self.hosts if h.name == name), None)


def config_path(explicit=None, environ=None):
    """Where the config is: ``--config``, else ``$PICOCLAW_FLEET_CONFIG``, else in OpenClaw's workspace.

    The workspace is the one OpenClaw itself uses by default (`openclaw_workspace`),
    so an agent under a profile or a custom workspace finds its own fleet.
    """
    environ = os.environ if environ is None else environ
    chosen = explicit or environ.get(ENV_PATH)
    if chosen:
        return Path(chosen).expanduser()
    return openclaw_workspace(environ) / WORKSPACE_RELATIVE_PATH


def openclaw_workspace(environ=None):
    """OpenClaw's default agent workspace, resolved as OpenClaw resolves it.

    ``$OPENCLAW_WORKSPACE_DIR`` when set; else, under the home (``$OPENCLAW_HOME``,
    else ``~``), ``.openclaw/workspace-<profile>`` for ``$OPENCLAW_PROFILE`` (any
    profile but ``default``), else ``.openclaw/workspace``. Blank values count as
    unset; ``~`` is this process's home. A profile OpenClaw would refuse (it
    could name a path outside ``.openclaw``) is a `UsageError`.
    """
    environ = os.environ if environ is None else environ
    workspace = environ.get(ENV_WORKSPACE, "").strip()
    if workspace:
        return Path(workspace).expanduser().absolute()
    home = Path(environ.get(ENV_HOME, "").strip() or "~").expanduser().absolute()
    profile = environ.get(ENV_PROFILE, "").strip()
    if not profile or profile.lower() == "default":
        return home / ".openclaw" / "workspace"
    if not PROFILE_NAME.fullmatch(profile):
        raise UsageError(f"${ENV_PROFILE} {quoted(profile)} is not an OpenClaw profile name "
                         "(letters, digits, _ and -, at most 64): fix it, or pass --config FILE")
    return home / ".openclaw" / f"workspace-{profile}"


def path_exists(path):
    """Whether something is at `path` (a dangling symlink counts); a path we may not look at counts too.

    `Path.exists` raises for a directory we may not search: reading the path
    then says why, in one line, instead of a traceback.
    """
    try:
        return path.exists() or path.is_symlink()
    except OSError:
        return True


def directory_problem(directory):
    """Why files cannot be made in `directory` (created when missing), or None when they can."""
    existing = Path(directory)
    while not path_exists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def os_reason(exc):
    """An `OSError` as the few words a user acts on: ``Permission denied: /etc/x``."""
    reason = exc.strerror or str(exc)
    return f"{reason}: {exc.filename}" if exc.filename else reason


def write_template(path):
    """Write the seed's template to `path` (creating its directory) and return the path.

    `UsageError` when that is impossible (the directory is a file, read-only...).
    """
    problem = directory_problem(path.parent)
    try:
        if problem is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(TEMPLATE, indent=2) + "\n")
    except OSError as exc:
        problem = os_reason(exc)
    if problem is not None:
        raise UsageError(f"cannot write a template config at {path}: {problem}")
    return path


def template_message(path, written):
    """The one line that tells a user to edit the template before anything runs."""
    what = "wrote a template config" if written else "the config still holds only the template's example host"
    return f"{what} at {path}: edit its hosts to name your own machines, then re-run"


def load_config(explicit=None):
    """Read, validate and return the fleet config; `UsageError` on anything wrong.

    A missing file gets the template written in its place, and the run stops
    there (exit 2): the template's example host is not the user's machine and
    must never be contacted.
    """
    path = config_path(explicit)
    if not path_exists(path):
        write_template(path)
        raise UsageError(template_message(path, written=True))
    raw = read_config_bytes(path)
    data = parse_json_bytes(raw, str(path))
    valid = ValidConfigs(validation_rules())
    if not valid.known(raw):
        validate_config(data)
        valid.remember(raw)
    if data["hosts"] == TEMPLATE["hosts"]:
        raise UsageError(template_message(path, written=False))
    return build_config(path, data)


def parse_config_text(path):
    """The JSON document at `path`; `UsageError` naming the line (and column or byte) of what is wrong.

    The file must be UTF-8 (a BOM is allowed) and at most `MAX_CONFIG_BYTES`;
    the JSON must be strict JSON: no ``NaN``/``Infinity``, no number too
    large for a float, no integer longer than `MAX_INT_DIGITS` digits, nothing
    nested deeper than `MAX_NESTING`.
    """
    return parse_json_bytes(read_config_bytes(path), str(path))


def read_config_bytes(path):
    """The bytes of the config file; `UsageError` when it cannot be read or is absurdly large."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        target = f" (a symlink to {os.readlink(path)}, which does not exist)" if path.is_symlink() else ""
        raise UsageError(f"cannot read config {path}: no such file{target}") from None
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: is it the right file?")
    return data


def decode_utf8(data, where):
    """`data` as text; `UsageError` naming the first byte that is not UTF-8 (offset and line)."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{where}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                         f"(line {line}) cannot be decoded") from None


class RefusedNumber(ValueError):
    """A number JSON (or we) refuse: ``NaN``, ``Infinity``, ``1e999``, a 5000-digit integer."""

    def __init__(self, token, reason):
        super().__init__(f"{token[:24]}{'...' if len(token) > 24 else ''}: {reason}")
        self.token = token


def _refuse_constant(token):
    raise RefusedNumber(token, "JSON has no NaN or Infinity; write a finite number")


def _finite_float(token):
    value = float(token)
    if not math.isfinite(value):
        raise RefusedNumber(token, "too large for a number")
    return value


def _short_int(token):
    if len(token.lstrip("-")) > MAX_INT_DIGITS:
        raise RefusedNumber(token, f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(token)


def strict_json_loads(text):
    """`json.loads` that refuses NaN, Infinity, overflowing floats and huge integers (`RefusedNumber`)."""
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_short_int)


def parse_json_bytes(data, where):
    """The strict JSON document in `data`; `UsageError` that starts with `where` and names the place."""
    text = decode_utf8(data, where)
    try:
        document = strict_json_loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RefusedNumber as exc:
        line, column = token_position(text, exc.token)
        raise UsageError(f"{where}: invalid JSON at line {line}, column {column}: {exc}") from None
    except RecursionError:
        raise UsageError(f"{where}: JSON nested deeper than {MAX_NESTING} levels") from None
    too_deep = deepest_path(document, MAX_NESTING)
    if too_deep is not None:
        raise UsageError(f"{where}: JSON nested deeper than {MAX_NESTING} levels (at {json_path(too_deep)}...)")
    return document


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def token_position(text, token):
    """(line, column) of the first `token` outside a JSON string in `text`; (1, 1) when not found."""
    masked = _JSON_STRING.sub(lambda m: '"' + "_" * (len(m.group()) - 2) + '"', text)
    found = re.search(r"(?<![\w.+-])" + re.escape(token) + r"(?![\w.])", masked)
    if found is None:
        return 1, 1
    start = found.start()
    line = masked.count("\n", 0, start) + 1
    return line, start - (masked.rfind("\n", 0, start) + 1) + 1


def deepest_path(document, limit):
    """The path (a list of keys and indexes) of a value nested deeper than `limit`, or None.

    Iterative, so a document Python's own recursion could not walk is measured too.
    """
    stack = [(document, 1, [])]
    while stack:
        value, depth, path = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        if depth > limit:
            return path[:4]
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend((child, depth + 1, path + [key] if len(path) < 4 else path) for key, child in items)
    return None


def validation_rules():
    """What decides whether a config is valid: the schema and this module (`cache.ValidConfigs`)."""
    return SCHEMA_FILE.read_bytes() + Path(__file__).read_bytes()


def validate_config(data):
    """Check `data` against the schema, names, URLs and gateways; every problem on one line.

    jsonschema is imported here, not at the top: a run whose config passed
    before (`cache.ValidConfigs`) never needs it.
    """
    import jsonschema

    hosts = data.get("hosts") if isinstance(data, dict) else None
    if isinstance(hosts, list) and len(hosts) > MAX_HOSTS:
        raise UsageError(f"invalid config: hosts: {len(hosts)} hosts, at most {MAX_HOSTS} in one config")
    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{json_path(error.absolute_path)}: {schema_message(error)}"
        for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ] + control_character_problems(data)
    if not problems:
        problems = duplicate_name_problems(data["hosts"]) + api_base_problems(data) + gateway_problems(data["hosts"])
    if problems:
        raise UsageError("invalid config: " + joined_problems(problems))


#: Problems shown in the one line of an invalid config; the rest are counted.
SHOWN_PROBLEMS = 5


def joined_problems(problems):
    """Problems on one line: ``a; b; c (and 7 more problems)``, each cut to a readable length."""
    shown = "; ".join(one_line(p, 300) for p in problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return shown + (f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else "")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def control_character_problems(data):
    """One problem per string (value or key) holding a control character: no name, path or URL has one.

    The schema's patterns cannot say it: Python's ``$`` also matches before a
    final newline, so ``"pi-1\\n"`` would pass ``^[A-Za-z0-9._-]+$``.
    """
    problems, stack = [], [(data, [])]
    while stack and len(problems) < SHOWN_PROBLEMS + 1:
        value, path = stack.pop()
        if isinstance(value, str):
            if _CONTROL.search(value):
                problems.append(f"{json_path(path)}: {value!r} contains a control character")
        elif isinstance(value, dict):
            for key, child in value.items():
                if _CONTROL.search(key):
                    problems.append(f"{json_path(path)}: the key {key!r} contains a control character")
                stack.append((child, path + [key]))
        elif isinstance(value, list):
            stack.extend((child, path + [index]) for index, child in enumerate(value))
    return problems


def schema_message(error):
    """jsonschema's message; a limit or pattern the schema describes says why (its ``description``)."""
    message = error.message
    if error.validator in ("maximum", "exclusiveMaximum", "maxItems", "pattern") and isinstance(error.schema, dict):
        why = error.schema.get("description")
        if why:
            message += f" ({why})"
    return message


def duplicate_name_problems(hosts):
    """One problem line per host name used more than once."""
    seen, problems = {}, []
    for index, host in enumerate(hosts):
        name = host["name"]
        if name in seen:
            problems.append(f"hosts[{index}].name: duplicate host name {name!r} (also hosts[{seen[name]}])")
        seen.setdefault(name, index)
    return problems


def api_base_problems(data):
    """One problem line per ``api_base`` that is not an http(s) URL with a host."""
    places = [("defaults", data.get("defaults", {}))] + [(f"hosts[{i}]", h) for i, h in enumerate(data["hosts"])]
    problems = []
    for where, item in places:
        url = item.get("api_base")
        if url is not None and not is_http_url(url):
            problems.append(f"{where}.api_base: {url!r} is not an http(s) URL (e.g. http://10.0.0.5:8000/v1)")
    return problems


def gateway_problems(hosts):
    """Problems with ``gateway``: neither a host name nor user@host[:port], a loop, too many hops.

    A gateway may name another host of the config, which may have a gateway of
    its own: a chain, followed up to `MAX_GATEWAY_HOPS` hops. A chain that
    comes back to a host already on it (``a -> b -> a``, ``a -> a``) could
    never connect and is refused here, before anything connects.
    """
    by_name = {host["name"]: host for host in hosts}
    problems, loops = [], set()
    for index, host in enumerate(hosts):
        gateway = host.get("gateway")
        if gateway is None:
            continue
        where = f"hosts[{index}].gateway"
        if gateway not in by_name:
            if "@" not in gateway:
                problems.append(f"{where}: {quoted(gateway)} is neither a host name in this config nor user@host[:port]")
                continue
            try:
                parse_target(gateway, "gateway")
            except UsageError as exc:
                problems.append(f"{where}: {exc}")
            continue
        chain = [host["name"]]
        while chain[-1] in by_name and by_name[chain[-1]].get("gateway") in by_name:
            nxt = by_name[chain[-1]]["gateway"]
            if nxt in chain:
                loop = chain[chain.index(nxt):] + [nxt]
                if frozenset(loop) not in loops:
                    loops.add(frozenset(loop))
                    problems.append(f"{where}: gateway loop {' -> '.join(loop)}: none of them can ever be reached")
                break
            chain.append(nxt)
            if len(chain) - 1 > MAX_GATEWAY_HOPS:
                problems.append(f"{where}: gateway chain {' -> '.join(chain[:4])} -> ... is longer than "
                                f"{MAX_GATEWAY_HOPS} hops")
                break
    return problems


def is_http_url(text):
    """True for ``http://host[:port][/path]`` and ``https://...`` with no spaces or credentials."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and "@" not in parts.netloc and not any(
        c.isspace() for c in text)


def json_path(parts):
    """Render a jsonschema error path as ``hosts[2].arch`` (``$`` for the root)."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "$"


#: Integer fields: JSON Schema counts ``22.0`` as an integer, Python code wants ``22``.
INT_FIELDS = ("port", "max_tasks", "parallel")


def build_config(path, data):
    """Turn validated JSON into a `FleetConfig`."""
    hosts = [host_entry(raw) for raw in data["hosts"]]
    given = {key: int(value) if key in INT_FIELDS else value for key, value in data.get("defaults", {}).items()}
    defaults = Defaults(**{**DEFAULTS, **given})
    return FleetConfig(path=path, hosts=hosts, defaults=defaults)


def host_entry(raw):
    """A `HostEntry` from one validated ``hosts[]`` item (``[::1]`` is the IPv6 address ``::1``)."""
    raw = copy.deepcopy(raw)
    raw["tags"] = tuple(raw.get("tags", ()))
    for key in INT_FIELDS:
        if raw.get(key) is not None:
            raw[key] = int(raw[key])
    host = raw["host"]
    if host.startswith("[") and host.endswith("]") and is_ipv6(host[1:-1]):
        raw["host"] = host[1:-1]
    return HostEntry(**raw)


def is_ipv6(text):
    """True for an IPv6 address (``::1``, ``fe80::1%eth0``)."""
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


_SPACE_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


def parse_port(text):
    """A port from its text: ASCII digits, 1 to 65535; None when it is not one."""
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or not 0 < int(text) < 65536:
        return None
    return int(text)


def parse_target(target, what="target"):
    """An ad-hoc ``user@host[:port]`` as a `HostEntry` named after the host; `UsageError` if malformed.

    An IPv6 host is written ``user@[::1]:2222`` or ``user@[::1]``; without
    brackets (``user@::1``) the whole text after ``@`` is the address and
    there is no port. `what` names the input in messages (``target``,
    ``gateway``, ``--host``).
    """
    def bad(reason):
        return UsageError(f"bad {what} {quoted(target)}: {reason}")

    if target.count("@") != 1:
        raise bad("expected user@host[:port], with exactly one @")
    if _SPACE_OR_CONTROL.search(target):
        raise bad("it contains a space or a control character")
    user, hostport = target.split("@")
    if not user:
        raise bad("the user before @ is empty (expected user@host[:port])")
    port = None
    if hostport.startswith("["):
        host, closed, rest = hostport[1:].partition("]")
        if not closed:
            raise bad("'[' without its ']' (an IPv6 address is written [addr] or [addr]:port)")
        if not is_ipv6(host):
            raise bad(f"[{host}] is not an IPv6 address")
        if rest:
            if not rest.startswith(":"):
                raise bad("expected :port after ]")
            port = parse_port(rest[1:])
            if port is None:
                raise bad("the port must be a number from 1 to 65535")
    elif hostport.count(":") > 1:
        if not is_ipv6(hostport):
            raise bad("not host:port, nor an IPv6 address (with a port, write user@[addr]:port)")
        host = hostport
    else:
        host, colon, port_text = hostport.partition(":")
        if colon:
            port = parse_port(port_text)
            if port is None:
                raise bad("the port must be a number from 1 to 65535")
    if not host:
        raise bad("the host after @ is empty (expected user@host[:port])")
    return HostEntry(name=host, host=host, user=user, port=port)


def quoted(text, limit=100):
    """`text` as a repr for a message, cut after `limit` characters: the reason must stay visible."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def no_hosts_selected(config, spec=None, flag="--hosts"):
    """The one usage error of every verb whose selection is empty: `spec` names none, or the config lists none."""
    if spec is not None:
        return UsageError(f"no hosts selected: {flag} {quoted(spec)} names none")
    return UsageError(f"no hosts selected: {config.path} lists no hosts "
                      "(add some with: fab init --host user@addr, or name one with --hosts user@host)")


def select_hosts(config, spec=None, flag="--hosts"):
    """The hosts `spec` names, in config order; every host when `spec` is None.

    `spec` is comma-separated: host names, shell-style globs (``pi-*``),
    ``@tag``, or an ad-hoc ``user@host[:port]`` not in the config. A name, glob
    or tag that matches nothing is a usage error: a typo must not quietly
    shrink the fleet a command runs on. So is an empty selection (``--hosts
    ,,``, ``--hosts ''``, or a config with no hosts): `no_hosts_selected`.
    """
    if spec is None:
        if not config.hosts:
            raise no_hosts_selected(config)
        return list(config.hosts)
    items = [part.strip() for part in spec.split(",") if part.strip()]
    if not items:
        raise no_hosts_selected(config, spec, flag)
    if len(items) > MAX_HOSTS:
        raise UsageError(f"{flag} names {len(items)} hosts: at most {MAX_HOSTS} in one run")
    chosen, adhoc = set(), {}
    for item in items:
        if "@" in item[1:]:
            entry = parse_target(item)
            adhoc.setdefault((entry.user, entry.host, entry.port), entry)
            continue
        matched = matching_hosts(config.hosts, item)
        if not matched:
            raise UsageError(f"unknown host {quoted(item)}: not a host name, glob or @tag in {config.path}")
        chosen.update(h.name for h in matched)
    return [h for h in config.hosts if h.name in chosen] + list(adhoc.values())


def matching_hosts(hosts, item):
    """Hosts matched by one spec item: ``@tag``, a glob, or an exact name."""
    if item.startswith("@"):
        return [h for h in hosts if item[1:] in h.tags]
    return [h for h in hosts if fnmatch.fnmatchcase(h.name, item)]


def load_for_targets(explicit=None, spec=None):
    """The config a run over `spec` needs: `load_config`, unless no file is needed.

    A run whose ``--hosts`` are all ad-hoc ``user@host[:port]`` targets needs
    no config file (the seed's ``deploy <host> <user> ...`` had none): when
    the file is missing, the built-in defaults are used and no template is
    written. Any other run reads, validates and template-checks as usual.
    """
    path = config_path(explicit)
    if only_adhoc_targets(spec) and not path_exists(path):
        return FleetConfig(path=path)
    return load_config(explicit)


def only_adhoc_targets(spec):
    """True when `spec` names at least one host and every item is ``user@host[:port]``."""
    items = [part.strip() for part in (spec or "").split(",") if part.strip()]
    return bool(items) and all("@" in item[1:] for item in items)
