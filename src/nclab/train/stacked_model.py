"""K models of one architecture as one stacked model, and their optimizer.

Every parameter and buffer of the solo model gets a leading *member* dimension:
``weight`` of shape ``(out, in)`` becomes ``(K, out, in)``. A training step runs all K
members in one batched computation (``bmm``), so the per-call overhead that dominates a
small model's step is paid once for K runs. Members never mix: each has its own
parameters, BatchNorm statistics (computed over its own batch), optimizer state and
hyperparameters (learning rate, momentum, weight decay as ``(K,)`` tensors).

The model is the paper's MLP (``Flatten``, ``Linear``, ``BatchNorm1d``, activations,
then a ``Linear`` classifier; :func:`stackable` says whether a model is one), interpreted
directly with ``bmm`` and a per-member BatchNorm; autograd takes the gradients. A member's
arithmetic does not depend on the stack's size: a stack of one and a member of a stack of
eight give the same bits (``torch.func``'s ``vmap`` over ``functional_call`` does not:
measured, see benchmarks/README.md).

``member_state(k)`` returns member ``k``'s solo ``state_dict`` and ``load_member(k, sd)``
writes one back, so checkpoints are the solo format: a member can be resumed alone, and
a solo run can join a stack.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nclab.models.mlp import MLP

__all__ = ["StackedModel", "StackedOptimizer", "stackable", "stacked_ce_ls_loss"]

_ACTS = (nn.ReLU, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.Identity)


def stackable(model: nn.Module) -> bool:
    """Whether :class:`StackedModel` can interpret ``model`` (nclab's MLP with standard layers)."""
    return _mlp_plan(model) is not None


def _mlp_plan(model: nn.Module) -> list[tuple[str, str, nn.Module]] | None:
    """The layer plan of an MLP the stacked model can interpret, or None."""
    if type(model) is not MLP or not isinstance(model.body, nn.Sequential):
        return None
    plan: list[tuple[str, str, nn.Module]] = []
    for i, m in enumerate(model.body):
        name = f"body.{i}"
        if isinstance(m, nn.Flatten):
            plan.append(("flatten", name, m))
        elif isinstance(m, nn.Linear):
            plan.append(("linear", name, m))
        elif isinstance(m, nn.BatchNorm1d) and m.affine and m.track_running_stats and m.momentum is not None:
            plan.append(("bn", name, m))
        elif isinstance(m, _ACTS):
            plan.append(("act", name, m))
        else:
            return None
    return plan


class StackedModel:
    """K members of one architecture, stacked (see the module docstring).

    ``members``: solo models with identical structure (each initialised from its own
    generator). Their current parameters and buffers are copied; the solo objects are
    kept as ``templates`` for exporting a member.
    """

    def __init__(self, members: Sequence[nn.Module]):
        if not members:
            raise ValueError("a stack needs at least one member")
        first = members[0]
        keys = list(first.state_dict().keys())
        for m in members[1:]:
            if list(m.state_dict().keys()) != keys or any(
                a.shape != b.shape for a, b in zip(first.state_dict().values(), m.state_dict().values())
            ):
                raise ValueError("stack members must share one architecture (same state_dict keys and shapes)")
        self.keys = keys
        self.param_names = [n for n, _ in first.named_parameters()]
        self.buffer_names = [n for n, _ in first.named_buffers()]
        self.params: dict[str, Tensor] = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in members]).clone().requires_grad_(True)
            for n in self.param_names
        }
        self.buffers: dict[str, Tensor] = {
            n: torch.stack([dict(m.named_buffers())[n].detach() for m in members]).clone() for n in self.buffer_names
        }
        plan = _mlp_plan(first)
        if plan is None:
            raise ValueError(f"a stack needs nclab's MLP; got {type(first).__name__} (see stackable)")
        self.plan = plan
        # Linear weights kept as (K, in, out) so forward and backward are plain bmm
        # (a transposed (K, out, in) view makes autograd copy every weight gradient)
        self.transposed = {f"{name}.weight" for kind, name, _ in self.plan if kind == "linear"} | {"classifier.weight"}
        for n in self.transposed:
            self.params[n] = self.params[n].detach().transpose(1, 2).contiguous().requires_grad_(True)
        self.training = True

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def parameters(self) -> list[Tensor]:
        return [self.params[n] for n in self.param_names]

    def transposed_flags(self) -> list[bool]:
        """Per parameter (in ``parameters()`` order): stored as the transpose of the solo tensor."""
        return [n in self.transposed for n in self.param_names]

    def train(self, mode: bool = True) -> "StackedModel":
        self.training = mode
        return self

    def eval(self) -> "StackedModel":
        return self.train(False)

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x``: ``(K, B, *input_shape)`` -> ``(logits (K, B, C), features (K, B, d))``."""
        if x.shape[0] != self.size:
            raise ValueError(f"input has {x.shape[0]} members; the stack has {self.size}")
        return self._mlp_forward(x)

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]

    def _mlp_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.params
        h = x
        for kind, name, m in self.plan:
            if kind == "flatten":
                h = h.reshape(h.shape[0], h.shape[1], -1)
            elif kind == "linear":
                h = _linear(h, p[f"{name}.weight"], p.get(f"{name}.bias"))
            elif kind == "bn":
                h = self._batch_norm(h, name, m)
            else:
                h = m(h)
        return _linear(h, p["classifier.weight"], p.get("classifier.bias")), h

    def _batch_norm(self, h: Tensor, name: str, m: nn.BatchNorm1d) -> Tensor:
        weight, bias = self.params[f"{name}.weight"].unsqueeze(1), self.params[f"{name}.bias"].unsqueeze(1)
        if self.training:
            xhat, _ = self._batch_norm_train(h, name, m)
            return torch.addcmul(bias, xhat, weight)
        rm, rv = self.buffers[f"{name}.running_mean"], self.buffers[f"{name}.running_var"]
        return (h - rm.unsqueeze(1)) * torch.rsqrt(rv.unsqueeze(1) + m.eps) * weight + bias

    def _batch_norm_train(self, h: Tensor, name: str, m: nn.BatchNorm1d) -> tuple[Tensor, Tensor]:
        """torch's BatchNorm1d per member in training mode: normalise with the batch's biased
        variance and update the running variance with the unbiased one (momentum ``m.momentum``,
        ``m.eps``). Returns ``x̂`` and ``1 / sqrt(var + eps)``.
        Explicit moments: ``var_mean`` over the middle dimension is several times slower here."""
        n = h.shape[1]
        if n < 2:
            raise ValueError("BatchNorm in train mode needs at least 2 samples per batch")
        mean = h.mean(dim=1, keepdim=True)
        centred = h - mean
        var = (centred * centred).mean(dim=1, keepdim=True)
        with torch.no_grad():
            mom = m.momentum
            self.buffers[f"{name}.running_mean"].mul_(1 - mom).add_(mean.squeeze(1), alpha=mom)
            self.buffers[f"{name}.running_var"].mul_(1 - mom).add_(var.squeeze(1) * (n / (n - 1)), alpha=mom)
            self.buffers[f"{name}.num_batches_tracked"].add_(1)
        inv = torch.rsqrt(var + m.eps)
        return centred * inv, inv

    # ------------------------------------------------------------------ members
    def member_state(self, k: int) -> "OrderedDict[str, Tensor]":
        """Member ``k``'s solo ``state_dict`` (copies)."""
        out: OrderedDict[str, Tensor] = OrderedDict()
        for key in self.keys:
            src = self.params[key] if key in self.params else self.buffers[key]
            t = src[k].detach()
            out[key] = (t.t() if key in self.transposed else t).clone().contiguous()
        return out

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, Tensor]) -> None:
        """Write a solo ``state_dict`` into member ``k``."""
        missing = [key for key in self.keys if key not in state]
        if missing:
            raise KeyError(f"state_dict lacks {', '.join(missing[:5])}")
        for key in self.keys:
            dst = self.params[key] if key in self.params else self.buffers[key]
            dst[k].copy_(state[key].t() if key in self.transposed else state[key])

    @torch.no_grad()
    def select(self, keep: Sequence[int]) -> None:
        """Keep only the members ``keep`` (in that order)."""
        idx = torch.as_tensor(list(keep), dtype=torch.long, device=next(iter(self.params.values())).device)
        self.params = {n: t.detach().index_select(0, idx).clone().requires_grad_(True) for n, t in self.params.items()}
        self.buffers = {n: t.index_select(0, idx).clone() for n, t in self.buffers.items()}

    @torch.no_grad()
    def finite(self) -> Tensor:
        """``(K,)`` bool: every parameter of the member is finite."""
        ok = None
        for t in self.params.values():
            # the max-norm is inf or NaN iff an entry is: one reduction, no (K, n) bool temporary
            f = torch.isfinite(torch.linalg.vector_norm(t.detach().reshape(t.shape[0], -1), ord=float("inf"), dim=1))
            ok = f if ok is None else ok & f
        return ok


def _linear(h: Tensor, w_t: Tensor, bias: Tensor | None) -> Tensor:
    """``h @ w_t + b`` per member: ``h (K, B, in)``, ``w_t (K, in, out)``, ``b (K, out)``.
    (``bmm`` then ``add`` is faster on CPU than ``baddbmm`` with a broadcast bias.)"""
    out = torch.bmm(h, w_t)
    return out if bias is None else out + bias.unsqueeze(1)


def _bview(v: Tensor, like: Tensor) -> Tensor:
    """A ``(K,)`` tensor viewed to broadcast against ``like`` of shape ``(K, ...)``."""
    return v.reshape((v.shape[0],) + (1,) * (like.ndim - 1)).to(like.dtype)


class StackedOptimizer:
    """SGD (momentum, Nesterov, coupled L2 weight decay) or Adam over stacked parameters,
    with per-member hyperparameters. The update rule is torch.optim's; SGD runs torch's own
    fused kernel on each member's slice (members grouped by hyperparameters), Adam is written
    with ``(K,)`` hyperparameter tensors::

        SGD:  g += wd p;  buf = g (first step) or momentum buf + g;
              u = g + momentum buf (Nesterov) or buf;  p -= lr u
        Adam: g += wd p;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
              p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
    """

    def __init__(self, params: list[Tensor], *, name: str, lr: Tensor, momentum: Tensor, weight_decay: Tensor,
                 nesterov: bool = False, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 transposed: Sequence[bool] | None = None):
        if name not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {name!r}")
        self.name, self.nesterov, self.betas, self.eps = name, bool(nesterov), betas, eps
        self.params = params
        # which parameters the stacked model stores transposed (their solo state is the transpose)
        self.transposed = list(transposed) if transposed is not None else [False] * len(params)
        self.lr, self.momentum, self.weight_decay = lr.double(), momentum.double(), weight_decay.double()
        self.state: list[dict[str, Any]] = [{} for _ in params]
        k = params[0].shape[0]
        self.step_count = torch.zeros(k, dtype=torch.float64)  # Adam's t per member
        # SGD bookkeeping, rebuilt only when its source changes (checked by identity)
        self._views: dict[tuple[str, int], tuple[Tensor, tuple[Tensor, ...]]] = {}
        self._group_key: tuple[Tensor, Tensor, Tensor] | None = None
        self._group_cache: dict[tuple[float, float, float], list[int]] = {}

    def set_lr(self, lr: Tensor) -> None:
        """Per-member learning rates for the next steps."""
        self.lr = lr.double()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        if self.name == "sgd":
            self._sgd()
        else:
            self._adam()

    def _sgd(self) -> None:
        # torch's fused SGD kernel on each member's slice, members grouped by hyperparameters: a
        # member's update is exactly its solo optimizer's arithmetic, whatever the stack's size,
        # composition or mix of learning rates (so a resumed or shrunken stack stays bit-identical;
        # the kernel's momentum arithmetic depends on where a slice's vector tail falls)
        from torch.optim.sgd import sgd

        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        groups = self._groups()
        slices: list[tuple[tuple[Tensor, ...], tuple[Tensor, ...], tuple[Tensor, ...] | None]] = []
        for i in live:
            # unbind: all K member views in one call (per-member indexing costs ~1 ms a step)
            slices.append((self._param_views(i), self.params[i].grad.unbind(0), self._buffer_views(i)))
        for (lr, mom, wd), members in groups.items():
            ps: list[Tensor] = []
            gs: list[Tensor] = []
            bs: list[Tensor | None] = []
            for pv, gv, bv in slices:
                for k in members:
                    ps.append(pv[k])
                    gs.append(gv[k])
                    bs.append(bv[k] if mom != 0 else None)
            sgd(ps, gs, bs, weight_decay=wd, momentum=mom, lr=lr, dampening=0.0, nesterov=self.nesterov,
                maximize=False, fused=True)

    def _groups(self) -> dict[tuple[float, float, float], list[int]]:
        """Members by (lr, momentum, weight decay); recomputed only when these tensors change."""
        key = (self.lr, self.momentum, self.weight_decay)
        if self._group_key is None or any(a is not b for a, b in zip(self._group_key, key)):
            groups: dict[tuple[float, float, float], list[int]] = {}
            for k, hp in enumerate(zip(self.lr.tolist(), self.momentum.tolist(), self.weight_decay.tolist())):
                groups.setdefault(hp, []).append(k)
            self._group_cache, self._group_key = groups, key
        return self._group_cache

    def _member_views(self, tag: str, i: int, t: Tensor) -> tuple[Tensor, ...]:
        """The K member slices of ``t`` (parameter or buffer ``i``), cached while ``t`` is the same tensor."""
        hit = self._views.get((tag, i))
        if hit is None or hit[0] is not t:
            hit = self._views[(tag, i)] = (t, t.detach().unbind(0))
        return hit[1]

    def _param_views(self, i: int) -> tuple[Tensor, ...]:
        return self._member_views("p", i, self.params[i])

    def _buffer_views(self, i: int) -> tuple[Tensor, ...] | None:
        if all(mom == 0 for _, mom, _ in self._groups()):
            return None
        st = self.state[i]
        if "momentum_buffer" not in st:
            # zeros: m * 0 + g = g exactly, the solo optimizer's first step
            st["momentum_buffer"] = torch.zeros_like(self.params[i])
        return self._member_views("b", i, st["momentum_buffer"])

    def _adam(self) -> None:
        b1, b2 = self.betas
        self.step_count += 1
        bc1 = 1 - b1 ** self.step_count
        bc2_sqrt = (1 - b2 ** self.step_count).sqrt()
        use_wd = bool((self.weight_decay != 0).any())
        for p, st in zip(self.params, self.state):
            g = p.grad
            if g is None:
                continue
            if use_wd:
                g = g.addcmul(p, _bview(self.weight_decay, p))
            if "exp_avg" not in st:
                st["exp_avg"] = torch.zeros_like(p)
                st["exp_avg_sq"] = torch.zeros_like(p)
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = (v.sqrt() / _bview(bc2_sqrt, p)).add_(self.eps)
            p.sub_(m / denom * _bview(self.lr / bc1, p))

    # ------------------------------------------------------------------ members
    def member_state(self, k: int) -> dict[int, dict[str, Tensor]]:
        """Member ``k``'s per-parameter state in torch.optim's layout (index -> state)."""
        out: dict[int, dict[str, Tensor]] = {}
        for i, st in enumerate(self.state):
            tr = self.transposed[i]

            def get(key: str) -> Tensor:
                t = st[key][k].detach()
                return (t.t() if tr else t).contiguous().clone()

            if self.name == "sgd":
                if "momentum_buffer" in st and float(self.momentum[k]) != 0:
                    out[i] = {"momentum_buffer": get("momentum_buffer")}
            elif "exp_avg" in st:
                out[i] = {"step": torch.tensor(float(self.step_count[k])), "exp_avg": get("exp_avg"),
                          "exp_avg_sq": get("exp_avg_sq")}
        return out

    @torch.no_grad()
    def load_member(self, k: int, state: dict[int, dict[str, Tensor]]) -> None:
        """Write torch.optim per-parameter state (index -> state) into member ``k``."""
        for i, (p, st) in enumerate(zip(self.params, self.state)):
            s = state.get(i) or state.get(str(i))  # type: ignore[call-overload]
            if not s:
                continue
            tr = self.transposed[i]
            if self.name == "sgd":
                if s.get("momentum_buffer") is None:
                    continue
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p)
                st["momentum_buffer"][k].copy_(s["momentum_buffer"].t() if tr else s["momentum_buffer"])
            else:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key not in st:
                        st[key] = torch.zeros_like(p)
                    st[key][k].copy_(s[key].t() if tr else s[key])
                self.step_count[k] = float(s["step"])

    @torch.no_grad()
    def select(self, keep: Sequence[int], params: list[Tensor]) -> None:
        """Keep the members ``keep``; ``params`` are the stack's new parameter tensors."""
        idx = torch.as_tensor(list(keep), dtype=torch.long)
        self.params = params
        for st in self.state:
            for key in list(st):
                st[key] = st[key].index_select(0, idx.to(st[key].device)).clone()
        self.lr, self.momentum, self.weight_decay = (t.index_select(0, idx) for t in (self.lr, self.momentum, self.weight_decay))
        self.step_count = self.step_count.index_select(0, idx)


def stacked_ce_ls_loss(logits: Tensor, labels: Tensor, alpha: Tensor) -> Tensor:
    """Per-member mean label-smoothing loss (``alpha = 0`` is cross-entropy), shape ``(K,)``.

    ``L_k = mean_i [(1 - a_k) (-log p_{i, y_i}) + a_k mean_c (-log p_{i, c})]``, which is
    ``F.cross_entropy(z, y, label_smoothing=a_k)`` member by member.
    """
    logp = F.log_softmax(logits, dim=-1)
    nll = -logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    smooth = -logp.mean(dim=-1)
    a = alpha.to(logits.dtype).unsqueeze(1)
    return ((1 - a) * nll + a * smooth).mean(dim=1)
