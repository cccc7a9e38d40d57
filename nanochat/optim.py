"""
The optimizer: Muon for the 2-D weight matrices inside the Transformer blocks, AdamW for the
embeddings, the LM head and the per-layer scalars, all in one torch.optim.Optimizer.

Pipeline position: base_train / mid_train / chat_sft / chat_rl call model.setup_optimizers(),
which builds one of these. Checkpoints store its state dict (one shard per rank).

Muon in one paragraph: take the SGD-momentum update of a weight matrix and replace it by the
nearest semi-orthogonal matrix (all singular values set to ~1), found with a few Newton-Schulz
iterations. Every direction of the update then moves at the same rate, which lets matrices train
with a much larger learning rate than AdamW would allow. Embeddings and scalars are not "matrices
that act on a vector" in that sense, so they stay with AdamW.

The distributed variant (DistMuonAdamW) replaces DDP's gradient all-reduce: it averages the
gradients itself, then splits the expensive Muon work across ranks (each rank orthogonalises its
own share of the matrices and broadcasts the result), so Muon momentum lives on one rank only.
"""

import torch
import torch.distributed as dist

# coefficients of the quintic Newton-Schulz iteration tuned for Muon (Keller Jordan, 2024):
# they push singular values towards 1 fast, trading exactness for speed
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def zeropower_via_newtonschulz5(G, steps=5):
    """Approximately orthogonalise G (rows x cols): returns ~U V^T of its SVD U S V^T."""
    assert G.ndim == 2
    a, b, c = NS_COEFFS
    # bf16 on GPUs is stable for this iteration and fast; CPUs stay in fp32
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = X.size(0) > X.size(1)
    if transposed:
        X = X.T
    X = X / (X.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if transposed:
        X = X.T
    return X.to(G.dtype)


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer, two update rules chosen per param group by group['kind'] ('muon' or 'adamw')."""

    def __init__(self, param_groups):
        for g in param_groups:
            assert g.get("kind") in ("muon", "adamw"), "each group needs kind='muon' or 'adamw'"
            if g["kind"] == "muon":
                for p in g["params"]:
                    assert p.ndim == 2, "Muon only handles 2-D matrices"
        super().__init__(param_groups, defaults={})

    # -------------------------------------------------------------- AdamW

    def _adamw_update(self, group, p):
        grad = p.grad
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        beta1, beta2 = group["betas"]
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        if wd:
            p.mul_(1 - lr * wd)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].lerp_(grad.square(), 1 - beta2)
        bias1 = 1 - beta1 ** state["step"]
        bias2 = 1 - beta2 ** state["step"]
        denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(eps)
        p.addcdiv_(state["exp_avg"], denom, value=-lr / bias1)

    # -------------------------------------------------------------- Muon

    def _muon_direction(self, group, p):
        """Update momentum and return the orthogonalised update for one matrix."""
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buf = state["momentum_buffer"]
        buf.lerp_(p.grad, 1 - group["momentum"])
        g = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
        update = zeropower_via_newtonschulz5(g, steps=group["ns_steps"])
        # tall matrices get a larger step so the per-element RMS of the update is comparable
        return update * max(1.0, p.size(0) / p.size(1)) ** 0.5

    def _muon_apply(self, group, p, update):
        if group["weight_decay"]:
            p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-group["lr"])

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["kind"] == "adamw":
                    self._adamw_update(group, p)
                else:
                    self._muon_apply(group, p, self._muon_direction(group, p))


class DistMuonAdamW(MuonAdamW):
    """MuonAdamW for data parallel training without a DDP wrapper.

    step(): (1) all-reduce (average) every gradient, (2) AdamW updates run on every rank
    identically, (3) Muon matrices are dealt round-robin to ranks; the owner computes the update
    and broadcasts the new weights. Optimizer state is therefore sharded for Muon."""

    @torch.no_grad()
    def step(self):
        world = dist.get_world_size()
        rank = dist.get_rank()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        handles = [dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True) for p in params]
        for h in handles:
            h.wait()
        for p in params:
            p.grad.div_(world)
        for group in self.param_groups:
            if group["kind"] == "adamw":
                for p in group["params"]:
                    if p.grad is not None:
                        self._adamw_update(group, p)
        owned = []
        for group in self.param_groups:
            if group["kind"] != "muon":
                continue
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                owner = i % world
                if owner == rank:
                    self._muon_apply(group, p, self._muon_direction(group, p))
                owned.append((p, owner))
        for p, owner in owned:
            dist.broadcast(p.data, src=owner)
