"""resume_points: real training jobs crashed at every operation of every checkpoint save, resumed, judged.

Each job is a real script in tests/testing/training/ run as its own process (the reference
run under strace, each resume isolated). The numpy jobs start in a fraction of a second,
so most verdict paths are proven on them; torch, Lightning and SB3 jobs are the users' own.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from persistkit.testing.fs.model import FsModel
from persistkit.testing.fs.snapshot import Snapshot
from persistkit.testing.fs.states import CrashSimulator
from persistkit.testing.observe import NotJudgeable, observe_command
from persistkit.testing.resume import (
    DUPLICATED_WORK,
    HARD_FAIL,
    LOST_WORK,
    PASS,
    SILENT_DIVERGENCE,
    TrainingNotReproducible,
)
from persistkit.testing.training import Protocol, parse_output, report_weights, weights_difference

HERE = Path(__file__).resolve().parent / "training"
NUMPY_LOOP = str(HERE / "numpy_loop.py")
TORCH_LOOP = str(HERE / "torch_loop.py")


def numpy_job(save: str, *extra: str) -> list[str]:
    return [sys.executable, NUMPY_LOOP, "--out", "{dir}", "--save", save, *extra]


# -- the protocol ----------------------------------------------------------------------------------


def test_protocol_reads_resume_steps_and_weights():
    text = "loading\nresumed from step 5\nSTEP 6\nSTEP 7\nepoch done\nWEIGHTS abc123\n"
    out = parse_output(text, Protocol.of(None, None))
    assert (out.resumed, out.steps, out.weights_line, out.started_at, out.repeated) == (
        5,
        (6, 7),
        "abc123",
        5,
        [],
    )
    out = parse_output("STEP 3\nSTEP 4\nSTEP 4\n", Protocol.of(None, None))
    assert out.started_at == 2 and out.repeated == [4]  # no resume line: the first STEP says where it started
    out = parse_output("RESUME 2\nSTEP 2\nSTEP 3\n", Protocol.of(None, None))
    assert out.repeated == [2]  # resumed after step 2, then counted it again
    own = parse_output(
        "[ckpt] restored epoch=7\niter 8 loss=0.1\n", Protocol.of(r"^iter (\d+)", r"restored epoch=(\d+)")
    )
    assert (own.resumed, own.steps) == (7, (8,))


def test_protocol_patterns_are_checked():
    with pytest.raises(ValueError, match="needs one group"):
        Protocol.of(r"STEP \d+", None)
    with pytest.raises(ValueError, match="not a regular expression"):
        Protocol.of(None, "resumed (")


def test_weights_difference_bit_exact_and_tolerance():
    torch = pytest.importorskip("torch")
    a = {"layer": torch.tensor([1.0, 2.0, float("nan")]), "step": 3}
    assert weights_difference(a, {"layer": torch.tensor([1.0, 2.0, float("nan")]), "step": 3}) == (None, 0.0)
    near = {"layer": torch.tensor([1.0, 2.0 + 1e-6, float("nan")]), "step": 3}
    problem, diff = weights_difference(a, near)
    assert problem is not None and "layer" in problem and diff == pytest.approx(1e-6, rel=0.1)
    assert weights_difference(a, near, tolerance=1e-5)[0] is None
    assert "step" in weights_difference(a, {"layer": a["layer"], "step": 4})[0]
    assert "missing" in weights_difference(a, {"layer": a["layer"]})[0]
    # bit-exact means bits: -0.0 is not 0.0, float32 is not float64
    assert weights_difference(np.array([0.0]), np.array([-0.0]))[0] is not None
    assert weights_difference(np.array([1.0]), np.array([1.0], dtype=np.float32))[0] is not None
    # WEIGHTS lines: digests compare as text, numbers within the tolerance
    assert weights_difference("3f2a", "3f2a")[0] is None and weights_difference("3f2a", "3f2b")[0] is not None
    assert weights_difference("0.5 1.25", "0.5 1.2500001", tolerance=1e-6)[0] is None
    assert weights_difference("0.5 1.25", "0.5 1.26", tolerance=1e-6)[0] is not None


def test_report_weights_prints_one_digest_line(capfd):
    report_weights({"w": np.arange(3.0)})
    line = capfd.readouterr().out
    assert line.startswith("WEIGHTS ") and len(line.split()[1]) == 64
    report_weights({"w": np.arange(3.0)})
    assert capfd.readouterr().out == line  # the same weights, the same line


# -- the crash simulator's windows (the seam resume_points uses) -----------------------------------------


def test_within_windows_crash_each_save_at_its_own_operations(tmp_path):
    """Two saves without fsync in one log: each save's end is a power-loss crash point of its own."""
    root = tmp_path / "root"
    root.mkdir()
    code = (
        "import os, sys\n"
        "d = sys.argv[1]\n"
        "for i in (1, 2):\n"
        "    with open(os.path.join(d, 'c.tmp'), 'w') as f: f.write(str(i) * 5000)\n"
        "    os.replace(os.path.join(d, 'c.tmp'), os.path.join(d, 'c'))\n"
        "    print('STEP', i, flush=True)\n"
    )
    initial = Snapshot.take(root)
    run, obs = observe_command([sys.executable, "-c", code, str(root)], str(root))
    assert run.returncode == 0
    model = FsModel(initial, obs.ops)
    sim = CrashSimulator(initial, obs.ops, model=model)
    relevant = [i for i, keep in enumerate(model.relevant) if keep]
    first = (relevant[0], relevant[len(relevant) // 2 - 1] + 1)
    assert model.ops[first[1] - 1].kind == "replace"
    whole = {c.plan.k for c in sim.candidates("power-loss")}
    assert first[1] not in whole  # without windows: no durability point there, only the end of the log
    inside = sim.candidates("power-loss", within=[first])
    assert {c.plan.k for c in inside} == {first[1]}
    assert any("c.tmp" in c.summary for c in inside)  # states that lose the first save's data
    process = sim.candidates("process", within=[first])
    assert {c.plan.k for c in process} == set(range(first[0], first[1] + 1))
    assert any(c.losses and c.losses[0].how == "torn" for c in process)  # the 5000-byte write, torn
    with pytest.raises(ValueError, match="windows must lie within"):
        sim.candidates("process", within=[(0, len(model.ops) + 1)])
    sim.close()
    obs.close()
    initial.close()


# -- verdicts on real jobs --------------------------------------------------------------------------


def test_numpy_in_place_save_fails_every_way_a_crash_can_break_it(resume_points, tmp_path):
    report = resume_points(numpy_job("inplace"), check=False)
    counts = report.counts()
    assert report.states == len(report.results) > 40 and len(report.saves) == 4
    assert [s.step for s in report.saves] == [5, 10, 15, 20] and all(s.calibrated for s in report.saves)
    # a kill while np.save rewrites the file: the only checkpoint is gone, np.load raises
    assert report.counts("process")[HARD_FAIL] > 0
    # power loss keeps pages of an unsynced .npy in any order: zeros load without an error
    assert report.counts("power-loss")[SILENT_DIVERGENCE] > 0
    assert counts[DUPLICATED_WORK] > 0 and counts[PASS] > 0
    for r in report.failures:
        assert r.fix and r.detail and r.description
    silent = next(r for r in report.results if r.verdict == SILENT_DIVERGENCE)
    assert "max |diff|" in silent.detail or "WEIGHTS" in silent.detail
    assert silent.losses and silent.model == "power-loss"
    dup = next(r for r in report.results if r.verdict == DUPLICATED_WORK)
    assert dup.resumed_from < dup.committed and "ran twice" in dup.detail
    # one shrunk repro folder per failing verdict
    assert {os.path.basename(p).split("-save")[0] for p in report.repros} == {
        v.lower() for v in (HARD_FAIL, SILENT_DIVERGENCE, DUPLICATED_WORK)
    }
    for folder in map(Path, report.repros):
        readme = (folder / "README.md").read_text()
        assert "Fix: " in readme and "sh reproduce.sh" in readme
        assert (folder / "script" / "numpy_loop.py").read_bytes() == Path(NUMPY_LOOP).read_bytes()
        assert (folder / "state").is_dir()


def test_a_repro_folder_reproduces_on_its_own(resume_points, tmp_path):
    report = resume_points(numpy_job("inplace"), models=["process"], check=False)
    folder = Path(next(p for p in report.repros if "hard_fail" in p))
    moved = tmp_path / "elsewhere"
    folder.rename(moved)  # a standalone folder: nothing refers back to the run
    out = subprocess.run(["sh", str(moved / "reproduce.sh")], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0, out.stdout
    assert "EOFError" in out.stdout + out.stderr or "ValueError" in out.stdout + out.stderr


def test_failures_raise_naming_the_state_the_fix_and_the_repro(resume_points):
    with pytest.raises(AssertionError) as info:
        resume_points(numpy_job("inplace"), models=["process"], max_states=8)
    text = str(info.value)
    assert "First HARD_FAIL" in text and "Fix: " in text and "repro: " in text
    assert "| process |" in text and "Checkpoint saves:" in text


def test_numpy_temp_and_replace_without_fsync_fails_only_on_power_loss(resume_points):
    """What a process-kill tool passes: the rename persisted, the data under it did not."""
    report = resume_points(numpy_job("replace"), check=False, shrink=0)
    assert report.counts("process")[PASS] == report.counts("process").total() > 10
    power = report.counts("power-loss")
    assert power[HARD_FAIL] + power[SILENT_DIVERGENCE] > 0 and power[DUPLICATED_WORK] > 0
    # the data lost under a rename that persisted
    assert any("fsync ckpt.npy.tmp" in r.fix for r in report.failures)


def test_numpy_marker_written_before_the_data(resume_points):
    """A 'latest' file naming a checkpoint that is not there yet: the resume crashes, or starts over."""
    report = resume_points(numpy_job("marker-first"), models=["process"], check=False, shrink=0)
    assert {HARD_FAIL, LOST_WORK} <= report.kinds
    lost = next(r for r in report.results if r.verdict == LOST_WORK)
    assert lost.resumed_from < lost.newest_complete and "steps redone" in lost.detail
    assert "latest" in lost.fix or "marker" in lost.fix.lower() or "order" in lost.fix.lower(), lost.fix


def test_numpy_durable_save_passes_a_sample_spread_over_the_run(resume_points):
    report = resume_points(numpy_job("durable"), max_states=16)
    assert report.sampled and report.states <= 16 and report.candidates > 16 and not report.failures
    assert {r.save for r in report.results} == {1, 2, 3, 4}
    assert report.counts("power-loss")[PASS] > 0 and report.counts("process")[PASS] > 0


@pytest.mark.slow
def test_numpy_durable_save_passes_every_state(resume_points):
    report = resume_points(numpy_job("durable"))
    assert report.states > 30 and not report.failures
    assert report.counts("power-loss")[PASS] > 10 and report.counts("process")[PASS] > 10


def test_cold_starts_give_the_same_verdicts(resume_points):
    warm = resume_points(numpy_job("inplace"), models=["process"], max_states=10, check=False)
    cold = resume_points(
        numpy_job("inplace"), models=["process"], max_states=10, check=False, warm=False, shrink=0
    )
    assert warm.warm and not cold.warm and warm.sampled and warm.counts()[PASS] and HARD_FAIL in warm.kinds
    assert [(r.description, r.verdict) for r in warm.results] == [
        (r.description, r.verdict) for r in cold.results
    ]


# -- torch ------------------------------------------------------------------------------------------------


def torch_job(save: str) -> list[str]:
    return [sys.executable, TORCH_LOOP, "--out", "{dir}", "--save", save]


@pytest.mark.slow
def test_torch_temp_and_replace_without_fsync_fails_only_on_power_loss(resume_points):
    pytest.importorskip("torch")
    report = resume_points(torch_job("replace"), weights="final.pt", check=False, shrink=0)
    assert report.counts("process")[PASS] == report.counts("process").total() > 10
    power = report.counts("power-loss")
    assert power[HARD_FAIL] > 0 and power[DUPLICATED_WORK] > 0
    hard = next(r for r in report.results if r.verdict == HARD_FAIL)
    assert "fsync ckpt.pt.tmp" in hard.fix  # the data was lost under a rename that persisted


@pytest.mark.slow
def test_torch_marker_written_before_the_data(resume_points):
    """A 'latest' file naming a checkpoint that is not there yet: the resume crashes, or starts over."""
    pytest.importorskip("torch")
    report = resume_points(
        torch_job("marker-first"), weights="final.pt", models=["process"], check=False, shrink=0
    )
    assert {HARD_FAIL, LOST_WORK} <= report.kinds
    lost = next(r for r in report.results if r.verdict == LOST_WORK)
    assert lost.resumed_from < lost.newest_complete and "steps redone" in lost.detail


@pytest.mark.slow
def test_torch_durable_save_passes(resume_points):
    pytest.importorskip("torch")
    report = resume_points(torch_job("durable"), weights="final.pt", max_states=24)
    assert report.states >= 20 and not report.failures and report.warm


@pytest.mark.slow
@pytest.mark.parametrize("save", ["durable", "rotating"])
def test_torch_correct_saves_pass_every_state(resume_points, save):
    pytest.importorskip("torch")
    report = resume_points(torch_job(save), weights="final.pt")
    assert report.states > 40 and not report.failures


# -- a callable job ----------------------------------------------------------------------------------------


def callable_train(directory: Path) -> dict:
    """A training function: resumes from an in-place .npy checkpoint, returns its final weights."""
    ckpt = directory / "w.npy"
    w, step = np.zeros(600), 0
    if ckpt.exists():
        saved = np.load(ckpt)
        step, w = int(saved[0]), saved[1:].copy()
    print(f"resumed from step {step}")
    while step < 6:
        step += 1
        w = w * 0.9 + np.random.default_rng(step).standard_normal(600)
        print(f"STEP {step}")
        if step % 2 == 0:
            np.save(ckpt, np.concatenate([[step], w]))
    return {"w": w}


def test_a_callable_job_is_observed_and_resumed_in_isolation(resume_points):
    report = resume_points(callable_train, models=["process"], check=False)
    assert len(report.saves) == 3 and report.counts()[PASS] > 0
    assert HARD_FAIL in report.kinds  # killed while np.save rewrote w.npy


# -- jobs that cannot be judged --------------------------------------------------------------------------


def test_a_job_that_is_not_deterministic_gets_no_verdict(resume_points, tmp_path):
    script = tmp_path / "noisy.py"
    script.write_text(
        "import os, sys, hashlib\n"
        "d = sys.argv[1]\n"
        "for i in range(1, 3):\n"
        "    with open(os.path.join(d, 'c'), 'w') as f: f.write(str(i))\n"
        "    print('STEP', i, flush=True)\n"
        "print('WEIGHTS', os.urandom(8).hex())\n"
    )
    with pytest.raises(TrainingNotReproducible, match="does not reproduce"):
        resume_points([sys.executable, str(script), "{dir}"])


def test_a_job_that_saves_nothing_under_the_directory_is_not_judgeable(resume_points, tmp_path):
    script = tmp_path / "nowhere.py"
    script.write_text("print('STEP 1'); print('WEIGHTS 1')\n")
    with pytest.raises(NotJudgeable, match="changed nothing under"):
        resume_points([sys.executable, str(script), "{dir}"])


def test_a_job_that_fails_on_its_own_is_reported(resume_points, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("import sys; print('STEP 1'); sys.exit('no data set')\n")
    with pytest.raises(AssertionError, match=r"(?s)exited with status 1.*no data set"):
        resume_points([sys.executable, str(script), "{dir}"])


def test_a_job_without_final_weights_is_told_how_to_give_them(resume_points, tmp_path):
    script = tmp_path / "mute.py"
    script.write_text("import sys\nopen(sys.argv[1] + '/c', 'w').write('1')\nprint('STEP 1')\n")
    with pytest.raises(ValueError, match=r"WEIGHTS <digest>.*weights="):
        resume_points([sys.executable, str(script), "{dir}"])


def test_a_resume_that_hangs_is_killed_from_outside_and_is_a_hard_fail(resume_points, tmp_path):
    """A resume that loops forever on a half-written checkpoint: killed at the timeout, nothing left running."""
    script = tmp_path / "stubborn.py"
    script.write_text(
        "import os, sys, time, hashlib\n"
        "c = os.path.join(sys.argv[1], 'c')\n"
        "step = 0\n"
        "text = open(c).read() if os.path.exists(c) else ''\n"
        "while text and not text.endswith('.'):\n"
        "    time.sleep(0.05)  # waits for a writer that is gone\n"
        "step = int(text[:-1]) if text else 0\n"
        "print('resumed from step', step, flush=True)\n"
        "while step < 1:  # one save, one state that hangs: each costs the timeout twice (warm, then cold)\n"
        "    step += 1\n"
        "    print('STEP', step, flush=True)\n"
        "    with open(c, 'w') as f:\n"
        "        f.write(str(step)); f.flush(); f.write('.')\n"
        "    with open(c + '.log', 'a') as f:  # states after the one that hangs\n"
        "        f.write('saved\\n')\n"
        "print('WEIGHTS 1', flush=True)\n"
    )
    report = resume_points([sys.executable, str(script), "{dir}"], models=["process"], timeout=4, check=False)
    hung = [r for r in report.results if r.verdict == HARD_FAIL]
    assert len(hung) == 1 and all("did not finish within 4 s" in r.detail for r in hung)
    after = report.results[report.results.index(hung[0]) + 1 :]
    assert after and all(r.verdict == PASS for r in after)  # the worker came back for the next states


# -- the CLI -------------------------------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
        ),
    )
    return subprocess.run([sys.executable, "-m", "persistkit", "check", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_check_train_reports_the_verdict_table_and_exits_1_on_failures(tmp_path):
    import json

    out = run_cli("--train", f"{sys.executable} {NUMPY_LOOP} --out {{dir}} --save inplace", "--json", "r.json",
                  "--repro", "repro", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert "| power-loss |" in out.stdout and "SILENT_DIVERGENCE" in out.stdout and "Fix:" in out.stdout
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["passed"] is False and doc["counts"]["HARD_FAIL"] > 0 and doc["states"] == len(doc["results"])
    assert (tmp_path / "repro").is_dir() and any((tmp_path / "repro").iterdir())


def test_check_train_passes_a_durable_job(tmp_path):
    out = run_cli("--train", f"{sys.executable} {NUMPY_LOOP} --out {{dir}} --save durable", "--max-states", "20",
                  cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no failures" in out.stdout


def test_check_train_and_a_target_are_exclusive(tmp_path):
    out = run_cli("persistkit.reference.bot:make_bot", "--train", "python x.py", cwd=tmp_path)
    assert out.returncode == 2 and "--train" in out.stderr
    out = run_cli("--train", "python x.py", "--skip", "corruption", cwd=tmp_path)
    assert out.returncode == 2 and "--skip and --exclude" in out.stderr


# -- the users' own stacks ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lightning_epoch_checkpoints_resume_exactly_in_a_process_crash(resume_points):
    pytest.importorskip("pytorch_lightning")
    job = [sys.executable, str(HERE / "lightning_loop.py"), "--out", "{dir}"]
    report = resume_points(job, weights="final.pt", models=["process"], check=False, shrink=0)
    # step=N.ckpt is installed before last.ckpt: a kill between the two resumes from the older one
    assert report.kinds <= {LOST_WORK} and report.counts()[PASS] > 10
    assert [s.step for s in report.saves] == [5, 10, 15, 20]


@pytest.mark.slow
def test_lightning_mid_epoch_resume_diverges_silently(resume_points):
    pytest.importorskip("pytorch_lightning")
    job = [sys.executable, str(HERE / "lightning_loop.py"), "--out", "{dir}", "--mid-epoch"]
    report = resume_points(job, weights="final.pt", models=["process"], check=False, shrink=0)
    assert SILENT_DIVERGENCE in report.kinds


@pytest.mark.slow
def test_lightning_power_loss(resume_points):
    """_atomic_save renames a temp file from the system temp dir into place, without fsync."""
    pytest.importorskip("pytorch_lightning")
    job = [sys.executable, str(HERE / "lightning_loop.py"), "--out", "{dir}"]
    report = resume_points(job, weights="final.pt", models=["power-loss"], check=False, shrink=0)
    assert HARD_FAIL in report.kinds


def sb3_policy_digest(directory: Path) -> str:
    from persistkit.model_store import ModelStore

    policy = ModelStore(directory / "models").load_latest("CARTPOLE", "A2C", "1m")["policy"]
    h = hashlib.sha256()
    for name, tensor in sorted(policy.policy.state_dict().items()):
        h.update(name.encode() + tensor.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.slow  # ~27 s even at 8 states: SB3 costs 3 s of imports per fresh process
def test_sb3_fine_tuning_through_a_model_store_survives_every_state(resume_points, tmp_path):
    """Seed 000: fine-tune a stored A2C in rounds, each round a new ModelStore version."""
    pytest.importorskip("stable_baselines3")
    import tempfile

    root = tmp_path / "sb3"
    root.mkdir()
    job = [sys.executable, str(HERE / "sb3_finetune.py"), "--root", "{dir}", "--rounds", "2"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    subprocess.run(
        [sys.executable, str(HERE / "sb3_finetune.py"), "--root", str(root), "--init"], check=True, env=env
    )
    report = resume_points(job, root=root, env=env, weights=sb3_policy_digest, max_states=30,
                           allow_outside=[os.path.join(tempfile.gettempdir(), "SB3-*")])  # fmt: skip
    assert not report.failures and report.states >= 20 and len(report.saves) == 2 and report.warm


def reference_models_digest(directory: Path) -> str:
    from persistkit.model_store import ModelStore

    models = ModelStore(directory / "models").load_latest("BTC/USDT", "A2C", "1m").models
    h = hashlib.sha256()
    for name, tensor in sorted(models["policy"].policy.state_dict().items()):
        h.update(name.encode() + tensor.numpy().tobytes())
    h.update(np.asarray(models["signal"][-1].coef_).tobytes())
    return h.hexdigest()


@pytest.mark.slow
def test_the_reference_training_script_survives_crashes(resume_points, tmp_path):
    """persistkit.reference.train: archive, train, traces, one ModelStore bundle; a restart trains again."""
    pytest.importorskip("stable_baselines3")
    job = [sys.executable, "-m", "persistkit.reference.train", "--root", "{dir}", "--timesteps", "64"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    import tempfile

    report = resume_points(job, env=env, weights=reference_models_digest, max_states=25,
                           allow_outside=[os.path.join(tempfile.gettempdir(), "SB3-*")])  # fmt: skip
    assert not report.failures and report.states >= 20


def test_materializer_rebuilds_a_directory_that_a_resume_replaced(tmp_path):
    """A job renames logs/ away and makes a new logs/ with files in it before the watcher can see them
    (persistkit's own training_session does): the next state must not keep those files."""
    from persistkit.testing.crash_points import record_save

    root = tmp_path / "root"
    root.mkdir()
    initial = Snapshot.take(root)

    def save():
        (root / "logs").mkdir()
        (root / "logs" / "training.log").write_text("from the save\n")

    _, ops = record_save(save, str(root))
    sim = CrashSimulator(initial, ops)
    try:
        sim.materialize(sim.final())
        os.rename(root / "logs", root / "logs_backup")  # what the resume did
        (root / "logs").mkdir()
        (root / "logs" / "training.log").write_text("from the resume\n")
        (root / "logs" / "other.log").write_text("x")
        sim.materialize(sim.final())
        assert (root / "logs" / "training.log").read_text() == "from the save\n"
        assert sorted(p.name for p in root.iterdir()) == ["logs"]
        assert sorted(p.name for p in (root / "logs").iterdir()) == ["training.log"]
    finally:
        sim.close()
        initial.close()


def test_a_warm_resume_starts_like_a_fresh_interpreter(resume_points, tmp_path):
    """pytest's own sys.path, warning filters ("error") and log handlers must not reach the job: a
    fresh interpreter's do, so warm resumes match the cold reference and stay warm."""
    script = tmp_path / "environment.py"
    script.write_text(
        "import hashlib, logging, os, sys, warnings\n"
        "c = os.path.join(sys.argv[1], 'c')\n"
        "step = int(open(c).read()) if os.path.exists(c) else 0\n"
        "print('resumed from step', step, flush=True)\n"
        "warnings.warn('old API', FutureWarning)  # an error under pytest's filters, a line in a fresh process\n"
        "while step < 2:\n"
        "    step += 1\n"
        "    print('STEP', step, flush=True)\n"
        "    open(c, 'w').write(str(step))\n"
        "seen = repr([f[0] for f in warnings.filters]) + repr(sys.path[1:]) + repr(logging.getLogger().handlers)\n"
        "print('WEIGHTS', hashlib.sha256(seen.encode()).hexdigest(), flush=True)\n"
    )
    report = resume_points([sys.executable, str(script), "{dir}"], models=["process"], check=False)
    assert report.warm and not report.notes and report.counts()[PASS] >= 2
