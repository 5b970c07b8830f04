"""A run's PETL model folder: what defines its model, taken from the run's objects, and saved.

Every run writes ``<experiment_folder>/petl_model/`` from its best validation checkpoint (the hook
``save_run_petl_model`` in ``petl_modules.training.recipe.Run.finish_fold``). The folder's format,
loading and merging are the model layer's (``petl_modules.model.folder``, ``petl_modules.model.spec``,
``docs/model_folder.md``): this module only says which of the run's settings define its model
(``run_spec``): the backbone lobe as built (its checkpoint's name and fingerprint, its model
options), the method's config (``method_config``), the head's pooling, the task and a multi-label
model's thresholds, the evaluation protocol and the class names. The run's other settings
(learning rates, epochs, paths, tracking) stay in its ``hyperparams.yaml`` and ``results.json``.

Example
-------
>>> folder = save_run_petl_model(hparams, class_names)  # doctest: +SKIP
"""

import logging
from pathlib import Path

from petl_modules.files import human_size
from petl_modules.model.bases import remember_local_base
from petl_modules.model.folder import (  # noqa: F401 (used from here before the model layer)
    folder_size,
    load_petl_model,
    merge_petl_model,
    save_model_folder,
    unmerged_petl_modules,
)
from petl_modules.model.spec import (  # noqa: F401
    CONFIG_FILE,
    FOLDER_NAME,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    BackboneRef,
    ModelSpec,
    PETLModelError,
)
from petl_modules.model.task import Task
from petl_modules.model.windows import EvalProtocol

logger = logging.getLogger(__name__)


def run_spec(hparams, class_names, thresholds=None):
    """The ``ModelSpec`` of a run's model (``hparams``: the run's objects, ``backbone``,
    ``method_config``, ``classifier`` and the options; ``thresholds``: a multi-label model's
    per-class decision thresholds)."""
    task = Task.of_options(hparams).trained(thresholds)
    return ModelSpec(
        backbone=BackboneRef.of(hparams["backbone"], hparams["backbone_source"]),
        method=hparams["method_config"],
        class_names=[str(name) for name in class_names],
        pooling=hparams["classifier"].pooling,
        task=task,
        evaluation=EvalProtocol.from_options(hparams),
    )


def save_petl_model(folder, hparams, class_names, thresholds=None):
    """Writes the PETL model folder of a run's model (``run_spec``) into ``folder``; records a
    local base checkpoint for this machine (``petl_modules.model.bases``). Returns
    ``(ModelSpec, trained parameter count)``."""
    spec = run_spec(hparams, class_names, thresholds)
    trained = save_model_folder(folder, spec, hparams["modules"])
    remember_local_base(hparams["backbone_source"], spec.backbone.sha256())
    return spec, trained


def save_run_petl_model(hparams, class_names, thresholds=None):
    """Writes ``<experiment_folder>/petl_model/`` of a finished run and logs its size
    (``thresholds``: the per-class decision thresholds of a multi-label model).

    Called by ``Run.finish_fold`` on the main process, after the test, when the modules hold
    the best validation checkpoint's weights.

    Returns
    -------
    Path
        The PETL model folder.
    """
    folder = Path(hparams["experiment_folder"]) / FOLDER_NAME
    spec, trained = save_petl_model(folder, hparams, class_names, thresholds)
    logger.info(
        f"PETL model saved to {folder}: petl_model {human_size(folder_size(folder))}, "
        f"backbone {human_size(spec.backbone.fingerprint['bytes'])} ({trained:,} trained parameters)"
    )
    return folder
