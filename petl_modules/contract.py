"""The contract that backbone lobes and PETL methods share, below both (neither imports the other).

- ``PETLModule``: the base of every module a method inserts; the lobes keep its modules in train
  mode when the frozen backbone is in eval mode, and ``petl_buffers`` finds its state buffers;
- the token mask: a lobe runs its layers inside ``token_mask(mask)`` and a PETL module reads the
  padding of the tokens it receives with ``current_token_mask(x)``; ``checkpoint_contexts`` and
  ``recomputing`` carry it into gradient checkpointing's recomputation;
- the hooks methods call without knowing the family, keyed by the attention module's class (a lobe
  file registers its own): ``attend_with_prefix`` (attention with extra keys and values, prefix
  tuning) and ``prefix_key_width``, with ``prefix_attention`` for attentions built from
  ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``/``out_proj`` projections.
"""

import contextlib
import contextvars
import functools

import torch
import torch.nn.functional as F


# The padding of the token sequence that PETL modules see, set by the lobe around its layers
# (``token_mask``), and whether a checkpointed layer is being recomputed in backward.
_TOKEN_MASK = contextvars.ContextVar("petl_token_mask", default=None)
_RECOMPUTING = contextvars.ContextVar("petl_recomputing", default=False)


@contextlib.contextmanager
def token_mask(mask):
    """Within the block, PETL modules treat the tokens where ``mask [B, T]`` (bool) is False as
    padding. The lobe sets it around its transformer layers; None, or a mask without padding
    (dropped here, except while ``torch.export`` traces), means every token is valid.

    Example
    -------
    >>> with token_mask(torch.tensor([[True, False]])):
    ...     current_token_mask(torch.zeros(1, 2, 4)).tolist()
    [[True, False]]
    """
    if mask is not None:
        mask = mask.bool()
        # An exported graph (ONNX) keeps the mask: whether it has padding depends on the input.
        if not torch.compiler.is_exporting() and bool(mask.all()):
            mask = None
    reset = _TOKEN_MASK.set(mask)
    try:
        yield
    finally:
        _TOKEN_MASK.reset(reset)


def current_token_mask(x):
    """The padding mask ``[B, T]`` of the tokens ``x [B, T, ...]`` a PETL module is called on, or
    None when every token is valid (see ``token_mask``)."""
    mask = _TOKEN_MASK.get()
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(
            f"The token mask {list(mask.shape)} set by the backbone lobe does not fit the "
            f"{list(x.shape[:2])} tokens a PETL module receives: the lobe must set the mask of "
            "the sequence its layers run on (petl_modules.contract.token_mask)."
        )
    return mask


def recomputing():
    """Whether a checkpointed layer is being recomputed in backward (``checkpoint_contexts``):
    stateful modules (BatchNorm running statistics) must not update a second time."""
    return _RECOMPUTING.get()


@contextlib.contextmanager
def _recomputation(mask):
    reset_mask, reset_flag = _TOKEN_MASK.set(mask), _RECOMPUTING.set(True)
    try:
        yield
    finally:
        _RECOMPUTING.reset(reset_flag)
        _TOKEN_MASK.reset(reset_mask)


def checkpoint_contexts():
    """``context_fn`` of ``torch.utils.checkpoint.checkpoint`` (non-reentrant) for a layer holding
    PETL modules: its recomputation in backward sees the forward's token mask and ``recomputing()``.
    """
    return contextlib.nullcontext(), _recomputation(_TOKEN_MASK.get())


class PETLModule(torch.nn.Module):
    """Base of every module a PETL method inserts into a backbone.

    A PETL module trains (its own parameters, and train/eval mode follows the Brain) even when the
    backbone around it is frozen and kept in eval mode. A wrapper keeps the module it wraps as
    ``self.pretrained_module`` (SpeechBrain's convention); that one stays frozen and in eval mode.

    Modules whose tokens interact (convolutions over the sequence, routing over the tokens) read
    the padding with ``current_token_mask``. ``start_warnings`` names the settings that start the
    model away from the pretrained one (``AdaptedBackbone`` logs each once per build).
    """

    def start_warnings(self):
        """Messages (str) about settings that make this module change the pretrained model's
        output at the start of training, each naming the option that avoids it."""
        return []


def host_input(args, kwargs):
    """``(x, args, kwargs)``: the input a host layer passes its sublayer first, taken out of the
    call's arguments, positional or by transformers' keyword ``hidden_states`` (some layers call
    their attention as ``self_attn(hidden_states=...)``: w2v-BERT's). A wrapper then calls the
    pretrained sublayer as ``module(x, *args, **kwargs)``.

    Example
    -------
    >>> host_input((), {"hidden_states": 1, "attention_mask": None})
    (1, (), {'attention_mask': None})
    """
    if args:
        return args[0], args[1:], kwargs
    if "hidden_states" in kwargs:
        kwargs = dict(kwargs)
        return kwargs.pop("hidden_states"), (), kwargs
    raise TypeError("A PETL wrapper was called without the sublayer's input (first positional "
                    f"argument or hidden_states=); got keywords {sorted(kwargs)}.")


def petl_buffers(model):
    """``{name: buffer}`` of the state buffers of PETL modules in ``model`` (e.g. the running
    statistics of a conformer adapter's BatchNorm); the pretrained modules they wrap excluded.

    They are trained state too, though not ``requires_grad``: checkpoints and PETL model folders
    keep them beside the trained parameters.
    """
    state = model.state_dict(keep_vars=True)
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, PETLModule):
            continue
        for buffer_name, _ in module.named_buffers():
            full = f"{name}.{buffer_name}" if name else buffer_name
            if not buffer_name.startswith("pretrained_module.") and full in state:
                found[full] = state[full]
    return found


# ==================================================================== hooks of the methods
def _projections(attention):
    """``(q, k, v, o, heads)`` of an attention module with ``q_proj``, ``k_proj``, ``v_proj``,
    ``o_proj``/``out_proj`` and ``num_attention_heads``/``num_heads`` (TypeError otherwise)."""
    heads = getattr(attention, "num_attention_heads", None) or getattr(attention, "num_heads", None)
    out = getattr(attention, "o_proj", None) or getattr(attention, "out_proj", None)
    found = [getattr(attention, n, None) for n in ("q_proj", "k_proj", "v_proj")] + [out]
    if any(m is None for m in found) or not heads:
        raise TypeError(
            f"Prefix tuning cannot wrap {type(attention).__name__}: it needs q_proj, k_proj, "
            "v_proj, o_proj/out_proj and num_attention_heads/num_heads (attach it at the "
            "'attention' point), or the backbone's lobe file must register attend_with_prefix "
            "and prefix_key_width for this attention class."
        )
    return (*found, int(heads))


@functools.singledispatch
def prefix_key_width(attention):
    """Width of the projected keys (= values) of ``attention``: the size of a prefix token."""
    return _projections(attention)[1].out_features


def _insert(sequence, tokens, start):
    """``sequence [B, T, W]`` with ``tokens [P, W]`` inserted at ``start`` -> ``[B, T + P, W]``."""
    tokens = tokens.to(sequence.dtype).unsqueeze(0).expand(sequence.shape[0], -1, -1)
    return torch.cat([sequence[:, :start], tokens, sequence[:, start:]], dim=1)


def _extend_mask(mask, count, start):
    """``mask [..., T]`` (bool: True = attend; or additive) with ``count`` attended key columns
    at ``start`` -> ``[..., T + count]``."""
    if mask is None:
        return None
    shape = (*mask.shape[:-1], count)
    fill = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool \
        else torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([mask[..., :start], fill, mask[..., start:]], dim=-1)


def prefix_attention(attention, hidden, prefix_keys, prefix_values, start, mask=None):
    """Multi-head attention of ``attention``'s q/k/v/o projections with extra keys and values.

    Arguments
    ---------
    attention : torch.nn.Module
        With the projections of ``_projections``; optional ``scaling`` and
        ``attention_dropout``/``dropout`` (used in train mode).
    hidden : torch.Tensor
        ``[B, T, D]`` input of the sublayer.
    prefix_keys, prefix_values : torch.Tensor
        ``[P, W]`` inserted after the first ``start`` projected keys and values.
    start : int
        Keys kept before the prefix.
    mask : torch.Tensor, optional
        ``[B, 1|H, T, T]`` boolean (True = attend) or additive, over the host's keys; the prefix
        keys are attended by every query.

    Returns
    -------
    torch.Tensor
        ``[B, T, D]`` after the output projection.
    """
    q_proj, k_proj, v_proj, o_proj, heads = _projections(attention)
    batch, length, _ = hidden.shape

    def split(x):  # [B, T, H * d] -> [B, H, T, d]
        return x.view(batch, x.shape[1], heads, -1).transpose(1, 2)

    key = split(_insert(k_proj(hidden), prefix_keys, start))
    value = split(_insert(v_proj(hidden), prefix_values, start))
    dropout = getattr(attention, "attention_dropout", getattr(attention, "dropout", 0.0))
    out = F.scaled_dot_product_attention(
        split(q_proj(hidden)), key, value,
        attn_mask=_extend_mask(mask, prefix_keys.shape[0], start),
        dropout_p=float(dropout) if attention.training and isinstance(dropout, (int, float)) else 0.0,
        scale=getattr(attention, "scaling", None),
    )
    return o_proj(out.transpose(1, 2).reshape(batch, length, -1))


@functools.singledispatch
def attend_with_prefix(attention, hidden, prefix_keys, prefix_values, start, *args, **kwargs):
    """Runs the attention sublayer ``attention`` as its host layer calls it (``hidden [B, T, D]``
    and the host's ``*args, **kwargs``), with ``prefix_keys``/``prefix_values [P, W]`` inserted
    after the first ``start`` keys and values; returns what the host expects from the sublayer.

    Default: transformers' convention, ``attention_mask`` (first positional or keyword) boolean or
    additive ``[B, 1, T, T]``, returning ``(output [B, T, D], None)``. A lobe whose attention is
    called otherwise registers its own (``@attend_with_prefix.register(ItsAttention)``).
    """
    mask = kwargs.get("attention_mask", args[0] if args else None)
    return prefix_attention(attention, hidden, prefix_keys, prefix_values, start, mask), None
