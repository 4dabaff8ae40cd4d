"""The fleet config: where it lives, what it may say, and which hosts a run targets.

The config names hosts and defaults, never secrets: the API key is read from
the environment variable the config names. It is validated against
``fleet.schema.json`` before anything connects, so a typo is a one-line usage
error (exit 2) rather than a half-run fleet.
"""

import copy
import fnmatch
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

DEFAULT_PATH = "~/.openclaw/workspace/config/picoclaw-fleet.json"
ENV_PATH = "PICOCLAW_FLEET_CONFIG"
SCHEMA_FILE = Path(__file__).with_name("fleet.schema.json")

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
        port = f":{self.port}" if self.port else ""
        return f"{self.user}@{self.host}{port}"


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


def config_path(explicit=None):
    """Where the config is: ``--config``, else ``$PICOCLAW_FLEET_CONFIG``, else the default."""
    chosen = explicit or os.environ.get(ENV_PATH) or DEFAULT_PATH
    return Path(chosen).expanduser()


def write_template(path):
    """Write the seed's template to `path` (creating its directory) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TEMPLATE, indent=2) + "\n")
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
    if not path.exists():
        write_template(path)
        raise UsageError(template_message(path, written=True))
    data = parse_config_text(path)
    validate_config(data)
    if data["hosts"] == TEMPLATE["hosts"]:
        raise UsageError(template_message(path, written=False))
    return build_config(path, data)


def parse_config_text(path):
    """The JSON document at `path`; invalid JSON is reported with line and column."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def validate_config(data):
    """Check `data` against the schema and host-name uniqueness; one line per problem."""
    import jsonschema  # imported here: it is slow to import and `fab --list` never needs it

    schema = json.loads(SCHEMA_FILE.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{json_path(error.absolute_path)}: {error.message}"
        for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    ]
    if not problems:
        problems = duplicate_name_problems(data["hosts"]) + api_base_problems(data)
    if problems:
        raise UsageError("invalid config: " + "\ninvalid config: ".join(problems))


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


def is_http_url(text):
    """True for ``http://host[:port][/path]`` and ``https://...`` with no spaces or credentials."""
    from urllib.parse import urlsplit

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


def build_config(path, data):
    """Turn validated JSON into a `FleetConfig`."""
    hosts = [host_entry(raw) for raw in data["hosts"]]
    defaults = Defaults(**{**DEFAULTS, **data.get("defaults", {})})
    return FleetConfig(path=path, hosts=hosts, defaults=defaults)


def host_entry(raw):
    """A `HostEntry` from one validated ``hosts[]`` item."""
    raw = copy.deepcopy(raw)
    raw["tags"] = tuple(raw.get("tags", ()))
    return HostEntry(**raw)


def parse_target(target):
    """An ad-hoc ``user@host[:port]`` target as a `HostEntry` named after the host."""
    user, _, hostport = target.partition("@")
    host, port = hostport, None
    if hostport.count(":") == 1:
        host, _, port_text = hostport.partition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageError(f"bad target {target!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    if not user or not host:
        raise UsageError(f"bad target {target!r}: expected user@host[:port]")
    return HostEntry(name=host, host=host, user=user, port=port)


def select_hosts(config, spec=None):
    """The hosts `spec` names, in config order; every host when `spec` is empty.

    `spec` is comma-separated: host names, shell-style globs (``pi-*``),
    ``@tag``, or an ad-hoc ``user@host[:port]`` not in the config. A name, glob
    or tag that matches nothing is a usage error: a typo must not quietly
    shrink the fleet a command runs on.
    """
    if not spec:
        return list(config.hosts)
    chosen, adhoc = set(), []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if "@" in item[1:]:
            adhoc.append(parse_target(item))
            continue
        matched = matching_hosts(config.hosts, item)
        if not matched:
            raise UsageError(f"unknown host {item!r}: not a host name, glob or @tag in {config.path}")
        chosen.update(h.name for h in matched)
    return [h for h in config.hosts if h.name in chosen] + adhoc


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
    if only_adhoc_targets(spec) and not path.exists():
        return FleetConfig(path=path)
    return load_config(explicit)


def only_adhoc_targets(spec):
    """True when `spec` names at least one host and every item is ``user@host[:port]``."""
    items = [part.strip() for part in (spec or "").split(",") if part.strip()]
    return bool(items) and all("@" in item[1:] for item in items)
