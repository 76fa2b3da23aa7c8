"""The explorer caches one `Dashboards` per process and Streamlit runs every browser tab's script on threads of its
own: the same object must read from any thread (issue 16, item 1)."""

from __future__ import annotations

import threading

import pytest

from circuits.dashboards import Dashboards
from circuits.model import DATA_DIR

DB = DATA_DIR / "dashboards" / "organism.sqlite"

pytestmark = pytest.mark.skipif(not DB.exists(), reason=f"no dashboard database at {DB}")


def _in_thread(fn) -> list:
    """Run `fn` on a new thread; what it returned or raised."""
    out: list = []

    def run():
        try:
            out.append(fn())
        except Exception as e:  # noqa: BLE001 — reported to the test
            out.append(e)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    return out


def test_one_dashboards_object_reads_from_threads_one_after_another_and_at_once():
    db = Dashboards(DB)  # opened on this thread, like the explorer's cached object on the first tab's thread
    first = db.get("transcoder_L3", 0)
    for _ in range(3):  # later threads (a reloaded tab, a new tab), each after the previous one ended
        got = _in_thread(lambda: db.get("transcoder_L3", 0))
        assert not isinstance(got[0], Exception), got[0]
        assert got[0].label == first.label and len(got[0].examples) == len(first.examples)
    results: list = []
    barrier = threading.Barrier(4)

    def read(i: int):
        barrier.wait()
        for k in range(20):
            results.append(db.get("attn_sae_L1", (i * 20 + k) % 500).feature)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(4)]  # at once
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(results) == sorted((i * 20 + k) % 500 for i in range(4) for k in range(20))
    db.close()


def test_connections_of_ended_threads_are_closed():
    """A server runs a new script thread per rerun: their connections must not pile up."""
    db = Dashboards(DB)
    for _ in range(10):
        _in_thread(lambda: db.label("transcoder_L0", 1))
    _in_thread(lambda: db.label("transcoder_L0", 1))
    assert len(db._opened) <= 2  # this thread's and the last one's (closed when the next thread opens one)
    db.close()
    assert db.label("transcoder_L0", 1) is not None  # usable again after close: a fresh connection
    db.close()
