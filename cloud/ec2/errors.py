"""EC2 errors: each carries the code and HTTP status of the EC2 error envelope it becomes."""

from __future__ import annotations

from imagekit.errors import InputError


class Ec2Error(InputError):
    """A request the EC2 front door refuses; ``code`` is EC2's (``AuthFailure``, …)."""

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def auth_failure(message: str) -> Ec2Error:
    return Ec2Error("AuthFailure", message, status=401)


def invalid_parameter(message: str) -> Ec2Error:
    return Ec2Error("InvalidParameterValue", message)


def missing_parameter(name: str) -> Ec2Error:
    return Ec2Error("MissingParameter", f"The request must contain the parameter {name}")
