"""Sweeps (``python -m petl_modules.sweep``): planning a sweep file into recipe commands, the state
of a run read from its folder, the Slurm submission (checked without a cluster: the sbatch file
submitit writes, and the real submission path with stand-in ``srun``/``sbatch``/``sacct``), the
published numbers beside ours; slow: a local sweep killed mid-way and rerun, and the requeue of a
preempted job."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from petl_modules import results as results_tool
from petl_modules.paths import read_yaml_tree
from petl_modules.results import published as published_numbers
from petl_modules import sweep
from petl_modules.training import launch
from petl_modules.training.run_folder import HOLDER_FILE, lock_holder

from conftest import METHOD_FILES, REPO
from sweep_helpers import ScriptedCluster, fake_submission, write_sweep

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
# The sweep files that reproduce a published table (their `compare:` key names it).
PAPER_SWEEP_FILES = [p for p in SWEEP_FILES if read_yaml_tree(p).get("compare")]


# ==================================================================== the shipped sweep files
@pytest.mark.parametrize("path", [p for p in SWEEP_FILES if p not in PAPER_SWEEP_FILES], ids=lambda p: p.name)
def test_a_sweep_file_beyond_the_papers_plans_runs_of_existing_methods_in_distinct_folders(path):
    """(The papers' sweep files: the test below.)"""
    runs, plan = sweep.plan(path)
    assert runs and len({r.folder for r in runs}) == len(runs)
    assert {r.method for r in runs} <= set(METHOD_FILES)
    for variant in read_yaml_tree(path).get("variants") or {}:
        variant_runs, _ = sweep.plan(path, variant=variant)
        assert len(variant_runs) == len(runs), variant


@pytest.mark.parametrize("path", PAPER_SWEEP_FILES, ids=lambda p: p.name)
def test_papers_sweep_file_plans_with_and_without_its_reference_variant(path):
    runs, plan = sweep.plan(path)
    published = results_tool.load_published()
    assert plan["compare"] and all(t in published["tables"] for t in plan["compare"])
    reference, plan_ref = sweep.plan(path, variant="reference")
    assert len(reference) == len(runs) and plan_ref["root"] == Path(f"{plan['root']}-reference")
    assert all(r.options.get("init") == "reference" for r in reference
               if "init" in read_yaml_tree(REPO / "hparams" / f"{r.method}.yaml"))
    assert any(r.options != s.options for r, s in zip(reference, runs))


def test_published_rows_name_methods_datasets_and_options_that_exist():
    published = results_tool.load_published()
    datasets = {read_yaml_tree(sweep.dataset_yaml(r))["dataset"]
                for r in (p.parent.name for p in (REPO / "recipes").glob("*/train.py"))}
    common = set(read_yaml_tree(sweep.COMMON_YAML))
    for name, table in published["tables"].items():
        assert table["source"] in published["sources"] and table["rows"], name
        for row in table["rows"]:
            keys = common | set(read_yaml_tree(REPO / "hparams" / f"{row['method']}.yaml"))
            assert set(row["options"]) <= keys, (name, row["label"])
            assert set(row["values"]) <= datasets, (name, row["label"])


# ==================================================================== planning
def test_runs_are_the_grid_times_seeds_times_folds_in_folders_named_from_their_settings(tmp_path):
    path = write_sweep(
        tmp_path, recipes={"ESC50": "ESC-50-master", "FSC": "fluent_speech_commands_dataset"},
        methods=["linear", {"method": "lora", "overrides": {"reduction_rate": 64},
                            "grid": {"lora_alpha": [4, 16]}}],
        overrides={"number_of_epochs": 2}, seeds=[1, 2], folds=[2, 5])
    runs, _ = sweep.plan(path)
    names = [r.name for r in runs]
    expected = [f"{recipe}/{entry}/seed{seed}{fold}"
                for recipe, folds in (("ESC50", ["/fold2", "/fold5"]), ("FSC", [""]))
                for entry in ("linear/default", "lora/reduction_rate=64,lora_alpha=4",
                              "lora/reduction_rate=64,lora_alpha=16")
                for seed in (1, 2) for fold in folds]
    assert names == expected
    run = next(r for r in runs if r.name == "ESC50/lora/reduction_rate=64,lora_alpha=16/seed2/fold5")
    assert recipe_args(run) == [
        "recipes/ESC50/train.py", "hparams/lora.yaml", f"--data_folder={tmp_path}/data/ESC-50-master",
        f"--output_folder={tmp_path}/out/{run.name}", "--seed=2", "--fold=5", "--number_of_epochs=2",
        "--reduction_rate=64", "--lora_alpha=16"]
    fsc = next(r for r in runs if r.recipe == "FSC")
    assert not any(a.startswith("--fold") for a in recipe_args(fsc))  # official splits


def recipe_args(run):
    command = sweep.recipe_command(run)
    assert command[0] == sys.executable
    return command[1:]


def test_folds_all_is_one_run_of_every_fold_and_a_variant_sets_only_options_a_method_has(tmp_path):
    path = write_sweep(tmp_path, recipes={"ESC50": "ESC-50-master"}, methods=["linear", "lora"],
                       folds="all", variants={"reference": {"overrides": {"init": "reference"}}})
    runs, plan = sweep.plan(path, variant="reference")
    assert [r.name for r in runs] == ["ESC50/linear/default/seed10/foldall", "ESC50/lora/default/seed10/foldall"]
    assert [r.options for r in runs] == [{}, {"init": "reference"}]
    assert plan["root"] == (tmp_path / "out-reference").resolve()
    assert "--fold=all" in recipe_args(runs[0])


@pytest.mark.parametrize("content, message", [
    ({"methods": ["lora"], "overrides": {"reduction_rat": 8}}, "unknown option 'reduction_rat'"),
    ({"methods": [{"method": "lora", "grid": {"lora_alpha": 8}}]}, "takes a non-empty list"),
    ({"methods": ["lorra"]}, "method 'lorra' has no file hparams/lorra.yaml"),
    ({"recipes": {"ESC5O": "x"}}, "Did you mean ESC50?"),
    ({"overrides": {"seed": 3}}, "'seed' is set by the sweep"),
    ({"recipes": {"ESC50": "x"}, "folds": [6]}, "folds [6] are not folds of ESC50"),
    ({"methods": ["linear", {"method": "linear"}]}, "two runs would share the folder"),
    ({"method": ["linear"]}, "did you mean 'methods'?"),
    ({"seeds": ["a"]}, "seeds must be a list of whole numbers"),
])
def test_a_wrong_sweep_file_is_refused_before_anything_runs_naming_what_is_wrong(tmp_path, content, message):
    path = write_sweep(tmp_path, **content)
    with pytest.raises(sweep.SweepError, match=None) as err:
        sweep.plan(path)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists()


def test_an_unknown_variant_or_variant_option_is_refused(tmp_path):
    path = write_sweep(tmp_path, methods=["linear", "lora"],
                       variants={"reference": {"overrides": {"inti": "reference"}}})
    with pytest.raises(sweep.SweepError, match="no such variant"):
        sweep.plan(path, variant="paper")
    with pytest.raises(sweep.SweepError, match="unknown option 'inti'.*Did you mean init"):
        sweep.plan(path, variant="reference")


def test_missing_data_folders_or_slurm_commands_are_reported_before_anything_runs(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path, recipes={"FSC": "fluent_speech_commands_dataset", "ESC50": "ESC-50-master"})
    assert sweep.main([str(path)]) == 2
    assert f"data folder(s) not found: {tmp_path / 'data' / 'ESC-50-master'}" in capsys.readouterr().err
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert sweep.main([str(path), "--launcher=slurm"]) == 2
    assert "needs Slurm's sbatch, srun and squeue on the PATH" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ==================================================================== the state of a run
def test_a_run_is_done_with_a_readable_results_json_running_while_a_live_process_holds_its_lock(tmp_path):
    folder = tmp_path / "run"
    assert sweep.run_state(folder) == "pending"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom petl_modules.training.run_folder import RunLock\n"
         f"lock = RunLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sweep.run_state(folder) == "running"
        assert str(holder.pid) in lock_holder(folder)
    finally:
        holder.kill()
        holder.wait()
    assert sweep.run_state(folder) == "pending"  # killed: the OS released its lock: to resume
    (folder / "results.json").write_text("{not json")
    assert sweep.run_state(folder) == "pending"  # damaged: the recipe writes it again
    (folder / "results.json").write_text(json.dumps({
        "dataset": "FSC", "method": "linear", "backbone": "ast", "total_params": 10,
        "trainable_params": 1, "folds": [{"fold": None, "test_accuracy": 0.5}]}))
    assert sweep.run_state(folder) == "done"


# ==================================================================== local: throttle and GPUs
class FakeJob:
    """A local job that ends at its second check, writing its run's results.json."""

    def __init__(self, run_folder, log):
        self.run_folder, self.log, self.checks, self.job_id = run_folder, log, 0, "1"

    def done(self):
        self.checks += 1
        if self.checks < 2:
            return False
        if not (self.run_folder / "results.json").is_file():
            self.run_folder.mkdir(parents=True, exist_ok=True)
            (self.run_folder / "results.json").write_text(json.dumps({
                "dataset": "FSC", "method": "linear", "backbone": "ast", "total_params": 10,
                "trainable_params": 1, "folds": [{"fold": None, "test_accuracy": 0.5}]}))
            self.log["active"] -= 1
        return True


def test_local_launcher_gives_each_run_one_visible_gpu_and_runs_one_per_gpu_at_once(tmp_path, monkeypatch):
    log = {"active": 0, "most": 0, "gpus": []}

    class FakeExecutor:
        def __init__(self, gpu):
            self.gpu = gpu

        def submit(self, recipe_run):
            log["active"] += 1
            log["most"] = max(log["most"], log["active"])
            log["gpus"].append(self.gpu)
            out = next(a for a in recipe_run.command if a.startswith("--output_folder="))
            return FakeJob(Path(out.split("=", 1)[1]), log)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(launch, "local_executor", lambda folder, timeout, gpus=(): FakeExecutor(gpus))
    monkeypatch.setitem(sweep.POLL_S, "local", 0.01)
    path = write_sweep(tmp_path, methods=["linear", "bitfit", "lora"], seeds=[1, 2])
    runs, plan = sweep.plan(path)
    ended = sweep.run_local(runs, plan, sweep.check_resources(plan, sweep.parse_args([str(path)])))
    assert ended == {run.name: ("done", "") for run in runs}
    assert log["most"] == 2 and sorted({tuple(g) for g in log["gpus"]}) == [(3,), (5,)] and len(log["gpus"]) == 6
    assert all(r.gpus == 1 for r in runs)


# ==================================================================== Slurm, without a cluster
def test_dry_run_prints_every_command_and_the_sbatch_file_with_the_slurm_options(tmp_path, capsys):
    path = write_sweep(tmp_path, methods=["linear", "bitfit"], seeds=[1, 2],
                       resources={"partition": "gpu", "cpus_per_run": 6, "array_parallelism": 3})
    code = sweep.main([str(path), "--launcher=slurm", "--dry_run", "--gpus_per_run=2", "--time_min=90",
                       "--set", "number_of_epochs=3"], cluster=ScriptedCluster("gpu"))
    out = capsys.readouterr().out
    assert code == 0
    runs, _ = sweep.plan(path, extra={"number_of_epochs": 3})
    for run in runs:
        run.gpus = 2
        assert shlex.join(sweep.recipe_command(run)) in out
    assert "--nproc_per_node=2" in out and "--number_of_epochs=3" in out
    for option in ("--array=0-3%3", "--partition=gpu", "--gpus-per-node=2", "--cpus-per-task=6",
                   "--time=90", "--signal=USR2@120", "--ntasks-per-node=1", "--job-name=sweep-out"):
        assert f"#SBATCH {option}\n" in out, option
    assert not (tmp_path / "out").exists()  # nothing ran


def test_slurm_launcher_submits_one_job_array_through_submitit_and_a_rerun_leaves_queued_runs(
        tmp_path, monkeypatch, capsys):
    record = fake_submission(tmp_path, monkeypatch)
    path = write_sweep(tmp_path, methods=["linear", "bitfit"], seeds=[1, 2],
                       resources={"partition": "debug", "time_min": 30, "gpus_per_run": 0})
    cluster = ScriptedCluster("cpu", max_array_size=1001)
    assert sweep.main([str(path), "--launcher=slurm", "--no_wait", "--cpus_per_run=2"], cluster=cluster) == 0
    submitted = sorted(record.glob("*.sbatch"))
    assert len(submitted) == 1
    text = submitted[0].read_text()
    for option in ("--array=0-3%4", "--partition=debug", "--cpus-per-task=2", "--time=30"):
        assert f"#SBATCH {option}\n" in text, option
    assert "--gpus-per-node" not in text and "--gres" not in text
    jobs = json.loads((tmp_path / "out" / sweep.STATE_FOLDER / sweep.JOBS_FILE).read_text())
    runs, _ = sweep.plan(path)
    assert jobs == {run.name: f"4242_{k}" for k, run in enumerate(runs)}
    assert "4 run(s) submitted as 1 job array(s) (4242)" in capsys.readouterr().out
    # Rerun: squeue lists the four as queued: nothing is submitted again.
    queued = "".join(f"4242_{k}|PENDING|Priority\n" for k in range(4))
    cluster = ScriptedCluster("cpu", queues=[queued])
    assert sweep.main([str(path), "--launcher=slurm", "--no_wait", "--cpus_per_run=2"], cluster=cluster) == 0
    assert len(list(record.glob("*.sbatch"))) == 1
    assert "4 runs: 0 done, 4 queued, 0 running, 0 to submit" in capsys.readouterr().out


# ==================================================================== published numbers
def finished_run(folder, method, accuracies, **options):
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "dataset": "FSC", "method": method, "backbone": "ast", "total_params": 100,
        "trainable_params": 10, "requested_folds": [],
        "folds": [{"fold": k + 1, "test_accuracy": a, "hparams": {"seed": 1, **options}}
                  for k, a in enumerate(accuracies)]}))


def test_published_numbers_appear_beside_ours_with_the_difference_and_mean_std(tmp_path):
    finished_run(tmp_path / "a", "lora", [0.90, 0.80], reduction_rate=128)
    finished_run(tmp_path / "b", "lora", [0.70], reduction_rate=128)
    finished_run(tmp_path / "c", "lora", [0.10], reduction_rate=64)  # another setting: not this row
    published = {"sources": {"p": {"citation": "Paper", "url": "https://arxiv.org/abs/0"}},
                 "tables": {"t": {"source": "p", "metric": "test_accuracy", "scale": 100, "rows": [
                     {"label": "LoRA", "method": "lora", "backbone": "ast",
                      "options": {"reduction_rate": 128}, "values": {"FSC": 75.0, "ESC50": 88.0}},
                     {"label": "Linear", "method": "linear", "backbone": "ast", "options": {},
                      "values": {"FSC": None}}]}}}
    (tmp_path / "published.json").write_text(json.dumps(published))
    loaded = results_tool.load_published(tmp_path / "published.json")
    runs, _ = results_tool.collect([tmp_path / "a", tmp_path / "b", tmp_path / "c"])
    rows = results_tool.compare_published(loaded, "t", runs)
    lora = rows[0]
    assert (lora["label"], lora["dataset"], lora["runs"], lora["values"]) == ("LoRA", "FSC", 2, 3)
    assert lora["mean"] == pytest.approx(80.0) and lora["std"] == pytest.approx((200 / 3) ** 0.5)
    assert lora["difference"] == pytest.approx(5.0)
    assert rows[1]["mean"] is None and rows[1]["difference"] is None  # no ESC50 run
    markdown = results_tool.published_markdown(loaded, "t", runs)
    assert "| LoRA | FSC | 75.00 | 80.00 ± 8.16 | +5.00 | 2 | 3 |" in markdown
    assert "| Linear | FSC | — | — | — | 0 | 0 |" in markdown


def test_the_sweep_report_puts_the_papers_numbers_beside_ours_in_the_table_and_the_plot(
        tmp_path, monkeypatch):
    published = {"sources": {"p": {"citation": "Paper", "url": "https://arxiv.org/abs/0"}},
                 "tables": {"t": {"source": "p", "metric": "test_accuracy", "scale": 100, "rows": [
                     {"label": "Linear", "method": "linear", "backbone": "ast", "options": {},
                      "values": {"FSC": 60.0}}]}}}
    (tmp_path / "published.json").write_text(json.dumps(published))
    monkeypatch.setattr(published_numbers, "published_file", lambda: tmp_path / "published.json")
    path = write_sweep(tmp_path, compare="t")
    runs, plan = sweep.plan(path)
    finished_run(runs[0].folder, "linear", [0.5, 0.6])
    drawn, plot = [], results_tool.plot
    monkeypatch.setattr(results_tool, "plot", lambda rows, out, published=(): drawn.append(
        (rows, out, published)) or plot(rows, out, published))
    sweep.write_report(plan)
    report = (plan["root"] / "report.md").read_text()
    assert "| Linear | FSC | 60.00 | 55.00 ± 5.00 | -5.00 | 1 | 2 |" in report
    rows, out, points = drawn[0]
    assert [(p["dataset"], p["paper"], p["params"]) for p in points] == [("FSC", 60.0, 10)]
    assert out == plan["root"] / "results.png" and out.stat().st_size > 0
    with pytest.raises(sweep.SweepError, match="compare: no table u"):
        sweep.plan(write_sweep(tmp_path, compare=["t", "u"]))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["tables"]["t"]["rows"][0]["values"].update(FSC="75"), "values.FSC"),
    (lambda d: d["tables"]["t"].update(source="q"), "is not one of sources"),
    (lambda d: d["tables"]["t"]["rows"][0].update(options={"a": {"b": 1}}), "options.a"),
])
def test_a_malformed_published_file_is_refused_naming_the_field(tmp_path, change, message):
    data = {"sources": {"p": {}}, "tables": {"t": {"source": "p", "metric": "test_accuracy", "rows": [
        {"label": "x", "method": "lora", "backbone": "ast", "options": {}, "values": {"FSC": 1.0}}]}}}
    change(data)
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(results_tool.ResultsError, match=message):
        results_tool.load_published(tmp_path / "p.json")


# ==================================================================== slow: real runs
EPOCHS = 4


def lock_holders(folders):
    return [f for f in folders if lock_holder(f)]


@pytest.mark.slow
def test_local_sweep_killed_mid_way_and_rerun_finishes_every_run_once_at_most_n_at_once(
        tmp_path, fsc_data, tiny_ast):
    """2 methods x 2 seeds on FSC (one method with an option in its folder names), at most 2 at
    once. Once a run has finished and two hold their
    locks, the sweep is killed (SIGKILL), one running recipe is killed with it and the other is
    paused; the rerun counts the paused one as running (its lock is held), resumes the killed one
    and runs the last; every epoch of every run is trained once, every run tested once."""
    # bitfit's runs have an option in their folder names (.../bitfit/lr=0.004/seed1): they train there
    path = write_sweep(
        tmp_path, recipes={"FSC": str(fsc_data)},
        methods=["linear", {"method": "bitfit", "overrides": {"lr": 0.004}}], seeds=[1, 2],
        overrides={"backbone_source": str(tiny_ast), "number_of_epochs": EPOCHS, "batch_size": 8,
                   "num_workers": 0, "max_frames": 64, "ckpt_interval_minutes": 0},
        resources={"max_parallel": 2})
    runs, _ = sweep.plan(path)
    folders = [r.folder for r in runs]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "petl_modules.sweep", str(path), "--poll_s=0.5"]
    most = 0

    def watch(process, until, timeout):
        nonlocal most
        end = time.time() + timeout
        while time.time() < end and process.poll() is None and not until():
            most = max(most, len(lock_holders(folders)))
            time.sleep(0.2)

    def done():
        return [f for f in folders if (f / "results.json").is_file()]

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=open(tmp_path / "first.log", "w"),
                             stderr=subprocess.STDOUT)
    watch(first, lambda: done() and len(lock_holders(folders)) == 2, 200)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGKILL)  # the sweep dies; its runs' processes do not
    first.wait()
    held = lock_holders(folders)
    assert len(held) == 2, "the runs ended before the sweep was killed"
    victim, survivor = (json.loads((f / HOLDER_FILE).read_text())["pid"] for f in held)
    os.kill(victim, signal.SIGKILL)  # an interrupted run
    os.kill(survivor, signal.SIGSTOP)  # a run still holding its lock when the rerun starts
    log = tmp_path / "second.log"
    second = subprocess.Popen(command, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        watch(second, lambda: "[sweep] 4 runs:" in log.read_text(), 60)
    finally:
        os.kill(survivor, signal.SIGCONT)
    watch(second, lambda: False, 240)
    second.wait(timeout=60)
    out = log.read_text()
    assert second.returncode == 0, out[-4000:]
    assert f"4 runs: {4 - len(held)} done, 1 running in another process (waited for)" in out
    assert "1 to run" in out  # the killed run; the paused one was waited for, not started again
    assert most <= 2
    for folder in folders:
        assert (folder / "results.json").is_file(), folder
        epochs = [line.split(",")[0] for line in (folder / "train_log.txt").read_text().splitlines()
                  if line.startswith("epoch:")]
        assert epochs == [f"epoch: {k}" for k in range(1, EPOCHS + 1)], (folder, epochs)
        tests = (folder / "train_log.txt").read_text().count("test loss")
        assert tests == 1, folder
    assert "All 4 run(s) done." in out
    assert [r.name for r in runs][2:] == ["FSC/bitfit/lr=0.004/seed1", "FSC/bitfit/lr=0.004/seed2"]
    assert not list((tmp_path / "out").glob("FSC/bitfit/lr 0.004*"))  # SpeechBrain's parser's folder
    report = (tmp_path / "out" / "report.md").read_text()
    for method in ("linear", "bitfit"):  # each: 2 runs (seeds), 2 values
        assert re.search(rf"\| {method}[^|]* \| [^|]+ \| FSC \| ast [^|]+ \| 2 \| 2 \|", report), report


@pytest.mark.slow
def test_a_failed_run_never_stops_the_others_and_is_listed_with_its_log(tmp_path, fsc_data, tiny_ast):
    (tmp_path / "empty" / "ESC-50-master").mkdir(parents=True)  # no meta/esc50.csv: ESC-50 fails
    path = write_sweep(
        tmp_path, recipes={"FSC": str(fsc_data), "ESC50": str(tmp_path / "empty" / "ESC-50-master")},
        folds=[1], overrides={"backbone_source": str(tiny_ast), "number_of_epochs": 1, "batch_size": 8,
                              "num_workers": 0, "max_frames": 64},
        resources={"max_parallel": 2})
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "petl_modules.sweep", str(path), "--poll_s=0.5"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert (tmp_path / "out" / "FSC" / "linear" / "default" / "seed10" / "results.json").is_file()
    failure = proc.stdout.split("1 run(s) failed")[1]
    assert "ESC50/linear/default/seed10/fold1: " in failure and "_log.err" in failure
    assert "esc50.csv" in failure  # the recipe's own message, from the log
    assert (tmp_path / "out" / "report.md").is_file()


SCRIPT = """import sys, time
from pathlib import Path
starts = Path(sys.argv[1])
with open(starts, "a") as stream:
    stream.write("start\\n")
if len(starts.read_text().splitlines()) == 1:
    time.sleep(120)  # the first start is preempted
"""


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_runs_its_command_again(tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    starts = tmp_path / "starts.txt"
    executor = launch.local_executor(tmp_path / "logs", timeout_min=4 / 60)
    executor.update_parameters(signal_delay_s=2)  # the time-out signal 2 s before the limit
    job = executor.submit(launch.RecipeRun([sys.executable, tmp_path / "job.py", starts], tmp_path))
    end = time.time() + 60
    while not job.done() and time.time() < end:
        time.sleep(0.5)
    assert job.done()
    assert starts.read_text().splitlines() == ["start", "start"]
    assert launch.local_job_exit_code(job) == 0
    assert "Requeued job" in launch.local_job_logs(job)[0].read_text()
