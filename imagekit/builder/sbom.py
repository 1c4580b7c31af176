"""The software bill of materials: ``NAME.spdx.json``, an SPDX 2.3 document per build.

It lists every installed Debian package (version, architecture, source package, the license
Debian's machine-readable ``copyright`` file states, a ``pkg:deb/debian/…`` purl) and the image
outputs with their checksums; each image CONTAINS the packages. Its creation time is
``SOURCE_DATE_EPOCH`` and its namespace derives from the build inputs, so the SBOM of a
reproducible build is reproducible too. The build inputs are recorded in the document's
comment, where ``market verify-build`` finds them.

    document = sbom(recipe.name, inputs, packages, outputs)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from imagekit.errors import DataError

from .manifest import InstalledPackage, OutputFile
from .reproducible import BuildInputs

INPUTS_PREFIX = "imagekit build inputs: "
DEP5 = "copyright-format"
_SPDX_ALGORITHMS = {"md5": "MD5", "sha1": "SHA1", "sha256": "SHA256", "sha512": "SHA512"}
# Debian's short license names (copyright-format 1.0, "License specification") → SPDX ids.
_LICENSES = {
    **{f"gpl-{v}": f"GPL-{v}.0-only" for v in ("1", "2", "3")},
    **{f"gpl-{v}+": f"GPL-{v}.0-or-later" for v in ("1", "2", "3")},
    **{f"gpl-{v}.0+": f"GPL-{v}.0-or-later" for v in ("2", "3")},
    **{f"lgpl-{v}": f"LGPL-{v}-only" for v in ("2.0", "2.1", "3.0")},
    **{f"lgpl-{v}+": f"LGPL-{v}-or-later" for v in ("2.0", "2.1", "3.0")},
    "gpl-2.0": "GPL-2.0-only",
    "gpl-3.0": "GPL-3.0-only",
    "gfdl-1.3+": "GFDL-1.3-or-later",
    "gfdl-niv-1.3+": "GFDL-1.3-no-invariants-or-later",
    "sleepycat": "Sleepycat",
    "lgpl-2": "LGPL-2.0-only",
    "lgpl-2+": "LGPL-2.0-or-later",
    "lgpl-3": "LGPL-3.0-only",
    "lgpl-3+": "LGPL-3.0-or-later",
    "agpl-3": "AGPL-3.0-only",
    "agpl-3+": "AGPL-3.0-or-later",
    "apache-2.0": "Apache-2.0",
    "artistic": "Artistic-1.0-Perl",
    "artistic-2.0": "Artistic-2.0",
    "bsd-2-clause": "BSD-2-Clause",
    "bsd-3-clause": "BSD-3-Clause",
    "bsd-4-clause": "BSD-4-Clause",
    "expat": "MIT",
    "mit": "MIT",
    "isc": "ISC",
    "zlib": "Zlib",
    "mpl-1.1": "MPL-1.1",
    "mpl-2.0": "MPL-2.0",
    "psf-2": "PSF-2.0",
    "python-2.0": "Python-2.0",
    "openssl": "OpenSSL",
    "curl": "curl",
    "cc0-1.0": "CC0-1.0",
    "cc0": "CC0-1.0",
    "bsl-1.0": "BSL-1.0",
    "ofl-1.1": "OFL-1.1",
}


def debian_license(copyright_text: str) -> str:
    """The ``License:`` of the ``Files: *`` paragraph of a DEP-5 copyright file; "" otherwise."""
    if DEP5 not in copyright_text.split("\n", 1)[0]:
        return ""
    for paragraph in re.split(r"\n\s*\n", copyright_text):
        fields = dict(_fields(paragraph))
        if "*" in fields.get("files", "").split() and "license" in fields:
            return fields["license"]
    return ""


def _fields(paragraph: str) -> list[tuple[str, str]]:
    """(lower-case name, first line of the value) for each field of a deb822 paragraph."""
    found = []
    for line in paragraph.splitlines():
        if line[:1] not in (" ", "\t", "#") and ":" in line:
            name, value = line.split(":", 1)
            found.append((name.strip().lower(), value.strip()))
    return found


def spdx_license(debian: str) -> str | None:
    """``GPL-2+ or Artistic`` → ``GPL-2.0-or-later OR Artistic-1.0-Perl``; None if any name
    (or an exception clause) has no SPDX id here."""
    words = re.split(r"\s+(or|and)\s+", debian.strip(), flags=re.IGNORECASE)
    out = []
    for index, word in enumerate(words):
        if index % 2:
            out.append(word.upper())
            continue
        spdx = _LICENSES.get(word.strip().rstrip(",").lower())
        if spdx is None:
            return None
        out.append(spdx)
    return " ".join(out) if out else None


def read_licenses(root: Path, names: Sequence[str]) -> dict[str, str]:
    """Each package's Debian license statement, read from the tree's /usr/share/doc."""
    found = {}
    for name in names:
        try:
            text = (root / "usr/share/doc" / name / "copyright").read_text(errors="replace")
        except OSError:
            continue
        if license_text := debian_license(text):
            found[name] = license_text
    return found


def purl(package: InstalledPackage, distro: str) -> str:
    version = quote(package.version, safe=".-_~")
    return f"pkg:deb/debian/{quote(package.name)}@{version}?arch={package.arch}&distro={distro}"


def _spdx_id(*parts: str) -> str:
    return "SPDXRef-" + "-".join(re.sub(r"[^A-Za-z0-9.]+", ".", p) for p in parts)


def _deb_package(package: InstalledPackage, distro: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "SPDXID": _spdx_id("deb", package.name, package.arch),
        "name": package.name,
        "versionInfo": package.version,
        "supplier": "Organization: Debian",
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": spdx_license(package.license) or "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "sourceInfo": f"built from the Debian source package {package.source} {package.source_version}",
        "externalRefs": [
            {
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl(package, distro),
            }
        ],
    }
    if package.license:
        entry["licenseComments"] = f"Debian copyright file: License: {package.license}"
    return entry


def _image_package(name: str, output: OutputFile) -> dict[str, Any]:
    return {
        "SPDXID": _spdx_id("image", output.format.value),
        "name": output.path.name,
        "versionInfo": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": [
            {"algorithm": _SPDX_ALGORITHMS[algo], "checksumValue": value}
            for algo, value in output.checksums.items()
            if algo in _SPDX_ALGORITHMS
        ],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    }


def sbom(
    name: str,
    inputs: BuildInputs,
    packages: Sequence[InstalledPackage],
    outputs: Sequence[OutputFile],
    *,
    distro: str,
) -> dict[str, Any]:
    created = datetime.fromtimestamp(inputs.source_date_epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    images = [_image_package(name, o) for o in outputs]
    debs = [_deb_package(p, distro) for p in packages]
    relationships = [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": i["SPDXID"],
        }
        for i in images
    ]
    relationships += [
        {"spdxElementId": i["SPDXID"], "relationshipType": "CONTAINS", "relatedSpdxElement": d["SPDXID"]}
        for i in images
        for d in debs
    ]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"https://imagekit.invalid/spdx/{quote(name)}/{inputs.seed}",
        "comment": INPUTS_PREFIX + json.dumps(inputs.to_json(), sort_keys=True),
        "creationInfo": {"created": created, "creators": [f"Tool: imagekit-{inputs.imagekit_version}"]},
        "packages": images + debs,
        "relationships": relationships,
    }


def inputs_from_sbom(data: bytes, *, where: str) -> BuildInputs:
    """The build inputs an SBOM of ours records (for rebuilding the image it describes)."""
    try:
        doc = json.loads(data)
        comment = doc.get("comment", "") if isinstance(doc, dict) else ""
    except ValueError as exc:
        raise DataError(f"{where}: not an SPDX JSON document: {exc}") from None
    if not isinstance(comment, str) or not comment.startswith(INPUTS_PREFIX):
        raise DataError(f"{where}: the SBOM records no imagekit build inputs")
    try:
        recorded = json.loads(comment.removeprefix(INPUTS_PREFIX))
    except ValueError as exc:
        raise DataError(f"{where}: build inputs: {exc}") from None
    if not isinstance(recorded, dict):
        raise DataError(f"{where}: build inputs: expected a JSON object")
    return BuildInputs.from_json(recorded, where=where)
