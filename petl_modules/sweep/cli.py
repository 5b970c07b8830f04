"""``python -m petl_modules.sweep``: the command line of the sweep tool."""

import argparse
import shlex
import shutil
import sys

from petl_modules.sweep.local import run_local
from petl_modules.sweep.on_slurm import run_slurm, setup_lines, slurm_params
from petl_modules.sweep.plan import plan, recipe_command
from petl_modules.sweep.report import write_report
from petl_modules.sweep.resources import DEFAULT_RESOURCES, TEXT_RESOURCES, check_cluster, check_resources
from petl_modules.sweep.state import POLL_S, STATE_FOLDER, run_state
from petl_modules.sweep.sweep_file import SweepError
from petl_modules.training import launch, slurm
from petl_modules.training.arguments import read_value, yaml_code


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m petl_modules.sweep",
        description="Run every recipe command of a sweep file (locally or as Slurm job arrays), "
                    "resumably, then write the results table and plot.",
    )
    parser.add_argument("sweep_file", help="sweeps/<name>.yaml")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--dry_run", action="store_true",
                        help="print each run's command and state (and, with --launcher=slurm, the "
                             "partition check, the setup and the sbatch file); run nothing")
    parser.add_argument("--variant", help="a variant of the sweep file (e.g. reference)")
    parser.add_argument("--data_root", help="folder of the datasets (default: the file's data_root)")
    parser.add_argument("--output_folder", help="default: the file's output_folder")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an option for every run that has it (repeatable), e.g. --set "
                             "number_of_epochs=1")
    parser.add_argument("--no_wait", action="store_true",
                        help="Slurm: submit and return (rerun the command to follow or report)")
    parser.add_argument("--poll_s", type=float, help="seconds between state checks (local 2, Slurm 60)")
    for key, default in DEFAULT_RESOURCES.items():
        kind = str if key in TEXT_RESOURCES else int
        parser.add_argument(f"--{key}", type=kind, default=None,
                            help=f"resources.{key} (default: the file's, else {default})")
    return parser.parse_args(argv)


def extra_options(pairs):
    """``--set key=value`` options: each value read as a recipe reads its command line."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SweepError(f"--set {pair}: write --set key=value.")
        options[key.lstrip("-")] = read_value(value) if value else ""
        if yaml_code(value):
            raise SweepError(f"--set {pair}: the value would be YAML code (a tag, anchor or alias) "
                             "in the recipe's configuration; give a plain value.")
    return options


def print_errors(err):
    for message in err.messages:
        print(f"Error: {message}", file=sys.stderr)


def main(argv=None, out=None, cluster=None):
    out = out or sys.stdout
    args = parse_args(argv)
    try:
        runs, sweep = plan(args.sweep_file, args.variant, args.data_root, args.output_folder,
                           extra_options(args.set))
        resources = check_resources(sweep, args)
        if args.dry_run:
            return dry_run(runs, sweep, resources, args.launcher, out, cluster)
        max_array = None
        if args.launcher == "slurm":
            if not (shutil.which("sbatch") and shutil.which("srun") and shutil.which("squeue")):
                raise SweepError("--launcher=slurm needs Slurm's sbatch, srun and squeue on the PATH: "
                                 "run the command on the cluster's login node (--dry_run shows the "
                                 "sbatch file it would submit).")
            cluster = cluster or slurm.Cluster()
            resources, max_array, notes = check_cluster(resources, cluster)
            for note in notes:
                print(f"[sweep] {note}", file=out, flush=True)
        missing = sorted({str(r.data_folder) for r in runs if not r.data_folder.exists()})
        if missing:
            raise SweepError(f"data folder(s) not found: {', '.join(missing)}. Pass --data_root "
                             "(the folder holding the datasets) or fix 'recipes:' in the sweep file.")
        if args.poll_s:
            POLL_S[args.launcher] = args.poll_s
        if args.launcher == "local":
            ended = run_local(runs, sweep, resources, out)
        else:
            ended = run_slurm(runs, sweep, resources, wait=not args.no_wait, out=out,
                              cluster=cluster, max_array=max_array)
            if ended is None:
                return 0
    except SweepError as err:
        print_errors(err)
        return 2
    except KeyboardInterrupt:
        print("\n[sweep] Interrupted. Rerun the same command to resume: finished runs are skipped, "
              "interrupted ones resume from their checkpoints (Slurm jobs go on: the rerun "
              "follows them).", file=out, flush=True)
        return 130
    failed = {name: note for name, (state, note) in ended.items() if state == "failed"}
    write_report(sweep, out)
    if failed:
        print(f"[sweep] {len(failed)} run(s) failed (rerun the command to retry them):", file=out)
        for name, note in sorted(failed.items()):
            print(f"  {name}: {note}", file=out)
        return 1
    print(f"[sweep] All {len(runs)} run(s) done.", file=out, flush=True)
    return 0


def dry_run(runs, sweep, resources, launcher, out=None, cluster=None):
    """Prints every run's state and command; for Slurm also the partition check (where Slurm's
    commands are at hand; each refusal an ``Error:`` line), the sweep file's setup in full and the
    sbatch file of the (first) job array. Returns 2 when something would be refused, else 0."""
    out = out or sys.stdout
    states = {run.name: run_state(run.folder) for run in runs}
    refused, notes, max_array = [], [], None
    if launcher == "slurm":
        cluster = cluster or (slurm.Cluster() if slurm.Cluster.available() else None)
        if cluster is None:
            notes.append("the partition was not checked: no Slurm commands here (run --dry_run on "
                         "the cluster's login node to check CPUs, memory, time and GPUs)")
            resources = dict(resources, gpus_per_run=1 if resources["gpus_per_run"] is None
                             else resources["gpus_per_run"])
        else:
            try:
                resources, max_array, found = check_cluster(resources, cluster)
                notes += found
            except SweepError as err:
                refused += err.messages
                resources = dict(resources, gpus_per_run=resources["gpus_per_run"] or 0)
    for run in runs:
        run.gpus = int(resources["gpus_per_run"] or 0)
        print(f"# {run.name} [{states[run.name]}]", file=out)
        print(shlex.join(recipe_command(run)), file=out)
    todo = sum(s == "pending" for s in states.values())
    print(f"[sweep] {len(runs)} runs ({todo} to run) in {sweep['root']}; nothing was run (--dry_run).",
          file=out)
    if launcher == "slurm":
        for note in notes:
            print(f"[sweep] {note}", file=out)
        sizes = slurm.array_sizes(max(1, todo), max_array)
        setup = setup_lines(sweep)
        print("[sweep] setup from the sweep file, in every job:\n" + "\n".join(setup) if setup
              else "[sweep] no setup: in the sweep file (the jobs run with the environment sbatch "
                   "passes on)", file=out)
        folder = sweep["root"] / STATE_FOLDER / "submitit"
        script = launch.slurm_script(folder, slurm_params(sweep, resources), sizes[0])
        arrays = f"{len(sizes)} job arrays of {', '.join(map(str, sizes))} runs (MaxArraySize " \
                 f"{max_array})" if len(sizes) > 1 else f"one job array of {sizes[0]} runs"
        print(f"[sweep] {arrays}; the sbatch file of the first:\n{script}", file=out)
    for message in refused:
        print(f"Error: {message}", file=sys.stderr)
    return 2 if refused else 0
