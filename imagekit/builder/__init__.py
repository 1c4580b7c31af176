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
4. :mod:`.publish` — ``qemu-img convert`` to each requested format (:mod:`.formats`), then
   checksums, the manifest, the SBOM (:mod:`.sbom`), libvirt XML and OpenNebula template
   (:mod:`.manifest`), published all or nothing.

Every build is reproducible (:mod:`.reproducible`): the recipe, the archive state,
``SOURCE_DATE_EPOCH`` and the imagekit version decide its bytes, and the manifest records them.

Everything temporary lives in a :class:`~.workspace.Workspace`, removed on any exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from imagekit.errors import CommandError, InputError, VerificationError
from imagekit.interrupt import interruptible
from imagekit.log import StepTimings, step
from imagekit.recipe.buildable import check_buildable
from imagekit.recipe.model import Firmware, OutputFormat, Recipe
from imagekit.run import Runner, run
from imagekit.state import State

from . import bootloader, cache, customize, disk, manifest, overlay, reproducible, rootfs, space
from .publish import BuiltImage, publish_outputs
from .reproducible import BuildInputs
from .sandbox import Sandbox, check_recipe_sources, check_tree
from .workspace import Workspace, reclaim, remove_tree

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildOptions:
    output_dir: Path
    formats: tuple[OutputFormat, ...] = ()  # empty: the recipe's
    firmware: Firmware | None = None  # None: the recipe's
    use_cache: bool = True
    work_dir: Path | None = None  # parent of the workspace; None: see space.choose_work_parent
    mirror: str = rootfs.DEFAULT_MIRROR
    source_date_epoch: int | None = None  # None: $SOURCE_DATE_EPOCH, else the archive's date
    expect_archive: str | None = None  # refuse to build unless the archive state is this one
    # Run mmdebstrap and the recipe's commands as the build user, confined (sandbox.py); the
    # builder's own steps (ownership, disk assembly) stay root's.
    sandbox: Sandbox | None = None


@dataclass(frozen=True)
class CacheOutcome:
    key: str
    hit: bool
    used: bool  # False with --no-cache


@dataclass(frozen=True)
class BuildResult:
    name: str
    firmware: Firmware
    outputs: tuple[manifest.OutputFile, ...]
    manifest: Path
    sbom: Path
    libvirt_xml: Path
    opennebula_template: Path
    cache: CacheOutcome
    inputs: BuildInputs
    timings: dict[str, float] = field(default_factory=dict)

    def output(self, fmt: OutputFormat) -> Path:
        return next(o.path for o in self.outputs if o.format is fmt)


def build_image(recipe: Recipe, options: BuildOptions, *, state: State, runner: Runner = run) -> BuildResult:
    """``runner`` runs mmdebstrap and the commands in the tree's chroot (a seam: the failure
    paths are tested with a stand-in for them); every other tool goes through :func:`run`."""
    started = time.monotonic()
    timings = StepTimings()
    firmware = options.firmware or recipe.firmware
    fmts = tuple(dict.fromkeys(options.formats or recipe.formats))
    check_buildable(recipe, firmware)  # every reason it cannot be built, before any work
    stage = rootfs.plan_stage(recipe, agent_packages=agent_packages(recipe), mirror=options.mirror)
    require_tools(firmware, fmts, sandboxed=options.sandbox is not None)
    if options.sandbox is not None:
        check_recipe_sources(recipe)
    inputs = build_inputs(recipe, stage, firmware, options)
    layout = disk.plan_layout(recipe.disk, firmware, seed=inputs.seed)
    work_parent = prepare_space(layout, fmts, options)
    # A sandboxed build shares no stage that an author's code made (pre-commands, own
    # repositories) with another build: that code could poison it for the next author.
    authored = bool(stage.pre_commands or recipe.repositories)
    shared = options.use_cache and not (options.sandbox is not None and authored)
    stage_cache = cache.StageCache.open(state) if shared else None

    box = options.sandbox
    kept = prepare_work_parent(work_parent, state, layered=overlay.layered(layout, box))
    # The stage held (a kept one is not removed while it is mounted) until the workspace is gone.
    with interruptible(), contextlib.ExitStack() as held, Workspace.create(work_parent) as ws:
        if box is not None:
            box.prepare_workspace(ws.base)
        with step("install packages", timings):
            if kept is None:
                outcome = package_stage(stage, recipe, ws, stage_cache, inputs, runner=runner, sandbox=box)
            else:
                lower = held.enter_context(kept.hold(stage.key(inputs.archive, inputs.source_date_epoch)))
                outcome = layered_stage(stage, recipe, ws, stage_cache, inputs, lower, runner=runner)
        with step("customize", timings):
            install_agent = recipe.context_agent.wants_imagekit()
            customize.customize(
                recipe,
                ws.root,
                layout,
                install_agent=install_agent,
                inputs=inputs,
                runner=runner,
                sandbox=box,
            )
            if box is not None:  # the partitions' subtrees are split off as root next
                mounts = [p.mount.strip("/") for p in layout.partitions if p.mount.startswith("/")]
                check_tree(ws.root, tuple(f"{mount}/x" for mount in mounts if mount))
            packages = manifest.installed_packages(ws.root)
            customize.clean(ws.root)
        raw = ws.path("disk.raw")
        with step("assemble disk", timings):
            assemble_disk(recipe, layout, ws, raw, inputs)
        ws.settle()  # a new stage cached beside customize and assembly (or the build fails here)
        # Its unmounting and removal overlap the conversions; then a stage this build made is
        # kept for the next one (or removed).
        made = kept is not None and ws.path("stage").is_dir()
        keep = kept if stage_cache is not None else None
        need_mib = space.estimate(layout.size_bytes // disk.MIB, fmts)[0]
        ws.drop_root(then=(lambda: keep_stage(keep, outcome.key, ws, need_mib)) if made else None)
        built = BuiltImage(
            recipe, firmware, layout, packages, inputs, dataclasses.asdict(outcome), distro=stage.suite
        )
        base = options.output_dir / safe_name(recipe.name)
        clusters = stage_cache.clusters(outcome.key) if stage_cache is not None else None
        published = publish_outputs(
            raw, fmts, base, built, timings=timings, started=started, clusters=clusters
        )
    return BuildResult(
        recipe.name,
        firmware,
        published.outputs,
        published.manifest,
        published.sbom,
        published.libvirt_xml,
        published.opennebula_template,
        outcome,
        inputs,
        dict(timings.seconds),
    )


def agent_packages(recipe: Recipe) -> tuple[str, ...]:
    if not recipe.context_agent.wants_imagekit():
        return ()
    from imagekit.agent import AGENT_PACKAGES

    return AGENT_PACKAGES


def build_inputs(
    recipe: Recipe, stage: rootfs.PackageStage, firmware: Firmware, options: BuildOptions
) -> BuildInputs:
    """What decides the image's bytes; with ``expect_archive``, only that archive state will do."""
    from imagekit.recipe.normalise import recipe_hash

    archive = rootfs.archive_state(stage)
    if options.expect_archive is not None and archive.identity != options.expect_archive:
        raise VerificationError(
            f"the Debian archive is no longer in the state recorded ({options.expect_archive}); "
            f"it is now {archive.identity}",
            rule="archive state",
            hint="rebuild against a snapshot.debian.org mirror of that date (--mirror, IMAGEKIT_SNAPSHOT)",
        )
    inputs = BuildInputs.resolve(
        recipe_hash(recipe),
        archive,
        firmware=firmware.value,
        mirror=options.mirror,
        option=options.source_date_epoch,
    )
    log.info(
        "build inputs: recipe %s, archive %s, SOURCE_DATE_EPOCH=%d (from %s)",
        inputs.recipe_hash[:16],
        inputs.archive,
        inputs.source_date_epoch,
        inputs.epoch_origin.value,
    )
    return inputs


def prepare_space(layout: disk.DiskLayout, fmts: tuple[OutputFormat, ...], options: BuildOptions) -> Path:
    """Create the output directory, check both places have room, and return the work parent."""
    try:
        options.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(
            f"cannot create the output directory: {exc.strerror}", where=str(options.output_dir)
        ) from None
    work_mib, output_mib = space.estimate(layout.size_bytes // disk.MIB, fmts)
    work_parent = space.choose_work_parent(options.work_dir, work_mib)
    log.debug("working in %s", work_parent)
    space.check_free_space({work_parent: work_mib, options.output_dir: output_mib})
    return work_parent


def prepare_work_parent(work_parent: Path, state: State, *, layered: bool) -> overlay.KeptStages | None:
    """Clean up after builds killed outright there (their root still mounted), record the place
    for ``cache gc``; the stages kept there (None when the build is not layered)."""
    reclaim(work_parent)
    cache.note_work_parent(state, work_parent)
    kept = overlay.KeptStages.beside(work_parent, limit=overlay.kept_limit()) if layered else None
    if kept is not None and kept.limit == 0:
        kept.evict(keep=0)  # the site keeps none (any more)
    return kept


def package_stage(
    stage: rootfs.PackageStage,
    recipe: Recipe,
    ws: Workspace,
    stage_cache: cache.StageCache | None,
    inputs: BuildInputs,
    *,
    runner: Runner = run,
    sandbox: Sandbox | None = None,
    into: Path | None = None,
) -> CacheOutcome:
    """Fill ``into`` (default ``ws.root``) from the cache, or with mmdebstrap (and then cache it).

    With ``into`` (a layered build's stage, which the build never writes) the tree is clamped
    to the epoch here, and a new stage is cached beside the next steps (:meth:`.Workspace.beside`,
    the package set's lock held until it is stored): the build settles it before its disk image
    is converted, so a failure to cache still fails the build before any output."""
    key = stage.key(inputs.archive, inputs.source_date_epoch)
    tree = ws.root if into is None else into

    def bootstrap() -> None:
        rootfs.bootstrap(
            stage,
            tree,
            ws.base,
            recipe_repos=recipe.repositories,
            env=inputs.env(),
            runner=runner,
            sandbox=sandbox,
        )

    def clamp() -> None:
        if into is not None:  # once here rather than by every build through the overlay
            reproducible.clamp_times(tree, inputs.source_date_epoch)

    if stage_cache is None:
        bootstrap()
        clamp()
        return CacheOutcome(key, hit=False, used=False)
    # Builds of one package set at once (a build service's workers, a test session's images)
    # bootstrap it once: the others wait here and restore what the first one stored.
    with contextlib.ExitStack() as building:
        building.enter_context(stage_cache.building(key))
        if stage_cache.restore(key, tree):
            log.info("package cache hit: %s", key[:16])
            clamp()
            return CacheOutcome(key, hit=True, used=True)
        bootstrap()
        log.info("package cache miss: %s", key[:16])
        clamp()
        if into is None:
            stage_cache.store(key, tree, summary=stage.summary())
            return CacheOutcome(key, hit=False, used=True)
        held = building.pop_all()

    def store() -> None:
        with held:
            stage_cache.store(key, tree, summary=stage.summary())

    ws.beside(store)
    return CacheOutcome(key, hit=False, used=True)


def layered_stage(
    stage: rootfs.PackageStage,
    recipe: Recipe,
    ws: Workspace,
    stage_cache: cache.StageCache | None,
    inputs: BuildInputs,
    kept: Path | None,
    *,
    runner: Runner = run,
) -> CacheOutcome:
    """:func:`package_stage` into ``ws.path("stage")`` (unless the stage is ``kept`` already),
    clamped to the epoch, then the root an overlay over it (see :mod:`.overlay`)."""
    key = stage.key(inputs.archive, inputs.source_date_epoch)
    if kept is not None and stage_cache is not None and stage_cache.hit(key):
        log.info("package cache hit: %s (kept in %s)", key[:16], kept.parent)
        lower, outcome = kept, CacheOutcome(key, hit=True, used=True)
    else:
        lower = ws.path("stage")
        lower.mkdir()
        outcome = package_stage(stage, recipe, ws, stage_cache, inputs, runner=runner, into=lower)
    if not ws.layer(lower):
        if lower == kept:
            # No overlay here: a copy to write in, as before there were kept stages.
            run(["cp", "-a", "--", f"{lower}/.", ws.root], step="copy the package stage")
        else:
            ws.settle()  # the stage is cached before it is written in
            ws.root.rmdir()
            os.rename(lower, ws.root)
    return outcome


def keep_stage(kept: overlay.KeptStages | None, key: str, ws: Workspace, need_mib: int) -> None:
    """Keep the stage this build made for the next one, within the site's limit and while the
    place has room for the next build besides it (:func:`.space.room_to_keep`), else remove it."""
    room = kept is not None and space.room_to_keep(ws.base.parent, need_mib)
    if kept is None or not room or not kept.keep(key, ws.path("stage")):
        remove_tree(ws.path("stage"))


def assemble_disk(
    recipe: Recipe, layout: disk.DiskLayout, ws: Workspace, raw: Path, inputs: BuildInputs
) -> None:
    # A layered root walks only what the build wrote over the stage: whether its tree fits is
    # then measured only when mkfs finds it does not.
    usage = None
    if ws.upper is None:
        usage = reproducible.pin_tree(ws.root, inputs.source_date_epoch)
    else:
        reproducible.pin_layer(ws.root, ws.upper, inputs.source_date_epoch)
    trees = split_partitions(layout, ws, inputs.source_date_epoch)
    sizes = None if usage is None else disk.partition_usage_mib(usage, trees)
    images: dict[str, Path | Future[Path]] = {}
    for part in layout.partitions:
        if part.role is disk.Role.SWAP:
            swap = images[part.mount] = ws.path(f"part{part.number}.swap")
            disk.make_swap(part, swap)
        if part.mount in trees and sizes is not None:
            disk.check_fits(part, trees[part.mount], size_mib=sizes[part.mount])
    # The boot partition (a dozen mtools runs) is made while mkfs.ext4 fills the others.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imagekit-boot") as pool:
        images[disk.BOOT_MOUNT] = pool.submit(
            bootloader.make_boot_partition,
            layout,
            ws.root,
            ws.path("boot.fat"),
            ws.base,
            kernel_params=recipe.os.kernel_params,
            env=inputs.env(),
        )
        try:
            disk.assemble(layout, raw, trees=trees, images=images, env=inputs.env())
        except CommandError:
            if sizes is None:  # the reason a person reads, when it is that
                for part in layout.partitions:
                    if part.mount in trees:
                        disk.check_fits(part, trees[part.mount])
            raise
    bootloader.install_boot_code(layout, raw)


def split_partitions(layout: disk.DiskLayout, ws: Workspace, epoch: int) -> dict[str, Path]:
    """The tree of each ext partition (mount point → directory), split off ``ws.root``.

    Splitting makes fresh directories (an empty mount point, a tree for a mount the image
    lacked) and changes their parents: those alone get their times from ``epoch`` again, the
    rest of the tree was clamped before."""
    trees: dict[str, Path] = {}
    touched: set[Path] = set()
    # Deepest mount points first, so /var/log leaves /var before /var leaves the root.
    for part in sorted(layout.partitions, key=lambda p: -p.mount.count("/")):
        if part.role is disk.Role.DATA:
            trees[part.mount] = split_subtree(ws.root, part.mount, ws.path(f"part{part.number}"))
            mount_point = ws.root / part.mount.lstrip("/")
            touched.update((trees[part.mount], mount_point, *mount_point.parents))
    trees["/"] = ws.root
    inside = [path for path in touched if path == ws.root or ws.root in path.parents]
    outside = [trees[mount] for mount in trees if mount != "/"]
    reproducible.clamp_entries(sorted({*inside, *outside}), epoch)
    return trees


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
    "mount",
    "mmdebstrap",
    "tar",
    "sfdisk",
    "mkfs.ext4",
    "mkfs.vfat",
    "mcopy",
    "mmd",
    "openssl",
    "dpkg-query",
    "debugfs",
)


SANDBOX_TOOLS = ("setpriv", "prlimit", "newuidmap", "newgidmap", "pivot_root", "umount", "du")


def require_tools(
    firmware: Firmware, fmts: tuple[OutputFormat, ...], *, path: str | None = None, sandboxed: bool = False
) -> None:
    """Fail before any work when a tool is missing, naming it (and how to get it)."""
    needed = list(TOOLS) + list(SANDBOX_TOOLS if sandboxed else ())
    if firmware.boots_bios():
        needed.append("syslinux")
    if any(fmt is not OutputFormat.RAW for fmt in fmts):
        needed.append("qemu-img")
    for tool in needed:
        if shutil.which(tool, path=path) is None:
            raise CommandError([tool], 127, f"{tool}: command not found", step="check build tools")
    if os.geteuid() != 0:
        raise InputError(
            "building images needs root (mmdebstrap --mode=root, chroot, file ownership; with a"
            " build user only the ownership and the disk assembly)"
        )
