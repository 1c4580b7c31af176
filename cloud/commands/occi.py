"""``imagekit occi``: OpenNebula 1.4's ``occi-compute``, ``occi-network`` and ``occi-storage``.

imagekit occi compute create compute.xml      # <COMPUTE><NAME/><INSTANCE_TYPE/><STORAGE/>…
imagekit occi compute list | show ID | delete ID
imagekit occi compute update state.xml        # <COMPUTE><ID>7</ID><STATE>stopped</STATE></COMPUTE>
imagekit occi network create net.xml          # <NIC><NAME/><ADDRESS/><SIZE/></NIC>
imagekit occi storage create disk.xml         # <DISK><NAME/><URL>/path/image.qcow2</URL></DISK>

The server is ``--url`` or ``OCCI_URL``; credentials ``--username``/``--password`` or
``OCCI_USER``/``OCCI_PASSWORD``; ``--ca FILE`` trusts a private CA for HTTPS. The answer's XML
is printed; a refusal is a one-line error with the server's message.
"""

from __future__ import annotations

import argparse
import ssl
import sys
from pathlib import Path

import httpx

from imagekit import environment
from imagekit.errors import InputError, NetworkError

KINDS = ("compute", "network", "storage")
TIMEOUT = httpx.Timeout(60.0, write=None)


def register(parser: argparse.ArgumentParser) -> None:
    kinds = parser.add_subparsers(dest="occi_kind", metavar="RESOURCE")
    for kind in KINDS:
        verbs = kinds.add_parser(kind, help=f"occi-{kind}: {kind} resources").add_subparsers(
            dest="occi_verb", metavar="VERB"
        )
        create = verbs.add_parser("create", help=f"create a {kind} from an OCCI XML file")
        create.add_argument("file", type=Path, metavar="XML", help=f"the {kind} in OCCI 1.4 XML")
        verbs.add_parser("list", help=f"list the {kind} pool")
        for verb in ("show", "delete"):
            verbs.add_parser(verb, help=f"{verb} one {kind}").add_argument(
                "id", metavar="ID", help=f"the {kind} id"
            )
        if kind == "compute":
            update = verbs.add_parser("update", help="change a compute's STATE (ID and STATE in the XML)")
            update.add_argument("file", type=Path, metavar="XML", help="<COMPUTE> with ID and STATE")
        for sub in verbs.choices.values():
            _connection_options(sub)
            sub.set_defaults(func=cmd_occi)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    env = environment.current()
    parser.add_argument("--url", default=env.occi_url, help="server URL (env OCCI_URL)")
    parser.add_argument("--username", default=env.occi_user, help="user (env OCCI_USER)")
    parser.add_argument("--password", default=env.occi_password, help="(env OCCI_PASSWORD)")
    parser.add_argument("--ca", type=Path, metavar="PEM", help="trust this CA for HTTPS")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise InputError(err.strerror or "cannot read", where=str(path)) from None


def _element(document: bytes, name: str, where: Path) -> str:
    from cloud.occi.xml import parse_document
    from imagekit.httperror import HttpError

    try:
        root = parse_document(document, "COMPUTE" if name == "ID" else "DISK")
    except HttpError as err:
        raise InputError(err.message, where=str(where)) from None
    text = (root.findtext(name) or "").strip()
    if not text:
        raise InputError(f"{root.tag}/{name} is missing", where=str(where))
    return text


def _request(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    kind, verb = args.occi_kind, args.occi_verb
    if verb == "list":
        return client.get(f"/{kind}")
    if verb in ("show", "delete"):
        return client.request("GET" if verb == "show" else "DELETE", f"/{kind}/{args.id}")
    body = _read(args.file)
    if verb == "update":
        return client.put(f"/compute/{_element(body, 'ID', args.file)}", content=body)
    if kind != "storage":
        return client.post(f"/{kind}", content=body, headers={"Content-Type": "application/xml"})
    image = Path(_element(body, "URL", args.file).removeprefix("file://"))
    if not image.is_file():
        raise InputError("DISK/URL: no such image file", where=str(image))
    with open(image, "rb") as upload:
        files = {"file": (image.name, upload, "application/octet-stream")}
        return client.post("/storage", data={"occixml": body.decode()}, files=files)


def cmd_occi(args: argparse.Namespace) -> int:
    if not args.occi_verb:
        raise InputError(f"give a verb: imagekit occi {args.occi_kind} create|list|show|delete")
    if not args.url:
        raise InputError("no server: give --url or set OCCI_URL")
    if not args.username or args.password is None:
        raise InputError("no credentials: give --username/--password or set OCCI_USER/OCCI_PASSWORD")
    verify: ssl.SSLContext | bool = True
    if args.ca:
        try:
            verify = ssl.create_default_context(cafile=args.ca)
        except (OSError, ssl.SSLError) as err:
            raise InputError(f"not a CA certificate file: {err}", where=str(args.ca)) from None
    auth = httpx.BasicAuth(args.username, args.password)
    try:
        with httpx.Client(
            base_url=args.url.rstrip("/"), auth=auth, verify=verify, timeout=TIMEOUT
        ) as client:
            response = _request(client, args)
    except httpx.HTTPError as err:
        raise NetworkError(f"{args.url}: {err or type(err).__name__}") from None
    if response.status_code >= 400:
        raise InputError(f"{response.status_code}: {response.text.strip()[:300]}")
    if response.content:
        sys.stdout.write(response.text.rstrip("\n") + "\n")
    return 0
