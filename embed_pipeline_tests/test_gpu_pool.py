"""Steps in pool `gpu` never overlap, under the repo's dagster.yaml, even when launched together.

Each run is its own process on one persistent instance, as the daemon launches runs (threads in one
process would share Dagster's logging set-up, which is not built for that)."""

import json
import multiprocessing
import time
from pathlib import Path

import dagster as dg

from embed_pipeline.definitions import defs

REPO = Path(__file__).resolve().parents[1]
HOLD_S = 2.0


def run_step(home: str, name: str, pool: str, go, out: str) -> None:
    """In a child process: wait at the `go` barrier, then materialize one asset in `pool` that records its span."""

    @dg.asset(name=name, pool=pool)
    def holds_the_device() -> None:
        began = time.time()
        time.sleep(HOLD_S)
        Path(out).write_text(json.dumps([began, time.time()]))

    go.wait()
    with dg.DagsterInstance.from_config(home) as instance:
        assert dg.materialize([holds_the_device], instance=instance).success


def _launch_together(home: Path, pools: tuple[str, str]) -> list[list[float]]:
    """Two runs, one step each, released at the same moment; returns each step's [start, end]."""
    spawn = multiprocessing.get_context("spawn")
    go = spawn.Barrier(len(pools) + 1)  # the children and this process
    outs = [home / f"span_{pool}_{i}.json" for i, pool in enumerate(pools)]
    processes = [
        spawn.Process(target=run_step, args=(str(home), f"step_{i}", pool, go, str(out)))
        for i, (pool, out) in enumerate(zip(pools, outs, strict=True))
    ]
    for process in processes:
        process.start()
    go.wait(timeout=180)  # both children have imported everything: release them together
    for process in processes:
        process.join(timeout=180)
    assert [p.exitcode for p in processes] == [0, 0]
    return [json.loads(out.read_text()) for out in outs]


def _overlap(spans: list[list[float]]) -> float:
    (a0, a1), (b0, b1) = spans
    return min(a1, b1) - max(a0, b0)


def test_two_gpu_steps_launched_together_run_one_after_the_other(tmp_path):
    # The pool the real GPU steps declare, limited by the repo's instance settings.
    assert defs.resolve_asset_graph().get(dg.AssetKey("finetuned_model")).pools == {"gpu"}
    (tmp_path / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        # Create the storage and the pool's slots (from dagster.yaml's default_limit) once, here, as any earlier
        # run does in a deployment: on SQLite two processes doing it at the same moment can both allocate a
        # slot (a Dagster race, seen in CI), which would let the very first two GPU steps overlap.
        instance.event_log_storage.initialize_concurrency_limit_to_default("gpu")
        assert instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1

    serialised = _launch_together(tmp_path, ("gpu", "gpu"))
    # Control: the same two steps in pools of their own do overlap, so the assertion below can fail.
    parallel = _launch_together(tmp_path, ("cpu_a", "cpu_b"))

    assert _overlap(serialised) <= 0, serialised
    assert _overlap(parallel) > HOLD_S / 2, parallel
