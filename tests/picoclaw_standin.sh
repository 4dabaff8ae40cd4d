#!/bin/sh
# Native-speed stand-in for the PicoClaw binary, for the benchmarks.
#
# The real PicoClaw is a Go binary that starts in a few milliseconds; the
# Python stand-in (picoclaw_standin.py) costs ~15 ms of CPU per start. The
# benchmark's simulated hosts share the controller's two CPUs, so with the
# Python stand-in they would measure Python's start-up, not picoclaw-fleet.
# This POSIX sh version (dash on Debian) honours the same CLI: `version`,
# `onboard` (asks before overwriting, like the real one), `agent -m TEXT`
# (prints TEXT; a leading `::sleep=S::` directive sleeps S seconds first).
VERSION="0.0.0"

case "$1" in
version)
    printf '%s\n' "🦞 picoclaw v$VERSION (native-speed stand-in for benchmarks)"
    ;;
onboard)
    dir="$HOME/.picoclaw"
    if [ -e "$dir/config.json" ]; then
        printf 'Config already exists at %s\nOverwrite? (y/n): ' "$dir/config.json"
        read -r answer || answer=
        [ "$answer" = y ] || { echo "Aborted."; exit 0; }
    fi
    mkdir -p "$dir/workspace" && chmod 700 "$dir"
    printf '%s\n' '{"agents": {"defaults": {"model": "stand-in"}}, "written_by": "picoclaw-standin onboard"}' \
        > "$dir/config.json"
    echo "🦞 picoclaw is ready!"
    ;;
agent)
    shift
    text= found=
    while [ $# -gt 0 ]; do
        case "$1" in
        -m | --message) text=$2 found=1; shift 2 || break ;;
        *) shift ;;
        esac
    done
    [ -n "$found" ] || { echo "usage: picoclaw agent -m TEXT" >&2; exit 2; }
    case "$text" in
    ::sleep=*::*)
        rest=${text#::sleep=}
        sleep "${rest%%::*}"
        text=${rest#*::}
        ;;
    esac
    printf '%s\n' "$text"
    ;;
*)
    echo "usage: picoclaw version | onboard | agent -m TEXT" >&2
    exit 2
    ;;
esac
exit 0
