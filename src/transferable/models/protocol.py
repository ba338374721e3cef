"""The one protocol every network of the pipeline follows, CaffeNet and the torchvision unit networks alike:
an ordered list of transferable units and a head, a forward that can start or stop at any unit, and the
transfer mechanics written once on top of it (copy units 1..n, freeze them, keep their normalisation fixed).

A family says only what differs: its units (names and the state_dict prefixes that belong to each), its
head, how block ``i`` runs (``_block``), and which parameters its modern optimisers must not decay.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Unit:
    name: str
    prefixes: tuple[str, ...]  # parameter/buffer names that start with one of these belong to the unit


def _matches(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def _keep_eval(module: nn.Module, args) -> None:
    if not getattr(module, "_recomputing", False):
        module.training = False  # a frozen unit's BatchNorm: running statistics used, never updated


class TransferNet(nn.Module):
    """What every network gives the pipeline. Subclasses set ``arch``, ``units``, ``head`` and
    ``key_prefix`` (where the unit prefixes sit in the net's own state_dict: "" or "model.") and implement
    ``_block(i, x)``: unit ``i`` (0-based), and the head at ``i == len(units)``, in fp32 under autocast."""

    arch: str
    units: list[Unit]
    head: Unit
    key_prefix: str = ""
    frozen_units: int = 0

    # ---- forward ------------------------------------------------------------------------------------

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_from(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Logits from the output of unit ``start`` (1-based; 0 = the image) on."""
        for i in range(start, len(self.units) + 1):
            x = self._block(i, x)
        return x

    def forward(self, x: torch.Tensor, frozen: int = 0) -> torch.Tensor:
        """Logits. The first ``frozen`` units run without autograd (they get no gradient anyway), which
        saves their backward pass and activation memory."""
        if frozen:
            with torch.no_grad():
                for i in range(frozen):
                    x = self._block(i, x)
        for i in range(frozen, len(self.units) + 1):
            x = self._block(i, x)
        return x

    def features(self, x: torch.Tensor, upto: int) -> list[dict[str, torch.Tensor]]:
        """The named feature taps of units 1..``upto`` (what the similarity analysis compares), one dict
        per unit (``taps``), without autograd."""
        out = []
        with torch.no_grad():
            for i in range(upto):
                x = self._block(i, x)
                out.append(self.taps(i, x))
        return out

    def taps(self, i: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The features of unit ``i``'s output ``x`` (0-based) that the similarity analysis reads, by label:
        the output itself for a convolutional or fully connected unit; a family whose units output tokens
        says which summaries of them count (a ViT: its class token and the mean of its patch tokens)."""
        return {"output": x}

    # ---- units --------------------------------------------------------------------------------------

    def unit_of(self, key: str) -> int:
        """Index of the unit (0-based; len(units) = the head) that a key of this net's state_dict (or of
        its inner model's, without ``key_prefix``) belongs to."""
        key = key.removeprefix(self.key_prefix)
        hits = [i for i, u in enumerate([*self.units, self.head]) if any(_matches(key, p) for p in u.prefixes)]
        if len(hits) != 1:
            raise KeyError(f"{self.arch}: {key!r} belongs to {len(hits)} units (expected exactly one)")
        return hits[0]

    def unit_keys(self, i: int) -> list[str]:
        """The state_dict keys (parameters and buffers, without ``key_prefix``) of unit ``i`` (0-based)."""
        keys = [k.removeprefix(self.key_prefix) for k in self.state_dict()]
        return [k for k in keys if self.unit_of(k) == i]

    def decays(self, name: str, p: torch.Tensor) -> bool:
        """Whether the modern optimisers (sgd, adamw) decay parameter ``name``: weight matrices and kernels,
        not biases or normalisation parameters (at most one dimension)."""
        return p.ndim > 1

    # ---- transfer -----------------------------------------------------------------------------------

    def transfer(self, n: int, source_state: dict | None, freeze: bool, head: bool = False) -> TransferNet:
        """Copy units 1..n (parameters and buffers) from ``source_state`` (a state_dict of a net of the
        same family and shape, with or without ``key_prefix``; None leaves them random: the random-filter
        control) and, with ``freeze``, freeze them: no gradient, and their BatchNorm layers normalise with
        the copied statistics whoever calls ``train()``. ``head``: copy the head too (n must then be every
        unit: the whole net, trained on; it cannot be frozen)."""
        k = len(self.units)
        if not 0 <= n <= k:
            raise ValueError(f"{self.arch}: n must be in 0..{k} (the head, {self.head.name}, is new unless the "
                             f"whole net is copied), got {n}")
        if head and (n != k or freeze or source_state is None):
            raise ValueError(f"{self.arch}: the head is copied only with every unit ({k}), from a source net, "
                             f"not frozen")
        own = self.state_dict()
        if source_state is not None:
            source_state = {key.removeprefix(self.key_prefix): v for key, v in source_state.items()}
            for i in range(n + int(head)):
                for key in self.unit_keys(i):
                    if key not in source_state:
                        raise KeyError(f"source net has no {key!r} (another architecture?)")
                    dst = own[self.key_prefix + key]
                    if tuple(source_state[key].shape) != tuple(dst.shape):
                        raise ValueError(f"{key}: source shape {tuple(source_state[key].shape)} != "
                                         f"{tuple(dst.shape)}")
                    with torch.no_grad():
                        dst.copy_(source_state[key])
        if freeze:
            for name, p in self.named_parameters():
                if self.unit_of(name) < n:
                    p.requires_grad_(False)
            self.frozen_units = n
            self.train(self.training)
            self.pin_frozen_norms()
        return self

    def recompute_norms(self, n: int, batches) -> int:
        """Re-estimate the running statistics of the BatchNorm layers in units 1..n from ``batches`` (input
        images), as the cumulative average over all of them (as torch.optim.swa_utils.update_bn does), then
        leave them as they were (frozen: eval). For random frozen units: at their initial statistics (mean 0,
        variance 1) they would not normalise anything. Returns the number of layers re-estimated."""
        bns = self.norm_layers(n)
        if not bns:
            return 0
        saved = [(m.momentum, m.training) for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum, m._recomputing = None, True
            m.train()
        try:
            with torch.no_grad():
                for xb in batches:
                    x = xb
                    for i in range(n):
                        x = self._block(i, x)
        finally:
            for m, (momentum, training) in zip(bns, saved):
                m.momentum, m._recomputing = momentum, False
                m.train(training)
        return len(bns)

    def norm_layers(self, n: int) -> list[nn.Module]:
        """The BatchNorm layers of units 1..n (none in CaffeNet or a ViT)."""
        return [m for name, m in self.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and self._in_units(name, n)]

    def _in_units(self, name: str, n: int) -> bool:
        """Whether module ``name`` (of this net) belongs to units 1..n."""
        name = name.removeprefix(self.key_prefix)
        return any(_matches(name, p) for u in self.units[:n] for p in u.prefixes)

    def _frozen_module(self, name: str) -> bool:
        return self._in_units(name, self.frozen_units)

    def train(self, mode: bool = True):
        super().train(mode)
        # frozen units keep their normalisation statistics: their BatchNorm layers never leave eval mode
        for name, m in self.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and self._frozen_module(name):
                m.eval()
        return self

    def pin_frozen_norms(self) -> None:
        """Frozen BatchNorm layers normalise with their copied statistics even when a caller puts them back
        in train mode (an inner model's ``train()``, an EMA or a wrapper): a forward pre-hook sets them to
        eval before every forward."""
        for name, m in self.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and self._frozen_module(name):
                m.eval()
                if _keep_eval not in m._forward_pre_hooks.values():
                    m.register_forward_pre_hook(_keep_eval)
