#!/bin/sh
# Native-speed stand-in for the PicoClaw binary, for the benchmarks.
#
# The real PicoClaw is a Go binary that starts in a few milliseconds; the
# Python stand-in (picoclaw_standin.py) costs ~15 ms of CPU per start. The
# benchmark's simulated hosts share the controller's two CPUs, so with the
# Python stand-in they would measure Python's start-up, not picoclaw-fleet.
# This POSIX sh version (dash on Debian) prints what the Python stand-in
# (and the real binary) prints, in the same order and bytes:
#   every command: the banner (plain with NO_COLOR / TERM=dumb / --no-color,
#     else coloured), then the three TZ lines when TZ is set;
#   version: "🦞 picoclaw VERSION (git: COMMIT)", "  Build: ...", "  Go: ...";
#   agent -m TEXT: one WRN log line on stdout (or one JSON line appended to
#     $PICOCLAW_LOG_FILE instead), then "\n🦞 TEXT\n"; a leading ::sleep=S::
#     sleeps S seconds first; the user message and the answer are appended to
#     <workspace>/sessions/<key>.jsonl (agent:* and sk_v1_* keys are their own
#     session, every other key the shared one) and .meta.json is rewritten;
#   agent without -m (or -m ""): interactive mode, one answer per stdin line;
#   onboard: no prompt; writes a version-3 config.json and .security.yml (0600)
#     when there is no config, leaves an existing one as it is.
# Deliberately NOT done here, to stay cheap: no config.json or .security.yml is
# read, so there are no config, model or API-key checks and no errors for them
# (the Python stand-in has those); the workspace is $PICOCLAW_AGENTS_DEFAULTS_WORKSPACE
# or <home>/workspace, never the config's; no directive but ::sleep=S::; keys
# are not trimmed, and the shared session's meta keeps only the latest alias.
# External commands: `date` once per task, `awk` only for text that needs JSON
# escaping, `mkdir` only for a missing directory.
VERSION="0.0.0"
COMMIT="00000000"
BUILD_TIME="2026-06-13T16:19:35Z"
GO_VERSION="go1.27.3"
SHARED_SESSION="sk_v1_cb10fea2cfe7f7373a42cc19db45c88fb87caebad9d6295e89a00577b35d7cc1"
CALLER="github.com/sipeed/picoclaw/pkg/agent/pipeline_llm.go:315"
WARNING='Transient LLM error, retrying after backoff'
ERROR_CONSOLE='"API request failed:\n  Status: 529\n  Body:   {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"'
ALIASES='"agent:main:main",
    "agent:main:direct:cron",
    "agent:main:cli:direct:cron",
    "agent:main:cli:default:direct:cron",
    "agent:main:direct:direct",
    "agent:main:cli:direct:direct",
    "agent:main:cli:default:direct:direct"'
nl='
'

banner_plain() {
    printf '\r\n'\
'██████╗ ██╗ ██████╗ ██████╗  ██████╗██╗      █████╗ ██╗    ██╗\n'\
'██╔══██╗██║██╔════╝██╔═══██╗██╔════╝██║     ██╔══██╗██║    ██║\n'\
'██████╔╝██║██║     ██║   ██║██║     ██║     ███████║██║ █╗ ██║\n'\
'██╔═══╝ ██║██║     ██║   ██║██║     ██║     ██╔══██║██║███╗██║\n'\
'██║     ██║╚██████╗╚██████╔╝╚██████╗███████╗██║  ██║╚███╔███╔╝\n'\
'╚═╝     ╚═╝ ╚═════╝ ╚═════╝  ╚═════╝╚══════╝╚═╝  ╚═╝ ╚══╝╚══╝\n'\
' \r\n'
}

banner_color() {
    printf '\r\n'\
'\033[1;38;2;62;93;185m██████╗ ██╗ ██████╗ ██████╗ \033[1;38;2;213;70;70m ██████╗██╗      █████╗ ██╗    ██╗\n'\
'\033[1;38;2;62;93;185m██╔══██╗██║██╔════╝██╔═══██╗\033[1;38;2;213;70;70m██╔════╝██║     ██╔══██╗██║    ██║\n'\
'\033[1;38;2;62;93;185m██████╔╝██║██║     ██║   ██║\033[1;38;2;213;70;70m██║     ██║     ███████║██║ █╗ ██║\n'\
'\033[1;38;2;62;93;185m██╔═══╝ ██║██║     ██║   ██║\033[1;38;2;213;70;70m██║     ██║     ██╔══██║██║███╗██║\n'\
'\033[1;38;2;62;93;185m██║     ██║╚██████╗╚██████╔╝\033[1;38;2;213;70;70m╚██████╗███████╗██║  ██║╚███╔███╔╝\n'\
'\033[1;38;2;62;93;185m╚═╝     ╚═╝ ╚═════╝ ╚═════╝ \033[1;38;2;213;70;70m ╚═════╝╚══════╝╚═╝  ╚═╝ ╚══╝╚══╝\n'\
' \033[0m\r\n'
}

# json_escape TEXT: sets $esc to TEXT as a JSON string body, escaped like Go's
# encoding/json (awk only when TEXT holds a character that may need it).
json_escape() {
    case $1 in
    *[\"\\\<\>\&]* | *[![:print:]]*)
        esc=$(printf '%s\n' "$1" | awk '{
            o = ""; n = length($0)
            for (i = 1; i <= n; i++) {
                c = substr($0, i, 1)
                if (c == "\\") c = "\\\\"; else if (c == "\"") c = "\\\""
                else if (c == "\t") c = "\\t"; else if (c == "\r") c = "\\r"
                else if (c == "<") c = "\\u003c"; else if (c == ">") c = "\\u003e"
                else if (c == "&") c = "\\u0026"
                o = o c
            }
            printf "%s%s", (NR > 1 ? "\\n" : ""), o
        }')
        ;;
    *) esc=$1 ;;
    esac
}

home=${PICOCLAW_HOME:-$HOME/.picoclaw}

# answer TEXT: one task as PicoClaw's agent runs it: the log line, the session
# files, then the answer (the caller prints what follows it).
answer() {
    text=$1
    case $text in
    ::sleep=*::*)
        rest=${text#::sleep=}
        seconds=${rest%%::*}
        reply=${rest#*::}
        ;;
    *) seconds= reply=$text ;;
    esac
    now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    if [ -n "$PICOCLAW_LOG_FILE" ]; then
        log=$PICOCLAW_LOG_FILE
        case $log in "~/"*) log=$HOME/${log#"~/"} ;; esac
        case $log in */*) [ -d "${log%/*}" ] || mkdir -p "${log%/*}" ;; esac
        printf '{"level":"warn","component":"agent","error":%s,"reason":"server_error","retry":0,"backoff":"0s","time":"%s","caller":"%s","message":"%s"}\n' \
            "$ERROR_CONSOLE" "$now" "$CALLER" "$WARNING" >>"$log"
    else
        clock=${now#*T}
        printf '%s WRN agent %s > %s error=%s backoff=0s reason=server_error retry=0\n' \
            "${clock%Z}" "$CALLER" "$WARNING" "$ERROR_CONSOLE"
    fi
    [ -z "$seconds" ] || sleep "$seconds"
    save_session "$text" "$reply"
}

# save_session USER ANSWER: append both messages, rewrite the meta file.
save_session() {
    key=${session:-cli:default}
    json_escape "$key"
    case $key in
    [Aa][Gg][Ee][Nn][Tt]:* | [Ss][Kk]_[Vv]1_*) name=$key meta_key=$esc alias= ;;
    *) name=$SHARED_SESSION meta_key=$SHARED_SESSION alias=",$nl    \"$esc\"" ;;
    esac
    base=
    while :; do
        case $name in
        *[:/\\]*)
            base=$base${name%%[:/\\]*}_
            name=${name#*[:/\\]}
            ;;
        *) base=$base$name && break ;;
        esac
    done
    workspace=${PICOCLAW_AGENTS_DEFAULTS_WORKSPACE:-$home/workspace}
    case $workspace in "~/"*) workspace=$HOME/${workspace#"~/"} ;; esac
    dir=$workspace/sessions
    [ -d "$dir" ] || mkdir -p "$dir"
    json_escape "$1"
    user=$esc
    json_escape "$2"
    printf '{"role":"user","content":"%s","created_at":"%s"}\n{"role":"assistant","content":"%s","model_name":"claude-sonnet-4.6","created_at":"%s"}\n' \
        "$user" "$now" "$esc" "$now" >>"$dir/$base.jsonl"
    count=
    if [ -f "$dir/$base.meta.json" ]; then
        while read -r field value; do
            case $field in '"count":') count=$((${value%,} + 2)) && break ;; esac
        done <"$dir/$base.meta.json"
    fi
    if [ -z "$count" ]; then
        count=0
        while IFS= read -r _line; do count=$((count + 1)); done <"$dir/$base.jsonl"
    fi
    printf '{\n  "key": "%s",\n  "summary": "",\n  "skip": 0,\n  "count": %d,\n  "created_at": "%s",\n  "updated_at": "%s",\n  "scope": {\n    "version": 1,\n    "agent_id": "main",\n    "channel": "cli",\n    "account": "default",\n    "dimensions": [\n      "chat"\n    ],\n    "values": {\n      "chat": "direct:direct"\n    }\n  },\n  "aliases": [\n    %s%s\n  ]\n}' \
        "$meta_key" "$count" "$now" "$now" "$ALIASES" "$alias" >"$dir/$base.meta.json"
}

plain=
[ -z "$NO_COLOR" ] && [ "$TERM" != dumb ] || plain=1
for arg; do
    case $arg in --no-color | --no-color=true | --no-color=1) plain=1 ;; esac
done
if [ -n "$plain" ]; then banner_plain; else banner_color; fi
if [ -n "$TZ" ]; then
    printf 'TZ environment: %s\nZONEINFO environment: %s\n' "$TZ" "$ZONEINFO"
    if [ "$TZ" = UTC ] || [ "$TZ" = Local ] || [ -f "/usr/share/zoneinfo/$TZ" ] ||
        { [ -n "$ZONEINFO" ] && [ -f "$ZONEINFO/$TZ" ]; }; then
        printf 'Time zone loaded successfully: %s\n' "$TZ"
    else
        printf 'Error loading time zone: unknown time zone %s\n' "$TZ"
    fi
fi

rc=0
case "$1" in
version | v)
    printf '🦞 picoclaw %s (git: %s)\n  Build: %s\n  Go: %s\n' "$VERSION" "$COMMIT" "$BUILD_TIME" "$GO_VERSION"
    ;;
onboard | o)
    config=${PICOCLAW_CONFIG:-$home/config.json}
    dir=.
    case $config in */*) dir=${config%/*} ;; esac
    [ -d "$dir" ] || mkdir -p "$dir"
    if [ ! -e "$config" ]; then
        (
            umask 077
            printf '{\n  "session": {\n    "dimensions": [\n      "chat"\n    ],\n    "dm_scope": "per-channel"\n  },\n  "version": 3,\n  "agents": {\n    "defaults": {\n      "workspace": "%s",\n      "restrict_to_workspace": true,\n      "allow_read_outside_workspace": false,\n      "provider": "",\n      "model_name": "",\n      "max_tokens": 32768,\n      "max_tool_iterations": 50\n    }\n  },\n  "model_list": [\n    {\n      "model_name": "glm-4.7",\n      "provider": "zhipu",\n      "model": "glm-4.7",\n      "api_base": "https://open.bigmodel.cn/api/paas/v4"\n    },\n    {\n      "model_name": "gpt-5.4",\n      "provider": "openai",\n      "model": "gpt-5.4",\n      "api_base": "https://api.openai.com/v1"\n    },\n    {\n      "model_name": "claude-sonnet-4.6",\n      "provider": "anthropic",\n      "model": "claude-sonnet-4-6",\n      "api_base": "https://api.anthropic.com/v1"\n    },\n    {\n      "model_name": "deepseek-chat",\n      "provider": "deepseek",\n      "model": "deepseek-chat",\n      "api_base": "https://api.deepseek.com/v1"\n    }\n  ]\n}' \
                "$home/workspace" >"$config"
            printf 'model_list:\n  claude-sonnet-4.6:0: {}\n  deepseek-chat:0: {}\n  glm-4.7:0: {}\n  gpt-5.4:0: {}\n' \
                >"$dir/.security.yml"
        )
    fi
    [ -d "$home/workspace" ] || mkdir -p "$home/workspace"
    printf '\n🦞 picoclaw is ready!\n\nNext steps:\n  1. Add your API key to %s\n\n     Recommended:\n     - OpenRouter: https://openrouter.ai/keys (access 100+ models)\n     - Ollama:     https://ollama.com (local, free)\n\n     See README.md for 17+ supported providers.\n\n  2. Chat: picoclaw agent -m "Hello!"\n' \
        "$config"
    ;;
agent)
    shift
    message= session=
    while [ $# -gt 0 ]; do
        case $1 in
        -m | --message) message=$2 && shift 2 || { echo "Error: flag needs an argument: $1" >&2; exit 1; } ;;
        --message=*) message=${1#--message=} && shift ;;
        -m*) message=${1#-m} && message=${message#=} && shift ;;
        -s | --session) session=$2 && shift 2 || { echo "Error: flag needs an argument: $1" >&2; exit 1; } ;;
        --session=*) session=${1#--session=} && shift ;;
        --model) shift 2 || { echo "Error: flag needs an argument: --model" >&2; exit 1; } ;;
        *) shift ;;
        esac
    done
    if [ -n "$message" ]; then
        answer "$message"
        printf '\n🦞 %s\n' "$reply"
    else
        printf '🦞 Interactive mode (Ctrl+C to exit)\n\n'
        while read -r line || [ -n "$line" ]; do
            case $line in exit | quit) printf 'Goodbye!\n' && exit 0 ;; esac
            [ -n "$line" ] || continue
            answer "$line"
            printf '\n🦞 %s\n\n' "$reply"
        done
        printf '\nGoodbye!\n'
    fi
    ;;
*)
    printf 'Error: unknown command "%s" for "picoclaw"\n' "$1" >&2
    rc=1
    ;;
esac
exit $rc
