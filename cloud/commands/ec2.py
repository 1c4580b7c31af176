"""``imagekit ec2``: OpenNebula 1.4's econe-* tools against any EC2 Query endpoint.

imagekit ec2 upload disk.qcow2                       # Success: ImageId ami-00000001
imagekit ec2 register ami-00000001                   # or an absolute path / marketplace:ID
imagekit ec2 describe-images [-H]
imagekit ec2 run-instances -t m1.small [-k KEY] [-f user-data.sh] ami-00000001
imagekit ec2 describe-instances [-H]
imagekit ec2 terminate-instances i-00000007

Every verb takes ``-K ACCESS_KEY -S SECRET_KEY -U URL`` (else ``EC2_ACCESS_KEY``,
``EC2_SECRET_KEY``, ``EC2_URL``; the URL defaults to econe's ``http://localhost:4567``).
Listings are econe's fixed-width tables; ``-H`` prints the column headers above them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cloud.ec2.client import Endpoint, ec2_client, refusals, upload_image
from imagekit import environment
from imagekit.errors import InputError

IMAGES = "%-10s  %-13s  %-10s  %-10s  %s"
INSTANCES = "%-10s  %-12s  %-13s  %-13s  %-15s  %s"
LAUNCHED = "%-10s  %-13s  %-12s  %s"
RULE = "-" * 78


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="ec2_command", metavar="SUBCOMMAND")

    def verb(
        name: str, help_text: str, func: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.add_argument("-K", "--access-key", metavar="KEY", help="access key (else $EC2_ACCESS_KEY)")
        command.add_argument(
            "-S", "--secret-key", metavar="SECRET", help="secret key (else $EC2_SECRET_KEY)"
        )
        command.add_argument(
            "-U", "--url", metavar="URL", help="endpoint (else $EC2_URL, http://localhost:4567)"
        )
        command.add_argument("-H", "--headers", action="store_true", help="print column headers")
        command.set_defaults(func=func)
        return command

    verb("upload", "upload an image file (econe's UploadImage)", cmd_upload).add_argument(
        "image", type=Path, metavar="IMAGE-PATH", help="the image file"
    )
    verb(
        "register", "register an uploaded image id, marketplace:ID|TAG or an entry URL", cmd_register
    ).add_argument(
        "location", metavar="IMAGE", help="ami-… of an upload, marketplace:ID|TAG or an entry URL"
    )
    verb("describe-images", "list your images", cmd_describe_images)
    run = verb("run-instances", "start instances of an image", cmd_run_instances)
    run.add_argument("image", metavar="IMAGE-ID", help="a registered image (ami-…)")
    run.add_argument(
        "-t", "--type", default="m1.small", metavar="TYPE", help="instance type (default m1.small)"
    )
    run.add_argument("-k", "--key", metavar="KEYNAME", help="an imported key pair")
    run.add_argument("-n", "--count", type=int, default=1, metavar="N", help="how many (default 1)")
    data = run.add_mutually_exclusive_group()
    data.add_argument("-d", "--user-data", metavar="TEXT", help="user data")
    data.add_argument("-f", "--user-data-file", type=Path, metavar="FILE", help="user data from FILE")
    verb("describe-instances", "list your instances", cmd_describe_instances)
    verb("terminate-instances", "terminate instances", cmd_terminate_instances).add_argument(
        "instances", nargs="+", metavar="INSTANCE-ID", help="instances (i-…)"
    )


def _endpoint(args: argparse.Namespace) -> Endpoint:
    return Endpoint.resolve(
        access_key=args.access_key,
        secret_key=args.secret_key,
        url=args.url,
        environ=environment.current().named(),
    )


def _ask(args: argparse.Namespace, operation: str, **request: Any) -> Any:
    """boto3's ``operation`` (``"describe_images"``…) against the endpoint; refusals as InputError."""
    endpoint = _endpoint(args)
    with refusals(endpoint):
        return getattr(ec2_client(endpoint), operation)(**request)


def _table(
    args: argparse.Namespace, fmt: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    if args.headers:
        print(fmt % tuple(headers))
        print(RULE)
    for row in rows:
        print(fmt % tuple("-" if value is None else value for value in row))


def cmd_upload(args: argparse.Namespace) -> int:
    print(f"Success: ImageId {upload_image(_endpoint(args), args.image)}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    answer = _ask(args, "register_image", ImageLocation=args.location, Name=args.location)
    print(f"Success: ImageId {answer['ImageId']}")
    return 0


def cmd_describe_images(args: argparse.Namespace) -> int:
    images = _ask(args, "describe_images")["Images"]
    rows = [
        (
            i.get("OwnerId"),
            i["ImageId"],
            i.get("State"),
            "public" if i.get("Public") else "private",
            i.get("ImageLocation"),
        )
        for i in images
    ]
    _table(args, IMAGES, ("Owner", "ImageId", "Status", "Visibility", "Location"), rows)
    return 0


def _user_data(args: argparse.Namespace) -> str | None:
    if args.user_data_file is None:
        return str(args.user_data) if args.user_data is not None else None
    try:
        return Path(args.user_data_file).read_text()
    except OSError as err:
        raise InputError(err.strerror or "cannot read", where=str(args.user_data_file)) from None


def cmd_run_instances(args: argparse.Namespace) -> int:
    request: dict[str, Any] = {"ImageId": args.image, "InstanceType": args.type}
    request.update(MinCount=args.count, MaxCount=args.count)
    if args.key:
        request["KeyName"] = args.key
    if (user_data := _user_data(args)) is not None:
        request["UserData"] = user_data  # boto3 base64-encodes it
    reservation = _ask(args, "run_instances", **request)
    rows = [
        (reservation.get("OwnerId"), i["ImageId"], i["InstanceId"], i["InstanceType"])
        for i in reservation["Instances"]
    ]
    _table(args, LAUNCHED, ("Owner", "ImageId", "InstanceId", "InstanceType"), rows)
    return 0


def cmd_describe_instances(args: argparse.Namespace) -> int:
    reservations = _ask(args, "describe_instances")["Reservations"]
    rows = [
        (
            r.get("OwnerId"),
            i["InstanceId"],
            i.get("ImageId"),
            i["State"]["Name"],
            i.get("PrivateIpAddress"),
            i.get("InstanceType"),
        )
        for r in reservations
        for i in r["Instances"]
    ]
    _table(args, INSTANCES, ("Owner", "Id", "ImageId", "State", "IP", "Type"), rows)
    return 0


def cmd_terminate_instances(args: argparse.Namespace) -> int:
    changes = _ask(args, "terminate_instances", InstanceIds=args.instances)["TerminatingInstances"]
    for change in changes:
        print(f"Success: Terminating {change['InstanceId']} in {change['PreviousState']['Name']} state")
    return 0
