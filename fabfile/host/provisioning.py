"""Telling PicoClaw which model to use and giving it the key, the way PicoClaw reads them.

PicoClaw (config version 3, v0.2.4 and later) reads no API key from the
environment. It picks its model by ``agents.defaults.model_name`` in
``~/.picoclaw/config.json``, which names an entry of ``model_list``
(``model_name``, ``provider``, ``model``, ``api_base``), and takes that
entry's keys from ``~/.picoclaw/.security.yml``::

    model_list:
      "claude-sonnet-4.6:0":        # model_name, then its index among entries of that name
        api_keys: ["sk-..."]

An entry in .security.yml replaces the config's own ``api_keys`` even when it
is empty, so the key always goes there, for every entry of the chosen name.

Both files are merged, never replaced: every other setting the user has is
kept, and a file whose content would not change is not written at all (so a
re-deploy writes nothing). The key travels only inside .security.yml's bytes
over SFTP (`remote_files`), never on a command line, in a message or a report.
"""

import json

import yaml

from . import remote_files
from .paths import CONFIG_FILE, PICOCLAW_DIR, SECURITY_FILE

#: PicoClaw writes both files 0600; the key must never be readable by others.
FILE_MODE = 0o600
DIR_MODE = 0o700
#: A config or security file larger than this is not PicoClaw's: refuse rather than parse it.
MAX_FILE_BYTES = 1 << 20


class ProvisioningError(Exception):
    """A PicoClaw config file on the host cannot be merged (not JSON, not YAML, wrong shape)."""


def private_dir(cxn):
    """Make ~/.picoclaw exist with mode 0700 (a directory the user already has keeps its files)."""
    remote_files.mkdir(cxn, PICOCLAW_DIR, DIR_MODE)
    remote_files.ensure_mode(cxn, PICOCLAW_DIR, DIR_MODE)


def provision_model(cxn, choice, key, on_bytes=None):
    """Make the host's PicoClaw use `choice` (a `config.ModelChoice`) with `key`.

    The caller has made ~/.picoclaw private (`private_dir`). Returns
    ``configured`` when either file was written, ``unchanged`` when both
    already said so. `ProvisioningError` or `RemoteFileError` (with a message
    that never holds the key) when a file cannot be read or merged.
    """
    current = read_json(cxn, CONFIG_FILE)
    config = with_model(current, choice)
    security_now = read_yaml(cxn, SECURITY_FILE)
    security = with_key(security_now, choice.name, entry_count(config, choice.name), key)
    wrote = False
    if config != current:
        wrote |= remote_files.write_if_changed(cxn, CONFIG_FILE, json_bytes(config), FILE_MODE, on_bytes)
    else:
        remote_files.ensure_mode(cxn, CONFIG_FILE, FILE_MODE)
    if security != security_now:
        wrote |= remote_files.write_if_changed(cxn, SECURITY_FILE, yaml_bytes(security), FILE_MODE, on_bytes)
    else:
        remote_files.ensure_mode(cxn, SECURITY_FILE, FILE_MODE)
    return "configured" if wrote else "unchanged"


def read_json(cxn, path):
    """The JSON object in remote `path`; `ProvisioningError` when it is not one."""
    data = remote_files.read(cxn, path, MAX_FILE_BYTES + 1)
    if data is None:
        raise ProvisioningError(f"~/{path} is missing after onboard")
    if len(data) > MAX_FILE_BYTES:
        raise ProvisioningError(f"~/{path} is over {MAX_FILE_BYTES} bytes: left as it is")
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise ProvisioningError(f"~/{path} is not valid JSON ({describe_json_error(exc)}): left as it is") from None
    if not isinstance(value, dict):
        raise ProvisioningError(f"~/{path} does not hold a JSON object: left as it is")
    return value


def describe_json_error(exc):
    """Where JSON parsing failed, without quoting the document."""
    if isinstance(exc, json.JSONDecodeError):
        return f"line {exc.lineno}, column {exc.colno}: {exc.msg}"
    return "not UTF-8"


def read_yaml(cxn, path):
    """The mapping in remote `path` ({} when absent or empty); `ProvisioningError` when it is not one.

    A YAML error is described by its position only: PyYAML's own message
    quotes the offending line, which may hold a key.
    """
    data = remote_files.read(cxn, path, MAX_FILE_BYTES + 1)
    if data is None:
        return {}
    if len(data) > MAX_FILE_BYTES:
        raise ProvisioningError(f"~/{path} is over {MAX_FILE_BYTES} bytes: left as it is")
    try:
        value = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ProvisioningError(f"~/{path} is not valid YAML{where}: left as it is") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProvisioningError(f"~/{path} does not hold a YAML mapping: left as it is")
    return value


def with_model(config, choice):
    """`config` (not changed) with `choice` selected, its entry present, and the sandbox switch set.

    A ``model_list`` entry of that name is added when there is none
    (provider, model id, api_base); an existing one only gets `api_base`
    when the fleet config gives one. Every other key is kept as it is.
    """
    version = config.get("version")
    if version is not None and version != 3:
        raise ProvisioningError(
            f"~/{CONFIG_FILE} is config version {version!r}; this PicoClaw needs version 3 "
            "(run `picoclaw onboard` with a current PicoClaw to migrate it)")
    merged = json.loads(json.dumps(config))  # a deep copy, as JSON types
    agents = mapping(merged, "agents", CONFIG_FILE)
    defaults = mapping(agents, "defaults", CONFIG_FILE)
    defaults["model_name"] = choice.name
    defaults["restrict_to_workspace"] = choice.restrict_to_workspace
    models = merged.setdefault("model_list", [])
    if not isinstance(models, list):
        raise ProvisioningError(f"~/{CONFIG_FILE}: model_list is not a list: left as it is")
    entries = [m for m in models if isinstance(m, dict) and m.get("model_name") == choice.name]
    if not entries:
        entry = {"model_name": choice.name, "provider": choice.provider, "model": choice.model_id}
        models.append(entry)
        entries = [entry]
    if choice.api_base:
        for entry in entries:
            entry["api_base"] = choice.api_base
    merged.setdefault("version", 3)
    return merged


def mapping(parent, key, path):
    """``parent[key]`` as a dict (created when missing); `ProvisioningError` when it is something else."""
    value = parent.setdefault(key, {})
    if not isinstance(value, dict):
        raise ProvisioningError(f"~/{path}: {key} is not an object: left as it is")
    return value


def entry_count(config, name):
    """How many ``model_list`` entries are called `name` (PicoClaw indexes their keys 0, 1, ...)."""
    return sum(1 for m in config["model_list"] if isinstance(m, dict) and m.get("model_name") == name)


def with_key(security, name, count, key):
    """`security` (not changed) with ``model_list."<name>:<i>".api_keys`` = [key] for each entry.

    Other fields of those entries, and everything else in the file, are kept.
    """
    merged = yaml.safe_load(yaml.safe_dump(security))  # a deep copy, as YAML types
    if merged is None:
        merged = {}
    models = mapping(merged, "model_list", SECURITY_FILE)
    for index in range(count):
        entry = models.get(f"{name}:{index}")
        entry = dict(entry) if isinstance(entry, dict) else {}
        entry["api_keys"] = [key]
        models[f"{name}:{index}"] = entry
    return merged


def json_bytes(config):
    """config.json as PicoClaw writes it: two-space indent, UTF-8, a final newline."""
    return (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode()


def yaml_bytes(security):
    """.security.yml as block YAML, keys in their order; comments are not kept (PyYAML drops them)."""
    return yaml.safe_dump(security, sort_keys=False, allow_unicode=True, default_flow_style=False).encode()

