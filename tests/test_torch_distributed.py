"""Statistics across ranks (bnbench.torch.distributed): the merges against NumPy on the
union of the shards and the other schemes against hand computations; a real 2-process
gloo group against one process over the union (the merging-error analysis:
test_torch_shard_errors.py).

The 2-process tests run this file as a script (``python test_torch_distributed.py RANK
PORT OUT``), one child per rank, killed if they outlive the timeout."""

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnbench.torch")
from bnbench.torch import distributed as bd  # noqa: E402

nn = torch.nn
TIMEOUT = 90


pytestmark = pytest.mark.usefixtures("one_thread")


def shards(rng, sizes, offset=1e4):
    """Values ``(n, 3, 2)`` per shard: mean ``offset`` standard deviations away from 0,
    and a shift of a few standard deviations per shard."""
    scale = np.array([1.0, 0.01, 3.0])[None, :, None]
    return [(offset + rng.normal(size=(n, 3, 2)) + 2.0 * r) * scale for r, n in enumerate(sizes)]


def test_merge_equals_numpy_on_the_union(rng):
    parts_x = shards(rng, [1, 7, 300, 2])
    union = np.concatenate(parts_x).swapaxes(0, 1).reshape(3, -1)
    parts = [bd.moments_part(x) for x in parts_x]
    parts.insert(2, (0, np.zeros(3), np.zeros(3)))  # an empty rank changes nothing
    count, mean, m2 = bd.merge(parts)
    assert count == union.shape[1]
    np.testing.assert_allclose(mean, union.mean(1), rtol=1e-14)
    np.testing.assert_allclose(m2 / count, union.var(1), rtol=1e-10)
    m, v = bd.combine([bd.moments_part(torch.as_tensor(x)) for x in parts_x], "size_weighted")
    np.testing.assert_allclose(v, union.var(1), rtol=1e-10)
    # the naive merge (sums of squares) loses the variance at this offset
    s = sum(x.sum(axis=(0, 2)) for x in parts_x)
    q = sum((x**2).sum(axis=(0, 2)) for x in parts_x)
    naive = q / count - (s / count) ** 2
    assert np.max(np.abs(naive / union.var(1) - 1)) > 1e-8  # fails the rtol above
    with pytest.raises(ValueError, match="shape"):
        bd.merge([parts[0], (3, np.zeros(2), np.zeros(2))])


def test_schemes_against_hand_computations():
    # rank 0: values [0, 2] (mean 1, var 1); rank 1: [10] (mean 10, var 0), one channel
    parts = [bd.moments_part(np.array([[0.0], [2.0]])), bd.moments_part(np.array([[10.0]]))]
    expected = {
        "size_weighted": (4.0, (16 + 4 + 36) / 3),  # the union [0, 2, 10]
        "equal_moments": (5.5, (2 + 100) / 2 - 5.5**2),  # mean of E[x^2] minus mean^2
        "equal_mean_var": (5.5, 0.5),  # mean of the variances
        "rank0": (1.0, 1.0),
    }
    for scheme, (mean, var) in expected.items():
        m, v = bd.combine(parts, scheme)
        assert (float(m[0]), float(v[0])) == pytest.approx((mean, var), rel=1e-15), scheme
    with pytest.raises(ValueError, match="scheme must be one of"):
        bd.combine(parts, "mean")
    with pytest.raises(ValueError, match="count > 0"):
        bd.combine([*parts, (0, np.zeros(1), np.zeros(1))], "equal_moments")


def test_process_group_argument_errors():
    model, batches = cnn(), rank_batches(0)
    with pytest.raises(ValueError, match='"world" or a ProcessGroup'):
        bt.precise_statistics(model, batches, process_group="all")
    with pytest.raises(TypeError, match='"world" or a ProcessGroup, got int'):
        bt.population_statistics(model, batches, process_group=1)
    if not torch.distributed.is_initialized():
        with pytest.raises(RuntimeError, match="needs torch.distributed initialised"):
            bt.population_statistics(model, batches, process_group="world")


def cnn(extra=False, channels=4):
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, channels, 3), nn.BatchNorm2d(channels), nn.ReLU(),
              nn.Conv2d(channels, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
              nn.Linear(12, 5)]  # fmt: skip
    return nn.Sequential(*layers, *([nn.BatchNorm1d(5)] if extra else []))


def rank_batches(rank):
    """Rank 0: 3 batches of 8, rank 1: 1 batch of 5, of inputs far from 0."""
    x = torch.randn(29, 2, 6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x = x * 3 + 20
    return [(x[i : i + 8], None) for i in range(0, 24, 8)] if rank == 0 else [(x[24:], None)]


def snapshot(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return state, [m.training for m in model.modules()]


def untouched(model, snap):
    state, flags = snap
    return (all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
            and [m.training for m in model.modules()] == flags
            and not any(m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__
                        for m in model.modules()))  # fmt: skip


# two processes, gloo


def child(rank, port, out):
    """Both scenarios in one launch (starting a child costs seconds of imports)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist = torch.distributed
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for scenario in ("agree", "disagree"):
        torch.save(run_scenario(scenario, rank), Path(out) / f"{scenario}{rank}.pt")
    dist.destroy_process_group()
    # Skip the interpreter's finalization: with the group destroyed and the results
    # saved, torch 2.13's teardown there aborts now and then ("terminate called without
    # an active exception", SIGABRT; 2 in 76 launches of this pair here, always after
    # destroy_process_group had returned). An error above still exits non-zero.
    sys.stderr.flush()
    os._exit(0)


def run_scenario(scenario, rank):
    dist = torch.distributed
    res, batches = {}, rank_batches(rank)
    if scenario == "agree":
        model = cnn().double()
        sync = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(model))
        snaps = snapshot(model), snapshot(sync)
        for agg in bt.AGGREGATIONS:
            res[agg] = bt.precise_statistics(
                model, batches, aggregation=agg, process_group="world"
            )
        res["population"] = bt.population_statistics(model, batches, process_group="world")
        res["sync_precise"] = bt.precise_statistics(sync, batches, process_group=dist.group.WORLD)
        res["sync_population"] = bt.population_statistics(sync, batches, process_group="world")
        try:  # an error on rank 1 alone stops both ranks
            bt.population_statistics(model, batches if rank == 0 else [], process_group="world")
        except (ValueError, RuntimeError) as e:
            res["error"] = f"{type(e).__name__}: {e}"
        res["after"] = bt.precise_statistics(model, batches, process_group="world")
        res["samples"] = [res[k].samples for k in ("population", "sync_precise", "after")]
        res["untouched"] = untouched(model, snaps[0]) and untouched(sync, snaps[1])
        res = {k: dict(v) if isinstance(v, dict) else v for k, v in res.items()}
    else:  # rank 1: other channels in layer "1", an extra BN layer "8"
        model = cnn(extra=rank == 1, channels=4 if rank == 0 else 5).double()
        snap = snapshot(model)
        for what, fn in (("precise", bt.precise_statistics), ("pop", bt.population_statistics)):
            try:
                fn(model, batches, process_group="world")
            except ValueError as e:
                res[what] = str(e)
        res["untouched"] = untouched(model, snap)
    return res


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """``{scenario: [rank 0's results, rank 1's]}`` of one 2-process gloo run."""
    tmp_path = tmp_path_factory.mktemp("ranks")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), *sys.path]))  # fmt: skip
    logs = [open(tmp_path / f"stderr{r}.txt", "w") for r in (0, 1)]  # noqa: SIM115
    procs = [subprocess.Popen([sys.executable, __file__, str(r), port, str(tmp_path)],
                              env=env, stderr=logs[r]) for r in (0, 1)]  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the 2-process run hung for more than {TIMEOUT} s")
    finally:
        for p, log in zip(procs, logs, strict=True):
            if p.poll() is None:
                p.kill()
                p.wait()
            log.close()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r}: {(tmp_path / f'stderr{r}.txt').read_text()[-3000:]}"
    return {s: [torch.load(tmp_path / f"{s}{r}.pt", weights_only=False) for r in (0, 1)]
            for s in ("agree", "disagree")}  # fmt: skip


def assert_stats(got, ref):
    assert set(got) == set(ref)
    for name, (mean, var) in ref.items():
        torch.testing.assert_close(got[name][0], mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[name][1], var, rtol=1e-10, atol=1e-12)


def test_two_ranks_merge_exactly_uneven_batches(ranks):
    ranks = ranks["agree"]
    union = rank_batches(0) + rank_batches(1)
    model = cnn().double()
    ref = {agg: bt.precise_statistics(model, union, aggregation=agg) for agg in bt.AGGREGATIONS}
    ref["population"] = bt.population_statistics(model, union)
    ref["sync_precise"], ref["sync_population"] = ref["total_variance"], ref["population"]
    for key, stats in ref.items():
        assert_stats(ranks[0][key], stats)
        for name, (mean, var) in ranks[0][key].items():  # the same on both ranks
            assert torch.equal(mean, ranks[1][key][name][0]), (key, name)
            assert torch.equal(var, ranks[1][key][name][1]), (key, name)
    assert_stats(ranks[1]["after"], ref["total_variance"])
    for r in ranks:
        assert r["samples"] == [29, 29, 29] and r["untouched"]
    assert ranks[1]["error"].startswith("ValueError: population_statistics: batches yielded no")
    assert ranks[0]["error"].startswith(
        "RuntimeError: population_statistics failed on rank(s) [1]"
    )
    assert "rank 1: ValueError" in ranks[0]["error"]


def test_two_ranks_with_different_layers_raise_on_both(ranks):
    for r in ranks["disagree"]:
        assert r["untouched"]
        for what in ("precise", "pop"):
            assert "the ranks disagree on the BN layers" in r[what]
            assert "'1' has 4 channels on rank 0, 5 on rank 1" in r[what]
            assert "'8' only on rank 1" in r[what]


if __name__ == "__main__":
    child(int(sys.argv[1]), sys.argv[2], sys.argv[3])
