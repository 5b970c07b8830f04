"""The classification head: pooling over the backbone's tokens, then one linear layer.

The final LayerNorm is the backbone's own (``final_norm`` insertion point) and trains with every
method; this module holds only what is new for the task. ``cls_distill`` (AST) adds its own LayerNorm before
the linear layer, as transformers' ``ASTForAudioClassification`` does, so that such a head exports
as that class exactly (``petl_modules.sharing.hf_classification``).
"""

import torch

POOLINGS = ("mean", "cls", "cls_distill", "prompts", "speech", "prompts+speech")
PROMPT_POOLINGS = ("prompts", "speech", "prompts+speech")
# The LayerNorm of ``cls_distill``: ``ASTMLPHead``'s, whose epsilon is the AST config's
# ``layer_norm_eps`` (1e-12 in transformers' default and in the released AST checkpoints).
CLS_DISTILL_EPS = 1e-12


class Classifier(torch.nn.Module):
    """Pools ``[B, T, D]`` token states and maps them to class logits ``[B, C]``.

    Arguments
    ---------
    input_size : int
        Hidden size of the backbone.
    n_classes : int
        Number of classes.
    pooling : str
        ``mean``: mean over the valid tokens (all tokens for AST, as the reference; padded frames
        excluded for wav2vec2-family backbones). ``cls``: the first token (AST's CLS).
        ``cls_distill`` (AST): the mean of the first two tokens (CLS and distillation), then a
        LayerNorm of its own (``norm``, 2 x D more parameters), as ``ASTForAudioClassification``.
        With prompt
        tuning (the reference's options): ``prompts`` (mean over the prompt tokens), ``speech``
        (mean over the tokens after them: the input's), ``prompts+speech`` (mean from the first
        prompt on: all but the tokens kept before the prompts, e.g. AST's CLS).
    prompt_span : list of int, optional
        ``[start, stop]`` of the prompt tokens in the sequence (``petl_modules.methods.prompt.prompt_span``);
        required by the prompt poolings.
    backbone : Backbone, optional
        The lobe the head sits on, checked against the pooling (``cls_distill`` needs its
        ``distillation_token``); not kept.

    Example
    -------
    >>> head = Classifier(8, 3)
    >>> head(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, input_size, n_classes, pooling="mean", prompt_span=None, backbone=None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got '{pooling}'.")
        if pooling == "cls_distill" and backbone is not None and not backbone.distillation_token:
            raise ValueError(
                f"pooling 'cls_distill' pools a CLS and a distillation token, which the "
                f"{backbone.family} backbone has not: use pooling mean (or cls)."
            )
        if pooling in PROMPT_POOLINGS and prompt_span is None:
            raise ValueError(
                f"pooling '{pooling}' pools prompt tokens, but this model has none: use it with "
                "hparams/prompt_tuning.yaml, or pooling mean or cls."
            )
        if pooling == "cls_distill" and prompt_span is not None:
            raise ValueError(
                "pooling 'cls_distill' pools the first two tokens (CLS and distillation), but "
                "prompt tuning puts its prompts in place of the second: use pooling cls, mean or "
                "a prompt pooling (prompts, speech, prompts+speech)."
            )
        self.prompt_span = None if prompt_span is None else [int(i) for i in prompt_span]
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}.")
        self.pooling = pooling
        if pooling == "cls_distill":
            self.norm = torch.nn.LayerNorm(int(input_size), eps=CLS_DISTILL_EPS)
        self.head = torch.nn.Linear(int(input_size), int(n_classes))

    def pool(self, hidden, mask=None):
        """``[B, T, D]`` (+ ``[B, T]`` bool mask of valid tokens) -> ``[B, D]``."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "cls_distill":
            return self.norm((hidden[:, 0] + hidden[:, 1]) / 2)
        if self.pooling in PROMPT_POOLINGS:
            start, stop = self.prompt_span
            first, last = {"prompts": (start, stop), "speech": (stop, None),
                           "prompts+speech": (start, None)}[self.pooling]
            hidden = hidden[:, first:last]
            mask = None if mask is None else mask[:, first:last]
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, hidden, mask=None):
        """``[B, T, D]`` -> logits ``[B, C]``."""
        return self.head(self.pool(hidden, mask))
