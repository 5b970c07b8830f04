"""Start-up times: a recipe command to its first training step, and classify of one file.

Usage::

    python benchmarks/startup.py CHECKOUT [CHECKOUT ...] [--rounds=3] [--work=/tmp/petl_startup]
        [--bases=tiny,base]

Each ``CHECKOUT`` is a folder holding a copy of this repository (e.g. ``git archive main`` unpacked
in a temporary folder, so that its ``__pycache__`` can be cleared without touching a working
tree). Commands run as a user types them, in the checkout, with ``PYTHONPATH`` set to it:

- ``train``: ``python recipes/FSC/train.py hparams/lora.yaml ...`` (one epoch, batch 8, no
  workers, on a synthetic FSC release of 31 files; the tiny base with ``--max_frames=64
  --reduction_rate=16``) until its first training step starts; a
  probe (``sitecustomize`` in a temporary folder ahead of the checkout on ``PYTHONPATH``) notes
  the time when ``ClassificationBrain.fit_batch`` is first entered and ends the process;
- ``classify``: ``python -m petl_modules.classify PETL_MODEL one.wav``, start to exit, on a
  ``petl_model/`` that the same checkout trained (one epoch, not timed);
- ``load``: the part of ``classify`` this package decides, without Python's and the libraries'
  imports: ``PETLClassifier.from_folder(PETL_MODEL)`` timed inside a fresh process (reading the
  folder, loading and fingerprinting the base, building the model, loading its tensors).

On the ``tiny`` base (``petl_modules.tiny``'s AST, 64 frames) and the AST-base shape (random
weights, 400 frames; written once, ~350 MB). ``cold``: the first run after the checkout's
``__pycache__`` folders are removed (as after an editable install, which compiles nothing);
``warm``: the run right after another one. The checkouts are run in turn within every round, so
that a change of load on the machine touches all of them alike. Prints a Markdown table of the
median over the rounds (and every value) and writes ``startup.json`` in ``--work``.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROBE = '''
import importlib.abc, importlib.util, os, sys, time

TARGET = "petl_modules.training.brain"


class _Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            brain = module.ClassificationBrain

            def first_step(self, batch):
                with open(os.environ["PETL_STARTUP_PROBE"], "w") as stream:
                    stream.write(repr(time.time()))
                os._exit(0)

            brain.fit_batch = first_step

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("PETL_STARTUP_PROBE"):
    sys.meta_path.insert(0, _Probe())
'''

TINY_AST = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                max_length=128, num_mel_bins=128)
BASES = {"tiny": ["--max_frames=64", "--reduction_rate=16"], "base": []}


def run(cmd, cwd, env, timeout=1800):
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return proc.stdout


def environment(checkout, work, probe_file=None):
    """The commands' environment: the checkout (and, timing a first step, the probe) on
    PYTHONPATH; model folders record their local bases in ``work/home``, not in ``~``."""
    env = dict(os.environ, OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONUNBUFFERED="1", PETL_AST_HOME=str(Path(work) / "home"))
    probe_dir = Path(work) / "probe" if probe_file else None
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in (probe_dir, checkout) if p])
    env.pop("PETL_STARTUP_PROBE", None)
    if probe_file:
        env["PETL_STARTUP_PROBE"] = str(probe_file)
    return env


def clear_bytecode(checkout):
    for folder in list(Path(checkout).rglob("__pycache__")):
        shutil.rmtree(folder, ignore_errors=True)


def prepare(work, checkout):
    """The bases, the synthetic FSC release and one wav (written once, with ``checkout``'s code)."""
    done = work / "prepared.json"
    if done.is_file():
        return json.loads(done.read_text())
    script = f'''
import torch, transformers
from petl_modules.synthetic import make_dataset
torch.manual_seed(0)
transformers.ASTModel(transformers.ASTConfig(**{TINY_AST!r})).save_pretrained("{work / 'tiny'}")
torch.manual_seed(0)
transformers.ASTModel(transformers.ASTConfig()).save_pretrained("{work / 'base'}")
root = make_dataset("FSC", "{work / 'data'}", per_class=1)
print(root)
'''
    data = run([sys.executable, "-c", script], checkout, environment(checkout, work)).strip().splitlines()[-1]
    wav = next(Path(data).rglob("*.wav"))
    shutil.copy(wav, work / "one.wav")
    info = {"data": data, "wav": str(work / "one.wav")}
    done.write_text(json.dumps(info))
    return info


def train_command(checkout, info, base, work, output, epochs=1):
    return [sys.executable, str(Path(checkout) / "recipes" / "FSC" / "train.py"),
            str(Path(checkout) / "hparams" / "lora.yaml"), f"--data_folder={info['data']}",
            f"--backbone_source={work / base}", f"--output_folder={output}",
            f"--number_of_epochs={epochs}", "--batch_size=8", "--num_workers=0", *BASES[base]]


def first_step_seconds(checkout, info, base, work):
    output = Path(tempfile.mkdtemp(prefix="run_", dir=work))
    probe = output / "probe.txt"
    start = time.time()
    run(train_command(checkout, info, base, work, output / "out"), checkout,
        environment(checkout, work, probe))
    seconds = float(probe.read_text()) - start
    shutil.rmtree(output, ignore_errors=True)
    return seconds


LOAD = ("import sys, time\nfrom petl_modules.classify import PETLClassifier\nstart = time.time()\n"
        "PETLClassifier.from_folder(sys.argv[1])\nprint(time.time() - start)\n")


def load_seconds(checkout, model, work):
    out = run([sys.executable, "-c", LOAD, str(model)], checkout, environment(checkout, work))
    return float(out.strip().splitlines()[-1])


def classify_seconds(checkout, info, model, work):
    start = time.time()
    run([sys.executable, "-m", "petl_modules.classify", str(model), info["wav"]], checkout,
        environment(checkout, work))
    return time.time() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "petl_startup"))
    parser.add_argument("--bases", default="tiny,base")
    parser.add_argument("--what", default="train,classify,load", help="the commands to time")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    probe_dir = work / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(PROBE)
    checkouts = [str(Path(c).resolve()) for c in args.checkouts]
    bases, commands = args.bases.split(","), args.what.split(",")
    info = prepare(work, checkouts[0])
    models = {}
    for k, checkout in enumerate(checkouts):  # a petl_model/ per checkout and base (not timed)
        for base in bases:
            output = work / f"model_{k}_{base}"
            if not (output / "petl_model").is_dir():
                shutil.rmtree(output, ignore_errors=True)
                run(train_command(checkout, info, base, work, output), checkout, environment(checkout, work))
            models[k, base] = output / "petl_model"
    times = {}
    for round_ in range(args.rounds):
        for base in bases:
            for what in commands:
                for state in ("cold", "warm"):
                    for k, checkout in enumerate(checkouts):
                        if state == "cold":
                            clear_bytecode(checkout)
                        else:  # warm: right after a run of the same command
                            measure(what, checkout, info, base, work, models[k, base])
                        seconds = measure(what, checkout, info, base, work, models[k, base])
                        times.setdefault(f"{what}|{base}|{state}|{k}", []).append(round(seconds, 2))
                        print(f"round {round_ + 1} {what} {base} {state} {checkout}: {seconds:.2f} s",
                              flush=True)
    previous = json.loads((work / "startup.json").read_text()) if (work / "startup.json").is_file() else {}
    if previous.get("checkouts") == checkouts:  # another command's times of the same checkouts: kept
        times = {**previous["times"], **times}
    (work / "startup.json").write_text(json.dumps({"checkouts": checkouts, "times": times}, indent=1))
    print()
    print("| command | base | state | " + " | ".join(f"checkout {k + 1}" for k in range(len(checkouts))) + " |")
    print("|---|---|---|" + "---|" * len(checkouts))
    for base in bases:
        for what in commands:
            for state in ("cold", "warm"):
                cells = []
                for k in range(len(checkouts)):
                    values = times[f"{what}|{base}|{state}|{k}"]
                    cells.append(f"{statistics.median(values):.1f} ({', '.join(f'{v:.1f}' for v in values)})")
                print(f"| {what} | {base} | {state} | " + " | ".join(cells) + " |")
    for k, checkout in enumerate(checkouts):
        print(f"checkout {k + 1}: {checkout}")


def measure(what, checkout, info, base, work, model):
    if what == "train":
        return first_step_seconds(checkout, info, base, work)
    if what == "load":
        return load_seconds(checkout, model, work)
    return classify_seconds(checkout, info, model, work)


if __name__ == "__main__":
    main()
