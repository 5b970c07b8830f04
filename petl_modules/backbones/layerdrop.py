"""LayerDrop (Fan et al., 2019) of the transformer layers being fine-tuned: one rule for every lobe.

A layer in train mode is skipped with probability ``rate`` at each forward, as transformers and
SpeechBrain do (frozen layers stay in eval mode, so they are never dropped). Each process draws its
own drops. Under DDP, a layer one process skips while another runs it would leave the processes'
gradient reductions out of step, and the run would fail. So there a dropped layer still runs and
its output is thrown away, with the random generators as they were before it (its other effects
stay: e.g. the running statistics of a BatchNorm inside it). The forward is the skip's, bit for
bit, and the layer's parameters get zero gradients, as DDP's ``find_unused_parameters`` would give
them (so AdamW still decays them and moves them by its momentum). In one process a dropped layer
is skipped, at no cost.
"""

import torch


def drops(layer, rate):
    """Whether LayerDrop drops ``layer`` (or the pretrained layer a PETL module wraps) now: one
    draw from torch's generator per layer in train mode when ``rate`` > 0."""
    layer = getattr(layer, "pretrained_module", layer)
    if not layer.training or rate <= 0.0:
        return False
    return bool(torch.rand([]) < rate)


def reduced_across_processes():
    """Whether the gradients of this forward are reduced across processes (DDP)."""
    return (torch.is_grad_enabled() and torch.distributed.is_available()
            and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1)


def layer_step(layer, rate, state, run, keep=False):
    """``run(state)``, the encoder's step through ``layer``, unless LayerDrop drops the layer:
    then ``state`` as it was.

    ``state`` is the hidden tensor, or a tuple whose first item it is and whose others the layers
    pass on (a position bias). ``keep``: a layer never dropped (WavLM's first, which computes the
    position bias of the others).

    >>> layer = torch.nn.Linear(4, 4)
    >>> hidden = torch.randn(2, 4)
    >>> torch.equal(layer_step(layer, 1.0, hidden, layer), hidden)  # in train mode: dropped
    True
    >>> torch.equal(layer_step(layer.eval(), 1.0, hidden, layer), layer(hidden))  # eval: runs
    True
    """
    if keep or not drops(layer, rate):
        return run(state)
    if not reduced_across_processes():
        return state
    hidden = state[0] if isinstance(state, tuple) else state
    # The random draws of the layer's dropout are undone: the later layers draw as after a skip.
    devices = [] if hidden.device.type == "cpu" else [hidden.device]
    kind = hidden.device.type if devices else "cuda"
    with torch.random.fork_rng(devices=devices, device_type=kind):
        discarded = run(state)
    output = discarded[0] if isinstance(discarded, tuple) else discarded
    if isinstance(state, tuple):
        return (_Discard.apply(state[0], output), *state[1:])
    return _Discard.apply(state, output)


class _Discard(torch.autograd.Function):
    """``hidden`` as it is, with ``output`` kept in the graph: its gradient is zero (whatever
    values it holds, inf or NaN included)."""

    @staticmethod
    def forward(ctx, hidden, output):
        ctx.output_shape, ctx.output_dtype = output.shape, output.dtype
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.new_zeros(ctx.output_shape, dtype=ctx.output_dtype)
