"""The context media imagekit masters, in one enum (no pycdlib here: the CLI builds its
``--flavor`` choices from it without loading the ISO writer).

- ``opennebula``: volume ``CONTEXT`` with ``context.sh`` and the FILES (one-context's layout);
- ``nocloud``: volume ``cidata``, cloud-init's NoCloud seed;
- ``configdrive``: volume ``config-2``, an OpenStack config drive.
"""

from __future__ import annotations

from enum import StrEnum


class IsoFlavor(StrEnum):
    OPENNEBULA = "opennebula"
    NOCLOUD = "nocloud"
    CONFIGDRIVE = "configdrive"

    @property
    def volume_label(self) -> str:
        """The label readers look for: one-context ``CONTEXT``, cloud-init ``cidata`` / ``config-2``."""
        return {"opennebula": "CONTEXT", "nocloud": "cidata", "configdrive": "config-2"}[self.value]
