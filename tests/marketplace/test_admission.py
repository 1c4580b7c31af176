"""The gate for arriving entries (marketplace/admission.py): a batch checked in worker
processes gets the very verdicts of the same checks run here, entry by entry, in order."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from marketplace.admission import POOL_FROM, Checked, CheckPool, check
from marketplace.config import MarketConfig

from .entries import NOW, ago, image_metadata, make_ca, make_endorser, signed

CA = make_ca()
ALICE = make_endorser(CA, "alice@example.org", "Alice")
BOB = make_endorser(CA, "bob@example.org", "Bob")


def test_a_pool_gives_the_verdicts_of_checking_here(tmp_path: Path) -> None:
    config = MarketConfig(data_dir=tmp_path / "data")
    items = [
        signed(image_metadata(f"pool-{n}"), (ALICE, BOB)[n % 2], created=ago(hours=n)) for n in range(40)
    ]
    items[3] = items[3].replace(b"image pool-3", b"image pool-X")  # the signature no longer holds
    items[7] = signed(image_metadata("future"), ALICE, created=NOW + timedelta(hours=1))
    assert len(items) >= POOL_FROM
    pool = CheckPool(workers=2)
    try:
        pooled = pool.check_many(items, config, now=NOW)
    finally:
        pool.close()
    here = [check(data, config, NOW) for data in items]
    assert pooled == here
    assert isinstance(pooled[3], str) and "signature" in pooled[3]
    assert isinstance(pooled[7], str) and "in the future" in pooled[7]
    accepted = [v for v in pooled if isinstance(v, Checked)]
    assert len(accepted) == 38
    assert {v.claim.email for v in accepted} == {"alice@example.org", "bob@example.org"}
    assert all(v.row.identifier == v.key.identifier for v in accepted)


def test_warmed_workers_are_running_before_the_first_batch(tmp_path: Path) -> None:
    pool = CheckPool(workers=2)
    try:
        pool.warm()  # what a replica does before it asks the source for the first page
        started = pool._started()
        assert len(started._processes) == 2  # both forked, before any batch
        assert started.submit(sum, [1, 2]).result(timeout=60) == 3
        items = [signed(image_metadata(f"warm-{n}"), ALICE, created=ago(hours=n)) for n in range(POOL_FROM)]
        config = MarketConfig(data_dir=tmp_path / "data")
        assert pool.check_many(items, config, now=NOW) == [check(d, config, NOW) for d in items]
    finally:
        pool.close()
    single = CheckPool(workers=1)
    single.warm()  # one core: checked in this process, no pool to start
    assert single._pool is None
