"""Sweeps on Slurm, without a cluster: the output of squeue, sacct and scontrol recorded on a real
one (tests/data/slurm) read back (states, limits, arrays), resources checked against a partition,
runs followed through queueing, requeues and the ends Slurm gives them; sweep files that try to
be code (YAML tags, shell lines in resources, recipes outside recipes/) refused; the sbatch file
built without user text reaching a shell; and the recipe command's wrapper passing the
cluster's signals on. The real cluster: tests/test_slurm_cluster.py (``--slurm``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from petl_modules import sweep
from petl_modules.training import launch, slurm

from conftest import REPO
from sweep_helpers import ScriptedCluster, fake_submission, recorded, write_sweep


def finish(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({
        "dataset": "FSC", "method": "linear", "backbone": "ast", "total_params": 10,
        "trainable_params": 1, "folds": [{"fold": None, "test_accuracy": 0.5}]}))


# ==================================================================== recorded output
def test_partitions_nodes_and_array_limit_are_read_from_scontrol():
    cpu = slurm.make_partition(slurm.parse_partitions(recorded("partition_cpu.txt"))["debug"],
                               slurm.parse_nodes(recorded("node_cpu.txt")))
    assert (cpu.name, cpu.default, cpu.max_time_min, cpu.max_cpus_per_node) == ("debug", True, 60, None)
    assert [(n.name, n.cpus, n.memory_mb, n.gpus()) for n in cpu.nodes] == [("vm", 2, 12052, 0)]
    assert slurm.parse_config_value(recorded("config.txt"), "MaxArraySize") == "4"
    gpu_nodes = slurm.parse_nodes(recorded("node_gpu.txt"))
    gpu = slurm.make_partition(slurm.parse_partitions(recorded("partition_gpu.txt"))["gpu"], gpu_nodes)
    assert (gpu.default, gpu.max_time_min, gpu.max_cpus_per_node, gpu.max_mem_per_node_mb) == \
        (False, 1440, 32, 500 * 1024)
    assert [(n.name, n.gpus(), n.gpus("a100"), n.gpus("v100")) for n in gpu.nodes] == \
        [("gpu01", 4, 4, 0), ("gpu02", 2, 0, 2)]
    assert slurm.parse_gres("gpu:a100:4(S:0-1),gpu:2,shard:8") == {
        ("gpu", "a100"): 4, ("gpu", None): 2, ("shard", None): 8}


def test_squeue_and_sacct_states_of_real_jobs_are_read_array_task_by_task():
    assert slurm.parse_squeue(recorded("squeue_queued.txt")) == {
        "12_0": ("PENDING", "Resources"), "12_1": ("PENDING", "Resources"),
        "13": ("PENDING", "PartitionTimeLimit"), "11_2": ("RUNNING", "None"), "11_3": ("RUNNING", "None")}
    # scontrol requeue 11_2, scancel 11_3: the one queued again, the other completing
    requeued = slurm.parse_squeue(recorded("squeue_requeued.txt"))
    assert requeued["11_2"] == ("PENDING", "BeginTime") and requeued["11_3"] == ("COMPLETING", "None")
    assert [slurm.queue_state(s) for s, _ in requeued.values()] == ["running", "queued", "queued",
                                                                    "queued", "queued"]
    ended = slurm.parse_sacct(recorded("sacct_ended.txt"))
    assert ended == {"13": ("CANCELLED", "0:0"), "11_0": ("COMPLETED", "0:0"),
                     "11_1": ("FAILED", "3:0"), "11_3": ("CANCELLED", "0:0"),
                     "12_0": ("CANCELLED", "0:0"), "12_1": ("CANCELLED", "0:0"),  # cancelled pending
                     "11_2": ("TIMEOUT", "0:0")}
    assert slurm.parse_sacct(recorded("sacct_lagging.txt"))["11_2"] == ("RUNNING", "0:0")


@pytest.mark.parametrize("text, minutes", [("60", 60), ("30:00", 30), ("01:00:00", 60),
                                           ("2-00:00:00", 2880), ("1-12", 2160), ("INFINITE", None)])
def test_slurm_times_are_minutes(text, minutes):
    assert slurm.parse_minutes(text) == minutes


def test_arrays_are_split_below_max_array_size():
    assert slurm.array_sizes(4, 4) == [4]
    assert slurm.array_sizes(9, 4) == [4, 4, 1]
    assert slurm.array_sizes(9, None) == [9]
    assert slurm.array_sizes(0, 4) == []


def test_the_cause_of_an_end_is_read_from_the_log_without_progress_bars_or_submitit_lines(tmp_path):
    log = tmp_path / "job.err"
    log.write_text("submitit INFO (2024-01-01 10:00:00,000) - Starting with JobEnvironment\n"
                   "Error in the data: manifest.csv names a missing file x.wav\n"
                   " 40%|####      | 4/10 [00:01<00:02,  2.50it/s]\r 50%|#####     | 5/10 [00:02<00:02]\n"
                   "submitit WARNING (2024-01-01 10:00:05,000) - Bypassing signal SIGCONT\n"
                   + recorded("log_time_limit.txt"))
    assert sweep.read_log(log) == ("Error in the data: manifest.csv names a missing file x.wav",
                                   "reached its time limit")
    log.write_text(recorded("log_cancelled.txt"))
    assert sweep.read_log(log) == ("", "cancelled")
    log.write_text("torchvision is not available - cannot save figures\n"  # a warning: no reason
                   "brain - Stopped on SIGTERM at epoch 2, after batch 4: checkpoint saved in x/save. "
                   "Rerun the same command to resume (a Slurm requeue does).\n")
    assert sweep.read_log(log)[0] == ("Stopped on SIGTERM at epoch 2, after batch 4: checkpoint saved "
                                      "in x/save. Rerun the same command to resume (a Slurm requeue does)")


# ==================================================================== the partition
def test_a_request_the_partition_cannot_meet_is_one_error_line_per_option(tmp_path, capsys):
    path = write_sweep(tmp_path)
    code = sweep.main([str(path), "--launcher=slurm", "--dry_run", "--cpus_per_run=8",
                       "--time_min=120", "--mem_gb=64", "--gpus_per_run=1"], cluster=ScriptedCluster("cpu"))
    errors = capsys.readouterr().err.splitlines()
    assert code == 2
    assert [e.split(" (")[0] for e in errors] == [
        "Error: resources.time_min=120", "Error: resources.cpus_per_run=8",
        "Error: resources.mem_gb=64", "Error: resources.gpus_per_run=1"]
    assert "at most 60 minutes (MaxTime); ask for 60 or less" in errors[0]
    assert "have at most 2 CPUs; ask for 2 or fewer" in errors[1]
    assert "has no GPUs; choose a GPU partition" in errors[3]
    code = sweep.main([str(path), "--launcher=slurm", "--dry_run", "--partition=gpus"],
                      cluster=ScriptedCluster("gpu"))
    assert code == 2 and capsys.readouterr().err == (
        "Error: resources.partition=gpus (--partition): no such partition; partitions here: cpu, gpu\n")


def test_gpus_default_to_the_partitions_and_are_asked_by_type_or_by_gres(tmp_path, capsys):
    path = write_sweep(tmp_path, resources={"cpus_per_run": 2, "time_min": 30})
    assert sweep.main([str(path), "--launcher=slurm", "--dry_run"], cluster=ScriptedCluster("cpu")) == 0
    out = capsys.readouterr().out
    assert "gpus_per_run: 0 (partition 'debug' has no GPUs: the runs train on CPUs" in out
    assert "--gpus-per-node" not in out and "--gres" not in out
    gpu = ScriptedCluster("gpu")
    assert sweep.main([str(path), "--launcher=slurm", "--dry_run", "--partition=gpu"], cluster=gpu) == 0
    assert "#SBATCH --gpus-per-node=1\n" in capsys.readouterr().out
    assert sweep.main([str(path), "--launcher=slurm", "--dry_run", "--partition=gpu",
                       "--gpus_per_run=2", "--gpu_type=v100"], cluster=gpu) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gpus-per-node=v100:2\n" in out and "--nproc_per_node=2" in out
    assert sweep.main([str(path), "--launcher=slurm", "--dry_run", "--partition=gpu",
                       "--gres=gpu:a100:4"], cluster=gpu) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:a100:4\n" in out and "--gpus-per-node" not in out
    assert "--nproc_per_node=4" in out
    assert sweep.main([str(path), "--launcher=slurm", "--dry_run", "--partition=gpu",
                       "--gpus_per_run=3", "--gpu_type=v100"], cluster=gpu) == 2
    assert "have at most 2 GPUs of type v100" in capsys.readouterr().err


def test_runs_above_max_array_size_go_in_several_arrays(tmp_path, monkeypatch, capsys):
    record = fake_submission(tmp_path, monkeypatch, first_id=500)
    path = write_sweep(tmp_path, methods=["linear", "bitfit", "lora"], seeds=[1, 2, 3],
                       resources={"cpus_per_run": 1, "time_min": 10})
    assert sweep.main([str(path), "--launcher=slurm", "--no_wait"], cluster=ScriptedCluster("cpu")) == 0
    scripts = sorted(record.glob("*.sbatch"))
    arrays = [line for p in scripts[:2] for line in p.read_text().splitlines() if "--array" in line]
    assert arrays == ["#SBATCH --array=0-3%4", "#SBATCH --array=0-3%4"]
    assert "--array" not in scripts[2].read_text()  # the last run alone: submitit's plain job
    jobs = json.loads((tmp_path / "out" / sweep.STATE_FOLDER / sweep.JOBS_FILE).read_text())
    assert sorted(jobs.values()) == sorted([f"500_{k}" for k in range(4)] + [f"501_{k}" for k in range(4)]
                                           + ["502"])
    assert "9 run(s) submitted as 3 job array(s) (500, 501, 502) named sweep-out" in capsys.readouterr().out


def test_an_sbatch_refusal_is_one_error_line_with_sbatchs_reason(tmp_path, monkeypatch, capsys):
    fake_submission(tmp_path, monkeypatch, refuse=recorded("sbatch_bad_partition.txt"))
    path = write_sweep(tmp_path, resources={"cpus_per_run": 1, "time_min": 10})
    assert sweep.main([str(path), "--launcher=slurm"], cluster=ScriptedCluster("cpu")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("Error: sbatch refused the job array: sbatch: error: invalid partition specified: "
                          "nope sbatch: error: Batch job submission failed: Invalid partition name specified")


# ==================================================================== following
def test_runs_are_followed_through_queue_requeue_and_the_ends_slurm_gives_them(tmp_path, monkeypatch, capsys):
    fake_submission(tmp_path, monkeypatch)
    monkeypatch.setitem(sweep.POLL_S, "slurm", 0)
    path = write_sweep(tmp_path, methods=["linear", "bitfit"], seeds=[1, 2],
                       resources={"cpus_per_run": 1, "time_min": 10})
    runs, _ = sweep.plan(path)
    folders = {k: run.folder for k, run in enumerate(runs)}

    def polls(*tables):
        return ["".join(f"4242_{k}|{state}\n" for k, state in table.items()) for table in tables]

    queues = ["", *polls(
        {0: "PENDING|Priority", 1: "PENDING|Priority", 2: "PENDING|Priority", 3: "PENDING|Priority"},
        {0: "RUNNING|None", 1: "RUNNING|None", 2: "PENDING|PartitionTimeLimit", 3: "PENDING|Resources"})]
    # poll 3: 0 requeued (scontrol requeue), 1 finished, 2 cancelled, 3 running
    queues.append(lambda: finish(folders[1]) or polls({0: "PENDING|BeginTime", 3: "RUNNING|None"})[0])
    queues += polls({0: "RUNNING|None"})  # 3 has left the queue: sacct does not know yet
    queues.append(lambda: finish(folders[0]) or "")
    sacct = ["4242_2|CANCELLED by 0|0:0\n", "4242_3|RUNNING|0:0\n", "4242_3|TIMEOUT|0:0\n"]
    submitit_folder = tmp_path / "out" / sweep.STATE_FOLDER / "submitit"
    submitit_folder.mkdir(parents=True)
    (submitit_folder / "4242_2_0_log.err").write_text("Error in the data: no such file x.wav\n")
    code = sweep.main([str(path), "--launcher=slurm"], cluster=ScriptedCluster("cpu", queues, sacct))
    out = capsys.readouterr().out
    assert code == 1, out
    names = [run.name for run in runs]
    assert f"{names[0]}: running (Slurm job 4242_0)" in out
    assert f"{names[0]}: queued (Slurm job 4242_0, BeginTime)" in out  # requeued: followed on
    assert f"{names[0]}: done" in out and f"{names[1]}: done" in out
    assert f"{names[2]}: queued (Slurm job 4242_2, PartitionTimeLimit: it will not start, the time " \
           "limit is above the partition's MaxTime; scancel it and change the resources)" in out
    assert "Priority" not in out  # a reason that changes alone makes no line
    assert f"{names[2]}: Slurm job 4242_2 cancelled: Error in the data: no such file x.wav; log " \
           f"{submitit_folder / '4242_2_0_log.err'}" in out
    assert f"{names[3]}: Slurm job 4242_3 reached its time limit" in out
    assert "2 run(s) failed" in out and "squeue every 0 s" in out


def test_without_accounting_the_cause_comes_from_slurms_line_in_the_log(tmp_path, monkeypatch, capsys):
    fake_submission(tmp_path, monkeypatch)
    monkeypatch.setitem(sweep.POLL_S, "slurm", 0)
    path = write_sweep(tmp_path, resources={"cpus_per_run": 1, "time_min": 10})
    submitit_folder = tmp_path / "out" / sweep.STATE_FOLDER / "submitit"
    submitit_folder.mkdir(parents=True)
    (submitit_folder / "4242_0_log.err").write_text(recorded("log_time_limit.txt"))  # one run: a job
    cluster = ScriptedCluster("cpu", ["", "4242|PENDING|Priority\n", ""], sacct=None)
    assert sweep.main([str(path), "--launcher=slurm"], cluster=cluster) == 1
    out = capsys.readouterr().out
    assert "Slurm accounting (sacct) is not available here: states come from squeue" in out
    assert "Slurm job 4242 reached its time limit; log" in out


def test_a_rerun_follows_queued_jobs_and_runs_held_by_a_live_process_instead_of_reporting_them(
        tmp_path, monkeypatch, capsys):
    fake_submission(tmp_path, monkeypatch)
    monkeypatch.setitem(sweep.POLL_S, "slurm", 0)
    path = write_sweep(tmp_path, methods=["linear", "bitfit"], resources={"cpus_per_run": 1, "time_min": 10})
    runs, _ = sweep.plan(path)
    state = tmp_path / "out" / sweep.STATE_FOLDER
    state.mkdir(parents=True)
    (state / sweep.JOBS_FILE).write_text(json.dumps({runs[0].name: "77_0"}))
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom petl_modules.training.run_folder import RunLock\n"
         f"lock = RunLock({str(runs[1].folder)!r}).acquire(); print('held', flush=True)\n"
         "sys.stdin.readline()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"

        def release():  # the lock's holder finishes its run
            finish(runs[1].folder)
            holder.stdin.write("\n")
            holder.stdin.flush()
            holder.wait()
            return "77_0|RUNNING|None\n"

        queues = ["77_0|PENDING|Priority\n", "77_0|RUNNING|None\n", release,
                  lambda: finish(runs[0].folder) or ""]
        code = sweep.main([str(path), "--launcher=slurm"], cluster=ScriptedCluster("cpu", queues))
    finally:
        holder.kill()
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 runs: 0 done, 1 queued, 1 running (1 held by a process outside this sweep's jobs: " \
           "followed by its lock), 0 to submit" in out
    assert f"{runs[0].name}: done" in out and f"{runs[1].name}: done" in out
    assert "All 2 run(s) done." in out


# ==================================================================== sweep files are data
@pytest.mark.parametrize("content, message", [
    ({"overrides": {"wandb_project": "!apply:os.system [touch /tmp/x]"}},
     "overrides (or --set): wandb_project: '!apply:os.system [touch /tmp/x]' would be YAML code"),
    ({"methods": [{"method": "lora", "grid": {"lora_targets": [["q", "v"], "!ref <x>"]}}]},
     "lora_targets: '!ref <x>' would be YAML code"),
    ({"methods": [{"method": "lora", "overrides": {"lora_targets": ["q", "*alias"]}}]}, "would be YAML code"),
    ({"overrides": {"wandb_project": "a\nb"}}, "holds a line break"),
    ({"overrides": {"wandb_project": {"a": 1}}}, "a dict is not a value a command line carries"),
    ({"recipes": {"../FSC": "x"}}, "recipes: no recipe '../FSC'"),
    ({"methods": [{"method": "linear", "name": ".."}]}, "name '..' must be a plain folder name"),
    ({"methods": ["../hparams/linear"]}, "method '../hparams/linear' has no file"),
    ({"output_folder": "out\ntouch /tmp/x"}, "holds a line break"),
])
def test_a_sweep_file_that_is_not_plain_data_is_refused_at_planning(tmp_path, content, message, capsys):
    path = write_sweep(tmp_path, **content)
    assert sweep.main([str(path), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert message in err and all(line.startswith("Error: ") for line in err.splitlines())
    assert not (tmp_path / "out").exists()


def test_every_value_that_is_not_data_is_listed_one_error_line_each(tmp_path, capsys):
    path = write_sweep(tmp_path, methods=[{"method": "lora", "overrides": {
        "lora_targets": "!apply:os.system [x]", "wandb_project": "&a x"}}])
    assert sweep.main([str(path)]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2 and all("would be YAML code" in e for e in errors)
    assert sweep.main([str(path), "--set", "wandb_run_name=!new:x"]) == 2
    assert "--set wandb_run_name=!new:x: the value would be YAML code" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [
    ("partition", "gpu\ntouch /tmp/pwned"), ("account", "a;rm -rf ~"), ("qos", "$(id)"),
    ("constraint", "a100'\necho"), ("gpu_type", "a 100"), ("gres", "gpu:a100:2\nx"),
])
def test_resources_with_text_a_shell_would_read_are_refused(tmp_path, key, value, capsys):
    path = write_sweep(tmp_path, resources={key: value})
    assert sweep.main([str(path), "--launcher=slurm", "--dry_run"], cluster=ScriptedCluster("gpu")) == 2
    assert f"Error: resources.{key} (or --{key}) = {value!r} is not a Slurm" in capsys.readouterr().err


def test_values_holding_equals_spaces_and_yaml_syntax_reach_the_recipe_as_written(tmp_path):
    options = {"wandb_project": "a=b c", "wandb_run_name": "x: y # z", "lora_targets": ["q", "v"],
               "lr": 0.001, "wandb_entity": "8"}
    path = write_sweep(tmp_path, methods=[{"method": "lora", "overrides": options}])
    (run,) = sweep.plan(path)[0]
    from petl_modules.training.arguments import parse_arguments

    _, _, overrides = parse_arguments(sweep.recipe_command(run)[2:])
    assert overrides["output_folder"] == str(run.folder) and "lr=0.001" in str(run.folder)
    assert {k: overrides[k] for k in options} == options
    assert isinstance(overrides["wandb_entity"], str)  # '8' stays a string


def test_setup_is_the_one_place_for_commands_shown_in_full_and_the_script_runs_nothing_else(
        tmp_path, capsys):
    setup = {"sbatch": ["--mail-type=END", "--exclude=node[01-02]"],
             "commands": ["module load cuda/12.1", "source /shared/petl/.venv/bin/activate"]}
    path = write_sweep(tmp_path, setup=setup, resources={"cpus_per_run": 1, "time_min": 10,
                                                         "account": "proj-1", "qos": "normal"})
    assert sweep.main([str(path), "--launcher=slurm", "--dry_run"], cluster=ScriptedCluster("cpu")) == 0
    out = capsys.readouterr().out
    shown = out.split("[sweep] setup from the sweep file, in every job:\n")[1]
    assert shown.splitlines()[:4] == ["  #SBATCH --mail-type=END", "  #SBATCH --exclude=node[01-02]",
                                      "  module load cuda/12.1", "  source /shared/petl/.venv/bin/activate"]
    script = out.split("the sbatch file of the first:\n")[1]
    assert "#SBATCH --mail-type=END\n" in script and "#SBATCH --account=proj-1\n" in script
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    commands = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert commands[:2] == setup["commands"] and commands[2] == "export SUBMITIT_EXECUTOR=slurm"
    assert commands[3].startswith("srun --unbuffered --output") and len(commands) == 4


@pytest.mark.parametrize("setup, message", [
    ({"sbatch": ["--time=10"]}, "setup.sbatch: --time=10: use resources.time_min"),
    ({"sbatch": ["--array=0-9"]}, "the sweep sets it for its job arrays"),
    ({"sbatch": ["-p gpu"]}, "is not an sbatch option"),
    ({"commands": ["module load x\nrm -rf ~"]}, "one line per list item"),
    ({"command": ["x"]}, "setup: unknown key(s) command"),
])
def test_a_wrong_setup_is_refused(tmp_path, setup, message, capsys):
    path = write_sweep(tmp_path, setup=setup)
    assert sweep.main([str(path), "--dry_run"]) == 2
    assert message in capsys.readouterr().err


# ==================================================================== options
def test_checkpoint_options_take_fractions_and_steps_and_reach_speechbrain(tmp_path):
    path = write_sweep(tmp_path, methods=["linear", {"method": "lora", "name": "steps",
                                                     "overrides": {"ckpt_interval_steps": 50,
                                                                   "ckpt_interval_minutes": 0}}],
                       overrides={"ckpt_interval_minutes": 0.1, "precision": "bf16"})
    runs, _ = sweep.plan(path)
    assert [r.options for r in runs] == [
        {"ckpt_interval_minutes": 0.1, "precision": "bf16"},
        {"ckpt_interval_minutes": 0, "precision": "bf16", "ckpt_interval_steps": 50}]
    from petl_modules.training.arguments import parse_arguments

    _, run_opts, _ = parse_arguments(sweep.recipe_command(runs[0])[2:])
    assert (run_opts["ckpt_interval_minutes"], run_opts["precision"]) == (0.1, "bf16")
    _, run_opts, _ = parse_arguments(sweep.recipe_command(runs[1])[2:])
    assert (run_opts["ckpt_interval_steps"], run_opts["ckpt_interval_minutes"]) == (50, 0)
    bad = write_sweep(tmp_path, overrides={"precision": "fp8"})
    with pytest.raises(sweep.SweepError, match="argument --precision: invalid choice: 'fp8'"):
        sweep.plan(bad)


def test_a_top_level_option_applies_to_the_methods_that_have_it_and_stays_out_of_folder_names(tmp_path):
    path = write_sweep(tmp_path, methods=["linear", "lora"], overrides={"lora_alpha": 4})
    runs, _ = sweep.plan(path)
    assert [(r.name, r.options) for r in runs] == [
        ("FSC/linear/default/seed10", {}), ("FSC/lora/default/seed10", {"lora_alpha": 4})]
    with pytest.raises(sweep.SweepError, match="unknown option 'lora_alpah'"):
        sweep.plan(write_sweep(tmp_path, methods=["linear", "lora"], overrides={"lora_alpah": 4}))


# ==================================================================== signals
WRAPPED = """
import signal, sys, time
from pathlib import Path
ready = Path(sys.argv[1])
def stop(signum, frame):
    Path(sys.argv[2]).write_text(str(signum))
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
ready.write_text("ready")
time.sleep(600)
"""
WRAPPER = """
import sys
from petl_modules.training.launch import RecipeRun
try:
    RecipeRun([sys.executable, sys.argv[1], sys.argv[2], sys.argv[3]], ".")()
except SystemExit as exit_:
    print("exit", exit_.code, flush=True)
    raise
print("returned", flush=True)
"""


def test_the_job_wrapper_passes_sigterm_on_waits_for_the_recipe_and_exits_without_a_result(tmp_path):
    (tmp_path / "recipe.py").write_text(WRAPPED)
    ready, got = tmp_path / "ready", tmp_path / "got"
    wrapper = subprocess.Popen([sys.executable, "-c", WRAPPER, str(tmp_path / "recipe.py"), str(ready),
                                str(got)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO)))
    while not ready.exists() and wrapper.poll() is None:
        time.sleep(0.05)
    wrapper.send_signal(signal.SIGTERM)  # to the wrapper only: it passes it on
    out, _ = wrapper.communicate(timeout=60)
    assert got.read_text() == str(int(signal.SIGTERM))
    assert "exit 143" in out and "returned" not in out
    assert wrapper.returncode == 143


def test_slurm_parameters_carry_gpus_gres_and_setup(tmp_path):
    base = dict(sweep.DEFAULT_RESOURCES, gpus_per_run=2, gpu_type="a100")
    params = launch.slurm_parameters(base, "sweep-x", {"sbatch": ["--mail-type=END", "--requeue"],
                                                       "commands": ["module load cuda"]})
    assert params["gpus_per_node"] == "a100:2" and params["setup"] == ["module load cuda"]
    assert params["additional_parameters"] == {"mail-type": "END", "requeue": True}
    params = launch.slurm_parameters(dict(base, gres="gpu:2"), "sweep-x")
    assert params["gres"] == "gpu:2" and "gpus_per_node" not in params
    assert Path(launch.job_logs(tmp_path, "12_3")[1]).name == "12_3_0_log.err"
