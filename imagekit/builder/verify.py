"""Checking reproducibility: build twice and compare, or rebuild and compare with recorded sums.

:func:`check_reproducible` builds the recipe as asked, then again in a separate workspace and
output directory, without the package cache, pinned to the first build's inputs; identical
outputs and manifests (apart from the run's timings and cache outcome) pass. When they differ
it names the differing outputs and partitions, and asks ``diffoscope`` (when installed) for
the first differing files.

:func:`verify_build` rebuilds from recorded inputs (a marketplace entry's SBOM) and compares
the output with the checksums an endorser signed.

    report = check_reproducible(recipe, BuildOptions(output_dir=Path("out")), state=state)
    verdict = verify_build(recipe, inputs, OutputFormat.QCOW2, {"sha1": "…"}, options, state=state)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagekit
from imagekit.errors import VerificationError
from imagekit.recipe.model import OutputFormat, Recipe
from imagekit.run import run
from imagekit.state import State

from . import BuildOptions, BuildResult, build_image
from .reproducible import BuildInputs

log = logging.getLogger(__name__)

# What a manifest says about the run rather than the image.
RUN_KEYS = ("timings", "cache")
DIFFOSCOPE_TIMEOUT = 900.0
DIFFOSCOPE_MISSING = "diffoscope is not installed (apt-get install diffoscope-minimal): no file-level report"


@dataclass(frozen=True)
class Difference:
    format: OutputFormat
    first: str  # sha256
    second: str
    partitions: tuple[str, ...]  # mount points whose bytes differ (raw outputs only)


@dataclass(frozen=True)
class ReproducibilityReport:
    first: BuildResult
    second_seconds: float
    differences: tuple[Difference, ...]
    manifest_keys: tuple[str, ...]  # manifest entries that differ, besides RUN_KEYS
    diffoscope: str  # where its report is, or why there is none ("" when identical)

    @property
    def identical(self) -> bool:
        return not self.differences and not self.manifest_keys


def check_reproducible(recipe: Recipe, options: BuildOptions, *, state: State) -> ReproducibilityReport:
    """Build as ``options`` say, then again elsewhere from scratch; compare the two."""
    first = build_image(recipe, options, state=state)
    second_dir = Path(tempfile.mkdtemp(prefix=".reproducibility-", dir=options.output_dir))
    try:
        second = build_image(
            recipe,
            dataclasses.replace(
                options,
                output_dir=second_dir,
                firmware=first.firmware,
                use_cache=False,
                expect_archive=first.inputs.archive,
            ),
            state=state,
        )
        differences = compare_outputs(first, second)
        keys = compare_manifests(first.manifest, second.manifest)
        report = ""
        if differences or keys:
            name = first.manifest.name.removesuffix(".manifest.json")
            report = diffoscope(first, second, options.output_dir / f"{name}.diffoscope.txt")
        return ReproducibilityReport(first, second.timings.get("total", 0.0), differences, keys, report)
    finally:
        shutil.rmtree(second_dir, ignore_errors=True)


def compare_outputs(first: BuildResult, second: BuildResult) -> tuple[Difference, ...]:
    theirs = {o.format: o for o in second.outputs}
    partitions = json.loads(first.manifest.read_bytes()).get("partitions", [])
    differences = []
    for mine in first.outputs:
        other = theirs[mine.format]
        if mine.checksums["sha256"] == other.checksums["sha256"]:
            continue
        where: tuple[str, ...] = ()
        if mine.format is OutputFormat.RAW:
            where = differing_partitions(mine.path, other.path, partitions)
        differences.append(
            Difference(mine.format, mine.checksums["sha256"], other.checksums["sha256"], where)
        )
    return tuple(differences)


def differing_partitions(a: Path, b: Path, partitions: list[dict[str, Any]]) -> tuple[str, ...]:
    """The mount points (or ``table`` for the first MiB) whose byte ranges differ."""
    ranges = [("table", 0, min((int(p["start"]) for p in partitions), default=0))]
    ranges += [(str(p["mount"]), int(p["start"]), int(p["size"])) for p in partitions]
    return tuple(name for name, start, size in ranges if _digest(a, start, size) != _digest(b, start, size))


def _digest(path: Path, start: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        fh.seek(start)
        left = size
        while left > 0 and (chunk := fh.read(min(left, 4 * 1024 * 1024))):
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def compare_manifests(a: Path, b: Path) -> tuple[str, ...]:
    """Top-level manifest entries that differ, apart from the run's (:func:`built_facts`)."""
    first, second = built_facts(json.loads(a.read_bytes())), built_facts(json.loads(b.read_bytes()))
    return tuple(name for name in sorted(set(first) | set(second)) if first.get(name) != second.get(name))


def built_facts(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest without what the run or the file system decides: ``RUN_KEYS``, and each
    output's ``allocated`` bytes (ext4 gives the same bytes one more block when their extents
    need an index block, as free space falls)."""
    facts = {k: v for k, v in manifest.items() if k not in RUN_KEYS}
    if isinstance(facts.get("outputs"), list):
        facts["outputs"] = [
            {k: v for k, v in o.items() if k != "allocated"} if isinstance(o, dict) else o
            for o in facts["outputs"]
        ]
    return facts


def diffoscope(first: BuildResult, second: BuildResult, report: Path) -> str:
    """Ask diffoscope which files differ; the report's path, or why there is none.

    Disk images are not given to it whole (it reads a 2 GiB raw into memory): the SBOMs are,
    and each differing ext partition of the raw outputs, unpacked with ``debugfs rdump``.
    """
    if shutil.which("diffoscope") is None:
        return DIFFOSCOPE_MISSING
    raws = [r.output(OutputFormat.RAW) for r in (first, second) if OutputFormat.RAW in _formats(r)]
    partitions = json.loads(first.manifest.read_bytes()).get("partitions", [])
    texts = [_diffoscope(first.sbom, second.sbom)]
    with tempfile.TemporaryDirectory(prefix="imagekit-diffoscope-", dir=report.parent) as scratch:
        for part in partitions if len(raws) == 2 else []:
            if not str(part["fstype"]).startswith("ext"):
                continue
            if _digest(raws[0], part["start"], part["size"]) == _digest(
                raws[1], part["start"], part["size"]
            ):
                continue
            trees = []
            for index, raw in enumerate(raws):
                tree = Path(scratch) / f"{index}-part{part['number']}"
                tree.mkdir()
                run(
                    ["debugfs", "-R", f"rdump / {tree}", f"{raw}?offset={part['start']}"],
                    step="unpack a partition to compare (debugfs rdump)",
                )
                trees.append(tree)
            texts.append(_diffoscope(*trees))
    report.write_text("\n".join(texts))
    return str(report)


def _formats(result: BuildResult) -> set[OutputFormat]:
    return {o.format for o in result.outputs}


def _diffoscope(a: Path, b: Path) -> str:
    out = run(
        ["diffoscope", "--no-progress", "--exclude-directory-metadata=no", "--text", "-", a, b],
        check=False,
        timeout=DIFFOSCOPE_TIMEOUT,
        step="compare with diffoscope",
    )
    return out.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class RebuildVerdict:
    result: BuildResult
    format: OutputFormat
    expected: Mapping[str, str]  # algorithm → hex, as recorded
    compared: tuple[str, ...]  # the algorithms both sides have
    mismatched: tuple[str, ...]

    @property
    def matches(self) -> bool:
        return bool(self.compared) and not self.mismatched


def verify_build(
    recipe: Recipe,
    inputs: BuildInputs,
    fmt: OutputFormat,
    expected: Mapping[str, str],
    options: BuildOptions,
    *,
    state: State,
) -> RebuildVerdict:
    """Rebuild ``recipe`` with the recorded ``inputs`` and compare its ``fmt`` output with ``expected``."""
    from imagekit.recipe.model import Firmware
    from imagekit.recipe.normalise import recipe_hash

    if recipe_hash(recipe) != inputs.recipe_hash:
        raise VerificationError(
            f"{recipe.source_path} is not the recipe the image was built from "
            f"(normalised hash {recipe_hash(recipe)[:16]}…, recorded {inputs.recipe_hash[:16]}…)",
            rule="recipe",
        )
    if inputs.imagekit_version != imagekit.__version__:
        log.warning(
            "the image was built by imagekit %s, this is %s: the bytes may differ",
            inputs.imagekit_version,
            imagekit.__version__,
        )
    pinned = dataclasses.replace(
        options,
        formats=(fmt,),
        firmware=Firmware(inputs.firmware),
        mirror=inputs.mirror,
        source_date_epoch=inputs.source_date_epoch,
        expect_archive=inputs.archive,
    )
    result = build_image(recipe, pinned, state=state)
    got = result.outputs[0].checksums
    compared = tuple(name for name in expected if name in got)
    mismatched = tuple(name for name in compared if got[name] != expected[name].lower())
    return RebuildVerdict(result, fmt, dict(expected), compared, mismatched)
