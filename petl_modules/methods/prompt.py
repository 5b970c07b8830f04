"""Prompt tuning and prefix tuning: learned tokens added to the frozen transformer's sequence.

Where the tokens go is the lobe's ``PROMPT_POSITION = (keep, replace)``: after the first ``keep``
tokens, in place of the next ``replace``. AST: ``(1, 1)``, after the CLS token in place of the
distillation token (as the reference); a backbone without special tokens: ``(0, 0)``, prepended.

- Prompt tuning (Jia et al., 2022, VPT). Shallow: ``prompt_len`` prompts enter the sequence after
  the embeddings (``embeddings`` point). Deep: besides those, fresh prompts replace the previous
  layer's outputs at the prompt positions before every later layer (``later_layers`` point). The
  classifier can pool the prompts, the input ("speech") tokens or both (``prompt_span``).
- Prefix tuning (Li and Liang, 2021): per layer, ``prompt_len / 2`` learned key vectors and as many
  value vectors join the projected keys and values (after the CLS token for AST); the queries, and
  so the sequence length, are unchanged. ``PrefixTuning`` wraps the whole attention sublayer and
  recomputes attention from the wrapped module's q/k/v/o projections, because transformers
  reshapes keys and values with the query's length.

Tokens start uniform in ``+-sqrt(3 / D)`` (Xavier for a ``D x D`` matrix), which on AST-base equals
the reference's VPT bound ``sqrt(6 / (3 * 16 * 16 + 768))``.
"""

import math

import torch
import torch.nn.functional as F

from petl_modules.backbones.wav2vec2 import is_wavlm_attention, wavlm_attention_bias
from petl_modules.methods.adapted import PETLModule
from petl_modules.methods.adapters import join_output, split_output


def _tokens(count, hidden_size):
    """A ``[count, D]`` parameter drawn uniform in ``+-sqrt(3 / D)``."""
    bound = math.sqrt(3.0 / hidden_size)
    return torch.nn.Parameter(torch.empty(count, hidden_size).uniform_(-bound, bound))


def _check_length(option, value, even=False):
    try:
        value = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a positive integer, got {value!r}.") from None
    if value < 1:
        raise ValueError(f"{option} must be a positive integer, got {value}.")
    if even and value % 2:
        raise ValueError(
            f"{option}={value} is odd: prefix tuning splits the prefix equally between keys and "
            f"values. Use an even length, e.g. --{option}={value + 1}."
        )
    return value


def insert_tokens(sequence, tokens, start, replace=0):
    """``sequence [B, T, D]`` with ``tokens [P, D]`` inserted at ``start``, replacing ``replace``
    tokens there -> ``[B, T - replace + P, D]``."""
    tokens = tokens.to(sequence.dtype).unsqueeze(0).expand(sequence.shape[0], -1, -1)
    return torch.cat([sequence[:, :start], tokens, sequence[:, start + replace:]], dim=1)


class ShallowPrompt(PETLModule):
    """Inserts ``prompt_len`` learned prompts into the output of the embeddings.

    Arguments
    ---------
    module : torch.nn.Module
        The embeddings (``embeddings`` point), returning ``[B, T, D]`` (or a tuple starting with it).
    hidden_size : int
        D.
    prompt_len : int
        P.
    prompt_position : tuple of int
        ``(keep, replace)`` of the lobe (``Backbone.PROMPT_POSITION``).
    """

    def __init__(self, module, hidden_size, prompt_len=25, prompt_position=(0, 0), **kwargs):
        super().__init__()
        self.pretrained_module = module
        self.prompt_len = _check_length("prompt_len", prompt_len)
        self.start, self.replace = (int(v) for v in prompt_position)
        self.prompts = _tokens(self.prompt_len, int(hidden_size))

    @property
    def span(self):
        """``[start, stop]`` of the prompts in the token sequence."""
        return [self.start, self.start + self.prompt_len]

    def forward(self, *args, **kwargs):
        out, rest = split_output(self.pretrained_module(*args, **kwargs))
        return join_output(insert_tokens(out, self.prompts, self.start, self.replace), rest)


class DeepPrompt(PETLModule):
    """Replaces the tokens at the prompt positions by fresh prompts, then runs the wrapped layer.

    Arguments
    ---------
    module : torch.nn.Module
        A transformer layer (``later_layers`` point), called as ``module(hidden [B, T, D], ...)``.
    hidden_size : int
        D.
    prompt_len : int
        P.
    prompt_position : tuple of int
        ``(keep, replace)`` of the lobe; the prompts sit at ``[keep, keep + P)``.
    """

    def __init__(self, module, hidden_size, prompt_len=25, prompt_position=(0, 0), **kwargs):
        super().__init__()
        self.pretrained_module = module
        self.prompt_len = _check_length("prompt_len", prompt_len)
        self.start = int(prompt_position[0])
        self.prompts = _tokens(self.prompt_len, int(hidden_size))

    def forward(self, hidden, *args, **kwargs):
        hidden = insert_tokens(hidden, self.prompts, self.start, replace=self.prompt_len)
        return self.pretrained_module(hidden, *args, **kwargs)


def prompt_tuning(module, point, hidden_size, prompt_len=25, prompt_position=(0, 0), **kwargs):
    """The ``adapter_class`` of prompt tuning: ``ShallowPrompt`` at ``embeddings``,
    ``DeepPrompt`` at ``later_layers``."""
    cls = {"embeddings": ShallowPrompt, "later_layers": DeepPrompt}.get(point)
    if cls is None:
        raise ValueError(
            f"Prompt tuning attaches at the 'embeddings' and 'later_layers' points, not '{point}'."
        )
    return cls(module, hidden_size, prompt_len=prompt_len, prompt_position=prompt_position)


def prompt_points(deep_prompt):
    """Insertion points of shallow (``embeddings``) or deep (``+ later_layers``) prompt tuning."""
    if deep_prompt not in (True, False):
        raise ValueError(f"deep_prompt must be True or False, got {deep_prompt!r}.")
    return ["embeddings", "later_layers"] if deep_prompt else ["embeddings"]


def prompt_span(model):
    """``[start, stop]`` of the prompt tokens in ``model``'s output sequence, or None without
    prompts (the classifier's ``prompt_span``: pooling ``prompts``, ``speech``, ``prompts+speech``)."""
    spans = [m.span for m in model.modules() if isinstance(m, ShallowPrompt)]
    return spans[0] if spans else None


class PrefixTuning(PETLModule):
    """Self-attention with ``prompt_len / 2`` learned keys and values inserted after the first
    ``keep`` projected keys and values (``prompt_position``); queries and output length unchanged.

    Works on any attention module with ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj`` (or
    ``out_proj``) Linear layers, a head count (``num_attention_heads`` or ``num_heads``) and
    optionally ``scaling`` and ``attention_dropout``/``dropout``. Returns ``(output, None)``, as
    transformers' attention modules return ``(output, weights)``.

    Arguments
    ---------
    module : torch.nn.Module
        The attention sublayer (``attention`` point).
    hidden_size : int
        D.
    prompt_len : int
        P, even: P/2 keys and P/2 values.
    prompt_position : tuple of int
        ``(keep, replace)`` of the lobe; only ``keep`` is used.
    """

    def __init__(self, module, hidden_size, prompt_len=24, prompt_position=(0, 0), **kwargs):
        super().__init__()
        self.pretrained_module = module
        prompt_len = _check_length("prompt_len", prompt_len, even=True)
        self.start = int(prompt_position[0])
        self.num_heads = getattr(module, "num_attention_heads", None) or getattr(module, "num_heads", None)
        self.out_proj_name = "o_proj" if hasattr(module, "o_proj") else "out_proj"
        missing = [n for n in ("q_proj", "k_proj", "v_proj", self.out_proj_name) if not hasattr(module, n)]
        if missing or not self.num_heads:
            raise TypeError(
                f"PrefixTuning cannot wrap {type(module).__name__}: it needs q_proj, k_proj, v_proj, "
                "o_proj/out_proj and num_attention_heads/num_heads (attach it at the 'attention' point)."
            )
        width = module.k_proj.out_features
        self.prefix_keys = _tokens(prompt_len // 2, width)
        self.prefix_values = _tokens(prompt_len // 2, width)

    def _heads(self, x):
        """``[B, T, H * d]`` -> ``[B, H, T, d]``."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def _extend_mask(self, mask, count):
        """Lets every query attend to the prefix: ``count`` key columns at ``start``."""
        if mask is None:
            return None
        shape = (*mask.shape[:-1], count)
        fill = torch.ones(shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool \
            else torch.zeros(shape, dtype=mask.dtype, device=mask.device)
        return torch.cat([mask[..., :self.start], fill, mask[..., self.start:]], dim=-1)

    def forward(self, hidden, *args, **kwargs):
        """``hidden [B, T, D]`` (+ the host's optional additive or boolean ``attention_mask``
        ``[B, 1, T, T]``) -> ``(output [B, T, D], None)``.

        WavLM's attention is called with ``attention_mask [B, T]`` (1 = valid key) and
        ``position_bias``, and returns ``(output, None, position_bias)``: its gated relative
        position bias is recomputed here, and the prefix keys get none."""
        attn = self.pretrained_module
        mask = kwargs.get("attention_mask", args[0] if args else None)
        wavlm = is_wavlm_attention(attn)
        if wavlm:
            mask, position_bias = self._wavlm_mask(attn, hidden, mask, kwargs.get("position_bias"))
        query = self._heads(attn.q_proj(hidden))
        key = self._heads(insert_tokens(attn.k_proj(hidden), self.prefix_keys, self.start))
        value = self._heads(insert_tokens(attn.v_proj(hidden), self.prefix_values, self.start))
        dropout = getattr(attn, "attention_dropout", getattr(attn, "dropout", 0.0))
        out = F.scaled_dot_product_attention(
            query, key, value,
            attn_mask=self._extend_mask(mask, self.prefix_keys.shape[0]),
            dropout_p=float(dropout) if attn.training and isinstance(dropout, (int, float)) else 0.0,
            scale=getattr(attn, "scaling", None),
        )
        out = out.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], -1)
        out = getattr(attn, self.out_proj_name)(out)
        return (out, None, position_bias) if wavlm else (out, None)

    @staticmethod
    def _wavlm_mask(attn, hidden, padding, position_bias):
        """WavLM: its gated relative position bias ``[B, H, T, T]`` (``position_bias`` passed on by
        the first layer, or computed here), -inf at padded keys (``padding [B, T]``)."""
        bias, position_bias = wavlm_attention_bias(attn, hidden, position_bias)
        if padding is not None:
            bias = bias.masked_fill(~padding.bool()[:, None, None, :], float("-inf"))
        return bias, position_bias
