#!/usr/bin/env python3
"""``make demo``: the whole picoclaw-fleet story on a throwaway fleet on this machine.

What it builds (all on 127.0.0.1, all removed at the end):
  * a private sshd with three simulated hosts -- one throwaway Unix user each
    (the harness's `Testbed`, as the tests use it);
  * a local stand-in for GitHub's releases API publishing the *stand-in*
    picoclaw (a small Python script that echoes its task), not the real binary
    (the harness's `ReleaseServer`);
  * a private HOME with an ~/.ssh/config naming the three hosts, a fleet
    config, a download cache and a dummy API key.

Then it runs the real CLI, one step at a time, printing each command and its
real output: init, status, deploy, dispatch to one host, a broadcast, a
batch, teardown. Whatever happens -- a failing step, Ctrl-C, SIGTERM -- the
users, their processes, the sshd and every file it made are removed before
it exits. Needs root (it creates Unix users), like the test suite.
"""

import json
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.loopback import guarded_env, install_loopback_guard  # noqa: E402  (the repo root must be importable first)
from harness.release_server import ReleaseServer  # noqa: E402
from harness.standin import standin_archive  # noqa: E402
from harness.testbed import Testbed  # noqa: E402

FAB = str(Path(sys.executable).with_name("fab"))
HOSTS = ("pi-1", "pi-2", "pi-3")
STANDIN_VERSION = "0.2.0"
#: goreleaser's arch words, so whatever `uname -m` says here, the release has a build for it.
RELEASE_ARCHES = ("Linux_x86_64", "Linux_arm64", "Linux_riscv64", "Linux_armv7")
DUMMY_KEY = "demo-dummy-key-not-a-real-secret"
#: Generous: a hung step must not hang `make demo` forever, a slow machine must not fail it.
STEP_TIMEOUT = 600

#: A JSON Lines task file, as `fab batch --tasks-file` reads it (plain lines work too).
BATCH = [
    {"id": "disk", "task": "How full is the root filesystem?"},
    {"id": "uptime", "task": "How long has this board been up?"},
    {"id": "temp", "task": "Is the CPU running hot?"},
    {"id": "logs", "task": "Any errors in the last hour of logs?"},
]


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived: unwind to the cleanup like Ctrl-C does."""


def say(text=""):
    """Demo narration, flushed so it interleaves correctly with the CLI's own output."""
    print(text, flush=True)


def banner(number, total, title, argv):
    """The heading of one step and the command exactly as a user would type it."""
    say()
    say(f"==> [{number}/{total}] {title}")
    say("$ " + shlex.join(argv))


def run_step(argv, env):
    """Run the real CLI with its output going straight to the terminal; raise if it fails."""
    proc = subprocess.Popen([FAB, *argv[1:]], cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    try:
        code = proc.wait(timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"step hung: {shlex.join(argv)} still ran after {STEP_TIMEOUT}s") from None
    finally:
        stop_process(proc)
    if code != 0:
        raise RuntimeError(f"step failed: {shlex.join(argv)} exited {code}")


def stop_process(proc):
    """End a step's process (if still running) so it cannot outlive the demo."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def build_world(bed, server, workdir):
    """Hosts, release, private HOME, ~/.ssh/config, environment: the fleet a sysadmin would have."""
    hosts = bed.add_hosts(len(HOSTS), prefix="pi")
    server.publish(
        "sipeed/picoclaw",
        f"v{STANDIN_VERSION}",
        {f"picoclaw_{arch}.tar.gz": standin_archive(STANDIN_VERSION, arch) for arch in RELEASE_ARCHES},
    )
    home = workdir / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    ssh_config = "".join(
        f"Host {name}\n  HostName 127.0.0.1\n  Port {host.port}\n  User {host.user}\n"
        f"  IdentityFile {bed.client_key}\n"
        for name, host in zip(HOSTS, hosts)
    )
    (home / ".ssh" / "config").write_text(ssh_config)
    env = guarded_env()
    for name in ("SSH_AUTH_SOCK", "PICOCLAW_FLEET_CONFIG", "PROVIDER", "API_KEY_ENV", "GITHUB_TOKEN"):
        env.pop(name, None)
    env.update(
        HOME=str(home),
        XDG_CACHE_HOME=str(workdir / "cache"),
        PICOCLAW_FLEET_CONFIG=str(workdir / "fleet.json"),
        ANTHROPIC_API_KEY=DUMMY_KEY,
    )
    return hosts, ssh_config, env


def point_at_local_release_server(config_path, url):
    """The one edit a sysadmin would not make: fetch releases from the local stand-in server."""
    data = json.loads(config_path.read_text())
    data.setdefault("defaults", {})["github_api"] = url
    config_path.write_text(json.dumps(data, indent=2) + "\n")


def tell_the_setup(bed, server, hosts, ssh_config, env, workdir):
    """Say what was built, so the output can be read without this file."""
    say("picoclaw-fleet demo: a throwaway fleet on 127.0.0.1, removed when the demo ends")
    say(f"  sshd (ours)        127.0.0.1:{bed.port}, files in {bed.workdir}")
    for name, host in zip(HOSTS, hosts):
        say(f"  simulated host     {name} = Unix user {host.user} (home {host.home})")
    say(f"  release server     {server.url} publishing v{STANDIN_VERSION} of the STAND-IN picoclaw,")
    say("                     a small script that echoes its task -- not the real binary, no LLM is called")
    say(f"  private HOME       {env['HOME']} (your ~/.ssh and ~/.openclaw are not touched)")
    say(f"  fleet config       {env['PICOCLAW_FLEET_CONFIG']}")
    say("  API key            ANTHROPIC_API_KEY set to a dummy value")
    say("  ~/.ssh/config of the private HOME, as a sysadmin would have it:")
    for line in ssh_config.splitlines():
        say("    " + line)


def run_story(env, server, workdir):
    """The steps, each a real command; stops at the first that fails."""
    batch_file = workdir / "tasks.jsonl"
    batch_file.write_text("".join(json.dumps(task) + "\n" for task in BATCH))
    steps = [
        ("init: add every host of ~/.ssh/config to the fleet config", ["fab", "init", "--from-ssh-config"]),
        ("status: reachable, arch, PicoClaw version, load", ["fab", "status"]),
        ("deploy: install the stand-in picoclaw from the local release server", ["fab", "deploy"]),
        ("dispatch: one task to one host", ["fab", "dispatch", "--host", "pi-2", "--task", "What is the load on this board?"]),
        ("broadcast: the same task to every host", ["fab", "dispatch", "--all", "--task", "Report free disk space"]),
        ("batch: a small task list spread over the fleet", ["fab", "batch", "--tasks-file", str(batch_file)]),
        ("teardown: remove PicoClaw and its .env from every host", ["fab", "teardown", "--yes", "--purge"]),
    ]
    for number, (title, argv) in enumerate(steps, start=1):
        banner(number, len(steps), title, argv)
        if argv[1] == "batch":
            say(f"(the task file, JSON Lines: {batch_file.name})")
            for line in batch_file.read_text().splitlines():
                say("  " + line)
        run_step(argv, env)
        if argv[1] == "init":
            point_at_local_release_server(Path(env["PICOCLAW_FLEET_CONFIG"]), server.url)
            say(f"(demo only: set defaults.github_api to {server.url}, the local release server)")


def raise_interrupted(signum, frame):
    """SIGTERM/SIGHUP handler (a closed terminal, a killed CI job): leave through the cleanup, like Ctrl-C."""
    raise Interrupted(f"signal {signum}")


def cleanup(bed, server, workdir):
    """Remove everything the demo made; safe to call after a partial start."""
    say()
    say("==> cleanup: stopping sshd and the release server, removing the demo users and files")
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        server.stop()
        bed.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    say("    done: no demo user, process or file is left")


def main():
    """Build, run the story, always clean up; exit 0 only when every step worked."""
    if not Path(FAB).exists():
        say(f"{FAB} is missing: run the demo with `make demo`, which sets up the venv first")
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupted)
    install_loopback_guard()
    bed, server = Testbed(), ReleaseServer()
    workdir = Path(tempfile.mkdtemp(prefix="picoclaw-demo-"))
    code = 1
    try:
        bed.start()
        server.start()
        hosts, ssh_config, env = build_world(bed, server, workdir)
        tell_the_setup(bed, server, hosts, ssh_config, env, workdir)
        run_story(env, server, workdir)
        say()
        say("demo complete: every step above ran the real CLI against the throwaway fleet")
        code = 0
    except (KeyboardInterrupt, Interrupted):
        say()
        say("demo interrupted")
        code = 130
    except RuntimeError as exc:
        say()
        say(f"demo stopped: {exc}")
    finally:
        cleanup(bed, server, workdir)
    return code


if __name__ == "__main__":
    sys.exit(main())
