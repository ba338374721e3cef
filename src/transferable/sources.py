"""A checkpoint file as the SOURCE of transfer: a torchvision state_dict a user brings (``torch.save(
model.state_dict(), "r18.pth")``, or the dict a training script wraps it in), mapped onto the units of the
config's net and written as a model.pt of this pipeline, so that a transfer net copies units 1..n from it as
from any base net (``TransferNet.transfer``) and the similarity analysis reads it as any trained net.

The file is untrusted input: it is read with ``weights_only=True`` (tensors and plain containers, never
arbitrary pickles), and every key of every unit is checked, present and of the right shape, before anything
is written: a checkpoint of another architecture, or of a ViT trained at another image size, is refused with
the keys that differ instead of failing deep inside a training job. Nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping

import torch

from . import atomic
from .paths import VIT_PATCH
from .settings import Net, setting

# where common training scripts keep the state_dict inside the file they save
WRAPPERS = ("state_dict", "model", "model_state_dict")
# key prefixes of a wrapped module: DistributedDataParallel's, torch.compile's
WRAPPED = ("module.", "_orig_mod.")
# the head's weight of each family: its first dimension is the checkpoint's number of outputs
HEAD_WEIGHTS = ("fc.weight", "heads.head.weight", "fc8.weight")
DEFAULT_OUTPUTS = 1000  # ImageNet's, when the checkpoint has no head to read it from
SHOWN = 10  # keys named in a message, at most
# an old checkpoint (before torch 0.4.1, as torchvision's own ImageNet weights) has no BatchNorm batch
# counter: a copied unit never reads it (only a momentum-less re-estimate does, which resets it first), so
# the net's own (zero) is kept
OPTIONAL = (".num_batches_tracked",)


class SourceError(ValueError):
    """A checkpoint that cannot be a source for the config's net; the message names the file and why."""


def load_checkpoint(path) -> object:
    """Whatever ``path`` holds, read as untrusted input (``weights_only``)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zips, random bytes, pickled modules: each its own type
        hint = ""
        if "weights_only" in str(e).lower() or "weights only" in str(e).lower():
            hint = " (it holds more than tensors, e.g. a pickled model: save model.state_dict() instead)"
        raise SourceError(f"{path}: does not load as a checkpoint{hint} ({type(e).__name__}: {e})") from e


def is_pipeline_model(obj) -> bool:
    """Whether ``obj`` (a loaded file) is a model.pt written by this pipeline."""
    return isinstance(obj, Mapping) and all(k in obj for k in ("state_dict", "mean", "config"))


def _unwrap(obj, path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint (a state_dict, or a dict holding one under ``WRAPPERS``), by key
    with ``WRAPPED`` prefixes stripped."""
    if isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        obj = obj if inner is None else inner
    if not isinstance(obj, Mapping):
        raise SourceError(f"{path}: holds a {type(obj).__name__}, not a state_dict (a dict of tensors)")
    state: dict[str, torch.Tensor] = {}
    for key, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = str(key)
        while k.startswith(WRAPPED):
            k = k.removeprefix("module.").removeprefix("_orig_mod.")
        if k in state:
            raise SourceError(f"{path}: key {k!r} occurs twice once prefixes {WRAPPED} are stripped")
        state[k] = v
    if not state:
        raise SourceError(f"{path}: holds no tensors (keys: {_listing([str(k) for k in obj])})")
    return state


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The state_dict in checkpoint ``path``: a plain one, or one wrapped under "state_dict", "model" or
    "model_state_dict"; keys without "module." (DistributedDataParallel) or "_orig_mod." (torch.compile)."""
    return _unwrap(load_checkpoint(path), path)


def _listing(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    return ", ".join(keys[:SHOWN]) + more


def checkpoint_outputs(state: Mapping) -> int | None:
    """The head width of a state_dict (its classifier's rows), or None when it has no head we know."""
    for key in HEAD_WEIGHTS:
        for k in (key, "model." + key):
            if k in state and getattr(state[k], "ndim", 0) == 2:
                return int(state[k].shape[0])
    return None


def _vit_size_hint(arch: str, got: tuple, crop: int) -> str:
    """Which image size a ViT's position embedding of ``got`` tokens was trained at, and what to set."""
    patch = VIT_PATCH.get(arch)
    side = math.isqrt(max(got[1] - 1, 0)) if len(got) == 3 else 0
    if not patch or side * side != got[1] - 1:
        return ""
    return (f" (the checkpoint was trained at image size {side * patch}: {side}x{side} patches of {patch} px "
            f"and the class token; net.crop is {crop} and must equal {side * patch})")


def _problems(state: dict, net, arch: str, crop: int) -> list[str]:
    """What keeps ``state`` (keys without the net's key_prefix) from filling every unit of ``net``: missing
    unit keys, keys that belong to no part of the net, unit keys of another shape."""
    own = {k.removeprefix(net.key_prefix): v for k, v in net.state_dict().items()}
    head = set(net.unit_keys(len(net.units)))
    unit_keys = [k for k in own if k not in head]
    missing = [k for k in unit_keys if k not in state and not k.endswith(OPTIONAL)]
    # extra keys under the head's prefixes (another classifier) only mean the head is not copied
    unexpected = [k for k in state if k not in own and not any(
        k == p or k.startswith(p + ".") for p in net.head.prefixes)]
    shapes = []
    for k in sorted(unit_keys):
        if k in state and tuple(state[k].shape) != tuple(own[k].shape):
            got, want = tuple(state[k].shape), tuple(own[k].shape)
            hint = _vit_size_hint(arch, got, crop) if k == "encoder.pos_embedding" else ""
            shapes.append(f"{k}: checkpoint {got}, {arch} {want}{hint}")
    out = []
    if missing:
        out.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected key(s), not {arch}'s (another architecture?): {_listing(unexpected)}")
    if shapes:
        more = f"; and {len(shapes) - SHOWN} more" if len(shapes) > SHOWN else ""
        out.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:SHOWN])}{more}")
    return out


def _build(net_cfg, outputs: int, seed: int = 0):
    from .transfer import build_net, spec_from_config

    spec = spec_from_config(net_cfg, outputs)
    return build_net(spec, seed=seed), spec


def _strip_prefix(state: dict, prefix: str) -> dict:
    """A state_dict saved from one of our own nets carries its key_prefix ("model."): without it."""
    if prefix and all(k.startswith(prefix) for k in state):
        return {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def _check_pipeline_config(obj: Mapping, net_cfg: Mapping, path, size: int | None = None) -> None:
    """A model.pt of this pipeline: its net section must be the config's (architecture, units, widths, input
    scale) and, given ``size`` (preprocess.size), its mean image that size: the transferred nets subtract it
    and scale by it as the source did."""
    try:
        theirs = dict(json.loads(obj["config"])["net"])
    except Exception as e:  # noqa: BLE001 - any damage: name the file
        raise SourceError(f"{path}: a model.pt without a readable net config ({type(e).__name__}: {e})") from e
    pairs = [("arch", theirs.get("arch"), net_cfg["arch"]),
             ("units", setting({"net": theirs}, "net", "units"), net_cfg["units"])]
    if theirs.get("widths") is not None and net_cfg.get("widths") is not None:  # CaffeNet's, where both say
        pairs.append(("widths", list(theirs["widths"]), list(net_cfg["widths"])))
    pairs.append(("input_scale", float(setting({"net": theirs}, "net", "input_scale")),
                  float(setting({"net": dict(net_cfg)}, "net", "input_scale"))))
    mean = tuple(obj["mean"].shape)
    if size is not None and mean != (3, size, size):
        raise SourceError(f"{path}: its mean image is {mean}, the config's images are (3, {size}, {size}) "
                          f"(preprocess.size {size}): a model.pt of another preprocessing")
    for key, a, b in pairs:
        if a != b:
            raise SourceError(f"{path}: a model.pt of net.{key} {a!r} ({theirs.get('arch')}); the config's "
                              f"net.{key} is {b!r} ({net_cfg['arch']})")


def _check(obj, net_cfg, path, seed: int = 0, size: int | None = None):
    """(net built for the source, its spec, the source's keys without prefix, outputs); SourceError if any
    unit of the config's net cannot be filled from ``obj`` (a state_dict, or a loaded pipeline model.pt)."""
    cfg = Net.from_dict(net_cfg).as_dict()
    if is_pipeline_model(obj):
        _check_pipeline_config(obj, cfg, path, size)
        state, outputs = _unwrap(obj["state_dict"], path), int(obj["outputs"])
    else:
        state = _unwrap(obj, path)
        outputs = checkpoint_outputs(state) or DEFAULT_OUTPUTS
    net, spec = _build(net_cfg, outputs, seed)
    state = _strip_prefix(state, net.key_prefix)
    problems = _problems(state, net, cfg["arch"], int(cfg["crop"]))
    if problems:
        raise SourceError(f"{path}: not a checkpoint of net.arch {cfg['arch']} (units {cfg['units']}): "
                          + "; ".join(problems))
    return net, spec, state, outputs


def check_source(state, net_cfg: dict, path, size: int | None = None) -> int:
    """Check that checkpoint ``state`` (``read_state_dict``'s, or a loaded model.pt of this pipeline)
    fills every transferable unit of the config's ``net``: every key present, of the right shape, and no
    key of another architecture. Returns the head width (the checkpoint's; 1000 when it has no head)."""
    return _check(state, net_cfg, path, size=size)[3]


def _as_dict(net_cfg) -> dict:
    return net_cfg.as_dict() if isinstance(net_cfg, Net) else dict(net_cfg)


def _mean_image(mean_rgb, size: int) -> torch.Tensor:
    return torch.tensor(mean_rgb, dtype=torch.float32).view(3, 1, 1).expand(3, size, size).contiguous()


def import_source(path, net_cfg: dict, size: int, out: str, mean_rgb=(123.675, 116.28, 103.53),
                  seed: int = 0) -> dict:
    """Write ``out``, a model.pt of this pipeline holding checkpoint ``path`` mapped onto the config's net:
    every unit, and the head when the checkpoint's fits, copied; the mean image a constant ``mean_rgb``
    (torchvision's ImageNet normalisation mean x 255) of ``size`` x ``size``. A model.pt of this pipeline
    is re-saved as it is. Returns what was copied, for the job's log."""
    cfg = Net.from_dict(net_cfg)
    if size < cfg.crop:
        raise ValueError(f"preprocess.size {size} is smaller than net.crop {cfg.crop}")
    obj = load_checkpoint(path)
    net, spec, state, outputs = _check(obj, net_cfg, path, seed, size)
    if is_pipeline_model(obj):
        atomic.torch_save(obj, out)
        return {"format": "model.pt", "keys": len(state), "units": len(net.units), "head": True,
                "outputs": outputs}
    head_keys = net.unit_keys(len(net.units))
    own = net.state_dict()
    # after _check every key of the checkpoint is the net's or under its head's prefixes (another classifier)
    extra = [k for k in state if net.key_prefix + k not in own]
    copy_head = not extra and all(k in state and tuple(state[k].shape) == tuple(own[net.key_prefix + k].shape)
                                  for k in head_keys)
    copied = 0
    with torch.no_grad():
        for key, dst in own.items():
            k = key.removeprefix(net.key_prefix)
            if k in state and (copy_head or k not in head_keys):
                dst.copy_(state[k])
                copied += 1
    atomic.torch_save({"state_dict": own, "mean": _mean_image(mean_rgb, size), "outputs": outputs,
                       "classes": torch.zeros(0, dtype=torch.long), "net": "source",
                       "spec": json.dumps(dataclasses.asdict(spec)),
                       "config": json.dumps({"net": _as_dict(net_cfg)}, sort_keys=True)}, out)
    info = {"format": "state_dict", "keys": copied, "units": len(net.units), "head": copy_head, "outputs": outputs}
    if not copy_head:
        info["head_note"] = (f"head ({', '.join(net.head.prefixes)}) not copied: the checkpoint has none of "
                             f"this shape ({outputs} outputs); drawn from seed {seed}")
    return info

