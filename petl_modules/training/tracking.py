"""Experiment tracking: the file train log always, Weights & Biases on top when asked for.

The Brain logs through one ``train_logger`` (SpeechBrain's ``TrainLogger.log_stats`` interface).
``experiment_logger`` returns the yaml's ``FileTrainLogger`` (``train_log.txt``) alone, or, with
``use_wandb: True``, that logger and SpeechBrain's ``WandBLogger`` behind one ``TrainLoggers``.
Only the main process logs (both SpeechBrain loggers are main-process-only); W&B runs offline
with ``WANDB_MODE=offline``, storing the run under ``<experiment_folder>/wandb``.
"""

import secrets
from pathlib import Path

from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.train_logger import TrainLogger, WandBLogger

WANDB_ID_FILE = "wandb_run_id.txt"


class TrainLoggers(TrainLogger):
    """Several SpeechBrain train loggers used as one (each ``log_stats`` goes to all of them)."""

    def __init__(self, *loggers):
        self.loggers = list(loggers)

    def log_stats(self, *args, **kwargs):
        for train_logger in self.loggers:
            train_logger.log_stats(*args, **kwargs)


def check_wandb(hparams):
    """Fails early (before data is read) when ``use_wandb`` is set but wandb is not installed."""
    if hparams.get("use_wandb"):
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError(
                "--use_wandb=True needs the wandb package: `pip install wandb` (or leave "
                "use_wandb False; train_log.txt is written either way)."
            ) from None


def experiment_logger(hparams, fold=None, config=None):
    """The train logger of one experiment folder: ``hparams["train_logger"]`` (+ W&B if enabled).

    One W&B run per experiment folder (per fold), named ``<wandb_run_name>[-fold<k>]`` and grouped
    by ``wandb_run_name``. Its id is kept in ``<experiment_folder>/wandb_run_id.txt``, so a resumed
    run continues the same W&B run (epochs are logged as W&B steps, none twice).

    Arguments
    ---------
    hparams : dict
        The loaded hyperparameters (``train_logger``, ``use_wandb``, ``wandb_project``,
        ``wandb_entity``, ``wandb_run_name``, ``experiment_folder``).
    fold : int, optional
        The fold of a multi-fold dataset.
    config : dict, optional
        Options of the run recorded as the W&B run's config.
    """
    file_logger = hparams["train_logger"]
    if not hparams.get("use_wandb") or not if_main_process():
        return file_logger
    check_wandb(hparams)
    import wandb

    folder = Path(hparams["experiment_folder"])
    id_file = folder / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    group = str(hparams["wandb_run_name"])
    wandb_logger = WandBLogger(
        initializer=wandb.init,
        project=hparams["wandb_project"],
        entity=hparams["wandb_entity"],
        name=group if fold is None else f"{group}-fold{fold}",
        group=group,
        id=run_id,
        resume="allow",
        dir=str(folder),
        config=config,
        reinit="finish_previous",  # multi-fold runs: the previous fold's run ends here
    )
    return TrainLoggers(file_logger, wandb_logger)
