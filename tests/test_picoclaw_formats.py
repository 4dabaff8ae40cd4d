"""What PicoClaw prints and keeps, read the way the product reads it: no SSH needed.

The byte formats here are the real binary's (v0.2.1 and later: banner first,
``🦞 picoclaw <version>`` lines, ``\\n🦞 <answer>\\n``), and the config files
are shaped as its ``onboard`` writes them. The end-to-end proof against the
real binary is tests/test_real_picoclaw.py.
"""

import json
import subprocess

import pytest
import yaml

from fabfile.host.agent import LOG_MARKER, AgentOptions, agent_command, session_files, split_answer, split_log
from fabfile.core.config import ModelChoice
from fabfile.core.errors import UsageError
from fabfile.host.facts import SECURITY_MASK, normalize_arch, parse_probe, parse_version, worker_config
from fabfile.host.provisioning import ProvisioningError, with_key, with_model

BOX = "██████╗ ██╗ ██████╗\n██╔══██╗██║██╔════╝\n╚═╝     ╚═╝ ╚═════╝\n"
PLAIN_BANNER = "\r\n" + BOX + " \r\n"
COLOUR_BANNER = "\r\n\x1b[1;38;2;62;93;185m" + BOX.replace("\n", "\x1b[0m\n", 1) + " \x1b[0m\r\n"
VERSION_LINES = "\U0001f99e picoclaw 0.2.9 (git: abc12345)\n  Build: 2026-05-01T10:00:00Z\n  Go: go1.25.1\n"
TZ_LINES = "TZ environment: Etc/GMT+5\nZONEINFO environment: \nTime zone loaded successfully: Etc/GMT+5\n"


# --- version ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output, version",
    [
        (PLAIN_BANNER + VERSION_LINES, "0.2.9"),
        (COLOUR_BANNER + VERSION_LINES, "0.2.9"),
        (PLAIN_BANNER + TZ_LINES + VERSION_LINES, "0.2.9"),
        (PLAIN_BANNER + "\U0001f99e picoclaw 0.0.0-cf67dd38.1 (git: cf67dd38)\n", "0.0.0-cf67dd38.1"),
        ("\U0001f99e picoclaw v0.1.2\n", "0.1.2"),  # before the banner (<= v0.2.0)
        ("picoclaw version 0.1.0\n", "0.1.0"),
        (PLAIN_BANNER, None),
    ],
)
def test_version_is_read_past_banner_and_time_zone_lines(output, version):
    assert parse_version(output) == version


def test_probe_reads_version_model_key_and_sandbox():
    stdout = (
        "arch=x86_64\nloadavg=0.10 0.05 0.01 1/100 42\nncpu=4\nversion_rc=0\nversion=0.2.9 (git: abc12345)\nenv=no\n"
        "--- config.json\n"
        + json.dumps({"version": 3, "agents": {"defaults": {"model_name": "claude-sonnet-4.6",
                                                            "restrict_to_workspace": False}},
                      "model_list": [{"model_name": "claude-sonnet-4.6", "model": "claude-sonnet-4-6"}]}, indent=2)
        + "\n\n--- security\nmodel_list:\n  claude-sonnet-4.6:0:\n    api_keys:\n    - x\n"
    )
    facts = parse_probe(stdout)
    assert (facts.arch, facts.version, facts.load1, facts.ncpu) == ("amd64", "0.2.9", 0.10, 4)
    assert facts.worker.model == "claude-sonnet-4.6"
    assert facts.worker.api_key is True
    assert facts.worker.restrict_to_workspace is False


# --- arch ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "machine, arch",
    [("x86_64", "amd64"), ("aarch64", "arm64"), ("armv7l", "armv7"), ("armv8l", "armv7"), ("armv6l", "armv6"),
     ("riscv64", "riscv64"), ("loongarch64", "loong64"), ("s390x", "s390x"), ("mipsel", "mipsle"),
     ("armv5tel", None), ("ppc64le", None), ("i686", None)],
)
def test_every_upstream_linux_arch_maps_from_uname(machine, arch):
    assert normalize_arch(machine) == arch


def test_mips_is_mipsle_only_when_little_endian():
    assert normalize_arch("mips", " 01") == "mipsle"
    assert normalize_arch("mips", " 02") is None  # big-endian: upstream ships no build
    assert normalize_arch("mips", "") is None
    assert parse_probe("arch=mips\nendian= 01\nversion_rc=127\nenv=no\n").arch == "mipsle"


# --- the key, seen through the mask ------------------------------------------------------------


def masked(text):
    """The probe's own mask over `text`, as a host's /bin/sh runs it."""
    return subprocess.run(["/bin/sh", "-c", SECURITY_MASK], input=text, capture_output=True, text=True,
                          check=True).stdout


ONBOARD_SECURITY = "channel_list:\n  discord:\n    settings: {}\nmodel_list:\n  claude-sonnet-4.6:0: {}\n  gpt-5.4:0: {}\n"


@pytest.mark.parametrize(
    "security, config_keys, expected",
    [
        ('model_list:\n  "claude-sonnet-4.6:0":\n    api_keys: ["sk-live-secret"]\n', None, True),
        ("model_list:\n  claude-sonnet-4.6:0:\n    api_keys:\n    - sk-live-secret\n", None, True),
        ("model_list:\n  claude-sonnet-4.6:\n    api_keys: [sk-live-secret]  # fallback key\n", None, True),
        (ONBOARD_SECURITY, None, False),
        (ONBOARD_SECURITY, ["sk-in-config"], False),  # the empty {} entry wins, as in PicoClaw
        ("model_list:\n  gpt-5.4:0:\n    api_keys: [sk-other]\n", ["sk-in-config"], True),
        ("model_list:\n  claude-sonnet-4.6:0:\n    api_keys: []\n", None, False),
        (None, None, False),
    ],
)
def test_key_is_told_apart_without_the_key_leaving_the_host(security, config_keys, expected):
    entry = {"model_name": "claude-sonnet-4.6", "model": "claude-sonnet-4-6"}
    if config_keys:
        entry["api_keys"] = config_keys
    config = json.dumps({"agents": {"defaults": {"model_name": "claude-sonnet-4.6"}}, "model_list": [entry]})
    shown = masked(security) if security is not None else None
    assert "sk-" not in (shown or "")
    assert worker_config(config, shown).api_key is expected


def test_mask_keeps_keys_and_drops_every_value_and_comment():
    text = (
        "# sk-in-a-comment\nmodel_list:\n  m:0:\n    api_keys:\n    -   >-\n      sk-folded\n"
        "  'q:0': {api_keys: [sk-flow]}\nchannel_list:\n  telegram:\n    token: \"123:abc def\"\n"
    )
    shown = masked(text)
    assert "sk-" not in shown and "abc" not in shown and "123" not in shown
    assert yaml.safe_load(shown) == {"model_list": {"m:0": {"api_keys": ["x"]}, "q:0": "x"},
                                     "channel_list": {"telegram": {"token": "x"}}}


def test_unset_model_and_broken_config():
    assert worker_config(json.dumps({"agents": {"defaults": {"model_name": ""}}}), None).model is None
    assert worker_config("{not json", None).problem == "~/.picoclaw/config.json is not valid JSON"
    assert worker_config(None, None) is None


# --- the answer ---------------------------------------------------------------------------------


TRICKY_ANSWER = "I like \U0001f99e.\n\n\U0001f99e and this line\n" + PLAIN_BANNER
LOG_LINE = "08:21:30 WRN config pkg/config/config.go:120 > config file not found, using default config\n"


@pytest.mark.parametrize(
    "stdout, answer",
    [
        (PLAIN_BANNER + "\n\U0001f99e The disk is 42% full.\n", "The disk is 42% full."),
        (COLOUR_BANNER + LOG_LINE + "\n\U0001f99e two\nlines\n", "two\nlines"),
        (PLAIN_BANNER + "\n\U0001f99e " + TRICKY_ANSWER + "\n", TRICKY_ANSWER),
        ("\U0001f99e old format\n", "old format"),
        (PLAIN_BANNER + "plain answer\n", "plain answer"),
        (PLAIN_BANNER + "\n\U0001f99e \n", ""),
    ],
)
def test_answer_is_what_follows_the_first_lobster(stdout, answer):
    assert split_answer(stdout) == answer


def test_log_is_split_from_stderr():
    stderr = "Error: error processing message: boom\n" + LOG_MARKER + '\n{"level":"warn"}\n'
    assert split_log(stderr) == ("Error: error processing message: boom\n", '{"level":"warn"}\n')
    assert split_log("no log here\n") == ("no log here\n", "")
    assert split_log("x" + LOG_MARKER + "\n") == ("x" + LOG_MARKER + "\n", "")


def test_each_task_gets_its_own_session_and_removes_it():
    command = agent_command(30, task_id="abc123")
    assert "-s agent:main:pcf-abc123 " in command
    for path in session_files("pcf-abc123"):
        assert path.startswith(".picoclaw/workspace/sessions/agent_main_pcf-abc123.")
        assert path in command and "rm -f -- " in command
    named = agent_command(30, AgentOptions(session="triage"), task_id="abc123")
    assert "-s agent:main:triage " in named and "rm -f -- \"$HOME\"/.picoclaw/workspace" not in named
    assert "PICOCLAW_AGENTS_DEFAULTS_RESTRICT_TO_WORKSPACE=false" in agent_command(30, AgentOptions(unrestricted=True))
    assert "RESTRICT_TO_WORKSPACE" not in command
    assert "unset TZ" in command and "NO_COLOR=1" in command and "PICOCLAW_LOG_FILE" in command
    assert ".env" not in command  # the agent's tools must not find the key in their environment


@pytest.mark.parametrize("name", ["main", "MAIN", "pcf-1234", "a b", "x:y", "", "a" * 65, "../etc"])
def test_bad_session_names_are_refused(name):
    from fabfile.core.tasks import session_name

    with pytest.raises(UsageError):
        session_name(name)


# --- provisioning: merged, never replaced --------------------------------------------------------


CHOICE = ModelChoice("claude-sonnet-4.6", "anthropic", "claude-sonnet-4-6", "http://127.0.0.1:8000/v1", True)


def onboard_config():
    return {
        "version": 3,
        "agents": {"defaults": {"workspace": "/home/pi/.picoclaw/workspace", "restrict_to_workspace": True,
                                "model_name": "", "max_tokens": 32768}},
        "model_list": [
            {"model_name": "gpt-5.4", "provider": "openai", "model": "gpt-5.4", "api_base": "https://api.openai.com/v1"},
            {"model_name": "claude-sonnet-4.6", "provider": "anthropic", "model": "claude-sonnet-4-6",
             "api_base": "https://api.anthropic.com/v1"},
        ],
        "channels": {"telegram": {"enabled": False}},
    }


def test_model_is_selected_and_everything_else_kept():
    before = onboard_config()
    after = with_model(before, CHOICE)
    assert before == onboard_config()  # not changed in place
    assert after["agents"]["defaults"]["model_name"] == "claude-sonnet-4.6"
    assert after["model_list"][1]["api_base"] == "http://127.0.0.1:8000/v1"
    assert after["model_list"][0] == before["model_list"][0]
    assert after["channels"] == before["channels"]
    assert after["agents"]["defaults"]["max_tokens"] == 32768
    assert with_model(after, CHOICE) == after  # a second deploy changes nothing


def test_missing_model_entry_is_added():
    choice = ModelChoice("qwen3-local", "vllm", "qwen3-local", None, False)
    after = with_model(onboard_config(), choice)
    assert after["model_list"][-1] == {"model_name": "qwen3-local", "provider": "vllm", "model": "qwen3-local"}
    assert after["agents"]["defaults"]["restrict_to_workspace"] is False


def test_old_config_versions_are_left_alone():
    with pytest.raises(ProvisioningError, match="config version 1"):
        with_model({"version": 1}, CHOICE)


def test_key_goes_to_every_entry_of_the_name_and_other_keys_stay():
    security = yaml.safe_load(ONBOARD_SECURITY + "  other:0:\n    api_keys: [sk-other]\n")
    after = with_key(security, "claude-sonnet-4.6", 2, "sk-new")
    assert after["model_list"]["claude-sonnet-4.6:0"] == {"api_keys": ["sk-new"]}
    assert after["model_list"]["claude-sonnet-4.6:1"] == {"api_keys": ["sk-new"]}
    assert after["model_list"]["other:0"] == {"api_keys": ["sk-other"]}
    assert after["channel_list"] == {"discord": {"settings": {}}}
    assert with_key(after, "claude-sonnet-4.6", 2, "sk-new") == after
