"""CryoSiam's SimSiam network and its Lightning checkpoints, loaded without running pickled code.

Network (same module names as CryoSiam, so its checkpoints load unchanged): a MONAI ``ResNet``
encoder whose ``fc`` becomes a 3-layer projector (Linear no-bias, BN, ReLU, Linear no-bias,
BN, ReLU, the original Linear to ``dim``, ``BatchNorm1d(dim, affine=False)``), plus a predictor
(``Linear(dim, pred_dim, no bias)``, BN, ReLU, ``Linear(pred_dim, dim)``).

Input contract (see ``docs/model.md``): one channel, float32, patches of the training
``patch_size`` normalized by ``clip((x - min)/(max - min), 0, 1)`` then ``(x - mean)/std``,
voxels outside the (hull-)masked region set to 0 (see :mod:`subtomo_embed.core.extract`).
Output: the L2-normalized predictor output when ``contrastive``, the projector output otherwise.

Checkpoint layout (PyTorch Lightning): ``hyper_parameters['backbone_config']`` (contrastive) or
``hyper_parameters['config']`` holds CryoSiam's config dict; the architecture is read from its
``parameters.network``; ``state_dict`` keys carry the prefix ``_model.``.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import ModelError

log = logging.getLogger(__name__)

STATE_PREFIX = "_model."
NETWORK_DEFAULTS: dict[str, Any] = {
    "block_type": "bottleneck",
    "spatial_dims": 3,
    "in_channels": 1,
    "num_layers": [1, 1, 1, 1],
    "num_filters": [64, 128, 256, 512],
    "no_max_pool": True,
    "dim": 2048,
    "pred_dim": 512,
    "conv1_t_size": 7,
    "conv1_t_stride": 1,
}
NETWORK_KEYS = set(NETWORK_DEFAULTS)


class SimSiam(nn.Module):
    """SimSiam with a MONAI ResNet encoder (CryoSiam's ``cryosiam.networks.nets.SimSiam``)."""

    def __init__(
        self,
        block_type: str = "bottleneck",
        in_channels: int = 1,
        num_layers=(1, 1, 1, 1),
        spatial_dims: int = 3,
        num_filters=(64, 128, 256, 512),
        no_max_pool: bool = True,
        dim: int = 2048,
        pred_dim: int = 512,
        conv1_t_size: int = 7,
        conv1_t_stride: int = 1,
        bias_downsample: bool = True,
    ):
        super().__init__()
        from monai.networks.nets import ResNet

        self.encoder = ResNet(
            block_type,
            list(num_layers),
            list(num_filters),
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=conv1_t_size,
            conv1_t_stride=conv1_t_stride,
            no_max_pool=no_max_pool,
            num_classes=dim,
            bias_downsample=bias_downsample,
            act=("relu", {"inplace": False}),
        )
        prev_dim = self.encoder.fc.weight.shape[1]
        self.encoder.fc = nn.Sequential(
            nn.Linear(prev_dim, prev_dim, bias=False),
            nn.BatchNorm1d(prev_dim),
            nn.ReLU(inplace=False),
            nn.Linear(prev_dim, prev_dim, bias=False),
            nn.BatchNorm1d(prev_dim),
            nn.ReLU(inplace=False),
            self.encoder.fc,
            nn.BatchNorm1d(dim, affine=False),
        )
        self.encoder.fc[6].bias.requires_grad = False  # followed by BN
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=False),
            nn.Linear(pred_dim, dim),
        )
        self.dim = dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        """Training pass: (p1, p2, z1.detach(), z2.detach())."""
        z1, z2 = self.encoder(x1), self.encoder(x2)
        return self.predictor(z1), self.predictor(z2), z1.detach(), z2.detach()

    def embed(self, x: torch.Tensor, contrastive: bool = True) -> torch.Tensor:
        """The embedding CryoSiam writes: normalized predictor output, or the projector output."""
        z = self.encoder(x)
        if not contrastive:
            return z
        return F.normalize(self.predictor(z), p=2, dim=1)


def network_config(network: dict | None) -> dict[str, Any]:
    """Complete a ``parameters.network`` dict with CryoSiam's defaults (unknown keys ignored)."""
    cfg = dict(NETWORK_DEFAULTS)
    cfg.update({k: v for k, v in (network or {}).items() if k in NETWORK_KEYS})
    return cfg


def build_simsiam(network: dict | None, bias_downsample: bool = True) -> SimSiam:
    cfg = network_config(network)
    return SimSiam(**cfg, bias_downsample=bias_downsample)


# --------------------------------------------------------------------------------------------
# checkpoints


def lightning_checkpoint(model: SimSiam, config: dict, step: int = 0, epoch: int = 0, extra: dict | None = None) -> dict:
    """A checkpoint dict in CryoSiam's Lightning layout."""
    state = {STATE_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": state,
        "hyper_parameters": {"config": config, "backbone_config": config},
    }
    if extra:
        ckpt.update(extra)
    return ckpt


def save_checkpoint(path: str | Path, model: SimSiam, config: dict, step: int = 0, epoch: int = 0,
                    extra: dict | None = None) -> None:
    from .io import atomic_output

    with atomic_output(path) as tmp:
        torch.save(lightning_checkpoint(model, config, step, epoch, extra), tmp)


# Plain containers Lightning writes into checkpoints (its ``AttributeDict`` is a dict subclass);
# they are rebuilt as plain dicts. Nothing else that is not plain data may be unpickled.
_LIGHTNING_CONTAINERS = [
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "lightning_fabric.utilities.data.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (dict, "lightning.pytorch.utilities.parsing.AttributeDict"),
]


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with torch's weights-only unpickler (never a full unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError("checkpoint file does not exist", path)
    try:
        with torch.serialization.safe_globals(_LIGHTNING_CONTAINERS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"(Can only [^\n]*?but got [^\n]*)", text)
        detail = found.group(1) if found else ""
        raise ModelError(
            f"checkpoint holds pickled objects that are not plain data ({detail or 'unsupported global'}); "
            "refusing to load it (it could run code)", path
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ModelError(f"not a readable PyTorch checkpoint, truncated or corrupt ({first})", path) from None
    if not isinstance(ckpt, dict):
        raise ModelError(f"checkpoint is a {type(ckpt).__name__}, expected a Lightning checkpoint dict", path)
    return ckpt


def _network_from_checkpoint(ckpt: dict, contrastive: bool, path: Path) -> dict:
    section = "backbone_config" if contrastive else "config"
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict):
        raise ModelError("checkpoint has no 'hyper_parameters'", path)
    cfg = hp.get(section)
    if cfg is None and contrastive and "config" in hp:
        log.warning("%s: no 'backbone_config' in hyper_parameters; using 'config'", path)
        cfg = hp["config"]
    if not isinstance(cfg, dict):
        raise ModelError(f"checkpoint lacks hyper_parameters['{section}'] (contrastive={contrastive})", path)
    try:
        network = cfg["parameters"]["network"]
    except (KeyError, TypeError):
        raise ModelError(f"checkpoint lacks hyper_parameters['{section}']['parameters']['network']", path) from None
    return dict(network)


def load_model(path: str | Path, contrastive: bool = True) -> tuple[SimSiam, dict]:
    """Build the network a CryoSiam checkpoint describes, load its weights strictly, eval mode.

    Returns (model, network config). A checkpoint that lacks keys or does not fit raises a
    :class:`ModelError` that says which keys.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    network = _network_from_checkpoint(ckpt, contrastive, path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ModelError("checkpoint has no 'state_dict'", path)
    state = {(k[len(STATE_PREFIX):] if k.startswith(STATE_PREFIX) else k): v for k, v in state.items()}
    # Older MONAI versions built the downsample convolution without a bias; follow the file.
    has_downsample = any(".downsample.0.weight" in k for k in state)
    bias_downsample = any(".downsample.0.bias" in k for k in state) or not has_downsample
    stem = state.get("encoder.conv1.weight")
    if stem is not None and stem.ndim >= 3 and "conv1_t_size" not in network:
        network["conv1_t_size"] = int(stem.shape[-1])
    try:
        model = build_simsiam(network, bias_downsample=bias_downsample)
    except Exception as err:  # MONAI raises ValueError/TypeError/KeyError for bad shapes
        raise ModelError(f"cannot build the network in the checkpoint's config ({err})", path) from None
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:2])})")
        raise ModelError("state_dict does not fit the network in its config: " + "; ".join(parts), path)
    model.load_state_dict(state, strict=True)
    model.eval()
    full = network_config(network)
    log.info(
        "loaded %s: %s ResNet %s, filters %s, dim %d, %s",
        path.name, full["block_type"], full["num_layers"], full["num_filters"], full["dim"],
        "contrastive (normalized predictor output)" if contrastive else "projector output",
    )
    return model, full
