"""Day graphs on disk (atft_core.graph_store): a second process reads instead of rebuilding and
gets the same batches; keys change with every input; torn files and unwritable stores never fail
a run; prune keeps the newest and never touches foreign files."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch

import atft_core.dataset as ds
from atft_core.config import GraphConfig
from atft_core.dataset import DayBatchLoader, build_panel, graph_inputs
from atft_core.features import build_features
from atft_core.graph import build_day_graph
from atft_core.graph_store import GraphStore, graph_key, store_dir
from tests.test_dataset import CFG, make_quotes


@pytest.fixture(scope="module")
def panel():
    return build_panel(build_features(make_quotes(seed=3), CFG), CFG)


def fresh(panel, store):
    """The panel as a new process would have it: nothing in memory, this store on disk."""
    return dataclasses.replace(panel, graph_cache={}, graph_store=store)


def batches(panel, days):
    return list(DayBatchLoader(panel, days, CFG))


def test_a_second_process_reads_the_graphs_and_gets_identical_batches(panel, tmp_path, monkeypatch):
    days = panel.usable_dates()[30:46]
    first = fresh(panel, GraphStore(tmp_path / "graphs"))
    built = batches(first, days)
    assert first.graph_store.stats["writes"] == len(days) and first.graph_store.stats["hits"] == 0
    files = list((tmp_path / "graphs").glob("*/*.graph"))
    assert len(files) == len(days)

    def no_build(*a, **k):
        raise AssertionError("a stored day was rebuilt")

    monkeypatch.setattr(ds, "build_day_graphs", no_build)
    second = fresh(panel, GraphStore(tmp_path / "graphs"))
    read = batches(second, days)
    assert second.graph_store.stats == {"hits": len(days), "misses": 0, "bad": 0, "writes": 0, "write_errors": 0}
    for a, b in zip(built, read):
        assert torch.equal(a.edge_index, b.edge_index)
        assert torch.equal(a.edge_attr, b.edge_attr)  # rho bit for bit, same-sector recomputed
        assert a.edge_index.dtype == b.edge_index.dtype == torch.int64
    # and both equal the graph built directly, day by day
    t = panel.dates.index(read[0].dates[0])
    ref_ei, ref_ea = build_day_graph(*graph_inputs(panel, torch.nonzero(panel.usable[:, t]).squeeze(1), t,
                                                   CFG.graph), CFG.graph)
    sel = read[0].edge_index[0] < int(read[0].day_ptr[1])
    assert torch.equal(read[0].edge_index[:, sel], ref_ei) and torch.equal(read[0].edge_attr[sel], ref_ea)


def test_the_key_names_every_input():
    rng = np.random.default_rng(0)
    r = torch.from_numpy(rng.normal(size=(30, 60)).astype(np.float32))
    s = torch.from_numpy(rng.integers(0, 4, 30))
    g = GraphConfig()
    base = graph_key(r, s, g)
    assert len(base) == 40 and base == graph_key(r.clone(), s.clone(), g)
    r2 = r.clone()
    r2[7, 3] = float("nan")  # a missing return
    s2 = s.clone()
    s2[0] = -1  # a sector unknown
    others = [graph_key(r2, s, g), graph_key(r, s2, g), graph_key(r[:, 1:], s, g),
              graph_key(r[:29], s[:29], g), graph_key(r.double(), s, g),
              graph_key(r, s, GraphConfig(k=9)), graph_key(r, s, GraphConfig(sector_edges=False))]
    assert len({base, *others}) == 1 + len(others)


def test_a_torn_or_foreign_file_is_rebuilt_and_rewritten(panel, tmp_path):
    days = panel.usable_dates()[40:44]
    ref = batches(fresh(panel, None), days)
    store = GraphStore(tmp_path)
    batches(fresh(panel, store), days)
    files = sorted(tmp_path.glob("*/*.graph"))
    files[0].write_bytes(files[0].read_bytes()[:100])  # torn
    blob = bytearray(files[1].read_bytes())
    blob[40] ^= 1  # one flipped bit: the CRC no longer matches
    files[1].write_bytes(bytes(blob))
    again = GraphStore(tmp_path)
    got = batches(fresh(panel, again), days)
    assert again.stats["bad"] == 2 and again.stats["hits"] == 2 and again.stats["writes"] == 2
    for a, b in zip(ref, got):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.edge_attr, b.edge_attr)
    third = GraphStore(tmp_path)
    batches(fresh(panel, third), days)
    assert third.stats["hits"] == len(days)  # rewritten whole


def test_an_unwritable_store_is_skipped_not_fatal(panel, tmp_path, caplog):
    blocker = tmp_path / "graphs"
    blocker.write_text("a file where the folder should be")
    store = GraphStore(blocker)
    days = panel.usable_dates()[50:58]
    got = batches(fresh(panel, store), days)
    ref = batches(fresh(panel, None), days)
    assert store.stats["write_errors"] == len(days) and store.stats["writes"] == 0
    assert sum("not writable" in r.getMessage() for r in caplog.records) == 1  # said once
    assert blocker.read_text() == "a file where the folder should be"
    for a, b in zip(ref, got):
        assert torch.equal(a.edge_index, b.edge_index)


def test_wide_days_store_destinations_as_int32(tmp_path):
    n = 40_000
    ei = torch.tensor([[0, 0, 39_999], [1, 39_999, 0]])
    ea = torch.tensor([[0.5, 0.0], [-0.25, 1.0], [-0.25, 1.0]])
    sectors = torch.full((n,), -1)
    sectors[[0, 39_999]] = 4
    store = GraphStore(tmp_path)
    store.put("f" * 40, ei, ea, n=n)
    assert store._path("f" * 40).stat().st_size == 8 + 24 + 4 * (n + 1) + 8 * 3 + 4  # int32 destinations
    got = store.get("f" * 40, sectors)
    assert got is not None and torch.equal(got[0], ei) and torch.equal(got[1], ea)


def test_prune_drops_the_least_recently_used_and_only_its_own_files(tmp_path):
    store = GraphStore(tmp_path)
    keys = [f"{i:040x}" for i in range(6)]
    ei, ea = torch.tensor([[0, 1], [1, 0]]), torch.tensor([[0.9, 0.0], [0.9, 0.0]])
    for i, k in enumerate(keys):
        store.put(k, ei, ea, n=2)
        os.utime(store._path(k), (1_000 + i, 1_000 + i))  # oldest first
    assert store.get(keys[0], torch.tensor([-1, -1])) is not None  # a hit: now the most recent
    foreign = [tmp_path / "README.txt", tmp_path / keys[1][:2] / "notes.graph", tmp_path / "zz" / f"{keys[2]}.graph.bak"]
    for p in foreign:
        p.parent.mkdir(exist_ok=True)
        p.write_text("not the store's")
        os.utime(p, (1, 1))
    size = store._path(keys[0]).stat().st_size
    removed = store.prune(max_bytes=3 * size)
    assert removed == 3
    left = sorted(k for k in keys if store._path(k).exists())
    assert left == sorted([keys[0], keys[4], keys[5]])
    assert all(p.exists() for p in foreign)
    assert GraphStore(tmp_path / "never-created").prune(0) == 0


def test_the_deployment_store_lives_under_work_root():
    from atft_core.config import apply_overrides

    assert str(store_dir(apply_overrides(CFG, ["work_root=/srv/atft/work"]))) == "/srv/atft/work/graph_store"
