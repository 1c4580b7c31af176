"""The last step of a build: the raw disk becomes the published outputs, all or nothing.

Each requested format is converted under a hidden name while the previous one is hashed; then
the outputs take their final names, and the libvirt XML, the OpenNebula template, the SBOM and
last the manifest are written atomically. On any failure, everything this step wrote is
removed, so an output directory never holds half a build.

    published = publish_outputs(raw, fmts, out / "debian", built, timings=timings)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.atomic import write_atomically
from imagekit.log import StepTimings, step
from imagekit.output import to_json
from imagekit.recipe.model import Firmware, OutputFormat, Recipe

from . import formats, manifest, sbom
from .clusters import ClusterStore
from .disk import DiskLayout
from .qcow2 import Buffer
from .reproducible import BuildInputs


@dataclass(frozen=True)
class BuiltImage:
    """What the manifest and SBOM say about the image besides its output files."""

    recipe: Recipe
    firmware: Firmware
    layout: DiskLayout
    packages: tuple[manifest.InstalledPackage, ...]
    inputs: BuildInputs
    cache: dict[str, object]
    distro: str  # the purl distro qualifier, e.g. debian-12


@dataclass(frozen=True)
class Published:
    outputs: tuple[manifest.OutputFile, ...]
    manifest: Path
    sbom: Path
    libvirt_xml: Path
    opennebula_template: Path


@dataclass
class _Staging:
    """Files this step has made so far, to remove if it fails."""

    staged: list[formats.Staged] = field(default_factory=list)
    pending: dict[Path, manifest.PendingChecksums] = field(default_factory=dict)
    written: list[Path] = field(default_factory=list)

    def write(self, path: Path, data: bytes) -> Path:
        write_atomically(path, data)
        self.written.append(path)
        return path

    def undo(self) -> None:
        for sums in self.pending.values():
            sums.cancel()
        for staged in self.staged:
            formats.discard(staged)
        for path in self.written:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _all_or_nothing() -> Iterator[_Staging]:
    staging = _Staging()
    try:
        yield staging
    except BaseException:
        staging.undo()
        raise


def publish_outputs(
    raw: Path,
    fmts: tuple[OutputFormat, ...],
    base: Path,
    built: BuiltImage,
    *,
    timings: StepTimings,
    started: float,
    clusters: ClusterStore | None = None,
) -> Published:
    """Convert ``raw`` to ``fmts`` as ``base.EXT`` and write the files that describe them
    (qcow2 with the ``clusters`` an earlier build compressed)."""
    with _all_or_nothing() as staging:
        outputs = _convert_all(raw, fmts, base, built.layout.size_bytes, staging, timings, clusters)
        for staged in staging.staged:
            staging.written.append(formats.publish(staged))
        primary = next((o for o in outputs if o.format is OutputFormat.QCOW2), outputs[0])
        image, recipe, firmware = primary.path.resolve(), built.recipe, built.firmware
        libvirt = staging.write(
            base.with_name(f"{base.name}.libvirt.xml"),
            manifest.libvirt_xml(recipe, image, primary.format, firmware).encode(),
        )
        one = staging.write(
            base.with_name(f"{base.name}.one"),
            manifest.opennebula_template(recipe, image, primary.format, firmware).encode(),
        )
        document = sbom.sbom(recipe.name, built.inputs, built.packages, outputs, distro=built.distro)
        sbom_path = staging.write(
            base.with_name(f"{base.name}.spdx.json"), (to_json(document) + "\n").encode()
        )
        timings.seconds["total"] = round(time.monotonic() - started, 3)
        manifest_path = staging.write(
            base.with_name(f"{base.name}.manifest.json"),
            (to_json(_manifest(built, outputs, timings, libvirt, one, sbom_path)) + "\n").encode(),
        )
    return Published(tuple(outputs), manifest_path, sbom_path, libvirt, one)


def _convert_all(
    raw: Path,
    fmts: tuple[OutputFormat, ...],
    base: Path,
    virtual_size: int,
    staging: _Staging,
    timings: StepTimings,
    clusters: ClusterStore | None,
) -> list[manifest.OutputFile]:
    # Raw first: it is a hard link, and its (long) checksums then run beside the conversions.
    with step("convert", timings):
        for fmt in sorted(fmts, key=lambda f: f is not OutputFormat.RAW):
            dest = base.with_name(f"{base.name}.{fmt.value}")
            in_memory: list[manifest.PendingChecksums] = []

            def hash_bytes(
                data: Sequence[Buffer], into: list[manifest.PendingChecksums] = in_memory
            ) -> None:
                into.append(manifest.start_checksums_of(data))  # beside the write and its fsync

            with step(fmt.value):
                done = formats.convert(raw, fmt, dest, clusters=clusters, on_bytes=hash_bytes)
            staging.staged.append(done)
            # Else hash each output (from the page cache) while the next one converts.
            staging.pending[done.partial] = (
                in_memory[0] if in_memory else manifest.start_checksums(done.partial)
            )
    with step("checksums", timings):
        staging.staged.sort(key=lambda s: fmts.index(s.format))  # the order asked for
        return [
            manifest.describe_output(s, virtual_size, staging.pending[s.partial].result())
            for s in staging.staged
        ]


def _manifest(
    built: BuiltImage,
    outputs: list[manifest.OutputFile],
    timings: StepTimings,
    libvirt: Path,
    one: Path,
    sbom_path: Path,
) -> dict[str, object]:
    from imagekit.recipe.normalise import recipe_json

    return manifest.manifest(
        built.recipe,
        recipe_hash=built.inputs.recipe_hash,
        recipe_normalised=recipe_json(built.recipe),
        firmware=built.firmware,
        disk_size=built.layout.size_bytes,
        outputs=outputs,
        packages=built.packages,
        cache=built.cache,
        timings=dict(timings.seconds),
        extras={"libvirt": libvirt.name, "opennebula": one.name, "sbom": sbom_path.name},
        partitions=[manifest.PartitionRecord.of(p) for p in built.layout.partitions],
        inputs=built.inputs.to_json(),
    )
