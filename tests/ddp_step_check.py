"""Run by tests/test_train_ddp.py under torchrun: DistributedDataParallel (gloo, global-batch BatchNorm) against
one process on the same global batches; rank 0 prints the comparison as JSON.

- One step: both gradients are compared with the exact (float64, one process) gradient. float32 rounding
  alone leaves ~1% error in some BatchNorm-bias gradients (they are sums that nearly cancel), so the fair
  bar is one process's own float32 error: ``ddp_grad_error`` against ``single_grad_error``.
- Eight RAdam steps: the relative distance between the two processes' weights and one process's.
resnet18 (no dropout, whose masks are drawn per rank) on fixed random global batches of 16 at 64 px.
"""
from __future__ import annotations

import copy
import json

import torch

from wbc_deploy.model import create_model, parse_pretrained
from wbc_deploy.trainer import distributed

BATCH, SIZE, STEPS, LR = 16, 64, 8, 1e-4


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters()])


def main() -> None:
    ctx, device = distributed.setup(torch.device("cpu"))
    torch.manual_seed(0)
    model = create_model("resnet18", 4, attention=None, pretrained=parse_pretrained("none"))
    single = copy.deepcopy(model).train()
    exact = copy.deepcopy(model).double().train()
    net = ctx.wrap(model, device).train()
    opt_single = torch.optim.RAdam(single.parameters(), lr=LR)
    opt_ddp = torch.optim.RAdam(model.parameters(), lr=LR)
    g = torch.Generator().manual_seed(1)
    b = BATCH // ctx.world_size
    part = slice(ctx.rank * b, (ctx.rank + 1) * b)
    result = {"world_size": ctx.world_size, "backend": ctx.backend, "batch": BATCH, "size": SIZE, "steps": STEPS, "lr": LR}
    for step in range(STEPS):
        x, y = torch.randn(BATCH, 3, SIZE, SIZE, generator=g), torch.randint(0, 4, (BATCH,), generator=g)
        for opt, m, xs, ys in ((opt_single, single, x, y), (opt_ddp, net, x[part], y[part])):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(xs), ys).backward()
        if step == 0:
            torch.nn.functional.cross_entropy(exact(x.double()), y).backward()
            ref = flat_grad(exact)
            result["single_grad_error"] = float((flat_grad(single) - ref).norm() / ref.norm())
            result["ddp_grad_error"] = float((flat_grad(model) - ref).norm() / ref.norm())
            result["ddp_vs_single_grad"] = float((flat_grad(model) - flat_grad(single)).norm() / flat_grad(single).norm())
            result["max_running_stat_diff"] = max(float((a - c).abs().max()) for (k, a), c in
                                                  zip(model.state_dict().items(), single.state_dict().values()) if "running" in k)
        opt_single.step()
        opt_ddp.step()
    with torch.no_grad():
        w_ddp = torch.cat([p.reshape(-1).double() for p in model.parameters()])
        w_single = torch.cat([p.reshape(-1).double() for p in single.parameters()])
        result["rel_weight_diff"] = float((w_ddp - w_single).norm() / w_single.norm())
    if ctx.is_lead:
        print(json.dumps(result))
    ctx.close()


if __name__ == "__main__":
    main()
