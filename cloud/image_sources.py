"""Where a cloud user's images may come from: the site's registries and mirrors, the user's own
uploads, and (for an administrator) the site's image directories. Nothing else of the host.

    sources = site_sources(image_dirs=(Path("/srv/images"),))
    sources.registries        # ("http://127.0.0.1:8081",): $IMAGEKIT_MARKET or the default
    sources.origins           # the registries, then policy.cfg's [download] mirrors
    inside(path, dirs)        # a local image file within one of ``dirs`` (symlinks resolved)

The registry endpoint is the one the marketplace commands and the cloud core already use
(``marketplace.client.endpoint``: ``--endpoint``, ``$IMAGEKIT_MARKET``, the local server); the
mirrors are ``etc/policy.cfg``'s. A front door checks a location against them when it is
registered (before any connection); the cloud core checks again when it deploys
(``cloud/images.py``), and the download follows no redirect out of them (``SitePolicy.origins``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from marketplace.origins import within


@dataclass(frozen=True)
class SiteSources:
    registries: tuple[str, ...] = ()
    mirrors: tuple[str, ...] = ()
    image_dirs: tuple[Path, ...] = ()  # site images an administrator may register by path

    @property
    def origins(self) -> tuple[str, ...]:
        return self.registries + self.mirrors

    def on_registry(self, url: str) -> bool:
        return within(url, self.registries)


def site_sources(
    *, endpoint: str | None = None, policy: Path | None = None, image_dirs: Iterable[Path] = ()
) -> SiteSources:
    """The site's registry endpoint and mirrors, as ``vm create`` would use them (no policy
    file: no mirrors; a marketplace image is then refused when a VM needs it, as before)."""
    from marketplace.client import endpoint as registry_endpoint
    from marketplace.policy import default_policy_path, load_policy

    policy = policy if policy is not None else default_policy_path()
    return SiteSources(
        registries=(registry_endpoint(endpoint),),
        mirrors=load_policy(policy).mirrors if policy.is_file() else (),
        image_dirs=tuple(Path(d).resolve() for d in image_dirs),
    )


def inside(path: Path, directories: Iterable[Path]) -> bool:
    """Whether ``path``, symlinks resolved, is a file within one of ``directories``."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return real.is_file() and any(real.is_relative_to(d.resolve()) for d in directories)
