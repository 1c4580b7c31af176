"""EC2 tags: key/value pairs on a user's instances and images (``CreateTags``, ``DescribeTags``,
``DeleteTags``, ``TagSpecification`` of ``RunInstances``).

    tags = TagStore(state)
    tags.put([("i-00000003", "Name", "web")])
    tags.of(["i-00000003"])     # {"i-00000003": [("Name", "web")]}

A tag belongs to its resource: whoever may see the resource may see and change its tags, and
nobody else (the service checks the resource before calling here, so another user's resource is
answered as one that does not exist). Values are kept as sent, never interpreted. Tags count
in the pool's version (``cloud/store.py``): DescribeInstances shows them (``tagSet``; a
``Name`` tag is the name EC2 clients show), so an answer reused after a tag changed would be
stale. Limits are EC2's: keys of 1-128 characters not starting with ``aws:``, values of at most
256, 50 tags per resource.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cloud.store  # noqa: F401  (the pool version table the triggers below move)
from cloud.ec2.errors import Ec2Error, invalid_parameter
from cloud.ec2.responses import XML_UNSAFE
from imagekit.state import State

MAX_KEY, MAX_VALUE, MAX_PER_RESOURCE = 128, 256, 50
RESOURCE_TYPES = {"i": "instance", "ami": "image"}


@dataclass(frozen=True)
class Tag:
    key: str
    value: str


def check_tag(key: str, value: str) -> Tag:
    if not 1 <= len(key) <= MAX_KEY or not key.isprintable():
        raise invalid_parameter(f"Tag keys must be 1-{MAX_KEY} printable characters")
    if key.lower().startswith("aws:"):
        raise invalid_parameter("Tag keys starting with 'aws:' are reserved for internal use")
    if len(value) > MAX_VALUE:
        raise invalid_parameter(f"Tag values must be at most {MAX_VALUE} characters")
    if XML_UNSAFE.search(value):  # it could never be listed (DescribeTags, DescribeInstances)
        raise invalid_parameter("Tag values cannot hold NUL or control characters")
    return Tag(key, value)


def _numbered_keys(params: Mapping[str, str], prefix: str) -> list[tuple[int, str]]:
    """``(N, PREFIX.N)`` of every ``PREFIX.N.Key``, in numeric order."""
    found = []
    for name in params:
        head, _, field = name.rpartition(".")
        stem, _, number = head.rpartition(".")
        if stem == prefix and field == "Key" and number.isascii() and number.isdigit():
            found.append((int(number), head))
    return sorted(found)


def parse_tags(params: Mapping[str, str], prefix: str) -> list[Tag]:
    """``PREFIX.N.Key`` / ``PREFIX.N.Value`` in numeric order (a missing value is empty)."""
    return [
        check_tag(params[f"{head}.Key"], params.get(f"{head}.Value", ""))
        for _, head in _numbered_keys(params, prefix)
    ]


def tag_deletions(params: Mapping[str, str]) -> list[tuple[Tag, bool]]:
    """DeleteTags' ``Tag.N``: each tag, and whether a value was given (then only a tag with
    that value goes, an empty value included)."""
    return [
        (Tag(params[f"{head}.Key"], params.get(f"{head}.Value", "")), f"{head}.Value" in params)
        for _, head in _numbered_keys(params, "Tag")
    ]


def resource_type(resource: str) -> str:
    return RESOURCE_TYPES.get(resource.split("-", 1)[0], "")


class TagStore:
    def __init__(self, state: State) -> None:
        self.state = state

    def put(self, resources: Sequence[str], tags: Sequence[Tag]) -> None:
        """Set ``tags`` on every resource (a key already there takes the new value)."""
        with self.state.transaction() as db:
            db.executemany(
                "INSERT INTO ec2_tags (resource, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (resource, key) DO UPDATE SET value = excluded.value",
                [(r, t.key, t.value) for r in resources for t in tags],
            )
            for resource in resources:
                count = db.execute("SELECT COUNT(*) FROM ec2_tags WHERE resource = ?", (resource,))
                if count.fetchone()[0] > MAX_PER_RESOURCE:
                    raise Ec2Error("TagLimitExceeded", f"A resource has at most {MAX_PER_RESOURCE} tags")

    def delete(self, resources: Sequence[str], tags: Sequence[tuple[Tag, bool]]) -> None:
        """Remove the keys (all of a resource's tags when ``tags`` is empty); a tag given with a
        value (``(tag, True)``) goes only while it has that value, as in EC2."""
        with self.state.transaction() as db:
            for resource in resources:
                if not tags:
                    db.execute("DELETE FROM ec2_tags WHERE resource = ?", (resource,))
                for tag, by_value in tags:
                    db.execute(
                        "DELETE FROM ec2_tags WHERE resource = ? AND key = ? AND (? = 0 OR value = ?)",
                        (resource, tag.key, int(by_value), tag.value),
                    )

    def forget(self, resource: str) -> None:
        """A resource that is gone for good (its id may be handed out again) loses its tags."""
        with self.state.transaction() as db:
            db.execute("DELETE FROM ec2_tags WHERE resource = ?", (resource,))

    def of(self, resources: Iterable[str] | None = None) -> dict[str, list[Tag]]:
        """The tags of ``resources`` (of every resource when None), sorted by key."""
        with self.state.read() as db:
            rows = db.execute("SELECT resource, key, value FROM ec2_tags ORDER BY resource, key").fetchall()
        wanted = None if resources is None else set(resources)
        out: dict[str, list[Tag]] = {}
        for row in rows:
            if wanted is None or row["resource"] in wanted:
                out.setdefault(row["resource"], []).append(Tag(row["key"], row["value"]))
        return out
