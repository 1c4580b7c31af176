"""cloud-init's verdict, read from the serial console: the datasource it used and what it applied.

    want = expect_cloud_init(ctx, IsoFlavor.OPENNEBULA)
    checks = verify_cloud_init(vm.console(), want)   # VerificationError names what is missing

cloud-init reports on the console everything boot-test needs (as 22.4.2, Debian 12's, prints it):

- its last line: ``Cloud-init v. 22.4.2 finished at … Datasource DataSourceOpenNebula
  [seed=/dev/sr0][dsmode=net].  Up 132.64 seconds`` — ``DataSourceNone`` when it read no
  context (an OpenNebula CD it could not parse ends there too);
- the ``Net device info`` table of the init stage: ``| eth0 | True | 192.168.122.1 |
  255.255.255.0 | global | 02:00:c0:a8:7a:01 |``;
- the ``Authorized keys from … for user debian`` table of the final stage: key type, SHA-256
  of the key's base64 body as colon-separated hex (``?`` when it does not decode), options,
  comment;
- the host key fingerprints, ``256 SHA256:… root@boot-test-0 (ED25519)``, of the keys it made
  on the instance's first boot after setting the hostname;

and the getty prompt ``boot-test-0 login:``, when a serial getty runs, shows the hostname too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
from dataclasses import dataclass

from context.flavor import IsoFlavor
from context.model import ResolvedContext
from context.seed import HOSTNAME_KEYS, hostname, ssh_keys
from imagekit.errors import VerificationError

FINISHED = re.compile(r"Cloud-init v\. \S+ finished at .*?Datasource (\w+)")
LOGIN_PROMPT = re.compile(r"(?:^|\n)([A-Za-z0-9][-A-Za-z0-9.]*) login: ")
# cc_keys_to_console's "SSH HOST KEY FINGERPRINTS": ``256 SHA256:… root@boot-test-0 (ED25519)``.
# cc_ssh makes new host keys on an instance's first boot, after set_hostname: the comment is
# the hostname cloud-init set (a serial getty may never start on a loaded TCG host).
HOST_KEY_COMMENT = re.compile(r"\d+ SHA256:\S+ root@(\S+) \(\w+\)")
#: The datasource that must read each context medium.
DATASOURCES = {
    IsoFlavor.OPENNEBULA: "DataSourceOpenNebula",
    IsoFlavor.NOCLOUD: "DataSourceNoCloud",
    IsoFlavor.CONFIGDRIVE: "DataSourceConfigDrive",
}
_ETH_MAC = re.compile(r"ETH(\d+)_MAC\Z")
_KEY_TYPE = re.compile(r"(ssh-|ecdsa-|sk-)\S+\Z")


@dataclass(frozen=True)
class CloudInitExpectation:
    datasource: str  # e.g. "DataSourceOpenNebula"
    hostname: str  # what cloud-init sets; "" when the context names none
    nics: tuple[tuple[str, str], ...] = ()  # (MAC in lower case, IPv4)
    ssh_keys: tuple[str, ...] = ()  # authorized_keys lines


def expect_cloud_init(ctx: ResolvedContext, flavor: IsoFlavor) -> CloudInitExpectation:
    """What cloud-init must report for ``ctx`` delivered on a ``flavor`` medium."""
    variables = ctx.variables
    if flavor is IsoFlavor.OPENNEBULA:
        # The datasource takes the first of these keys present in context.sh, even when empty.
        name = next((variables[k] for k in HOSTNAME_KEYS if k in variables), "")
    else:
        name = hostname(ctx)  # what context.seed wrote as local-hostname
    nics = tuple(
        (mac.lower(), variables[f"ETH{m.group(1)}_IP"])
        for key, mac in sorted(variables.items())
        if (m := _ETH_MAC.match(key)) and mac and variables.get(f"ETH{m.group(1)}_IP")
    )
    return CloudInitExpectation(
        DATASOURCES[flavor], cloud_init_hostname(name), nics, tuple(ssh_keys(variables))
    )


def cloud_init_hostname(local_hostname: str) -> str:
    """The hostname cloud-init sets for a metadata ``local-hostname``: the first label, or
    ``ip-a-b-c-d`` for an IPv4 address (``DataSource.get_hostname``)."""
    try:
        ipaddress.IPv4Address(local_hostname)
    except ValueError:
        return local_hostname.split(".")[0]
    return "ip-" + local_hostname.replace(".", "-")


def key_fingerprint(body: str) -> str:
    """cloud-init's fingerprint of a key's base64 body: SHA-256 hex in colon pairs, or ``?``."""
    try:
        digest = hashlib.sha256(base64.b64decode(body)).hexdigest()
    except (binascii.Error, ValueError):
        return "?"
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def verify_cloud_init(console: str, want: CloudInitExpectation) -> list[str]:
    """Check cloud-init's console output against ``want``; the checks made, in words."""
    finished = FINISHED.search(console)
    if finished is None:
        raise VerificationError("cloud-init did not report that it finished", rule="boot-test.cloud-init")
    datasource = finished.group(1)
    if datasource != want.datasource:
        raise VerificationError(
            f"cloud-init used {datasource}, expected {want.datasource}: it did not read the context",
            rule="boot-test.datasource",
        )
    checks = [f"cloud-init datasource {datasource}"]
    flat = " ".join(console.split())  # table cells are padded; a row may be wrapped by the kernel
    if want.hostname:
        seen = sorted(set(shown_hostnames(console)))
        if seen != [want.hostname]:
            shown = ", ".join(map(repr, seen)) or "neither a login prompt nor host key fingerprints"
            raise VerificationError(
                f"expected hostname {want.hostname!r} (cloud-init), the console shows {shown}",
                rule="boot-test.hostname",
            )
        checks.append(f"hostname {want.hostname} (cloud-init)")
    for mac, ip in want.nics:
        if not re.search(
            rf"\| \S+ \| True \| {re.escape(ip)} \| [^|]* \| global \| {re.escape(mac)} \|", flat
        ):
            raise VerificationError(
                f"cloud-init did not configure {ip} on the NIC {mac}", rule="boot-test.nic"
            )
        checks.append(f"{mac} {ip} (cloud-init)")
    for key in want.ssh_keys:
        if not _key_listed(key, flat):
            raise VerificationError(
                f"cloud-init did not install the SSH key {key[:60]!r}", rule="boot-test.ssh"
            )
    if want.ssh_keys:
        checks.append(f"{len(want.ssh_keys)} SSH key(s) (cloud-init)")
    return checks


def shown_hostnames(console: str) -> list[str]:
    """The hostnames on the console: getty's login prompts and the comments of host keys."""
    return LOGIN_PROMPT.findall(console) + HOST_KEY_COMMENT.findall(console)


def _key_listed(line: str, flat: str) -> bool:
    """Whether the authorized_keys ``line`` is a row of cloud-init's fingerprint table."""
    tokens = line.split()
    at = next((i for i, t in enumerate(tokens) if _KEY_TYPE.match(t)), None)
    if at is None or at + 1 >= len(tokens):
        return False
    kind, body, comment = tokens[at], tokens[at + 1], " ".join(tokens[at + 2 :]) or "-"
    fingerprint = key_fingerprint(body)
    row = rf"\| {re.escape(kind)} \| {re.escape(fingerprint)} \| [^|]* \| "
    # A body that does not decode shows as "?": the comment tells such keys apart.
    return re.search(row + (re.escape(comment) + r" \|" if fingerprint == "?" else ""), flat) is not None
