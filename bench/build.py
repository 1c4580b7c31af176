"""Image builder benchmark on the shipped Debian 12 cloud recipe.

Prints JSON lines, measured one after the other on this machine:

- ``mmdebstrap_floor`` and ``cold``, in interleaved pairs (``--repeat N`` of them, so the
  machine's load drifts through both alike): mmdebstrap alone with exactly the package set
  imagekit installs (the recipe's packages, kernel, boot and agent packages) into a directory —
  the floor — then ``build_image`` with an empty cache (all of the recipe's formats). With
  ``--repeat`` above 1, ``cold_vs_floor`` gives the medians and the median of the ratios.
  The floor is a plain mmdebstrap, which makes the initramfs twice (the kernel's postinst, then
  the initramfs-tools trigger) and SSH host keys; imagekit's install does neither (the image is
  the same bytes). ``--lean-floor`` adds ``mmdebstrap_lean_floor`` to each pair: mmdebstrap with
  imagekit's hooks, the same work as imagekit's install step, and its ratio in ``cold_vs_floor``.
- ``warm_post_only``: again after changing only a post-command (package stage from the cache),
  ``--repeat`` times with another command each time; ``warm_post_only_median`` after them.
- ``reproducibility_check``: a build of the last warm rebuild's recipe as ``--check-reproducible``
  makes its second one (no cache at all: neither the package stage nor the qcow2 clusters,
  another workspace, pinned to the cold build's archive state), and whether its outputs are
  byte-identical to that warm rebuild's.
- ``sizes``: the qcow2 and the raw image's allocation.
- ``boot``: QEMU start → the agent's "context applied" line, via ``cloud.boottest`` (TCG).

Every timed line also gives ``cpu_seconds``: the CPU time of this process and its children
over the same span, which the machine's load does not inflate the way it does the wall time.

    .venv/bin/python bench/build.py [--no-boot] [--repeat 3] [--no-check] [--lean-floor]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, bench/ comes first on sys.path and bench/context.py would shadow the
# context package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from imagekit.agent import AGENT_PACKAGES  # noqa: E402
from imagekit.builder import BuildOptions, BuildResult, build_image, disk, rootfs, space  # noqa: E402
from imagekit.builder.workspace import remove_tree  # noqa: E402
from imagekit.recipe import load_recipe  # noqa: E402
from imagekit.recipe.model import Command, ContentSource, OutputFormat, Recipe  # noqa: E402
from imagekit.run import run  # noqa: E402
from imagekit.state import State  # noqa: E402

REPO = _HERE.parent
RECIPE = REPO / "recipes" / "debian-12-cloud.tdl"
MIB = 1024 * 1024


def emit(**fields: object) -> None:
    # The load average says how much else the machine was doing (the figures scale with it).
    print(json.dumps({"bench": "build", **fields, "load_avg_1m": round(os.getloadavg()[0], 1)}), flush=True)


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def floor(stage: rootfs.PackageStage, parent: Path, *, lean: bool = False) -> tuple[float, float]:
    """mmdebstrap alone, into the same place imagekit builds in (RAM or disk alike); ``lean``:
    with the work imagekit's install leaves out left out too (the kernel's postinst initramfs
    that the trigger makes again, the host keys customize removes)."""
    target = Path(tempfile.mkdtemp(prefix="imagekit-bench-floor-", dir=parent)) / "root"
    hooks = [f"--essential-hook={rootfs.NO_HOST_KEYS_HOOK}", f"--customize-hook={rootfs.ONE_INITRAMFS_HOOK}"]
    start, cpu = time.monotonic(), cpu_seconds()
    try:
        run(
            ["unshare", "--mount", "--propagation", "private",
             "mmdebstrap", "--mode=root", "--variant=minbase", f"--include={','.join(stage.packages)}",
             *(hooks if lean else ()), stage.suite, target, *stage.sources[:3]],
            env={"DEBIAN_FRONTEND": "noninteractive", **(rootfs.ONE_INITRAMFS_ENV if lean else {})},
        )  # fmt: skip
        return time.monotonic() - start, cpu_seconds() - cpu
    finally:
        remove_tree(target.parent)


def timed_build(recipe: Recipe, options: BuildOptions, state: State) -> tuple[float, float, BuildResult]:
    start, cpu = time.monotonic(), cpu_seconds()
    result = build_image(recipe, options, state=state)
    return time.monotonic() - start, cpu_seconds() - cpu, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-boot", action="store_true", help="skip the boot measurement")
    parser.add_argument(
        "--repeat", type=int, default=1, help="interleaved (floor, cold) pairs and warm rebuilds"
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the reproducibility check's cold build"
    )
    parser.add_argument(
        "--lean-floor", action="store_true",
        help="also measure mmdebstrap leaving out what imagekit's install leaves out, in each pair",
    )  # fmt: skip
    args = parser.parse_args()
    recipe = load_recipe(RECIPE)
    with tempfile.TemporaryDirectory(prefix="imagekit-bench-build-") as tmp:
        work = Path(tmp)
        cold, state = cold_pairs(recipe, work, max(1, args.repeat), lean_floor=args.lean_floor)
        changed, warm = warm_rebuilds(recipe, work, state, max(1, args.repeat))
        if not args.no_check:
            check_s, check_cpu, check = timed_build(
                changed,
                BuildOptions(output_dir=work / "check", use_cache=False, expect_archive=cold.inputs.archive),
                state,
            )
            emit(
                what="reproducibility_check", seconds=round(check_s, 1), cpu_seconds=round(check_cpu, 1),
                against="warm_post_only",
                identical=[o.checksums for o in check.outputs] == [o.checksums for o in warm.outputs],
            )  # fmt: skip
            shutil.rmtree(work / "check", ignore_errors=True)

        qcow2 = cold.output(OutputFormat.QCOW2)
        sizes = {
            "qcow2_mib": round(qcow2.stat().st_size / MIB, 1),
            "target_qcow2_mib": 200,
            "disk_mib": round(next(o.virtual_size for o in cold.outputs) / MIB),
        }
        if OutputFormat.RAW in {o.format for o in cold.outputs}:
            sizes["raw_allocated_mib"] = round(cold.output(OutputFormat.RAW).stat().st_blocks * 512 / MIB, 1)
        emit(what="sizes", **sizes)

        if not args.no_boot:
            boot(qcow2, state)
    return 0


def cold_pairs(recipe: Recipe, work: Path, repeat: int, *, lean_floor: bool) -> tuple[BuildResult, State]:
    """``repeat`` pairs of (floor, cold build), each build with a state of its own (an empty cache);
    the first build and its state are kept for what follows."""
    stage = rootfs.plan_stage(recipe, agent_packages=AGENT_PACKAGES)
    layout = disk.plan_layout(recipe.disk, recipe.firmware)
    work_mib, _ = space.estimate(layout.size_bytes // disk.MIB, recipe.formats)
    parent = space.choose_work_parent(None, work_mib)
    floors: list[float] = []
    leans: list[float] = []
    colds: list[float] = []
    kept: tuple[BuildResult, State] | None = None
    for n in range(repeat):
        floor_s, floor_cpu = floor(stage, parent)
        floors.append(floor_s)
        emit(
            what="mmdebstrap_floor", pair=n + 1, seconds=round(floor_s, 1), cpu_seconds=round(floor_cpu, 1),
            packages=len(stage.packages), workdir=str(parent),
        )  # fmt: skip
        if lean_floor:
            lean_s, lean_cpu = floor(stage, parent, lean=True)
            leans.append(lean_s)
            emit(
                what="mmdebstrap_lean_floor",
                pair=n + 1,
                seconds=round(lean_s, 1),
                cpu_seconds=round(lean_cpu, 1),
            )
        state = State.open(work / f"state{n}")
        cold_s, cold_cpu, cold = timed_build(recipe, BuildOptions(output_dir=work / f"cold{n}"), state)
        colds.append(cold_s)
        emit(
            what="cold", pair=n + 1, seconds=round(cold_s, 1), cpu_seconds=round(cold_cpu, 1),
            ratio_to_floor=round(cold_s / floor_s, 2), target_ratio=1.1,
            formats=[o.format.value for o in cold.outputs], cache_hit=cold.cache.hit, steps=cold.timings,
        )  # fmt: skip
        if kept is None:
            kept = (cold, state)
        else:
            shutil.rmtree(work / f"cold{n}", ignore_errors=True)
            shutil.rmtree(work / f"state{n}", ignore_errors=True)
    if repeat > 1:
        emit(
            what="cold_vs_floor", pairs=repeat, floor_median=round(statistics.median(floors), 1),
            cold_median=round(statistics.median(colds), 1),
            median_ratio=round(statistics.median(c / f for c, f in zip(colds, floors, strict=True)), 3),
            target_ratio=1.1,
            **({"lean_floor_median": round(statistics.median(leans), 1),
                "median_ratio_to_lean_floor": round(statistics.median(
                    c / f for c, f in zip(colds, leans, strict=True)), 3)} if leans else {}),
        )  # fmt: skip
    assert kept is not None
    return kept


def warm_rebuilds(recipe: Recipe, work: Path, state: State, repeat: int) -> tuple[Recipe, BuildResult]:
    """Rebuilds that change only a post-command (the package stage comes from the cache); the
    last one's recipe and result (its outputs kept) are returned."""
    seconds = []
    last: tuple[Recipe, BuildResult] | None = None
    for n in range(repeat):
        shutil.rmtree(work / "warm", ignore_errors=True)
        post = (
            *recipe.post_commands,
            Command("bench", ContentSource.RAW, f"echo {time.time()} > /etc/bench"),
        )
        changed = dataclasses.replace(recipe, post_commands=post)
        warm_s, warm_cpu, warm = timed_build(changed, BuildOptions(output_dir=work / "warm"), state)
        seconds.append(warm_s)
        emit(
            what="warm_post_only", run=n + 1, seconds=round(warm_s, 1), cpu_seconds=round(warm_cpu, 1),
            target_seconds=3, cache_hit=warm.cache.hit, formats=[o.format.value for o in warm.outputs],
            steps=warm.timings,
        )  # fmt: skip
        last = (changed, warm)
    if repeat > 1:
        emit(
            what="warm_post_only_median",
            runs=repeat,
            seconds=round(statistics.median(seconds), 1),
            target_seconds=3,
        )
    assert last is not None
    return last


def boot(image: Path, state: State) -> None:
    try:
        from cloud.boottest import BootTest, boot_test
    except ImportError:
        emit(what="boot", skipped="cloud.boottest not available")
        return
    result = boot_test(BootTest(image=image), state=state)
    emit(
        what="boot_to_context_applied", seconds=round(result.seconds, 1), target_seconds=25,
        accel=result.accel.value, firmware=result.firmware.value, agent=result.agent,
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
