"""What one cloud user may name and use, among users who do not trust each other.

    identity = cloud_identity(user)                  # $UID/$UNAME/$GID/$GNAME of their VMs
    check_resource_name("network", name, taken=site_network_names(state))
    template = pin_networks(rendered, state, user)  # every NIC by NETWORK_ID, one they may use

**Identity.** A front-door VM belongs to the cloud user, so its ``$UID``/``$UNAME`` are the
user's id and name, and ``$GID``/``$GNAME`` oned's default groups: ``oneadmin`` (0) for an
administrator, ``users`` (1) for everyone else (OpenNebula's ``GroupPool``). The same identity
scopes ``$<vmid>.VAR`` to the user's own VMs (``context/render.py``).

**Networks by id.** A network name can be read as an id (``onevnet`` and ``context.leases``
read an all-digit name as one) and can be anyone's, so the template a front door deploys names
every NIC's network by ``NETWORK_ID`` only. A request's NIC carries the id the user was allowed
to use; a name an instance type writes (``"Public EC2"``) is the site's: it resolves among the
site's networks only (those no cloud user created), never to a user's.

**Names that cannot impersonate.** A cloud user's network, image or key pair cannot be called
all digits (it would read as an id) nor by a reserved or site name (``Public EC2``, any network
the site made).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from cloud.quotas import QuotaExceeded
from cloud.users import User as CloudUser
from context.leases import NetworkStore
from context.model import Attribute, Template, Vector, VirtualNetwork
from context.vm import User
from imagekit.errors import InputError
from imagekit.state import State

# The networks cloud users created (OCCI's POST /network) are the ``occi_networks`` rows, with
# their owner; every other network in the core's store is the site's.

# oned's default groups (GroupPool::ONEADMIN_ID / USERS_ID).
ADMIN_GROUP = (0, "oneadmin")
USERS_GROUP = (1, "users")
# Names the site's own templates use whether or not the network exists yet.
RESERVED_NAMES = frozenset({"Public EC2"})
MAX_OWN_NETWORKS = 100  # a cloud user's own networks at once (OCCI POST /network; 1.4 had no bound)


def cloud_identity(user: CloudUser) -> User:
    gid, gname = ADMIN_GROUP if user.admin else USERS_GROUP
    return User(user.id, user.name, gid, gname)


def check_resource_name(kind: str, name: str, *, taken: Iterable[str] = (), admin: bool = False) -> str:
    """``name`` for a new ``kind`` of a cloud user, or an InputError: no control or invisible
    characters, never all digits, and, unless an administrator names it, neither reserved nor
    one of the site's ``taken`` names (compared as a reader sees them: :func:`_as_read`)."""
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise InputError(f"a {kind} name cannot hold control or invisible characters")
    if _as_read(name).isdigit():
        raise InputError(f"a {kind} name cannot be a number: it would read as an id")
    if admin:
        return name
    folded = _as_read(name)
    if any(folded == _as_read(reserved) for reserved in (*RESERVED_NAMES, *taken)):
        raise InputError(f"the {kind} name {name!r} is reserved by the site")
    return name


def _as_read(name: str) -> str:
    """``name`` as a reader would not tell it apart: compatibility forms folded (NFKC: a
    no-break space or full-width letters), blanks collapsed, case ignored."""
    return " ".join(unicodedata.normalize("NFKC", name).split()).casefold()


def network_owners(state: State) -> dict[int, int | None]:
    """Network id → the id of the cloud user who created it (None: a user no longer known, so
    nobody's); networks not listed are the site's."""
    with state.read() as db:
        return {r["id"]: r["owner_id"] for r in db.execute("SELECT id, owner_id FROM occi_networks")}


def check_network_room(state: State, user: CloudUser) -> None:
    """Refuse (QuotaExceeded: OCCI's 403) a new network of ``user`` past MAX_OWN_NETWORKS."""
    if user.admin:
        return
    with state.read() as db:
        own = db.execute("SELECT COUNT(*) FROM occi_networks WHERE owner_id = ?", (user.id,)).fetchone()[0]
    if own >= MAX_OWN_NETWORKS:
        raise QuotaExceeded("networks", f"a user has at most {MAX_OWN_NETWORKS} networks of their own")


def site_networks(state: State) -> list[VirtualNetwork]:
    owners = network_owners(state)
    return [n for n in NetworkStore(state).list() if n.id not in owners]


def site_network_names(state: State) -> list[str]:
    return [n.name for n in site_networks(state)]


def usable_network_ids(state: State, user: CloudUser) -> set[int]:
    """The networks ``user`` may attach a VM to: the site's and their own (every one: admin)."""
    owners = network_owners(state)
    return {
        n.id
        for n in NetworkStore(state).list()
        if n.id is not None and (user.admin or owners.get(n.id, user.id) == user.id)
    }


def pin_networks(template: Template, state: State, user: CloudUser) -> Template:
    """``template`` with every NIC naming its network by ``NETWORK_ID`` alone, one ``user`` may
    use; a NIC's ``NETWORK`` name is looked up among the site's networks only."""
    usable = usable_network_ids(state, user)
    by_site_name = {n.name: n.id for n in site_networks(state)}
    attributes: list[Attribute] = []
    for attr in template:
        if attr.name == "NIC" and isinstance(attr.value, Vector):
            attr = Attribute(attr.name, _pinned(attr.value, usable, by_site_name), attr.line, attr.column)
        attributes.append(attr)
    return Template(tuple(attributes), template.source)


def _pinned(nic: Vector, usable: set[int], by_site_name: dict[str, int | None]) -> Vector:
    net_id, name = nic.get("NETWORK_ID"), nic.get("NETWORK")
    if net_id:
        if not (net_id.isascii() and net_id.isdigit()) or int(net_id) not in usable:
            raise InputError(f"NIC: no network {net_id!r} this user may use")
        number = int(net_id)
    elif name:
        found = by_site_name.get(name)
        if found is None:
            raise InputError(f"NIC: the site has no network {name!r}")
        number = found
    else:
        return nic  # no network (NIC = [ MAC = … ]): user-mode, nothing to pin
    items = [(k, v) for k, v in nic.items if k not in ("NETWORK", "NETWORK_ID")]
    return Vector((("NETWORK_ID", str(number)), *items))
