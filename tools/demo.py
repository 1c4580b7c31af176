"""`make demo`: the whole pipeline on the shipped defaults, each step a real CLI call.

recipe → image (+ manifest) → boot-test with a context ISO → signed marketplace metadata,
registered in a local registry → the site's policy check and a verified download into the image
cache → contextualization of a VM template (context.sh + ISO) → two VMs from ``marketplace:demo``
on one virtual network (``imagekit vm``), shut down cleanly, ending with ``vm list``. Each step
prints its time.
Outputs land in out/demo/; the state directory is out/demo/state so the demo never touches
the user's own state.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "out" / "demo"
IMAGEKIT = REPO / ".venv" / "bin" / "imagekit"


_STEP_STARTED: list[float] = []


def banner(text: str) -> None:
    """Start a step; the previous one's time is printed first."""
    now = time.monotonic()
    if _STEP_STARTED:
        print(f"   (step took {now - _STEP_STARTED[-1]:.1f} s)", flush=True)
    _STEP_STARTED.append(now)
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def imagekit(*args: str, stdout: Path | None = None) -> None:
    argv = [str(IMAGEKIT), "--state", str(OUT / "state"), *args]
    print("$ " + shlex.join(["imagekit", *argv[1:]]), flush=True)
    if stdout is None:
        subprocess.run(argv, check=True)
    else:
        with stdout.open("wb") as fh:
            subprocess.run(argv, check=True, stdout=fh)


@contextlib.contextmanager
def registry(data: Path) -> Iterator[str]:
    """A local registry (`imagekit market serve`) for the demo's lifetime."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    argv = [str(IMAGEKIT), "market", "serve", "--data", str(data), "--port", str(port)]
    print("$ " + shlex.join(["imagekit", *argv[1:]]) + " &", flush=True)
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the registry did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def network_exists(template: Path) -> bool:
    """The demo keeps its state between runs: create each network only once."""
    name = next(
        line.split("=", 1)[1].strip().strip('"')
        for line in template.read_text().splitlines()
        if line.strip().upper().startswith("NAME")
    )
    argv = [str(IMAGEKIT), "--state", str(OUT / "state"), "net", "show", name]
    return subprocess.run(argv, capture_output=True).returncode == 0


def make_demo_signer(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed endorser certificate for the demo's metadata."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "imagekit demo endorser"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "demo@imagekit.invalid"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("demo@imagekit.invalid")]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "endorser.pem", directory / "endorser.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


DEMO_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l1GKJl demo"
CLOUD_NET = """NAME = "demo-lan"
TYPE = "RANGED"
NETWORK_ADDRESS = "10.66.0.0"
NETWORK_SIZE = "C"
NETWORK_MASK = "255.255.255.0"
GATEWAY = "10.66.0.254"
"""
PEER_SCRIPT = """#!/bin/bash
# INIT_SCRIPT: says on the console whether PEER_IP answers on TCP port 22 (sshd).
. ./context.sh
[ -n "$PEER_IP" ] || exit 0
(
  for _ in $(seq 1 400); do
    if timeout 3 bash -c "exec 3<>/dev/tcp/$PEER_IP/22" 2>/dev/null; then
      echo "IMAGEKIT-DEMO-PEER-REACHED $IP -> $PEER_IP" > /dev/ttyS0; exit 0
    fi
    sleep 2
  done
) > /dev/null 2>&1 &
"""


def vm_template(name: str, peer: str = "") -> str:
    peer_line = f',\n  PEER_IP = "{peer}"' if peer else ""
    return f"""NAME = "{name}"
MEMORY = 512
DISK = [ SOURCE = "marketplace:demo" ]
NIC = [ NETWORK = "demo-lan" ]
CONTEXT = [
  NETWORK = "YES",
  SET_HOSTNAME = "$NAME",
  IP = "$NIC[IP, NETWORK=\\"demo-lan\\"]",
  GATEWAY = "$NETWORK[GATEWAY, NETWORK=\\"demo-lan\\"]",
  SSH_PUBLIC_KEY = "{DEMO_KEY}",
  FILES = "peer.sh",
  INIT_SCRIPTS = "peer.sh"{peer_line} ]
"""


def imagekit_json(*args: str) -> object:
    argv = [str(IMAGEKIT), "--state", str(OUT / "state"), *args]
    print("$ " + shlex.join(["imagekit", *argv[1:]]), flush=True)
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)


def run_vms(policy: Path) -> None:
    """The cloud core: two VMs from the verified, cached marketplace image (the policy is checked
    again at each `vm create`) on one network; the first reaches the second."""
    banner("7. Run VMs from marketplace:demo: two on one virtual network (embedded QEMU core, TCG)")
    cloud = OUT / "cloud"
    cloud.mkdir(exist_ok=True)
    (cloud / "demo-lan.net").write_text(CLOUD_NET)
    (cloud / "peer.sh").write_text(PEER_SCRIPT)
    if not network_exists(cloud / "demo-lan.net"):
        imagekit("net", "create", str(cloud / "demo-lan.net"))
    step = time.monotonic()
    (cloud / "vm-b.one").write_text(vm_template("vm-b"))
    b = imagekit_json("vm", "create", str(cloud / "vm-b.one"), "--policy", str(policy), "--json")
    assert isinstance(b, dict)
    (cloud / "vm-a.one").write_text(vm_template("vm-a", peer=b["ips"][0]))
    a = imagekit_json("vm", "create", str(cloud / "vm-a.one"), "--policy", str(policy), "--json")
    assert isinstance(a, dict)
    print(f"   both created and started in {time.monotonic() - step:.1f} s", flush=True)
    imagekit("vm", "list")
    console = Path(a["directory"]) / "serial.log"
    print(f"   waiting for vm-a to reach vm-b ({b['ips'][0]}) — TCG boots take minutes…", flush=True)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        found = next((line for line in text.splitlines() if "IMAGEKIT-DEMO-PEER-REACHED" in line), "")
        if found:
            print(f"   {found.strip()}  ({time.monotonic() - step:.0f} s after create)", flush=True)
            break
        time.sleep(5)
    else:
        print("   vm-a did not report reaching vm-b in 30 min; see `imagekit vm log`", flush=True)
    for vm in (a, b):
        imagekit("vm", "shutdown", str(vm["id"]), "--timeout", "300")
    imagekit("vm", "list")


@contextlib.contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """A plain HTTP server for ``directory``: the demo's stand-in for an image mirror."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def site_download(images: Path) -> Path:
    """5b. The site side: judge the demo image's endorsements, then a verified download.

    The entry's location (images.example.org) is not reachable here, so the site policy lists
    a local mirror serving out/demo/images; plain http is allowed because the entry carries
    SHA-256/SHA-512 checksums that the signature covers.
    """
    banner("5b. Site: policy check, then a verified download of the demo image into the cache")
    with file_server(images) as mirror:
        policy = OUT / "policy.cfg"
        policy.write_text(
            "[endorsers]\nwhitelistendorsers =\n    demo@imagekit.invalid\n"
            f"[download]\nschemes = https http\nmirrors =\n    {mirror}\nretries = 0\ntimeout = 10\n"
        )
        print(policy.read_text(), end="")
        imagekit("market", "policy", "check", "demo", "--policy", str(policy))
        imagekit("market", "download", "demo", "--policy", str(policy), "-o", str(OUT / "downloaded.qcow2"))
        imagekit("market", "download", "demo", "--policy", str(policy))  # cached: policy re-checked only
        imagekit("market", "cache", "list")
    return policy


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    try:
        banner("1. Recipes: validate what ships in recipes/")
        recipes = sorted(str(p) for p in (REPO / "recipes").rglob("*") if p.suffix in (".appl", ".tdl"))
        imagekit("recipe", "validate", *recipes)

        banner("2. Build the default recipe (Debian 12 cloud, TDL)")
        imagekit("build", str(REPO / "recipes" / "debian-12-cloud.tdl"), "-o", str(OUT / "images"))
        image = OUT / "images" / "debian-12-cloud.qcow2"
        manifest = OUT / "images" / "debian-12-cloud.manifest.json"

        banner("3. Boot it under QEMU with a context ISO; wait for the agent's report")
        imagekit("boot-test", str(image), "--firmware", "uefi")

        banner("4. Marketplace: describe, sign and verify the image's metadata")
        cert, key = make_demo_signer(OUT)
        imagekit(
            "market", "metadata", "create", "--manifest", str(manifest),
            "--location", "http://images.example.org/debian-12-cloud.qcow2",
            "--valid", "30", "--tag", "demo", "-o", str(OUT / "metadata.xml"),
        )  # fmt: skip
        imagekit("market", "metadata", "sign", str(OUT / "metadata.xml"), "--cert", str(cert),
                 "--key", str(key), "-o", str(OUT / "metadata.signed.xml"))  # fmt: skip
        imagekit("market", "metadata", "verify", str(OUT / "metadata.signed.xml"))
        imagekit("market", "metadata", "show", str(OUT / "metadata.signed.xml"))

        banner("5. Registry: upload, the site's policy (pending until accepted), list")
        with registry(OUT / "market") as endpoint:
            os.environ["IMAGEKIT_MARKET"] = endpoint
            imagekit("market", "upload", str(OUT / "metadata.signed.xml"))
            data = ["--data", str(OUT / "market")]
            pending = subprocess.run(
                [str(IMAGEKIT), "market", "pending", "list", *data, "--json"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            for entry in json.loads(pending):
                imagekit("market", "pending", "accept", entry["pending_id"][:12], *data)
            imagekit("market", "list")
            imagekit("market", "endorsers")
            policy = site_download(image.parent)

            banner("6. Contextualization: networks, a VM template, context.sh and ISO")
            examples = REPO / "etc" / "examples"
            for net in sorted(examples.glob("*.net")):
                if not network_exists(net):
                    imagekit("net", "create", str(net))
            imagekit("net", "list")
            vm = [
                str(examples / "vm-demo.one"),
                "--user", str(examples / "alice.user"),
                "--image", str(examples / "debian.image"),
            ]  # fmt: skip
            imagekit("context", "render", *vm, "-o", str(OUT / "context.sh"))
            print((OUT / "context.sh").read_text(), end="")
            imagekit("context", "iso", *vm, "-o", str(OUT / "context.iso"))

            run_vms(policy)
    except subprocess.CalledProcessError as exc:
        print(f"\ndemo failed at: {shlex.join(exc.cmd)} (exit {exc.returncode})", file=sys.stderr)
        return 1
    banner(f"Done in {time.monotonic() - start:.0f} s. Outputs in {os.path.relpath(OUT)}/")
    for path in sorted(OUT.rglob("*")):
        if path.is_file() and "state" not in path.parts:
            print(f"  {os.path.relpath(path)}  ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
