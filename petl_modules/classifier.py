"""The classification head: pooling over the backbone's tokens, then one linear layer.

The final LayerNorm is the backbone's own (``final_norm`` insertion point) and trains with every
method; this module holds only what is new for the task.
"""

import torch

POOLINGS = ("mean", "cls")


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

    Example
    -------
    >>> head = Classifier(8, 3)
    >>> head(torch.randn(2, 5, 8)).shape
    torch.Size([2, 3])
    """

    def __init__(self, input_size, n_classes, pooling="mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got '{pooling}'.")
        if int(n_classes) < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}.")
        self.pooling = pooling
        self.head = torch.nn.Linear(int(input_size), int(n_classes))

    def pool(self, hidden, mask=None):
        """``[B, T, D]`` (+ ``[B, T]`` bool mask of valid tokens) -> ``[B, D]``."""
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def forward(self, hidden, mask=None):
        """``[B, T, D]`` -> logits ``[B, C]``."""
        return self.head(self.pool(hidden, mask))
