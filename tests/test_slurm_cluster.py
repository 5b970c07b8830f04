"""The sweep on a real Slurm (skipped unless ``pytest --slurm``; ``tests/slurm/check.sh`` starts a
single-node cluster with accounting and runs this).

Five runs of the FSC recipe on the synthetic release and the tiny AST (linear, BitFit, LoRA with
reduction_rate 8, 16, 32: option values in folder names), two CPUs, MaxArraySize 4 (two arrays).
While the first sweep command follows them, one running run gets the time-limit warning
(``scancel --signal=USR2``, as ``--signal`` sends it: it checkpoints, submitit requeues it), one
is requeued with ``scontrol requeue`` (SIGTERM: it checkpoints, Slurm runs it again) and another
is cancelled with ``scancel``. The first command reports the requeued runs done and the cancelled one failed,
naming the cause; the rerun submits the cancelled run again, which resumes from its checkpoint;
then every run has its results in the folder the sweep reads and the table lists all five.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from petl_modules import sweep
from petl_modules.synthetic import make_dataset
from petl_modules.training import slurm

from conftest import REPO

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
START = REPO / "tests" / "slurm" / "start_slurm.sh"


@pytest.fixture(scope="module")
def cluster():
    """The single-node cluster (started by tests/slurm/start_slurm.sh when it is not up)."""
    if not (shutil.which("sinfo") and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0):
        proc = subprocess.run(["bash", str(START)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"Slurm cannot start: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return slurm.Cluster()


def wait_for(what, condition, limit_s=900, every_s=1.0, fail=True):
    """Polls ``condition`` until it returns something true (a guard against a hang, not a timing);
    after ``limit_s``, fails (or, ``fail=False``, returns False)."""
    end = time.time() + limit_s
    while time.time() < end:
        found = condition()
        if found:
            return found
        time.sleep(every_s)
    if fail:
        raise AssertionError(f"still waiting for {what} after {limit_s} s")
    return False


def signal_until_it_stops(cluster, job_name, job, name):
    """``scancel --signal=<name> <job>`` (as ``--signal`` does before a time limit), then waits
    until the job leaves the running state (its recipe stopped, submitit requeued it). scancel is
    not waited for: the signal reaches the job's step at once, but scancel may go on retrying for
    a minute and more on a step that "can not be altered now"."""
    scancel = subprocess.Popen(["scancel", f"--signal={name}", job])
    wait_for(f"job {job} to stop on SIG{name}",
             lambda: cluster.queue(job_name).get(job, ("",))[0] != "RUNNING", limit_s=300, every_s=0.5)
    return scancel


def intra_epoch_checkpoint(folder):
    return [c for c in (folder / "save").glob("CKPT+*")
            if (c / "CKPT.yaml").is_file() and "brain_intra_epoch_ckpt" in (c / "CKPT.yaml").read_text()]


def test_a_sweep_on_slurm_trains_where_it_reads_follows_a_requeue_and_resumes_a_cancelled_run(
        cluster, tmp_path, tiny_ast):
    data = make_dataset("FSC", tmp_path / "data", per_class=2)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "output_folder": str(tmp_path / "out"),
        "recipes": {"FSC": str(data)},
        "methods": ["linear", "bitfit", {"method": "lora", "grid": {"reduction_rate": [8, 16, 32]}}],
        "seeds": [1],
        "overrides": {"backbone_source": str(tiny_ast), "number_of_epochs": 15, "batch_size": 4,
                      "num_workers": 0, "max_frames": 64, "ckpt_interval_steps": 2},
        "resources": {"cpus_per_run": 1, "mem_gb": 2, "time_min": 20, "array_parallelism": 2},
        "setup": {"commands": ["export OMP_NUM_THREADS=1"]},
    }, sort_keys=False))
    runs, plan = sweep.plan(path)
    assert [r.name for r in runs] == [
        "FSC/linear/default/seed1", "FSC/bitfit/default/seed1", "FSC/lora/reduction_rate=8/seed1",
        "FSC/lora/reduction_rate=16/seed1", "FSC/lora/reduction_rate=32/seed1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    command = [sys.executable, "-m", "petl_modules.sweep", str(path), "--launcher=slurm", "--poll_s=2"]
    log = tmp_path / "first.log"
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    jobs_file = plan["root"] / sweep.STATE_FOLDER / sweep.JOBS_FILE
    submitit = plan["root"] / sweep.STATE_FOLDER / "submitit"
    jobs = wait_for("the submission", lambda: jobs_file.is_file() and json.loads(jobs_file.read_text()))
    arrays = sorted({job.split("_")[0] for job in jobs.values()}, key=int)
    assert len(arrays) == 2, jobs  # 5 runs, MaxArraySize 4
    # linear: the time-limit warning; lora reduction_rate=8: scontrol requeue; =16: scancel
    warned, requeued, cancelled = runs[0], runs[2], runs[3]

    seen = {}

    def running_with_checkpoint(run):
        queue = cluster.queue(sweep.job_name(plan))
        state = queue.get(jobs[run.name], ("", ""))[0]
        found = (state, bool(intra_epoch_checkpoint(run.folder)))
        if seen.get(run.name) != found:
            print(f"[test] {time.strftime('%H:%M:%S')} {run.name} ({jobs[run.name]}): {found}", flush=True)
            seen[run.name] = found
        return state == "RUNNING" and found[1]

    # The first array holds runs 0-3, two at a time: the lora runs start once 0 and 1 are done.
    wait_for(f"{warned.name} to run", lambda: running_with_checkpoint(warned), every_s=0.2)
    scancel = signal_until_it_stops(cluster, sweep.job_name(plan), jobs[warned.name], "USR2")
    wait_for(f"{requeued.name} to run", lambda: running_with_checkpoint(requeued), every_s=0.2)
    subprocess.run(["scontrol", "requeue", jobs[requeued.name]], check=True)
    wait_for(f"{cancelled.name} to run", lambda: running_with_checkpoint(cancelled), every_s=0.2)
    subprocess.run(["scancel", jobs[cancelled.name]], check=True)
    first.wait(timeout=1800)
    scancel.wait(timeout=600)
    out = log.read_text()
    print(f"\n======== first sweep command (exit {first.returncode})\n{out}")
    assert first.returncode == 1, out
    for run in (warned, requeued):  # requeued (by submitit, by scontrol), followed, resumed
        assert f"{run.name}: queued (Slurm job {jobs[run.name]}, BeginTime)" in out
        assert f"{run.name}: done" in out
    warned_log = (submitit / f"{jobs[warned.name]}_0_log.out").read_text()
    assert "Stopped on SIGUSR2" in warned_log and "goes on after its batch" in warned_log
    assert "Requeued job" in warned_log  # by submitit
    assert re.search(rf"{re.escape(cancelled.name)}: Slurm job {jobs[cancelled.name]} cancelled", out)
    assert "1 run(s) failed" in out
    stopped = (requeued.folder / "train_log.txt").read_text()
    assert (requeued.folder / "results.json").is_file()
    requeued_log = (submitit / f"{jobs[requeued.name]}_0_log.out").read_text()
    assert "Stopped on SIGTERM" in requeued_log and "goes on after its batch" in requeued_log
    assert stopped.count("test loss") == 1

    second = subprocess.run(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=1800)
    print(f"\n======== rerun (exit {second.returncode})\n{second.stdout}")
    assert second.returncode == 0, second.stdout
    assert "5 runs: 4 done, 0 queued, 0 running, 1 to submit" in second.stdout
    assert "All 5 run(s) done." in second.stdout
    resumed = json.loads(jobs_file.read_text())[cancelled.name]
    assert resumed != jobs[cancelled.name]
    assert "Resuming from the latest checkpoint" in (submitit / f"{resumed}_0_log.out").read_text() \
        or "Resuming from the latest checkpoint" in (submitit / f"{resumed}_log.out").read_text()

    for run in runs:  # every run trained in the folder the sweep reads, and nowhere else
        results = json.loads((run.folder / "results.json").read_text())
        assert results["method"] == run.method
    assert not list((tmp_path / "out").glob("FSC/lora/reduction_rate *"))
    report = (plan["root"] / "report.md").read_text()
    print(f"\n======== report.md\n{report}")
    assert len(re.findall(r"^\| (linear|bitfit|lora)[^|]* \| [^|]* \| FSC \|", report, re.M)) == 5
    last = list(json.loads(jobs_file.read_text()).values())  # each run's last job
    ended = cluster.ended(last)
    assert {job: ended[job][0] for job in last} == {job: "COMPLETED" for job in last}
