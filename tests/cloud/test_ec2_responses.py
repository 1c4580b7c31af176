"""The EC2 response layer: state map, resource ids, XML bodies and the error envelope.

States: OpenNebula/one ``src/cloud/ec2/lib/EC2QueryServer.rb`` ``EC2_STATES``/``ONE_STATES``
(3.x–5.x; 1.4's table sent ``prol`` and ``save`` to ``:pend``, a key ``EC2_STATES`` lacks).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree as ET

import botocore.session
import pytest
from botocore.parsers import create_parser

from cloud.ec2.errors import Ec2Error
from cloud.ec2.ids import image_id, instance_id, parse_image_id, parse_instance_id
from cloud.ec2.responses import Node, error_xml, namespace, response_xml
from cloud.ec2.states import InstanceState, ec2_state
from cloud.ec2.views import InstanceView, reservation, state_change


def test_codes_are_ec2s() -> None:
    assert [(s.code, s.label) for s in InstanceState] == [
        (0, "pending"),
        (16, "running"),
        (32, "shutting-down"),
        (48, "terminated"),
        (64, "stopping"),
        (80, "stopped"),
    ]


@pytest.mark.parametrize(
    ("core", "ec2"),
    [
        ("pend", "pending"),
        ("HOLD", "pending"),
        ("prol", "pending"),  # 1.4 failed here
        ("save", "stopping"),  # and here
        ("runn", "running"),
        ("RUNNING", "running"),
        ("boot", "running"),
        ("stop", "stopped"),
        ("susp", "stopped"),
        ("shut", "shutting-down"),
        ("epil", "shutting-down"),
        ("done", "terminated"),
        ("fail", "terminated"),
        ("no-such-state", "pending"),
        ("", "pending"),
    ],
)
def test_core_states_map_and_never_fail(core: str, ec2: str) -> None:
    assert ec2_state(core).label == ec2


def test_ids() -> None:
    assert (image_id(1), instance_id(0x1F)) == ("ami-00000001", "i-0000001f")
    assert parse_image_id("ami-00000001") == 1 and parse_instance_id("i-0000001f") == 31
    for bad, parse, code in [
        ("i-0000001f", parse_image_id, "InvalidAMIID.Malformed"),
        ("ami-1", parse_image_id, "InvalidAMIID.Malformed"),
        ("i-0000001G", parse_instance_id, "InvalidInstanceID.Malformed"),
        ("15", parse_instance_id, "InvalidInstanceID.Malformed"),
    ]:
        with pytest.raises(Ec2Error) as err:
            parse(bad)
        assert err.value.code == code and err.value.status == 400


def test_response_body_shapes() -> None:
    body: dict[str, Node] = {
        "instancesSet": [
            {
                "instanceId": "i-00000001",
                "instanceState": {"code": 16, "name": "running"},
                "monitoring": {"state": "disabled"},
                "launchTime": datetime(2026, 11, 30, 20, 1, 2, tzinfo=UTC),
                "dnsName": None,
                "ebsOptimized": False,
                "name": '<&"]>',
            }
        ]
    }
    root = ET.fromstring(response_xml("RunInstances", "2016-11-15", "rid", body))
    ns = {"e": namespace("2016-11-15")}
    assert root.tag == "{http://ec2.amazonaws.com/doc/2016-11-15/}RunInstancesResponse"
    assert root.findtext("e:requestId", namespaces=ns) == "rid"
    item = root.find("e:instancesSet/e:item", ns)
    assert item is not None
    assert item.findtext("e:instanceState/e:code", namespaces=ns) == "16"
    assert item.findtext("e:launchTime", namespaces=ns) == "2026-11-30T20:01:02.000Z"
    assert item.findtext("e:ebsOptimized", namespaces=ns) == "false"
    assert item.find("e:dnsName", ns) is None
    assert item.findtext("e:name", namespaces=ns) == '<&"]>'


def test_namespace_echoes_a_date_version_only() -> None:
    assert namespace("2009-04-04") == "http://ec2.amazonaws.com/doc/2009-04-04/"
    assert namespace('"><x') == namespace(None) == "http://ec2.amazonaws.com/doc/2016-11-15/"


def test_error_envelope() -> None:
    root = ET.fromstring(error_xml("AuthFailure", "no <way>", "rid"))
    assert root.tag == "Response"
    assert root.findtext("Errors/Error/Code") == "AuthFailure"
    assert root.findtext("Errors/Error/Message") == "no <way>"
    assert root.findtext("RequestID") == "rid"


def _parsed_by_boto3(operation: str, xml: bytes) -> Any:
    """The response as boto3 reads it: botocore's EC2 parser with the ec2 service model."""
    model = botocore.session.get_session().get_service_model("ec2").operation_model(operation)
    return create_parser("ec2").parse({"body": xml, "headers": {}, "status_code": 200}, model.output_shape)


LAUNCHED = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)


def test_instances_as_boto3_reads_them() -> None:
    views = [
        InstanceView(1, "alice", 7, "running", "m1.small", LAUNCHED, private_ip="10.0.0.5", key_name="k"),
        InstanceView(0x2A, "alice", 7, "prolog", "m1.large", LAUNCHED, launch_index=1),
    ]
    body: dict[str, Node] = {"reservationSet": [reservation("r-00000001", "alice", views)]}
    parsed = _parsed_by_boto3("DescribeInstances", response_xml("DescribeInstances", None, "rid", body))
    [res] = parsed["Reservations"]
    assert res["OwnerId"] == "alice"
    first, second = res["Instances"]
    assert first["InstanceId"] == "i-00000001" and first["ImageId"] == "ami-00000007"
    assert first["State"] == {"Code": 16, "Name": "running"}
    assert first["Monitoring"] == {"State": "disabled"} and first["LaunchTime"] == LAUNCHED
    assert first["PrivateIpAddress"] == "10.0.0.5" and first["KeyName"] == "k"
    assert first["Placement"]["AvailabilityZone"] == "default" and first["InstanceType"] == "m1.small"
    assert second["InstanceId"] == "i-0000002a" and second["State"] == {"Code": 0, "Name": "pending"}
    assert second["AmiLaunchIndex"] == 1 and "KeyName" not in second


def test_state_changes_as_boto3_reads_them() -> None:
    body: dict[str, Node] = {"instancesSet": [state_change(3, "running", "shutdown")]}
    parsed = _parsed_by_boto3("TerminateInstances", response_xml("TerminateInstances", None, "rid", body))
    assert parsed["TerminatingInstances"] == [
        {
            "InstanceId": "i-00000003",
            "CurrentState": {"Code": 32, "Name": "shutting-down"},
            "PreviousState": {"Code": 16, "Name": "running"},
        }
    ]
