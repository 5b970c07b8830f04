"""Prompt tuning and prefix tuning: learned tokens added to the frozen transformer's sequence.

Where the tokens go is the lobe's ``PROMPT_POSITION = (keep, replace)``: after the first ``keep``
tokens, in place of the next ``replace`` (e.g. ``(1, 1)``: after a CLS token, in place of a
distillation token, as the reference; a backbone without special tokens: ``(0, 0)``, prepended).

- Prompt tuning (Jia et al., 2022, VPT). Shallow: ``prompt_len`` prompts enter the sequence after
  the embeddings (``embeddings`` point). Deep: besides those, fresh prompts replace the previous
  layer's outputs at the prompt positions before every later layer (``later_layers`` point). The
  classifier can pool the prompts, the input ("speech") tokens or both (``prompt_span``).
- Prefix tuning (Li and Liang, 2021): per layer, ``prompt_len / 2`` learned key vectors and as many
  value vectors join the projected keys and values (after the first ``keep``); the queries, and
  so the sequence length, are unchanged. ``PrefixTuning`` wraps the whole attention sublayer and
  has the backbone contract recompute it with the extra keys and values
  (``petl_modules.contract.attend_with_prefix``), because host attentions reshape keys and
  values with the query's length. No family is named here.

Tokens start uniform in ``+-sqrt(3 / D)`` (Xavier for a ``D x D`` matrix), which on AST-base equals
the reference's VPT bound ``sqrt(6 / (3 * 16 * 16 + 768))``.
"""

import dataclasses
import math

import torch

from petl_modules.contract import PETLModule, attend_with_prefix, host_input, prefix_key_width
from petl_modules.methods.adapters import join_output, split_output
from petl_modules.methods.config import MethodConfig, adapted, register_method
from petl_modules.options import OptionError, option


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

    def __init__(self, module, hidden_size, prompt_len=25, prompt_position=(0, 0)):
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

    def __init__(self, module, hidden_size, prompt_len=25, prompt_position=(0, 0)):
        super().__init__()
        self.pretrained_module = module
        self.prompt_len = _check_length("prompt_len", prompt_len)
        self.start = int(prompt_position[0])
        self.prompts = _tokens(self.prompt_len, int(hidden_size))

    def forward(self, *args, **kwargs):
        hidden, args, kwargs = host_input(args, kwargs)
        hidden = insert_tokens(hidden, self.prompts, self.start, replace=self.prompt_len)
        return self.pretrained_module(hidden, *args, **kwargs)


def prompt_tuning(module, point, hidden_size, prompt_len=25, prompt_position=(0, 0)):
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

    The attention is recomputed by the backbone contract's hook
    ``petl_modules.contract.attend_with_prefix``, chosen by the wrapped module's class: by
    default from its ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``/``out_proj`` Linear layers,
    returning ``(output, None)`` as transformers' attention modules return ``(output, weights)``;
    a lobe whose attention is called otherwise registers its own. The key width comes from
    ``prefix_key_width``.

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

    def __init__(self, module, hidden_size, prompt_len=24, prompt_position=(0, 0)):
        super().__init__()
        self.pretrained_module = module
        prompt_len = _check_length("prompt_len", prompt_len, even=True)
        self.start = int(prompt_position[0])
        width = prefix_key_width(module)
        self.prefix_keys = _tokens(prompt_len // 2, width)
        self.prefix_values = _tokens(prompt_len // 2, width)

    def forward(self, *args, **kwargs):
        """``hidden [B, T, D]`` (positional or ``hidden_states=``: ``host_input``) and the host's
        arguments (e.g. ``attention_mask``) -> what the host expects from its attention sublayer
        (``(output [B, T, D], None)`` by default)."""
        hidden, args, kwargs = host_input(args, kwargs)
        return attend_with_prefix(self.pretrained_module, hidden, self.prefix_keys,
                                  self.prefix_values, self.start, *args, **kwargs)


@register_method
@dataclasses.dataclass
class PrefixTuningConfig(MethodConfig):
    """Prefix tuning: ``prompt_len / 2`` learned keys and values per layer; the final LayerNorm
    trains too."""

    name = "prefix_tuning"
    summary = "P/2 key and P/2 value vectors per layer"

    prompt_len: int = option(24, "P: P/2 keys and P/2 values per layer (even)", minimum=2)

    def check(self):
        if self.prompt_len % 2:
            raise OptionError(
                f"prompt_len={self.prompt_len} is odd: prefix tuning splits the prefix equally "
                f"between keys and values. Use an even length, e.g. --prompt_len={self.prompt_len + 1}.")

    def build(self, backbone):
        return adapted(backbone, PrefixTuning, ["attention"], ["final_norm"], prompt_len=self.prompt_len)


@register_method
@dataclasses.dataclass
class PromptTuningConfig(MethodConfig):
    """Prompt tuning: ``prompt_len`` prompts after the embeddings and, deep, fresh ones before
    every later layer; the final LayerNorm trains too."""

    name = "prompt_tuning"
    summary = "P prompt tokens after the embeddings, and fresh ones before every later layer when deep"

    prompt_len: int = option(25, "P prompts per layer (deep) or in all (shallow)", minimum=1)
    deep_prompt: bool = option(True, "fresh prompts before every later layer (False: only after the "
                               "embeddings)")

    def build(self, backbone):
        return adapted(backbone, prompt_tuning, prompt_points(self.deep_prompt), ["final_norm"],
                       prompt_len=self.prompt_len)
