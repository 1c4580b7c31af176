"""Recipe → bootable disk images, without loop devices or mounts.

    result = build_image(load_recipe(path), BuildOptions(output_dir=Path("out")), state=state)

The pipeline, one module per step:

1. :mod:`.rootfs` — the package stage: ``mmdebstrap`` with the recipe's repositories,
   pre-commands and packages (plus kernel, boot and agent packages); cached by
   :mod:`.cache` under a content address, so only a change to it reinstalls packages.
2. :mod:`.customize` — hostname, fstab, users and hashed passwords, files, the context agent,
   first-boot units (:mod:`.firstboot`), post-commands in a chroot, then template clean-up.
3. :mod:`.disk` and :mod:`.bootloader` — partitions on a plain file (``sfdisk``), ext4 filled
   from the tree (``mkfs.ext4 -d``), a FAT boot partition through mtools with syslinux and/or
   systemd-boot.
4. :mod:`.formats` — ``qemu-img convert`` to each requested format, published atomically.
5. :mod:`.manifest` — checksums, package list, libvirt XML and OpenNebula template.

Everything temporary lives in a :class:`~.workspace.Workspace`, removed on any exit.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.errors import CommandError, InputError
from imagekit.interrupt import interruptible
from imagekit.log import StepTimings, step
from imagekit.output import to_json
from imagekit.recipe.model import Firmware, OutputFormat, Recipe
from imagekit.state import State

from . import bootloader, cache, customize, disk, formats, manifest, rootfs, space
from .workspace import Workspace

log = logging.getLogger(__name__)

EXTENSIONS = {fmt: fmt.value for fmt in OutputFormat}


@dataclass(frozen=True)
class BuildOptions:
    output_dir: Path
    formats: tuple[OutputFormat, ...] = ()  # empty: the recipe's
    firmware: Firmware | None = None  # None: the recipe's
    use_cache: bool = True
    work_dir: Path | None = None  # parent of the workspace; None: see space.choose_work_parent
    mirror: str = rootfs.DEFAULT_MIRROR


@dataclass(frozen=True)
class CacheOutcome:
    key: str | None
    hit: bool
    used: bool  # False with --no-cache


@dataclass(frozen=True)
class BuildResult:
    name: str
    firmware: Firmware
    outputs: tuple[manifest.OutputFile, ...]
    manifest: Path
    libvirt_xml: Path
    opennebula_template: Path
    cache: CacheOutcome
    timings: dict[str, float] = field(default_factory=dict)

    def output(self, fmt: OutputFormat) -> Path:
        return next(o.path for o in self.outputs if o.format is fmt)


def build_image(recipe: Recipe, options: BuildOptions, *, state: State) -> BuildResult:
    from imagekit.recipe.normalise import recipe_hash, recipe_json

    started = time.monotonic()
    timings = StepTimings()
    firmware = options.firmware or recipe.firmware
    fmts = tuple(dict.fromkeys(options.formats or recipe.formats))
    # Raw first: it is a hard link, and its (long) checksums then run beside the conversions.
    convert_order = sorted(fmts, key=lambda f: f is not OutputFormat.RAW)
    agent_packages: tuple[str, ...] = ()
    if recipe.context_agent.wants_imagekit():
        from imagekit.agent import AGENT_PACKAGES

        agent_packages = AGENT_PACKAGES
    stage = rootfs.plan_stage(recipe, agent_packages=agent_packages, mirror=options.mirror)
    layout = disk.plan_layout(recipe.disk, firmware)
    require_tools(firmware, fmts)
    output_dir = options.output_dir
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the output directory: {exc.strerror}", where=str(output_dir)
        ) from None
    work_mib, output_mib = space.estimate(layout.size_bytes // disk.MIB, fmts)
    work_parent = space.choose_work_parent(options.work_dir, work_mib)
    log.debug("working in %s", work_parent)
    space.check_free_space({work_parent: work_mib, output_dir: output_mib})
    stage_cache = cache.StageCache.open(state) if options.use_cache else None

    with interruptible(), Workspace.create(work_parent) as ws:
        with step("install packages", timings):
            outcome = package_stage(stage, recipe, ws, stage_cache)
        with step("customize", timings):
            customize.customize(recipe, ws.root, layout, install_agent=recipe.context_agent.wants_imagekit())
            packages = manifest.installed_packages(ws.root)
            customize.clean(ws.root)
        raw = ws.path("disk.raw")
        with step("assemble disk", timings):
            assemble_disk(recipe, layout, ws, raw)
        ws.drop_root()  # its removal overlaps the conversions
        base = output_dir / safe_name(recipe.name)
        staged: list[formats.Staged] = []
        written: list[Path] = []
        pending: dict[Path, manifest.PendingChecksums] = {}
        try:
            with step("convert", timings):
                for fmt in convert_order:
                    with step(fmt.value):
                        done = formats.convert(raw, fmt, base.with_name(f"{base.name}.{EXTENSIONS[fmt]}"))
                    staged.append(done)
                    # Hash each output while the next one converts.
                    pending[done.partial] = manifest.start_checksums(done.partial)
            with step("checksums", timings):
                staged.sort(key=lambda s: fmts.index(s.format))  # the order asked for
                outputs = [
                    manifest.describe_output(s, layout.size_bytes, pending[s.partial].result())
                    for s in staged
                ]
            primary = next((s for s in staged if s.format is OutputFormat.QCOW2), staged[0])
            libvirt_path = base.with_name(f"{base.name}.libvirt.xml")
            one_path = base.with_name(f"{base.name}.one")
            for s in staged:
                written.append(formats.publish(s))
            formats.write_atomic(
                libvirt_path,
                manifest.libvirt_xml(recipe, primary.path.resolve(), primary.format, firmware).encode(),
            )
            written.append(libvirt_path)
            formats.write_atomic(
                one_path,
                manifest.opennebula_template(
                    recipe, primary.path.resolve(), primary.format, firmware
                ).encode(),
            )
            written.append(one_path)
            timings.seconds["total"] = round(time.monotonic() - started, 3)
            manifest_path = base.with_name(f"{base.name}.manifest.json")
            document = manifest.manifest(
                recipe,
                recipe_hash=recipe_hash(recipe),
                recipe_normalised=recipe_json(recipe),
                firmware=firmware,
                disk_size=layout.size_bytes,
                outputs=outputs,
                packages=packages,
                cache={"key": outcome.key, "hit": outcome.hit, "used": outcome.used},
                timings=dict(timings.seconds),
                extras={"libvirt": libvirt_path.name, "opennebula": one_path.name},
                partitions=[
                    {
                        "number": p.number,
                        "mount": p.mount,
                        "fstype": p.fstype,
                        "start": p.offset_bytes,
                        "size": p.size_bytes,
                        "uuid": p.uuid,
                        "label": p.label,
                    }
                    for p in layout.partitions
                ],
            )
            formats.write_atomic(manifest_path, (to_json(document) + "\n").encode())
        except BaseException:
            for sums in pending.values():
                sums.cancel()
            for s in staged:
                formats.discard(s)
            for path in written:
                path.unlink(missing_ok=True)
            raise
    return BuildResult(
        recipe.name,
        firmware,
        tuple(outputs),
        manifest_path,
        libvirt_path,
        one_path,
        outcome,
        dict(timings.seconds),
    )


def package_stage(
    stage: rootfs.PackageStage, recipe: Recipe, ws: Workspace, stage_cache: cache.StageCache | None
) -> CacheOutcome:
    """Fill ``ws.root`` from the cache, or with mmdebstrap (and then cache it)."""
    if stage_cache is None:
        rootfs.bootstrap(stage, ws.root, ws.base, recipe_repos=recipe.repositories)
        return CacheOutcome(None, hit=False, used=False)
    key = stage.key(rootfs.mirror_snapshot(stage))
    if stage_cache.restore(key, ws.root):
        log.info("package cache hit: %s", key[:16])
        return CacheOutcome(key, hit=True, used=True)
    log.info("package cache miss: %s", key[:16])
    rootfs.bootstrap(stage, ws.root, ws.base, recipe_repos=recipe.repositories)
    stage_cache.store(key, ws.root, summary=stage.summary())
    return CacheOutcome(key, hit=False, used=True)


def assemble_disk(recipe: Recipe, layout: disk.DiskLayout, ws: Workspace, raw: Path) -> None:
    trees: dict[str, Path] = {}
    images: dict[str, Path] = {}
    # Deepest mount points first, so /var/log leaves /var before /var leaves the root.
    for part in sorted(layout.partitions, key=lambda p: -p.mount.count("/")):
        if part.role is disk.Role.DATA:
            trees[part.mount] = split_subtree(ws.root, part.mount, ws.path(f"part{part.number}"))
        elif part.role is disk.Role.SWAP:
            images[part.mount] = ws.path(f"part{part.number}.swap")
            disk.make_swap(part, images[part.mount])
    trees["/"] = ws.root
    for part in layout.partitions:
        if part.mount in trees:
            disk.check_fits(part, trees[part.mount])
    images[disk.BOOT_MOUNT] = bootloader.make_boot_partition(
        layout, ws.root, ws.path("boot.fat"), ws.base, kernel_params=recipe.os.kernel_params
    )
    disk.assemble(layout, raw, trees=trees, images=images)
    bootloader.install_boot_code(layout, raw)


def split_subtree(root: Path, mount: str, dest: Path) -> Path:
    """Move ``root/mount`` to ``dest`` (its own partition), leaving an empty mount point."""
    source = root / mount.lstrip("/")
    if source.is_dir() and not source.is_symlink():
        st = source.stat()
        os.rename(source, dest)
        source.mkdir()
        os.chown(source, st.st_uid, st.st_gid)
        source.chmod(st.st_mode & 0o7777)
    else:
        dest.mkdir()
        source.mkdir(parents=True, exist_ok=True)
    return dest


def safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip(".-")
    return cleaned or "image"


TOOLS = (
    "unshare",
    "mmdebstrap",
    "tar",
    "sfdisk",
    "mkfs.ext4",
    "mkfs.vfat",
    "mcopy",
    "mmd",
    "openssl",
    "dpkg-query",
)


def require_tools(firmware: Firmware, fmts: tuple[OutputFormat, ...], *, path: str | None = None) -> None:
    """Fail before any work when a tool is missing, naming it (and how to get it)."""
    needed = list(TOOLS)
    if firmware.boots_bios():
        needed.append("syslinux")
    if any(fmt is not OutputFormat.RAW for fmt in fmts):
        needed.append("qemu-img")
    for tool in needed:
        if shutil.which(tool, path=path) is None:
            raise CommandError([tool], 127, f"{tool}: command not found", step="check build tools")
    if os.geteuid() != 0:
        raise InputError("building images needs root (mmdebstrap --mode=root, chroot, file ownership)")
