"""The ``moa`` suite: the MoA module alone, a per-expert Python loop (the reference's way) against
ours (stacked weights, einsum)."""

import torch
import transformers

from benchmarks.common import result, timed

class LoopBottleneck(torch.nn.Module):
    """One bottleneck adapter ``up(GELU(down x))`` as a module of its own (the reference's expert)."""

    def __init__(self, down_weight, down_bias, up_weight, up_bias):
        super().__init__()
        self.down = torch.nn.Linear(*down_weight.shape)
        self.up = torch.nn.Linear(*up_weight.shape)
        with torch.no_grad():
            self.down.weight.copy_(down_weight.T)
            self.down.bias.copy_(down_bias)
            self.up.weight.copy_(up_weight.T)
            self.up.bias.copy_(up_bias)

    def forward(self, x):
        return self.up(torch.nn.functional.gelu(self.down(x)))


class LoopMoA(torch.nn.Module):
    """A Dense- or Soft-MoA computed the reference's way: a Python loop over the experts
    (``src/MoA.py``: stacked expert outputs then the router's weighted sum; Soft: one expert call
    per slot group). Built from our module's weights, so both compute the same function."""

    def __init__(self, ours):
        super().__init__()
        experts = ours.experts
        self.kind = "dense" if hasattr(ours, "router") else "soft"
        self.experts = torch.nn.ModuleList(
            LoopBottleneck(experts.down_weight[n], experts.down_bias[n], experts.up_weight[n],
                           experts.up_bias[n])
            for n in range(experts.num_experts)
        )
        if self.kind == "dense":
            self.router = torch.nn.Linear(ours.router.in_features, ours.router.out_features)
            self.router.load_state_dict(ours.router.state_dict())
        else:
            self.phi = torch.nn.Parameter(ours.phi.detach().clone())

    def forward(self, x):
        if self.kind == "dense":
            weights = torch.softmax(self.router(x), dim=-1)  # [B, T, N]
            outputs = torch.stack([expert(x) for expert in self.experts], dim=-1)  # [B, T, D, N]
            return (outputs * weights.unsqueeze(2)).sum(dim=-1)
        logits = torch.einsum("bmd,dnp->bmnp", x, self.phi)
        dispatch = torch.softmax(logits, dim=1)
        combine = torch.softmax(logits.flatten(2), dim=-1).view_as(logits)
        slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
        outputs = torch.stack([expert(slots[:, n]) for n, expert in enumerate(self.experts)], dim=1)
        return torch.einsum("bnpd,bmnp->bmd", outputs, combine)


def suite_moa(args):
    """The MoA module alone at the model's token count, fwd+bwd: per-expert loop vs ours."""
    from petl_modules.methods.moa import DenseMoA, SoftMoA

    config = transformers.AutoConfig.from_pretrained(args.backbone_source)
    d = config.hidden_size
    patches_f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
    patches_t = (args.frames - config.patch_size) // config.time_stride + 1
    tokens = 2 + patches_f * patches_t
    rows = []
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, tokens, d, generator=generator).to(args.device)
    for n in (15,) if args.quick else (2, 7, 15):
        for kind, cls in (("dense", DenseMoA), ("soft", SoftMoA)):
            torch.manual_seed(n)
            ours = cls(d, num_adapters=n, reduction_rate=128)
            with torch.no_grad():  # up-projections away from zero: a fair, non-trivial function
                ours.experts.up_weight.normal_(std=0.02)
            loop = LoopMoA(ours)
            ours, loop = ours.to(args.device), loop.to(args.device)
            with torch.no_grad():
                diff = (ours(x) - loop(x)).abs().max().item()
            if diff > 1e-3:
                raise RuntimeError(f"{kind} MoA N={n}: loop and batched differ by {diff}")
            for label, module in (("loop", loop), ("batched", ours)):
                inputs = x.detach().clone().requires_grad_(True)

                def step(module=module, inputs=inputs):
                    module.zero_grad(set_to_none=True)
                    with torch.autocast(args.device_type, dtype=torch.bfloat16,
                                        enabled=args.precision == "bf16"):
                        out = module(inputs)
                    out.float().square().mean().backward()

                times = timed(step, args.steps * (1 if args.quick else 3), args.warmup, args.device)
                trainable = sum(p.numel() for p in module.parameters())
                rows.append(result("moa", f"{kind}_moa N={n} {label}", times, None, trainable))
    return rows
