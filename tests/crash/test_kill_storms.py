"""SIGKILL storms against ModelStore save/prune, Archiver create/prune and Archiver.restore.

Children run from a fork server (``persistkit.testing.forkserver``) and get a
real SIGKILL at a seeded random moment. A child prints ``ACK ...`` only after
the call returned, so whatever it printed was acknowledged. After every kill:

* model store: every version on disk loads with the content it was saved with; an
  acknowledged version is missing only if ``keep`` newer versions exist (pruned by
  retention); ``load_latest()`` returns the newest acknowledged version (or a newer
  complete one whose ``ACK`` the kill cut off);
* archives: every archive on disk verifies; an acknowledged one is missing only if
  ``keep`` newer ones exist;
* restore: the target is absent or complete; at most the killed restore's own
  ``.<into>.restore-*`` temp remains, and the next restore removes it.

Temp files of killed writers are gone after the next save/create. 20 kills per
storm in the default suite; 300 with ``-m slow``.

Kill moments are timed from what a child printed, not from its start: a cycle
waits for 0 or 1 ``ACK`` lines (seeded), then a random delay, so progress (and,
for restores, a kill both before and after completion) is certain on a loaded
machine instead of likely on an idle one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

import persistkit as pk
from persistkit import naming
from persistkit.io.atomic import is_temp_name
from persistkit.testing.compare import first_difference
from persistkit.testing.forkserver import ForkServer, kill_cycle

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import storm_children as kids  # noqa: E402

SEED = 20_260_412
FAST, SLOW = 20, 300
_VERSION = re.compile(r"^(\d{4}-\d{2}-\d{2}_\d{6})(?:_(\d+))?\.models$")


def _server() -> ForkServer:
    paths = [str(HERE), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return ForkServer(["storm_children"], env=env)


def _temps(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if is_temp_name(p.name))


def _cycle(server: ForkServer, target: str, argv: list[str], after: float, acks: int = 0) -> list[str]:
    """One child, killed ``after`` seconds past its ``acks``-th ACK line (0: past its start)."""
    code, lines = kill_cycle(server, f"storm_children:{target}", argv, after=after, acks=acks)
    errors = [line for line in lines if line.startswith("ERROR")]
    assert not errors, f"child failed before the kill: {errors}"
    assert code in (-9, 0), f"child exited with {code}: {lines[-3:]}"
    return [line for line in lines if line.startswith("ACK ")]


# -- (a) ModelStore.save + prune ------------------------------------------------------------


def _version_key(path: Path) -> tuple[str, int]:
    m = _VERSION.match(path.name)
    assert m, path
    return m[1], int(m[2] or 0)


def model_store_storm(tmp_path: Path, kills: int) -> None:
    root = tmp_path / "models"
    store = pk.ModelStore(root)
    rng = random.Random(SEED)
    acked: dict[Path, int] = {}
    cut_acks = temps_seen = 0
    bound = kids.KEEP
    waited = 0  # ACKs the cycles waited for: the least progress there can be
    start = time.perf_counter()
    with _server() as server:
        for cycle in range(kills):
            wait = rng.choice((0, 1))
            waited += wait
            lines = _cycle(
                server, "model_store_child", [str(root), str(cycle * 1000)], rng.uniform(0.0, 0.4), wait
            )
            for line in lines:
                _, path, seq = line.split()
                acked[Path(path)] = int(seq)
            temps_seen += bool(_temps(root))
            versions = store.versions(kids.SYMBOL, kids.AGENT, kids.TIMEFRAME)
            for path in versions:  # atomic: whatever is visible is whole, with its own content
                bundle = pk.load_bundle(path)
                seq = bundle.metadata["seq"]
                assert acked.get(path, seq) == seq, (
                    f"cycle {cycle}: the name {path.name} was reused: acknowledged with seq {acked[path]}, "
                    f"now holds seq {seq} (a later save took the name of a pruned version)"
                )
                diff = first_difference(kids.models_for(seq), bundle.models)
                assert diff is None, f"cycle {cycle}: {path.name}: {diff}"
            for path in acked:
                if path not in versions:
                    newer = [v for v in versions if _version_key(v) > _version_key(path)]
                    assert len(newer) >= kids.KEEP, (
                        f"cycle {cycle}: acknowledged {path.name} is gone, but only {len(newer)} newer versions exist"
                    )
            # ACK, prune, next save, kill: at most KEEP + 2 after an acknowledged save, one more per cycle without
            bound = kids.KEEP + 2 if lines else bound + 1
            assert len(versions) <= bound, f"cycle {cycle}: {len(versions)} versions kept (keep={kids.KEEP})"
            if acked:
                newest = max(acked, key=_version_key)
                latest = store.load_latest(kids.SYMBOL, kids.AGENT, kids.TIMEFRAME)
                assert latest.path == versions[-1]
                newest_saved = max(pk.load_bundle(v).metadata["seq"] for v in versions)
                assert latest.metadata["seq"] == newest_saved, (
                    f"cycle {cycle}: load_latest() gave seq {latest.metadata['seq']} ({latest.path.name}), but "
                    f"seq {newest_saved} was saved later: version names do not sort in save order"
                )
                if latest.path != newest:
                    assert _version_key(latest.path) > _version_key(newest), (
                        f"cycle {cycle}: load_latest() gave {latest.path.name}, older than acknowledged {newest.name}"
                    )
                    cut_acks += 1
    assert len(acked) >= waited > 0
    store.save(kids.models_for(-1), symbol=kids.SYMBOL, agent=kids.AGENT, timeframe=kids.TIMEFRAME)
    assert _temps(root) == [], "temp files of killed saves survived the next save"
    store.prune(keep=kids.KEEP)
    assert len(store.versions(kids.SYMBOL, kids.AGENT, kids.TIMEFRAME)) == kids.KEEP
    print(
        f"\nModelStore storm: {kills} kills, {len(acked)} acknowledged versions, {cut_acks} newer unacknowledged "
        f"complete versions, temps left by a kill in {temps_seen} cycles (all removed by the next save), "
        f"{(time.perf_counter() - start) / kills * 1000:.0f} ms per cycle"
    )


def test_model_store_storm(tmp_path):
    model_store_storm(tmp_path, FAST)


@pytest.mark.slow
def test_model_store_storm_300(tmp_path):
    model_store_storm(tmp_path, SLOW)


# -- (b) Archiver.create + prune ---------------------------------------------------------------


def _workspace(root: Path, files: int, size: int) -> None:
    rng = random.Random(5)
    for i in range(files):
        sub = root / ("logs", "models", "config")[i % 3] / f"d{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(rng.randbytes(size))
    (root / "logs" / "latest").symlink_to("d0")


def archive_storm(tmp_path: Path, kills: int) -> None:
    root = tmp_path / "ws"
    _workspace(root, files=24, size=4096)
    archiver = pk.Archiver(root, keep=kids.KEEP)
    rng = random.Random(SEED + 1)
    acked: list[Path] = []
    temps_seen = 0
    bound = kids.KEEP
    waited = 0
    start = time.perf_counter()
    with _server() as server:
        for cycle in range(kills):
            wait = rng.choice((0, 1))
            waited += wait
            lines = _cycle(server, "archive_child", [str(root)], rng.uniform(0.0, 0.3), wait)
            acked += [Path(line.split()[1]) for line in lines]
            temps_seen += bool(_temps(archiver.archive_dir))
            present = archiver.list()
            for path in present:
                report = archiver.verify(path)
                assert report.ok, f"cycle {cycle}: {path.name} does not verify: {report.problems[:3]}"
            for path in acked:
                if path not in present:
                    order = naming.Stamped(f"{archiver.prefix}_", ".zip").sort_key
                    newer = [p for p in present if order(p.name) > order(path.name)]
                    assert len(newer) >= kids.KEEP, (
                        f"cycle {cycle}: acknowledged {path.name} is gone, but only {len(newer)} newer archives exist"
                    )
            # create() prunes after its archive is in place: a kill in between leaves one extra, which
            # the next completed create() removes (bounded, not exact, across consecutive such kills)
            bound = kids.KEEP + 1 if lines else bound + 1
            assert len(present) <= bound, f"cycle {cycle}: {len(present)} archives kept (keep={kids.KEEP})"
    assert len(acked) >= waited > 0
    archiver.create()
    assert _temps(archiver.archive_dir) == [], "temp files of killed creates survived the next create"
    assert len(archiver.list()) == kids.KEEP, "the next create() did not prune back to keep"
    print(
        f"\nArchiver storm: {kills} kills, {len(acked)} acknowledged archives, temps left by a kill in "
        f"{temps_seen} cycles (all removed by the next create), {(time.perf_counter() - start) / kills * 1000:.0f} "
        "ms per cycle"
    )


def test_archive_storm(tmp_path):
    archive_storm(tmp_path, FAST)


@pytest.mark.slow
def test_archive_storm_300(tmp_path):
    archive_storm(tmp_path, SLOW)


# -- (c) Archiver.restore killed midway ----------------------------------------------------------


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes().hex()[:64] + f":{p.stat().st_size}"
    return out


def restore_storm(tmp_path: Path, kills: int) -> None:
    root = tmp_path / "ws"
    _workspace(root, files=60, size=64 * 1024)
    archive = pk.Archiver(root, keep=kids.KEEP).create()
    reference = tmp_path / "reference"
    began = time.perf_counter()
    pk.Archiver(root).restore(archive, reference)
    duration = time.perf_counter() - began
    expected = _tree(reference)
    into = tmp_path / "restored"
    rng = random.Random(SEED + 2)
    problems: list[str] = []
    complete = absent = 0
    start = time.perf_counter()
    with _server() as server:
        for cycle in range(kills):
            before = {p.name for p in tmp_path.glob(".restored.restore-*")}
            # every fifth cycle is killed at once (before completion), every fifth after its ACK
            # (after completion), whatever the machine's load; the rest at a random moment
            after, wait = {0: (0.0, 0), 1: (0.0, 1)}.get(cycle % 5, (rng.uniform(0.0, duration * 1.5), 0))
            lines = _cycle(server, "restore_child", [str(archive), str(into)], after, wait)
            temps = {p.name for p in tmp_path.glob(".restored.restore-*")}
            finished = into.exists()  # a restore killed before its cleanup step cannot have cleaned
            if finished:
                got = _tree(into)
                assert got == expected, f"cycle {cycle}: a partial restore target is in place"
                complete += 1
                shutil.rmtree(into)
            else:
                assert not lines, f"cycle {cycle}: restore acknowledged, but {into.name}/ is not there"
                absent += 1
            stale = before & temps
            if stale and finished:
                problems.append(f"cycle {cycle}: a restore did not remove earlier temps {sorted(stale)}")
    pk.Archiver(root).restore(archive, into)
    left = sorted(p.name for p in tmp_path.glob(".restored.restore-*"))
    print(
        f"\nrestore storm: {kills} kills, {complete} complete targets, {absent} absent; "
        f"{len(problems)} cycles kept stale temps; after the final restore: {len(left)} temps left; "
        f"{(time.perf_counter() - start) / kills * 1000:.0f} ms per cycle"
    )
    assert not left, f"the next restore did not remove the temps of killed restores: {left[:5]} ({len(left)})"
    assert not problems, problems[:5]
    assert complete and absent, "the kills never hit mid-restore (or never missed): retune the timing"


def test_restore_storm(tmp_path):
    restore_storm(tmp_path, FAST)


@pytest.mark.slow
def test_restore_storm_300(tmp_path):
    restore_storm(tmp_path, SLOW)
