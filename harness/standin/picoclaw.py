#!/usr/bin/env -S python3 -I -S
"""Stand-in for the PicoClaw binary, installed on simulated hosts as `picoclaw`.

The real PicoClaw (sipeed/picoclaw) is a Go binary that talks to an LLM
provider; tests need something that honours the same command line but
answers deterministically and offline.  What it prints, and the files it
reads and writes, copy the real binary (studied at commit cf67dd38): fast
tests must not pass on a cleaner world than the real one.  Stdlib-only: it
runs under whatever python3 the (simulated) remote host has.

Every command first prints the ASCII-art banner on stdout: the plain one
(BANNER_PLAIN, 958 bytes) when NO_COLOR is non-empty, TERM=dumb or an argument
is --no-color, else the 24-bit colour one (BANNER_COLOR, 1190 bytes).  With TZ
set, three TZ lines follow.  Then:

  version        "🦞 picoclaw <VERSION> (git: <COMMIT>)", "  Build: ...", "  Go: ..."
  onboard        write a version-3 ~/.picoclaw/config.json and .security.yml
                 (or re-save an existing config), create the workspace; no prompt
  agent -m TEXT  load the config like PicoClaw does (same checks and error
                 messages), one WRN log line, then the answer "\\n🦞 TEXT\\n";
                 the session file gets the user message and the answer
  agent          (no -m, or -m "") interactive mode: one task per stdin line

Errors: "Error: <message>" on stderr, exit status 1 (cobra's plain form).

Config (like PicoClaw v3): <home>/config.json, <home> = $PICOCLAW_HOME or
~/.picoclaw ($PICOCLAW_CONFIG names the file itself); agents.defaults.model_name
picks the first model_list entry of that name, whose keys come from
<config dir>/.security.yml, model_list."<name>:<index>" (or "<name>").
$PICOCLAW_AGENTS_DEFAULTS_{MODEL_NAME,RESTRICT_TO_WORKSPACE,WORKSPACE,PROVIDER}
override the file, --model overrides the model.  Unknown fields (top level,
agents, agents.defaults, model_list entries) are refused, as PicoClaw does.

Logs: zerolog console lines on stdout, or JSON lines appended to
$PICOCLAW_LOG_FILE (config-loading messages still go to stdout).

Sessions: -s KEY (default "cli:default"); only keys starting with "agent:" or
"sk_v1_" (any case) are sessions of their own, every other key is the shared
SHARED_SESSION.  <workspace>/sessions/<key with : / \\ as _>.jsonl and .meta.json.

Directives are a prefix of TEXT, or come from PICOCLAW_STANDIN_MODE (or the
DEFAULT_MODE baked in by build_standin) and then apply to every task; a
directive in TEXT wins over the mode; several may follow each other:
  ::sleep=SECONDS::rest   sleep, then answer rest
  ::fail::rest            "Error: stand-in failure: rest" on stderr, exit 1
  ::hang::rest            answer rest, then sleep forever
  ::pid::rest             answer "<pid>\\n<rest>", then sleep forever
  ::env::                 answer model=, key=set|unset, restrict_to_workspace=,
                          then NAME=set for each *_API_KEY variable (sorted)
  ::history::             answer "history=<messages in the session before this run>"
  ::log-after::rest       answer rest, then one more log line after the answer
The config and key checks come first: an unprovisioned stand-in fails like
the real binary, whatever the directive.

Deliberately different from the real binary: every task logs one WRN line
(the real one logs nothing on a clean run, warnings on any retry), so tests
see where logs go; it never calls a provider, so an entry whose api_base is
unreachable still answers.  Simplified: PicoClaw's default model_list is cut
to its first four entries; JSON type checks cover only the fields read here;
v0-v2 configs are read as they are (no migration, no backup); .security.yml
is read line by line (model_list in block style, entries block or flow); the
global PicoClaw commands other than version, onboard, agent and help exit 1.
Like the real one (umask permitting), ~/.picoclaw and the workspace are
created 0755, config.json and .security.yml 0600.

Cheap to start, because the benchmarks run it as the hosts' PicoClaw and
the hosts share the controller's CPUs: the shebang runs python3 -I -S
(no site, no PYTHON* variables: nothing of the environment is imported),
and json and re are imported on first use, so `version` -- what the status
probe and deploy's checks run -- needs neither.
"""

import os
import sys
import time


class _OnFirstUse:
    """A stdlib module imported when first used (see the module docstring):
    importing json and re costs more than a whole `version` run otherwise."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        module = __import__(self._name)
        globals()[self._name] = module
        return getattr(module, attr)


json = _OnFirstUse("json")
re = _OnFirstUse("re")

VERSION = "0.0.0"
COMMIT = "00000000"
DEFAULT_MODE = None

BUILD_TIME = "2026-06-13T16:19:35Z"
GO_VERSION = "go1.27.3"
LOGO = "\U0001f99e"
CALLER_PREFIX = "github.com/sipeed/picoclaw/"

# Captured from the real binary (`picoclaw version`, with and without NO_COLOR).
BANNER_PLAIN = (
    "\r\n"
    "██████╗ ██╗ ██████╗ ██████╗  ██████╗██╗      █████╗ ██╗    ██╗\n"
    "██╔══██╗██║██╔════╝██╔═══██╗██╔════╝██║     ██╔══██╗██║    ██║\n"
    "██████╔╝██║██║     ██║   ██║██║     ██║     ███████║██║ █╗ ██║\n"
    "██╔═══╝ ██║██║     ██║   ██║██║     ██║     ██╔══██║██║███╗██║\n"
    "██║     ██║╚██████╗╚██████╔╝╚██████╗███████╗██║  ██║╚███╔███╔╝\n"
    "╚═╝     ╚═╝ ╚═════╝ ╚═════╝  ╚═════╝╚══════╝╚═╝  ╚═╝ ╚══╝╚══╝\n"
    " \r\n"
)
BANNER_COLOR = (
    "\r\n"
    "\x1b[1;38;2;62;93;185m██████╗ ██╗ ██████╗ ██████╗ \x1b[1;38;2;213;70;70m ██████╗██╗      █████╗ ██╗    ██╗\n"
    "\x1b[1;38;2;62;93;185m██╔══██╗██║██╔════╝██╔═══██╗\x1b[1;38;2;213;70;70m██╔════╝██║     ██╔══██╗██║    ██║\n"
    "\x1b[1;38;2;62;93;185m██████╔╝██║██║     ██║   ██║\x1b[1;38;2;213;70;70m██║     ██║     ███████║██║ █╗ ██║\n"
    "\x1b[1;38;2;62;93;185m██╔═══╝ ██║██║     ██║   ██║\x1b[1;38;2;213;70;70m██║     ██║     ██╔══██║██║███╗██║\n"
    "\x1b[1;38;2;62;93;185m██║     ██║╚██████╗╚██████╔╝\x1b[1;38;2;213;70;70m╚██████╗███████╗██║  ██║╚███╔███╔╝\n"
    "\x1b[1;38;2;62;93;185m╚═╝     ╚═╝ ╚═════╝ ╚═════╝ \x1b[1;38;2;213;70;70m ╚═════╝╚══════╝╚═╝  ╚═╝ ╚══╝╚══╝\n"
    " \x1b[0m\r\n"
)

ROOT_HELP = """\U0001f99e PicoClaw is a lightweight personal AI assistant.

Version: {version}

Usage:
  picoclaw [command]

Examples:
picoclaw version
picoclaw onboard
picoclaw --no-color status

Available Commands:
  agent       Interact with the agent directly
  auth        Manage authentication (login, logout, status)
  completion  Generate the autocompletion script for the specified shell
  config      Manage configuration
  cron        Manage scheduled tasks
  gateway     Start picoclaw gateway
  help        Help about any command
  mcp         Manage MCP server configuration
  migrate     Migrate from xxxclaw(openclaw, etc.) to picoclaw
  model       Show or change the default model
  onboard     Initialize picoclaw configuration and workspace
  skills      Manage skills
  status      Show picoclaw status
  update      Check and apply updates from GitHub releases
  version     Show version information

Flags:
  -h, --help       help for picoclaw
      --no-color   Disable colors (boxed layout unchanged)

Use "picoclaw [command] --help" for more information about a command.
"""

AGENT_HELP = """Interact with the agent directly

Usage:
  picoclaw agent [flags]

Flags:
  -d, --debug            Enable debug logging
  -h, --help             help for agent
  -m, --message string   Send a single message (non-interactive mode)
      --model string     Model to use
  -s, --session string   Session key (default "cli:default")

Global Flags:
      --no-color   Disable colors (boxed layout unchanged)
"""

ONBOARD_HELP = """Initialize picoclaw configuration and workspace

Usage:
  picoclaw onboard [flags]

Aliases:
  onboard, o

Flags:
      --enc    Enable credential encryption (generates SSH key and prompts for passphrase)
  -h, --help   help for onboard

Global Flags:
      --no-color   Disable colors (boxed layout unchanged)
"""

ONBOARD_DONE = """
\U0001f99e picoclaw is ready!

Next steps:
  1. Add your API key to {config_path}

     Recommended:
     - OpenRouter: https://openrouter.ai/keys (access 100+ models)
     - Ollama:     https://ollama.com (local, free)

     See README.md for 17+ supported providers.

  2. Chat: picoclaw agent -m "Hello!"
"""

CONFIG_VERSION = 3
DEFAULT_SESSION = "cli:default"
#: The session every key other than agent:* / sk_v1_* lands in (real PicoClaw, channel cli).
SHARED_SESSION = "sk_v1_cb10fea2cfe7f7373a42cc19db45c88fb87caebad9d6295e89a00577b35d7cc1"
SESSION_ALIASES = [
    "agent:main:main", "agent:main:direct:cron", "agent:main:cli:direct:cron",
    "agent:main:cli:default:direct:cron", "agent:main:direct:direct",
    "agent:main:cli:direct:direct", "agent:main:cli:default:direct:direct",
]

#: The first entries of PicoClaw's default model_list, in its order.
DEFAULT_MODEL_LIST = [
    {"model_name": "glm-4.7", "provider": "zhipu", "model": "glm-4.7",
     "api_base": "https://open.bigmodel.cn/api/paas/v4"},
    {"model_name": "gpt-5.4", "provider": "openai", "model": "gpt-5.4",
     "api_base": "https://api.openai.com/v1"},
    {"model_name": "claude-sonnet-4.6", "provider": "anthropic", "model": "claude-sonnet-4-6",
     "api_base": "https://api.anthropic.com/v1"},
    {"model_name": "deepseek-chat", "provider": "deepseek", "model": "deepseek-chat",
     "api_base": "https://api.deepseek.com/v1"},
]

# JSON field names PicoClaw's config structs know; anything else is refused.
TOP_FIELDS = {"version", "isolation", "agents", "session", "evolution", "channel_list", "model_list",
              "gateway", "events", "hooks", "tools", "heartbeat", "devices", "voice", "build_info"}
AGENTS_FIELDS = {"defaults", "list", "dispatch"}
DEFAULTS_FIELDS = {
    "workspace", "restrict_to_workspace", "allow_read_outside_workspace", "provider", "model_name",
    "model_fallbacks", "image_model", "image_model_fallbacks", "max_tokens", "context_window",
    "temperature", "max_tool_iterations", "summarize_message_threshold", "summarize_token_percent",
    "max_media_size", "routing", "steering_mode", "max_parallel_turns", "subturn", "tool_feedback",
    "split_on_marker", "context_manager", "context_manager_config", "turn_profile", "max_llm_retries",
    "llm_retry_backoff_secs"}
MODEL_FIELDS = {
    "model_name", "provider", "model", "api_base", "proxy", "fallbacks", "auth_method", "connect_mode",
    "workspace", "rpm", "max_tokens_field", "request_timeout", "thinking_level", "tool_schema_transform",
    "streaming", "extra_body", "custom_headers", "api_keys", "enabled", "user_agent"}
# (path, Go type) checked like encoding/json would; "[]" marks every list element.
TYPED_FIELDS = [
    (("version",), "int"),
    (("agents",), "config.AgentsConfig"),
    (("agents", "defaults"), "config.AgentDefaults"),
    (("agents", "defaults", "workspace"), "string"),
    (("agents", "defaults", "provider"), "string"),
    (("agents", "defaults", "model_name"), "string"),
    (("agents", "defaults", "restrict_to_workspace"), "bool"),
    (("model_list",), "config.SecureModelList"),
    (("model_list", "[]"), "config.ModelConfig"),
    (("model_list", "[]", "model_name"), "string"),
    (("model_list", "[]", "provider"), "string"),
    (("model_list", "[]", "model"), "string"),
    (("model_list", "[]", "api_base"), "string"),
    (("model_list", "[]", "auth_method"), "string"),
    (("model_list", "[]", "api_keys"), "config.SecureStrings"),
]
ENV_OVERRIDES = [  # (variable, agents.defaults field, Go field name, kind)
    ("PICOCLAW_AGENTS_DEFAULTS_WORKSPACE", "workspace", "Workspace", "string"),
    ("PICOCLAW_AGENTS_DEFAULTS_RESTRICT_TO_WORKSPACE", "restrict_to_workspace", "RestrictToWorkspace", "bool"),
    ("PICOCLAW_AGENTS_DEFAULTS_PROVIDER", "provider", "Provider", "string"),
    ("PICOCLAW_AGENTS_DEFAULTS_MODEL_NAME", "model_name", "ModelName", "string"),
]
GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}

# Provider protocols as PicoClaw's provider factory sorts them.
PROVIDER_ALIASES = {"gpt": "openai", "claude": "anthropic", "google": "gemini", "qwen": "qwen-portal",
                    "qwen-international": "qwen-intl", "dashscope-intl": "qwen-intl", "glm": "zhipu",
                    "azure-openai": "azure", "copilot": "github-copilot", "google-antigravity": "antigravity",
                    "claudecli": "claude-cli", "codexcli": "codex-cli", "g4f": "gpt4free", "z.ai": "zai",
                    "z-ai": "zai", "coding-plan": "alibaba-coding", "qwen-coding": "alibaba-coding",
                    "coding-plan-anthropic": "alibaba-coding-anthropic", "dashscope-us": "qwen-us"}
HTTP_PROTOCOLS = {"litellm", "lmstudio", "gpt4free", "openrouter", "groq", "zhipu", "nvidia", "venice",
                  "ollama", "moonshot", "shengsuanyun", "siliconflow", "deepseek", "cerebras", "vivgrid",
                  "volcengine", "vllm", "qwen-portal", "qwen-intl", "qwen-us", "mistral", "avian", "longcat",
                  "modelscope", "novita", "alibaba-coding", "zai", "mimo", "minimax"}
KEYLESS_PROTOCOLS = {"ollama", "vllm", "lmstudio", "gpt4free"}
NO_CHECK_PROTOCOLS = {"bedrock", "antigravity", "claude-cli", "codex-cli", "github-copilot"}
KNOWN_PROVIDERS = (HTTP_PROTOCOLS | NO_CHECK_PROTOCOLS | set(PROVIDER_ALIASES) |
                   {"openai", "anthropic", "anthropic-messages", "gemini", "azure", "alibaba-coding-anthropic",
                    "elevenlabs"})

USAGE_EXIT = 1
DIRECTIVE = r"::(sleep=(?P<seconds>[0-9.]+)|fail|hang|env|pid|history|log-after)::"
TRANSIENT_ERROR = ('API request failed:\n  Status: 529\n  Body:   {"type":"error","error":'
                   '{"type":"overloaded_error","message":"Overloaded"}}')


class Failure(Exception):
    """The command fails: "Error: <message>" on stderr, exit status 1."""


class ConfigError(Exception):
    """config.json cannot be loaded (the caller words the prefix)."""


# --------------------------------------------------------------------------
# output and logs
# --------------------------------------------------------------------------

def out(text, stream=None):
    """Write text as UTF-8 bytes: the remote locale may be C/POSIX, and task
    text must survive byte-for-byte (argv bytes are restored by fsencode)."""
    stream = stream or sys.stdout
    data = text if isinstance(text, bytes) else os.fsencode(text)
    stream.buffer.write(data)
    stream.buffer.flush()


def go_quote(text):
    """Go's %q, close enough for names and paths."""
    return json.dumps(text, ensure_ascii=False)


def rfc3339(now=None, nano=False):
    """Go's time.RFC3339 (or RFC3339Nano) in UTC, as PicoClaw stamps files and JSON logs."""
    now = time.time_ns() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now // 1_000_000_000))
    if nano:
        fraction = ("%09d" % (now % 1_000_000_000)).rstrip("0")
        stamp += "." + fraction if fraction else ""
    return stamp + "Z"


class Logger:
    """PicoClaw's zerolog setup: console lines on stdout until
    configure_from_env() moves them to $PICOCLAW_LOG_FILE as JSON."""

    LEVELS = {"DBG": "debug", "INF": "info", "WRN": "warn", "ERR": "error"}

    def __init__(self):
        self.file = None

    def configure_from_env(self):
        path = os.environ.get("PICOCLAW_LOG_FILE")
        if not path:
            return
        if path.startswith("~/") and os.environ.get("HOME"):
            path = os.path.join(os.environ["HOME"], path[2:])
        try:
            os.makedirs(os.path.dirname(path) or ".", 0o755, exist_ok=True)
            self.file = open(path, "ab")
        except OSError as exc:
            out("failed to enable file logging: failed to open log file: open %s: %s\n"
                % (path, os.strerror(exc.errno or 0).lower()), sys.stderr)

    def log(self, level, component, caller, message, fields=()):
        if self.file is None:
            out(self.console_line(level, component, caller, message, fields))
            return
        record = {"level": self.LEVELS[level], "component": component}
        record.update(fields)
        record.update({"time": rfc3339(), "caller": CALLER_PREFIX + caller, "message": message})
        self.file.write((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode())
        self.file.flush()

    @staticmethod
    def console_line(level, component, caller, message, fields):
        """zerolog's ConsoleWriter without colour: the error field first, the rest sorted."""
        parts = [time.strftime("%H:%M:%S"), level, component, CALLER_PREFIX + caller, ">", message]
        ordered = sorted(fields, key=lambda kv: (kv[0] != "error", kv[0]))
        for key, value in ordered:
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif not isinstance(value, str):
                value = str(value)
            elif value == "" or any(c in ' \\"=' or ord(c) < 0x20 for c in value):
                value = json.dumps(value, ensure_ascii=False)
            parts.append("%s=%s" % (key, value))
        return " ".join(parts) + "\n"


LOG = Logger()


# --------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------

def user_home():
    """Go's os.UserHomeDir: $HOME, nothing else."""
    return os.environ.get("HOME", "")


def picoclaw_home():
    """$PICOCLAW_HOME, else ~/.picoclaw ("." without a HOME), like config.GetHome."""
    if os.environ.get("PICOCLAW_HOME"):
        return os.environ["PICOCLAW_HOME"]
    return os.path.join(user_home(), ".picoclaw") if user_home() else "."


def config_path():
    return os.environ.get("PICOCLAW_CONFIG") or os.path.join(picoclaw_home(), "config.json")


def expand_home(path):
    """PicoClaw's expandHome: "~/x" is $HOME/x, and any other "~..." is $HOME itself."""
    if path.startswith("~"):
        return user_home() + path[1:] if path[1:2] == "/" else user_home()
    return path


def default_config(home=None):
    """The config PicoClaw uses without a file, and writes on a fresh onboard."""
    home = home or picoclaw_home()
    return {
        "session": {"dimensions": ["chat"], "dm_scope": "per-channel"},
        "version": CONFIG_VERSION,
        "agents": {"defaults": {
            "workspace": os.path.join(os.path.abspath(home), "workspace"),
            "restrict_to_workspace": True,
            "allow_read_outside_workspace": False,
            "provider": "",
            "model_name": "",
            "max_tokens": 32768,
            "max_tool_iterations": 50,
        }},
        "model_list": [dict(entry) for entry in DEFAULT_MODEL_LIST],
    }


def security_text(models, path):
    """.security.yml as SaveConfig writes it: a model_list entry "<name>:<index>"
    for every model (sorted), with its keys; other sections of the file are kept."""
    entries, seen = {}, {}
    for entry in models:
        name = entry.get("model_name") or ""
        index = seen[name] = seen.get(name, -1) + 1
        entries["%s:%d" % (name, index)] = api_keys(entry)
    section = "model_list:\n" + "".join(
        "  %s:\n    api_keys:\n%s" % (name, "".join("      - %s\n" % key for key in keys)) if keys
        else "  %s: {}\n" % name for name, keys in sorted(entries.items()))
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines(keepends=True)
    except OSError:
        return section
    kept, inside = [], False
    for line in lines:
        if line.strip() and not line[0].isspace() and not line.startswith("#"):
            inside = bool(re.match(r"""["']?model_list["']?\s*:""", line))
        if not inside:
            kept.append(line if line.endswith("\n") else line + "\n")
    return "".join(kept) + section


def json_kind(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


# encoding/json's diagnostics as PicoClaw words them (pkg/config/diagnostics.go).

def go_quote_char(char):
    """encoding/json's quoteChar for the first byte of char."""
    byte = char.encode("utf-8", "surrogateescape")[0]
    if byte == 0x27:
        return "'\\''"
    if byte == 0x22:
        return "'\"'"
    escapes = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v", 0x5c: "\\\\"}
    if byte in escapes:
        return "'%s'" % escapes[byte]
    if byte < 0x20 or byte == 0x7f:
        return "'\\x%02x'" % byte
    if 0x80 <= byte < 0xa0:
        return "'\\u%04x'" % byte
    return "'%s'" % chr(byte)


def go_syntax_error(text, exc):
    """(Go's message, byte offset) for the JSON error Python found."""
    pos = exc.pos
    offset = len(text[:pos].encode("utf-8", "surrogateescape")) + 1
    if pos >= len(text) or exc.msg.startswith("Unterminated string"):
        return "unexpected end of JSON input", len(text.encode("utf-8", "surrogateescape"))
    char = go_quote_char(text[pos])
    if exc.msg.startswith("Expecting ',' delimiter"):
        depth = []
        in_string = escaped = False
        for c in text[:pos]:
            if in_string:
                in_string, escaped = (not (c == '"' and not escaped)), (c == "\\" and not escaped)
            elif c == '"':
                in_string = True
            elif c in "[{":
                depth.append(c)
            elif c in "]}" and depth:
                depth.pop()
        where = "after object key:value pair" if depth[-1:] == ["{"] else "after array element"
    else:
        where = {"Expecting value": "looking for beginning of value",
                 "Expecting property name enclosed in double quotes": "looking for beginning of object key string",
                 "Expecting ':' delimiter": "after object key",
                 "Extra data": "after top-level value",
                 "Invalid control character at": "in string literal"}.get(exc.msg, "in string escape code")
    return "invalid character %s %s" % (char, where), offset


def go_position(data, offset):
    """lineAndColumnForOffset: 1-based line and byte column of the byte before offset."""
    if offset <= 0:
        return 1, 1
    offset = min(offset, len(data))
    line = data.count(b"\n", 0, offset - 1) + 1
    return line, offset - 1 - (data.rfind(b"\n", 0, offset - 1) + 1) + 1


def go_preview(data, offset):
    """diagnosticPreviewForOffset without colour: the line, and a caret under the column."""
    if not data:
        return ""
    index = min(max(offset, 1), len(data)) - 1
    start = data.rfind(b"\n", 0, index) + 1
    end = data.find(b"\n", index)
    end = len(data) if end < 0 else end
    line_number, column = go_position(data, offset)
    line = data[start:end].decode("utf-8", "replace").rstrip("\r\n")
    if start >= end or not line.strip():
        return ""
    trim = 0
    if len(line) > 160:
        trim = max(0, min(column - 1 - 60, len(line) - 160))
        shown = line[trim:trim + 160]
        if trim > 0:
            shown, trim = "..." + shown, trim - 3
        line = shown + ("..." if trim + 3 + 160 < len(data[start:end].decode("utf-8", "replace")) else "")
    prefix = "%4d | " % line_number
    caret = max(column - trim, 1)
    return "  %s%s\n  %s%s^" % (prefix, line, " " * len(prefix), " " * min(caret - 1, len(line)))


def go_json_error(data, message, offset, what="syntax error"):
    """wrapJSONError: "config.json <what> at line L, column C: <message>", then the preview."""
    line, column = go_position(data, offset)
    text = "config.json %s at line %d, column %d%s" % (what, line, column, message)
    preview = go_preview(data, offset)
    return text + ("\n" + preview if preview else "")


def json_value_span(text, path):
    """(start, end) character offsets of the value at path (keys and list indexes), or None."""
    decoder = json.JSONDecoder()
    space = re.compile(r"[ \t\n\r]*")
    pos = space.match(text, 0).end()
    for step in path:
        opener, closer = ("{", "}") if isinstance(step, str) else ("[", "]")
        if text[pos:pos + 1] != opener:
            return None
        pos = space.match(text, pos + 1).end()
        found, index = None, 0
        while pos < len(text) and text[pos] != closer:
            if isinstance(step, str):
                key, pos = decoder.raw_decode(text, pos)
                pos = space.match(text, space.match(text, pos).end() + 1).end()
                if key == step:
                    found = pos
            elif index == step:
                found = pos
            pos = space.match(text, decoder.raw_decode(text, pos)[1]).end()
            index += 1
            if text[pos:pos + 1] == ",":
                pos = space.match(text, pos + 1).end()
        if found is None:
            return None
        pos = found
    return pos, decoder.raw_decode(text, pos)[1]


def type_error(data, text, raw):
    """The first field, in document order, whose JSON type does not fit
    PicoClaw's Go type, worded as wrapJSONError does; None if all fit."""
    go_kinds = {"int": ("number",), "string": ("string",), "bool": ("bool",),
                "config.SecureModelList": ("array",), "config.SecureStrings": ("array",)}
    problems = []
    for path, go_type in TYPED_FIELDS:
        nodes = [((), raw)]
        for step in path:
            following = []
            for where, node in nodes:
                if step == "[]":
                    following += [(where + (i,), item) for i, item in enumerate(node)] if isinstance(node, list) else []
                elif isinstance(node, dict) and step in node:
                    following.append((where + (step,), node[step]))
            nodes = following
        for where, value in nodes:
            kind = json_kind(value)
            if kind is None or (kind in go_kinds.get(go_type, ("object",)) and
                                (go_type != "int" or value == int(value))):
                continue
            # encoding/json reports a literal after it was read, an object or array at its opening
            start, end = json_value_span(text, where) or (0, 0)
            end = start + 1 if kind in ("object", "array") else end
            offset = len(text[:end].encode("utf-8", "surrogateescape"))
            field = ".".join(str(step) for step in where)
            problems.append((offset, ' for field "%s": expected %s but got %s' % (field, go_type, kind)))
    if not problems:
        return None
    offset, message = min(problems)
    return go_json_error(data, message, offset, "type error")


def unknown_fields(raw):
    found = ["%s" % key for key in raw if key not in TOP_FIELDS]
    agents = raw.get("agents")
    if isinstance(agents, dict):
        found += ["agents.%s" % key for key in agents if key not in AGENTS_FIELDS]
        defaults = agents.get("defaults")
        if isinstance(defaults, dict):
            found += ["agents.defaults.%s" % key for key in defaults if key not in DEFAULTS_FIELDS]
    models = raw.get("model_list")
    if isinstance(models, list):
        for index, entry in enumerate(models):
            if isinstance(entry, dict):
                found += ["model_list[%d].%s" % (index, key) for key in entry if key not in MODEL_FIELDS]
    return sorted(found)


def load_config(path=None):
    """The config dict as PicoClaw would use it (security keys merged, env
    applied, defaults filled), logging on the console as PicoClaw does.
    ConfigError with PicoClaw's message when it would refuse the file."""
    path = path or config_path()
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        LOG.log("WRN", "config", "pkg/config/config.go:1272", "config file not found, using default config",
                [("path", path)])
        return default_config()
    except OSError as exc:
        raise ConfigError("open %s: %s" % (path, os.strerror(exc.errno or 0).lower())) from None
    text = data.decode("utf-8", "surrogateescape")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        message, offset = go_syntax_error(text, exc)
        problem = go_json_error(data, ": " + message, offset)
        LOG.log("ERR", "config", "pkg/config/config.go:1287", diagnostic_log("Malformed config file", problem),
                [("path", path)])
        raise ConfigError(problem) from None
    version = raw.get("version", 0) if isinstance(raw, dict) else 0
    kind = json_kind(version)
    if kind not in (None, "number") or (kind == "number" and version != int(version)):
        problem = type_error(data, text, {"version": version})
        LOG.log("ERR", "config", "pkg/config/config.go:1287", diagnostic_log("Malformed config file", problem),
                [("path", path)])
        raise ConfigError(problem)
    version = int(version or 0)
    if len(data) <= 10:
        LOG.log("WRN", "config", "pkg/config/config.go:1291", "content is [%s]" % text)
        return default_config()
    if not isinstance(raw, dict):
        raise ConfigError("config.json type error: expected config.Config but got %s" % json_kind(raw))
    if version in (0, 1, 2):
        LOG.log("INF", "config", "pkg/config/config.go:%d" % {0: 1299, 1: 1357, 2: 1415}[version],
                "config migrate start", [("from", version), ("to", CONFIG_VERSION)])
    elif version != CONFIG_VERSION:
        raise ConfigError("unsupported config version: %d" % version)
    problem = None
    unknown = unknown_fields(raw)
    if unknown:
        problem = "config.json contains unknown field(s): " + ", ".join(unknown)
    else:
        problem = type_error(data, text, raw)
    if problem:
        LOG.log("ERR", "config", "pkg/config/config.go:1469", diagnostic_log("Failed to load config", problem),
                [("path", path)])
        raise ConfigError(problem)
    config = json.loads(json.dumps(raw))
    config.setdefault("agents", {})
    if config["agents"] is None:
        config["agents"] = {}
    config["agents"].setdefault("defaults", {})
    if config["agents"]["defaults"] is None:
        config["agents"]["defaults"] = {}
    if "model_list" not in config:  # the file is loaded over the defaults
        config["model_list"] = [dict(entry) for entry in DEFAULT_MODEL_LIST]
    models = config["model_list"] = config["model_list"] or []
    apply_security(models, os.path.join(os.path.dirname(path), ".security.yml"))
    apply_env(config["agents"]["defaults"])
    for index, entry in enumerate(models):
        problem = model_problem(entry or {})
        if problem:
            raise ConfigError("model_list[%d]: %s" % (index, problem))
    defaults = config["agents"]["defaults"]
    if not defaults.get("workspace"):
        defaults["workspace"] = os.path.join(picoclaw_home(), "workspace")
    defaults.setdefault("restrict_to_workspace", True)
    return config


def diagnostic_log(prefix, problem):
    """formatDiagnosticLogMessage: "<prefix>: <first line>", then the preview lines."""
    return "%s: %s" % (prefix, problem)


def apply_env(defaults):
    """caarlos0/env as PicoClaw uses it: a non-empty variable overrides the field."""
    for variable, field, go_name, kind in ENV_OVERRIDES:
        value = os.environ.get(variable, "")
        if not value:
            continue
        if kind == "bool":
            if value not in GO_TRUE | GO_FALSE:
                raise ConfigError('env: parse error on field "%s" of type "bool": strconv.ParseBool: '
                                  'parsing %s: invalid syntax' % (go_name, go_quote(value)))
            defaults[field] = value in GO_TRUE
        else:
            defaults[field] = value


def model_problem(entry):
    """ModelConfig.Validate."""
    model = entry.get("model") or ""
    if not entry.get("model_name"):
        return "model_name is required"
    if not model:
        return "model is required"
    if any(c in model for c in " \t\n\r"):
        return "model identifier contains whitespace"
    if model.startswith("/"):
        return "model identifier must not start with /"
    if "//" in model:
        return "model identifier must not contain //"
    return None


# --------------------------------------------------------------------------
# .security.yml: a small, tolerant reader of its model_list section
# --------------------------------------------------------------------------

def yaml_scalar(text):
    """A YAML scalar: quoted ("..." / '...') or plain, without a trailing comment."""
    text = text.strip()
    if text[:1] == '"':
        match = re.match(r'"(?:[^"\\]|\\.)*"', text)
        if match:
            try:
                return json.loads(match.group(0))
            except ValueError:
                return match.group(0)[1:-1]
    if text[:1] == "'":
        match = re.match(r"'(?:[^']|'')*'", text)
        if match:
            return match.group(0)[1:-1].replace("''", "'")
    return strip_comment(text)


def strip_comment(text):
    return re.sub(r"(^|\s)#.*$", "", text).strip()


def yaml_split_key(text):
    """("key", "rest after the colon") of a mapping line, or None."""
    if text[:1] in ('"', "'"):
        quote = text[0]
        pos = 1
        while pos < len(text):
            if quote == '"' and text[pos] == "\\":
                pos += 2
                continue
            if text[pos] == quote:
                if quote == "'" and text[pos + 1:pos + 2] == "'":
                    pos += 2
                    continue
                break
            pos += 1
        match = re.match(r"\s*:(?:\s+(.*))?$", text[pos + 1:])
        return (yaml_scalar(text[:pos + 1]), (match.group(1) or "").strip()) if match else None
    match = re.match(r"(.*?):(?:\s+(.*))?$", text)
    if match is None or match.group(1).startswith(("-", "#")):
        return None
    return yaml_scalar(match.group(1)), (match.group(2) or "").strip()


def yaml_flow_list(text):
    """Items of a one-line flow sequence "[a, 'b', "c"]"."""
    inner = text.strip()
    inner = inner[1:inner.rindex("]")] if "]" in inner else inner[1:]
    items = re.findall(r'"(?:[^"\\]|\\.)*"|\'(?:[^\']|\'\')*\'|[^,\s][^,]*', inner)
    return [yaml_scalar(item) for item in items]


def yaml_keys_of_entry(inline, children):
    """api_keys of one model_list entry: [] when it has none, None when the entry is null."""
    inline = strip_comment(inline)
    if inline:
        if inline in ("~", "null", "Null", "NULL"):
            return None
        match = re.search(r"""["']?api_keys["']?\s*:\s*(\[[^\]]*\]?|[^,}]+)""", inline)
        if match is None:
            return []
        value = match.group(1).strip()
        return yaml_flow_list(value) if value.startswith("[") else [yaml_scalar(value)]
    if not children:
        return None
    for pos, (indent, text) in enumerate(children):
        pair = yaml_split_key(text)
        if pair is None or pair[0] != "api_keys":
            continue
        value = pair[1] if pair[1].startswith(("'", '"')) else strip_comment(pair[1])
        if value.startswith("["):
            return yaml_flow_list(value)
        if value in ("~", "null", "[]"):
            return []
        if value:
            return [yaml_scalar(value)]
        keys = []
        for item_indent, item in children[pos + 1:]:
            if item_indent < indent or (item_indent == indent and not item.startswith("-")):
                break
            if item.startswith("-"):
                keys.append(yaml_scalar(item[1:]))
        return keys
    return []


def read_security(path):
    """{"<model_name>:<index>" or "<model_name>": [api keys]} from .security.yml's
    model_list; [] for an entry without keys (it still replaces the config's)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return {}
    rows = []
    for line in lines:
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and stripped != "---":
            rows.append((len(line) - len(line.lstrip(" ")), stripped))
    start = next((i for i, (indent, text) in enumerate(rows)
                  if indent == 0 and re.match(r"""["']?model_list["']?\s*:""", text)), None)
    if start is None:
        return {}
    section = []
    for indent, text in rows[start + 1:]:
        if indent == 0:
            break
        section.append((indent, text))
    if not section:
        return {}
    entry_indent = section[0][0]
    entries = {}
    pos = 0
    while pos < len(section):
        indent, text = section[pos]
        end = pos + 1
        while end < len(section) and section[end][0] > entry_indent:
            end += 1
        pair = yaml_split_key(text) if indent == entry_indent else None
        if pair is not None:
            keys = yaml_keys_of_entry(pair[1], section[pos + 1:end])
            if keys is not None:
                entries[pair[0]] = [key for key in keys if key]
        pos = end
    return entries


def apply_security(models, path):
    """An entry of .security.yml replaces the api_keys of its model_list entry."""
    secure = read_security(path)
    seen = {}
    for entry in models:
        if not isinstance(entry, dict):
            continue
        name = entry.get("model_name") or ""
        index = seen.get(name, 0)
        seen[name] = index + 1
        keys = secure.get("%s:%d" % (name, index), secure.get(name))
        if keys is not None:
            entry["api_keys"] = keys


# --------------------------------------------------------------------------
# provider
# --------------------------------------------------------------------------

def protocol_of(entry):
    provider = (entry.get("provider") or "").strip()
    if provider:
        provider = provider.lower()
        return PROVIDER_ALIASES.get(provider, provider)
    prefix, slash, _rest = (entry.get("model") or "").strip().partition("/")
    prefix = prefix.strip().lower()
    if slash and prefix in KNOWN_PROVIDERS:
        return PROVIDER_ALIASES.get(prefix, prefix)
    return "openai"


def api_keys(entry):
    return [key for key in entry.get("api_keys") or [] if isinstance(key, str) and key]


def create_provider(config):
    """The selected model_list entry, or Failure with PicoClaw's message."""
    name = config["agents"]["defaults"].get("model_name") or ""
    models = config.get("model_list") or []
    if not models:
        raise Failure("error creating provider: no providers configured. Please add entries to model_list "
                      "in your config")
    entry = next((m for m in models if isinstance(m, dict) and m.get("model_name") == name), None)
    if entry is None:
        raise Failure("error creating provider: model %s not found in model_list: model %s not found in "
                      "model_list or providers" % (go_quote(name), go_quote(name)))
    problem = provider_problem(entry)
    if problem:
        raise Failure("error creating provider: failed to create provider for model %s: %s"
                      % (go_quote(name), problem))
    return entry


def provider_problem(entry):
    model = entry.get("model") or ""
    protocol = protocol_of(entry)
    keys, api_base = api_keys(entry), entry.get("api_base") or ""
    oauth = (entry.get("auth_method") or "").strip().lower() in ("oauth", "token")
    if protocol == "openai" or protocol in HTTP_PROTOCOLS:
        if not oauth and not keys and not api_base and protocol not in KEYLESS_PROTOCOLS:
            return "api_key or api_base is required for HTTP-based protocol %s" % go_quote(protocol)
    elif protocol == "gemini":
        if not keys and not api_base:
            return "api_key or api_base is required for gemini protocol (model: %s)" % model
    elif protocol == "azure":
        if not api_base:
            return "api_base is required for azure protocol (e.g., https://your-resource.openai.azure.com)"
    elif protocol in ("anthropic", "anthropic-messages"):
        if not keys and not (oauth and protocol == "anthropic"):
            return "api_key is required for %s protocol (model: %s)" % (protocol, model)
    elif protocol == "alibaba-coding-anthropic":
        if not keys:
            return "api_key is required for %s protocol (model: %s)" % (go_quote(protocol), model)
    elif protocol not in NO_CHECK_PROTOCOLS:
        return "unknown protocol %s in model %s" % (go_quote(protocol), go_quote(model))
    return None


# --------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------

def session_name(key):
    """The session a -s key lands in: agent:* and sk_v1_* (any case) are their own."""
    key = key.strip()
    if key.lower().startswith(("agent:", "sk_v1_")):
        return key
    return SHARED_SESSION


def session_paths(config, key):
    workspace = expand_home(config["agents"]["defaults"]["workspace"])
    base = re.sub(r"[:/\\]", "_", session_name(key))
    directory = os.path.join(workspace, "sessions")
    return os.path.join(directory, base + ".jsonl"), os.path.join(directory, base + ".meta.json")


def go_json(value):
    """One-line JSON as Go's encoding/json writes it (HTML characters escaped)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def session_history(config, key):
    """How many messages the session holds."""
    try:
        with open(session_paths(config, key)[0], "rb") as fh:
            return sum(1 for line in fh if line.strip())
    except OSError:
        return 0


def save_turn(config, key, user_text, answer, model_name):
    """Append the user message and the answer (None: the turn failed), then
    rewrite the meta file."""
    jsonl, meta_path = session_paths(config, key)
    os.makedirs(os.path.dirname(jsonl), 0o755, exist_ok=True)
    started = time.time_ns()
    lines = [{"role": "user", "content": as_text(user_text), "created_at": rfc3339(started, nano=True)}]
    if answer is not None:
        lines.append({"role": "assistant", "content": as_text(answer), "model_name": model_name,
                      "created_at": rfc3339(nano=True)})
    fd = os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, "".join(go_json(line) + "\n" for line in lines).encode("utf-8"))
    finally:
        os.close(fd)
    try:
        with open(meta_path, encoding="utf-8") as fh:
            previous = json.load(fh)
        created, previous_aliases = previous["created_at"], list(previous["aliases"])
    except (OSError, ValueError, TypeError, KeyError):
        created, previous_aliases = rfc3339(started, nano=True), None
    name = session_name(key)
    meta = {
        "key": name, "summary": "", "skip": 0, "count": session_history(config, key),
        "created_at": created, "updated_at": lines[-1]["created_at"],
        "scope": {"version": 1, "agent_id": "main", "channel": "cli", "account": "default",
                  "dimensions": ["chat"], "values": {"chat": "direct:direct"}},
        "aliases": list(SESSION_ALIASES),
    }
    if name == SHARED_SESSION:  # the keys that led here are remembered
        meta["aliases"] = previous_aliases or meta["aliases"]
        alias = key.strip() or DEFAULT_SESSION
        if alias not in meta["aliases"]:
            meta["aliases"].append(alias)
    temp = "%s.tmp.%d" % (meta_path, os.getpid())
    with open(temp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(meta, indent=2, ensure_ascii=False))
    os.replace(temp, meta_path)


def as_text(text):
    """Task text (argv str with surrogate escapes) as Go would hold it: invalid UTF-8 becomes U+FFFD."""
    return os.fsencode(text).decode("utf-8", "replace")


# --------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------

def cmd_version(_args):
    out("%s picoclaw %s (git: %s)\n  Build: %s\n  Go: %s\n" % (LOGO, VERSION, COMMIT, BUILD_TIME, GO_VERSION))
    return 0


def cmd_onboard(args):
    """Like current PicoClaw: no prompt; an existing config is loaded and
    written back, otherwise the defaults are written."""
    if "-h" in args or "--help" in args:
        out(ONBOARD_HELP)
        return 0
    path = config_path()
    directory = os.path.dirname(path) or "."
    if os.path.exists(path):
        try:
            config = load_config(path)
        except ConfigError as exc:
            out("Error loading existing config: %s\n" % exc)
            return 1
        if config.get("version", 0) < CONFIG_VERSION:
            config["version"] = CONFIG_VERSION
    else:
        config = default_config()
    os.makedirs(directory, 0o755, exist_ok=True)
    security = os.path.join(directory, ".security.yml")
    write_atomic(security, security_text(config.get("model_list") or [], security).encode())
    for entry in config.get("model_list") or []:
        entry.pop("api_keys", None)  # SaveConfig keeps them in .security.yml only
    write_atomic(path, json.dumps(config, indent=2, ensure_ascii=False).encode())
    workspace = expand_home(config["agents"]["defaults"].get("workspace") or "") or \
        os.path.join(picoclaw_home(), "workspace")
    os.makedirs(workspace, 0o755, exist_ok=True)
    out(ONBOARD_DONE.format(config_path=path))
    return 0


def write_atomic(path, data, mode=0o600):
    temp = "%s.tmp.%d" % (path, os.getpid())
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(temp, path)


class FlagError(Exception):
    pass


def parse_agent_args(args):
    """pflag's parsing of the agent flags: ({flag: value}, positional args).
    A value is taken verbatim, even when it starts with '-'."""
    opts = {"message": "", "session": "", "model": "", "debug": False, "help": False}
    valued = {"message": "message", "session": "session", "model": "model", "m": "message", "s": "session"}
    switches = {"debug": "debug", "help": "help", "no-color": None, "d": "debug", "h": "help"}
    positional = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            positional += args[i:]
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            if name in valued and len(name) > 1:
                if not eq:
                    if i >= len(args):
                        raise FlagError("flag needs an argument: --%s" % name)
                    value = args[i]
                    i += 1
                opts[valued[name]] = value
            elif name in switches and len(name) > 1:
                if switches[name]:
                    opts[switches[name]] = not eq or value in GO_TRUE
            else:
                raise FlagError("unknown flag: --%s" % name)
        elif arg.startswith("-") and len(arg) > 1:
            shorts = arg[1:]
            pos = 0
            while pos < len(shorts):
                letter = shorts[pos]
                if letter in ("m", "s"):
                    rest = shorts[pos + 1:]
                    if rest.startswith("="):
                        value = rest[1:]
                    elif rest:
                        value = rest
                    elif i < len(args):
                        value = args[i]
                        i += 1
                    else:
                        raise FlagError("flag needs an argument: '%s' in -%s" % (letter, shorts))
                    opts[valued[letter]] = value
                    break
                if letter in ("d", "h"):
                    opts[switches[letter]] = True
                    pos += 1
                    continue
                raise FlagError("unknown shorthand flag: '%s' in -%s" % (letter, shorts))
        else:
            positional.append(arg)
    return opts, positional


def directive_at_start(text):
    return re.match(DIRECTIVE, text, re.DOTALL)


def split_directives(text):
    """([directive matches], rest).  A directive in the task wins over the
    host-wide mode; the mode is applied by prefixing it to the task text."""
    if directive_at_start(text) is None:
        mode = os.environ.get("PICOCLAW_STANDIN_MODE") or DEFAULT_MODE
        if mode and directive_at_start(mode + text):
            text = mode + text
    found = []
    while True:
        match = directive_at_start(text)
        if match is None:
            return found, text
        found.append(match)
        text = text[match.end():]


def hang():
    while True:
        time.sleep(3600)


class Agent:
    """One `picoclaw agent` run: the loaded config, the chosen model, the session."""

    def __init__(self, config, entry, session):
        self.config, self.entry, self.session = config, entry, session
        self.model_name = config["agents"]["defaults"].get("model_name") or ""

    def process(self, text):
        """(answer, kinds) for one task, or Failure.  Like ProcessDirect: logs
        during the turn, the session saved before the answer is printed."""
        matches, rest = split_directives(text)
        kinds = {m.group(1).split("=")[0] for m in matches}
        LOG.log("WRN", "agent", "pkg/agent/pipeline_llm.go:315", "Transient LLM error, retrying after backoff",
                [("error", TRANSIENT_ERROR), ("reason", "server_error"), ("retry", 0), ("backoff", "0s")])
        history = session_history(self.config, self.session)
        if "fail" in kinds:  # a failed turn keeps the user message, as PicoClaw's does
            save_turn(self.config, self.session, text, None, self.model_name)
            raise Failure("stand-in failure: %s" % rest)
        for match in matches:
            if match.group("seconds"):
                time.sleep(float(match.group("seconds")))
        answer = rest
        if "env" in kinds:
            answer = self.report_env()
        elif "history" in kinds:
            answer = "history=%d" % history
        elif "pid" in kinds:
            answer = "%d\n%s" % (os.getpid(), rest)
        save_turn(self.config, self.session, text, answer, self.model_name)
        return answer, kinds

    def report_env(self):
        """What the run would use, without ever echoing a secret value."""
        restrict = self.config["agents"]["defaults"].get("restrict_to_workspace")
        lines = ["model=%s" % self.model_name,
                 "key=%s" % ("set" if api_keys(self.entry) else "unset"),
                 "restrict_to_workspace=%s" % ("true" if restrict else "false")]
        lines += ["%s=set" % name for name in sorted(os.environ) if name.endswith("_API_KEY")]
        return "\n".join(lines)

    def after_answer(self, kinds):
        if "log-after" in kinds:
            LOG.log("INF", "events", "pkg/agent/runtime_event_logger.go:186", "Runtime event: agent.turn.end",
                    [("agent_id", "main"), ("channel", "cli"), ("event_kind", "agent.turn.end"),
                     ("session_key", session_name(self.session)), ("status", "completed"),
                     ("turn_id", "main-turn-1")])
        if kinds & {"hang", "pid"}:
            hang()

    def interactive(self):
        out("%s Interactive mode (Ctrl+C to exit)\n\n" % LOGO)
        for raw in sys.stdin.buffer:
            line = os.fsdecode(raw).strip()
            if not line:
                continue
            if line in ("exit", "quit"):
                out("Goodbye!\n")
                return 0
            try:
                answer, kinds = self.process(line)
            except Failure as exc:
                out("Error: %s\n" % exc)
                continue
            out("\n%s " % LOGO)
            out(os.fsencode(answer) + b"\n\n")
            self.after_answer(kinds)
        out("\nGoodbye!\n")
        return 0


def cmd_agent(args):
    try:
        opts, positional = parse_agent_args(args)
    except FlagError as exc:
        raise Failure("%s\n\n%s" % (exc, AGENT_HELP)) from None
    if opts["help"]:
        out(AGENT_HELP)
        return 0
    if positional:
        raise Failure('unknown command %s for "picoclaw agent"' % go_quote(positional[0]))
    session = opts["session"] or DEFAULT_SESSION
    try:
        config = load_config()
    except ConfigError as exc:
        raise Failure("error loading config: %s" % exc) from None
    LOG.configure_from_env()
    if opts["debug"]:
        out("\U0001f50d Debug mode enabled\n")
    if opts["model"]:
        config["agents"]["defaults"]["model_name"] = opts["model"]
    agent = Agent(config, create_provider(config), session)
    if not opts["message"]:
        return agent.interactive()
    answer, kinds = agent.process(opts["message"])
    out("\n%s " % LOGO)
    out(os.fsencode(answer) + b"\n")
    agent.after_answer(kinds)
    return 0


def cmd_help(_args):
    out(ROOT_HELP.format(version="%s (git: %s)" % (VERSION, COMMIT)))
    return 0


COMMANDS = {"version": cmd_version, "v": cmd_version, "onboard": cmd_onboard, "o": cmd_onboard,
            "agent": cmd_agent, "help": cmd_help}
NOT_EMULATED = {"auth", "completion", "config", "cron", "gateway", "mcp", "migrate", "model", "skills",
                "status", "update"}


def color_disabled(args):
    """main.earlyColorDisabled: from the environment and raw argv, before any parsing."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return True
    return any(arg in ("--no-color", "--no-color=true", "--no-color=1") for arg in args)


def timezone_lines():
    """main() reports TZ before running any command (Go's time.LoadLocation)."""
    zone = os.environ.get("TZ", "")
    if not zone:
        return
    out("TZ environment: %s\n" % zone)
    out("ZONEINFO environment: %s\n" % os.environ.get("ZONEINFO", ""))
    roots = [os.environ.get("ZONEINFO", ""), "/usr/share/zoneinfo", "/usr/share/lib/zoneinfo",
             "/usr/lib/locale/TZ"]
    valid = zone in ("UTC", "Local") or (
        not zone.startswith("/") and ".." not in zone.split("/") and
        any(root and os.path.isfile(os.path.join(root, zone)) for root in roots))
    if valid:
        out("Time zone loaded successfully: %s\n" % zone)
    else:
        out("Error loading time zone: unknown time zone %s\n" % zone)


def main(argv):
    args = argv[1:]
    out(BANNER_PLAIN if color_disabled(args) else BANNER_COLOR)
    timezone_lines()
    while args and args[0].startswith("-"):  # root flags before the command
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            return cmd_help(args)
        if not flag.startswith("--no-color"):
            out("Error: unknown flag: %s\n\n%s" % (flag, ROOT_HELP.format(
                version="%s (git: %s)" % (VERSION, COMMIT))), sys.stderr)
            return USAGE_EXIT
    if not args:
        return cmd_help(args)
    command = args[0]
    try:
        if command in COMMANDS:
            return COMMANDS[command](args[1:])
        if command in NOT_EMULATED:
            raise Failure("picoclaw stand-in: %s is not emulated" % go_quote(command))
        raise Failure('unknown command %s for "picoclaw"' % go_quote(command))
    except Failure as exc:
        out("Error: %s\n" % str(exc).rstrip("\n"), sys.stderr)  # cliui.FormatCLIError, plain form
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
