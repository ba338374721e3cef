"""Networks as ordered lists of transferable units (issue 12, first part: the models and the transfer
mechanics; the pipeline still trains CaffeNet only).

The paper's "first n layers" of CaffeNet becomes "the first n units" of any network: a unit is a block of
parameters named by their prefixes, in forward order, and the head is what every treatment draws afresh.

    caffenet   conv1 ... fc7 (7 units), head fc8
    resnet18   stem (conv1, bn1) and each residual block layer1.0 ... layer4.1 (9 units), head fc;
               with units="stages": stem and layer1 ... layer4 (5 units)
    resnet50   stem and 16 bottleneck blocks (17), or 5 stages
    vit_b_16   the patch embedding with the class token and position embedding, then each of the 12 encoder
               blocks (13 units), head: the final LayerNorm and the classifier

Small variants train on the demo's images on a CPU: ``resnet-small`` (torchvision's ResNet with one basic
block per stage at widths 16-128, a 3x3 stride-1 stem and no max-pooling, for 16-32 px crops) and
``vit-small`` (4 px patches, 4 blocks, width 64). Every network is torchvision's definition, built with
``weights=None`` (trained from scratch; nothing is downloaded).

Transfer (``TransferNet.transfer``, models/protocol.py): units 1..n copy the source's parameters AND buffers (BatchNorm's running
statistics); frozen units get no gradient and keep their normalisation statistics fixed: their BatchNorm
layers stay in eval mode whatever ``train()`` says, the wrapper's or the inner model's (a forward pre-hook,
``TransferNet.pin_frozen_norms`` in models/protocol.py, shared with CaffeNet); the rest, and the head,
are a fresh draw from the net's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torchvision.models.resnet import ResNet

from ..paths import UNIT_NAMES, VIT_PATCH
from .protocol import TransferNet, Unit

# the unit networks: every architecture of paths.UNIT_NAMES but CaffeNet (models/caffenet.py)
ARCHS = tuple(a for a in UNIT_NAMES if not a.startswith("caffenet"))


@dataclass(frozen=True)
class UnitSpec:
    """What builds a unit network: torchvision's architecture, the head's width, the crop (a ViT's image
    size) and how the units are cut."""

    arch: str
    outputs: int
    crop: int
    units: str = "blocks"


def spec_from_config(net, outputs: int) -> UnitSpec:
    """The spec of the config's ``net`` section (``settings.Net`` or its dict)."""
    from ..settings import Net

    net = Net.from_dict(net)
    return UnitSpec(arch=net.arch, outputs=int(outputs), crop=net.crop, units=net.units)


class UnitNet(TransferNet):
    """A torchvision network with its ordered units and head (``protocol.TransferNet``): the model's own
    modules, cut into units by parameter prefix; ``_blocks`` runs each unit, then the head."""

    key_prefix = "model."

    def __init__(self, arch: str, model: nn.Module, units: list[Unit], head: Unit, blocks: list):
        super().__init__()
        self.arch, self.model, self.units, self.head = arch, model, units, head
        self._blocks = blocks  # one callable per unit, then the head's
        self.frozen_units = 0

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i == len(self.units):  # the head: logits in fp32 under bf16 autocast, as CaffeNet's fc8
            with torch.autocast(x.device.type, enabled=False):
                return self._blocks[i](x.float())
        return self._blocks[i](x)

    def decays(self, name: str, p: torch.Tensor) -> bool:
        # a ViT's class token and position embedding have three dimensions and are not decayed either
        return super().decays(name, p) and not name.endswith(("class_token", "pos_embedding"))


# ---- ResNets ------------------------------------------------------------------------------------------


def _resnet(arch: str, num_classes: int) -> ResNet:
    # torchvision is imported here, not at the top: CaffeNet jobs never build its networks, and the similarity
    # job (no optimiser, so no torch._dynamo either) saves its whole import, 1.3 s measured with -X importtime
    import torchvision
    from torchvision.models.resnet import BasicBlock, ResNet

    if arch == "resnet18":
        return torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if arch == "resnet50":
        return torchvision.models.resnet50(weights=None, num_classes=num_classes)
    # resnet-small: torchvision's ResNet and BasicBlock, one block per stage at widths 16, 32, 64, 128 (a
    # sixteenth of ResNet-18's compute per pixel), a 3x3 stride-1 stem and no max-pooling for small images
    m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    w = 16
    m.inplanes = w
    m.conv1, m.bn1, m.maxpool = nn.Conv2d(3, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.Identity()
    m.layer1 = m._make_layer(BasicBlock, w, 1)
    m.layer2 = m._make_layer(BasicBlock, 2 * w, 1, stride=2)
    m.layer3 = m._make_layer(BasicBlock, 4 * w, 1, stride=2)
    m.layer4 = m._make_layer(BasicBlock, 8 * w, 1, stride=2)
    m.fc = nn.Linear(8 * w, num_classes)
    for mod in m.modules():  # torchvision's ResNet initialisation
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(mod, nn.BatchNorm2d):
            nn.init.ones_(mod.weight)
            nn.init.zeros_(mod.bias)
    return m


# The parts of a forward that are not one submodule (a ResNet's stem and head, a ViT's embedding and head)
# are small callable objects holding the model, not closures: copy.deepcopy maps the model they hold to
# the copy's own (a closure would keep running the original's), and torch.save can pickle them.


class _ResNetStem:
    def __init__(self, m):
        self.m = m

    def __call__(self, x):
        m = self.m
        return m.maxpool(m.relu(m.bn1(m.conv1(x))))


class _ResNetHead:
    def __init__(self, m):
        self.m = m

    def __call__(self, x):
        return self.m.fc(torch.flatten(self.m.avgpool(x), 1))


class _ViTEmbed:
    def __init__(self, m):
        self.m = m

    def __call__(self, x):
        m = self.m
        x = m._process_input(x)
        cls = m.class_token.expand(x.shape[0], -1, -1)
        return m.encoder.dropout(torch.cat([cls, x], dim=1) + m.encoder.pos_embedding)


class _ViTHead:
    def __init__(self, m):
        self.m = m

    def __call__(self, x):
        return self.m.heads(self.m.encoder.ln(x)[:, 0])


def _resnet_net(arch: str, num_classes: int, units: str) -> UnitNet:
    m = _resnet(arch, num_classes)
    stem = Unit("stem", ("conv1", "bn1"))
    stages = [f"layer{s}" for s in range(1, 5)]
    stem_fwd, head_fwd = _ResNetStem(m), _ResNetHead(m)
    if units == "stages":
        us = [stem] + [Unit(s, (s,)) for s in stages]
        blocks = [stem_fwd] + [getattr(m, s) for s in stages]
    elif units == "blocks":
        names = [f"{s}.{j}" for s in stages for j in range(len(getattr(m, s)))]
        us = [stem] + [Unit(n, (n,)) for n in names]
        blocks = [stem_fwd] + [getattr(m, n.split(".")[0])[int(n.split(".")[1])] for n in names]
    else:
        raise ValueError(f"net.units: {units!r} is not one of blocks, stages")
    return UnitNet(arch, m, us, Unit("head", ("fc",)), blocks + [head_fwd])


# ---- Vision Transformers ------------------------------------------------------------------------------


def _vit(arch: str, num_classes: int, image_size: int):
    import torchvision

    if arch == "vit_b_16":
        return torchvision.models.vit_b_16(weights=None, num_classes=num_classes, image_size=image_size)
    return torchvision.models.VisionTransformer(image_size=image_size, patch_size=VIT_PATCH["vit-small"], num_layers=4, num_heads=4,
                                               hidden_dim=64, mlp_dim=128, num_classes=num_classes)


class ViTNet(UnitNet):
    """A ViT's units output tokens (class token first, then the patches): the similarity analysis reads both
    summaries a ViT's features are known by, labelled: the class token (what the head reads) and the mean of
    the patch tokens (what most probing work on ViTs reads). At the embedding the class token is the same
    learnt vector for every image (nothing has attended to the patches yet): only the patch mean is read."""

    def taps(self, i: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
        patches = {"patch mean": x[:, 1:].mean(1)}
        return patches if i == 0 else {"class token": x[:, 0], **patches}


def _vit_net(arch: str, num_classes: int, image_size: int) -> UnitNet:
    m = _vit(arch, num_classes, image_size)
    layers = [f"encoder.layers.encoder_layer_{i}" for i in range(len(m.encoder.layers))]
    embed, head_fwd = _ViTEmbed(m), _ViTHead(m)
    us = [Unit("embed", ("conv_proj", "class_token", "encoder.pos_embedding"))]
    us += [Unit(f"block{i + 1}", (name,)) for i, name in enumerate(layers)]
    blocks = [embed] + list(m.encoder.layers)
    return ViTNet(arch, m, us, Unit("head", ("encoder.ln", "heads")), blocks + [head_fwd])


def build(arch: str, num_classes: int, *, seed: int, image_size: int = 224, units: str = "blocks") -> UnitNet:
    """A freshly initialised network (torchvision's initialisation, drawn from ``seed``)."""
    if arch not in ARCHS:
        raise ValueError(f"net.arch: unknown {arch!r} (allowed: caffenet, caffenet-small, {', '.join(ARCHS)})")
    torch.manual_seed(seed)
    if arch.startswith("resnet"):
        return _resnet_net(arch, num_classes, units)
    if units != "blocks":
        raise ValueError(f"net.units: {units!r}: a ViT's units are its embedding and blocks (units: blocks)")
    return _vit_net(arch, num_classes, image_size)
