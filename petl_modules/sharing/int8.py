"""int8 inference on CPU: the model's ONNX graph with its linear layers quantised by onnxruntime.

``use_int8(classifier)`` (``classify --precision=int8``) exports the model as
``python -m petl_modules.export --format=onnx --precision=int8`` does
(``petl_modules.sharing.onnx_export``: onnxruntime's dynamic quantisation, checked by its
agreement with PyTorch's fp32 answers) and from then on the classifier (a ``PETLModel``, or a
``MultiTaskClassifier``: one graph per task, the frozen backbone not shared) runs that graph in
onnxruntime instead of the PyTorch modules::

    from petl_modules.classify import PETLClassifier
    from petl_modules.sharing.int8 import use_int8

    classifier = use_int8(PETLClassifier.from_folder("results/FSC/adapter/10/petl_model")) The export is kept in a cache, so the next run of the same model starts at
once::

    $PETL_AST_HOME/onnx/<key>/        (default ~/.cache/petl-ast/onnx/<key>/)
    ├── model.onnx
    └── onnx_config.json

``<key>`` is a hash of every tensor of the model (frozen backbone included), its config, the
ONNX opset and the versions of torch and onnxruntime: a model changed in any way is exported
again. The folder holds nothing else; delete it to reclaim the space.

There is no fallback: int8 needs onnxruntime, a model that exports to ONNX and a CPU device, and
says which one is missing (never a silent fp32 run).
"""

import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile

import torch

from petl_modules.model.bases import home
from petl_modules.model.petl_model import PETLModel
from petl_modules.model.spec import PETLModelError

logger = logging.getLogger(__name__)

KEY_VERSION = "int8-1"  # bump when the export or the quantisation changes


def cache_folder():
    """``$PETL_AST_HOME/onnx`` (default ``~/.cache/petl-ast/onnx``): the int8 graphs."""
    return home() / "onnx"


def check_int8(device, compile=False):
    """Raises ``PETLModelError`` where int8 cannot run as asked: onnxruntime missing, a device
    other than the CPU, or ``torch.compile`` asked too (it applies to PyTorch's modules only)."""
    from petl_modules.sharing.onnx_export import require_onnxruntime

    require_onnxruntime("--precision=int8")
    if torch.device(device).type != "cpu":
        raise PETLModelError(f"--precision=int8 runs onnxruntime on the CPU; --device={device} was "
                             "given. Use --device=cpu, or --precision=bf16 on the accelerator.")
    if compile:
        raise PETLModelError("--precision=int8 runs the ONNX graph in onnxruntime; --compile "
                             "applies to PyTorch's modules only. Drop one of them.")


def graph_key(modules, config, opset):
    """A hash of every tensor of ``modules``, ``config`` (the model's flat summary), ``opset`` and
    the versions of torch and onnxruntime."""
    import onnxruntime

    digest = hashlib.sha256()
    digest.update(json.dumps([KEY_VERSION, torch.__version__, onnxruntime.__version__, opset,
                              config], sort_keys=True, default=str).encode())
    for name, module in sorted(modules.items()):
        for key, tensor in module.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().data if tensor.numel() else b"")
    return digest.hexdigest()[:32]


class Int8Graph:
    """onnxruntime's session of an int8 export: ``graph(inputs, lengths)`` -> ``[B, C]`` class
    probabilities, from the inputs ``PETLModel.classify_inputs`` takes (the input processor's
    padded features, relative lengths)."""

    def __init__(self, folder):
        import onnxruntime

        from petl_modules.sharing.onnx_export import CONFIG_FILE, MODEL_FILE

        self.folder = folder
        side = json.loads((folder / CONFIG_FILE).read_text())
        self.waveform = any(i["name"] == "lengths" for i in side["inputs"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # as PyTorch runs (OMP_NUM_THREADS)
        self.session = onnxruntime.InferenceSession(str(folder / MODEL_FILE), options,
                                                    providers=["CPUExecutionProvider"])

    def __call__(self, inputs, lengths):
        feed = {"input_values": inputs.detach().cpu().float().contiguous().numpy()}
        if self.waveform:
            feed["lengths"] = lengths.detach().cpu().float().numpy()
        return torch.from_numpy(self.session.run(["probabilities"], feed)[0])


def int8_graph(modules, config):
    """The ``Int8Graph`` of ``modules`` (``{"petl_model", "classifier"}``, left untouched) with
    ``config`` (the model's ``config``): from the cache, or exported into it first."""
    from petl_modules.model.folder import merge_petl_model
    from petl_modules.sharing.onnx_export import CONFIG_FILE, INT8_OPSET, export_onnx

    folder = cache_folder() / graph_key(modules, config, INT8_OPSET)
    if (folder / CONFIG_FILE).is_file():
        return Int8Graph(folder)
    logger.info(f"--precision=int8: exporting the model to ONNX int8 in {folder} (once).")
    cache_folder().mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".export-", dir=cache_folder())
    try:
        copied = {name: copy.deepcopy(getattr(m, "module", m)) for name, m in modules.items()}
        merged = merge_petl_model(copied)  # on a copy: the PyTorch modules stay as they are
        export_onnx(copied, config, work, merged_lora_modules=len(merged), precision="int8")
        del copied
        try:
            os.replace(work, folder)
        except OSError:  # another process exported the same model meanwhile: use theirs
            if not (folder / CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Int8Graph(folder)


def use_int8(classifier, compile=False):
    """Makes ``classifier`` (a ``PETLModel`` or a ``MultiTaskClassifier``) run its int8 graph(s)
    (``int8_graph``; each task's model of a ``MultiTaskClassifier`` loaded once to find or export
    its own); returns it. ``PETLModelError`` (``check_int8``) where int8 cannot run."""
    check_int8(classifier.device, compile)
    if isinstance(classifier, PETLModel):
        classifier.int8 = int8_graph(dict(classifier.mods), classifier.config)
    else:
        graphs = []
        for config in classifier.configs:
            model = PETLModel.from_pretrained(config["model_dir"], config["backbone_source"])
            graphs.append(int8_graph(dict(model.mods), model.config))
            del model
        classifier.int8 = graphs
    classifier.precision = "int8"
    return classifier
