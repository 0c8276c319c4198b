"""CryoSiam's SimSiam network and its Lightning checkpoints, loaded without running pickled code.

Network (same module names as CryoSiam, so its checkpoints load unchanged): a MONAI ``ResNet``
encoder whose ``fc`` becomes a 3-layer projector (Linear no-bias, BN, ReLU, Linear no-bias,
BN, ReLU, the original Linear to ``dim``, ``BatchNorm1d(dim, affine=False)``), plus a predictor
(``Linear(dim, pred_dim, no bias)``, BN, ReLU, ``Linear(pred_dim, dim)``).

Input contract (see ``docs/model.md``): one channel, float32, patches of the training
``patch_size`` normalized by ``clip((x - min)/(max - min), 0, 1)`` then ``(x - mean)/std``,
voxels outside the (hull-)masked region set to 0 (see :mod:`subtomo_embed.core.extract`).
Output: the L2-normalized predictor output when ``contrastive``, the projector output otherwise;
optionally averaged over a rotation group of the cube (``embedding_rotations``, an extension).

Checkpoint layout (PyTorch Lightning): ``hyper_parameters['backbone_config']`` (contrastive) or
``hyper_parameters['config']`` holds CryoSiam's config dict; the architecture is read from its
``parameters.network``; ``state_dict`` keys carry the prefix ``_model.``.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ROTATION_GROUP_ORDERS, Config, NetworkConfig, dotted_value
from .errors import ConfigError, ModelError
from .patch_contract import patch_contract

log = logging.getLogger(__name__)

STATE_PREFIX = "_model."
# One set of defaults: the config's (docs/config.md), so `train` and a checkpoint that leaves a key
# out mean the same network. A checkpoint's dims missing from its config are read from its weights.
NETWORK_DEFAULTS: dict[str, Any] = NetworkConfig().model_dump()
NETWORK_KEYS = set(NETWORK_DEFAULTS)


class SimSiam(nn.Module):
    """SimSiam with a MONAI ResNet encoder (CryoSiam's ``cryosiam.networks.nets.SimSiam``)."""

    def __init__(
        self,
        *,
        block_type: str,
        in_channels: int,
        num_layers,
        spatial_dims: int,
        num_filters,
        no_max_pool: bool,
        dim: int,
        pred_dim: int,
        conv1_t_size: int,
        conv1_t_stride: int,
        bias_downsample: bool = True,
    ):
        """Build it with :func:`build_simsiam` (the defaults are the config's, :data:`NETWORK_DEFAULTS`)."""
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
        head = self.encoder.fc
        assert isinstance(head, nn.Linear)  # MONAI's ResNet ends in Linear(features, num_classes)
        prev_dim = head.weight.shape[1]
        fc = nn.Sequential(
            nn.Linear(prev_dim, prev_dim, bias=False),
            nn.BatchNorm1d(prev_dim),
            nn.ReLU(inplace=False),
            nn.Linear(prev_dim, prev_dim, bias=False),
            nn.BatchNorm1d(prev_dim),
            nn.ReLU(inplace=False),
            head,
            nn.BatchNorm1d(dim, affine=False),
        )
        head.bias.requires_grad = False  # followed by BN
        self.encoder.fc = fc  # type: ignore[assignment]  # MONAI types it Linear | None
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=False),
            nn.Linear(pred_dim, dim),
        )
        self.dim = dim

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        """Training pass: (p1, p2, z1, z2); SimSiam's loss stops the gradient through z itself."""
        z1, z2 = self.encoder(x1), self.encoder(x2)
        return self.predictor(z1), self.predictor(z2), z1, z2

    def embed(self, x: torch.Tensor, contrastive: bool = True, rotations: int = 1) -> torch.Tensor:
        """The embedding CryoSiam writes: normalized predictor output, or the projector output.

        With ``rotations`` > 1, the mean of the embeddings of the patch turned by each rotation of
        that group of the cube (:func:`cube_rotations`; normalized again when ``contrastive``): the
        same for every turn of the patch in the group, whatever the network learned.
        """
        if rotations > 1:
            turns = [self.embed(turned(x, r), contrastive) for r in cube_rotations(rotations)]
            mean = torch.stack(turns).mean(dim=0)
            return F.normalize(mean, p=2, dim=1) if contrastive else mean
        z = self.encoder(x)
        if not contrastive:
            return z
        return F.normalize(self.predictor(z), p=2, dim=1)


# --------------------------------------------------------------------------------------------
# the rotation groups of the cube: turns by multiples of 90°, exact on the voxel grid

_EVEN_AXIS_ORDERS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))


def cube_rotations(order: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """A rotation group of the cube as (axis order, signs) pairs acting on (z, y, x).

    ``order`` 1: the identity; 4: the half turns about z, y and x (D2); 12: those and the turns
    that cycle the three axes (the tetrahedral group T); 24: every turn that maps the cube onto
    itself (the octahedral group O).
    """
    if order not in ROTATION_GROUP_ORDERS:
        raise ValueError(f"a rotation group of the cube has order 1, 4, 12 or 24, not {order}")
    group = []
    for axes in itertools.permutations(range(3)):
        even = axes in _EVEN_AXIS_ORDERS
        for signs in itertools.product((1, -1), repeat=3):
            proper = (signs[0] * signs[1] * signs[2] > 0) == even  # determinant +1
            wanted = (
                order == 24
                or (order == 12 and even)
                or (order == 4 and axes == (0, 1, 2))
                or (order == 1 and axes == (0, 1, 2) and signs == (1, 1, 1))
            )
            if proper and wanted:
                group.append((axes, signs))
    return group


def turned(x: torch.Tensor, rotation: tuple[tuple[int, ...], tuple[int, ...]]) -> torch.Tensor:
    """Patches [B, C, z, y, x] turned by one rotation of :func:`cube_rotations` (axes permuted, then flipped)."""
    axes, signs = rotation
    y = x.permute(0, 1, *(2 + a for a in axes))
    flipped = [2 + i for i, sign in enumerate(signs) if sign < 0]
    return y.flip(flipped) if flipped else y


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


def lightning_checkpoint(
    model: SimSiam, config: dict, step: int = 0, epoch: int = 0, extra: dict | None = None
) -> dict:
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


def save_checkpoint(
    path: str | Path, model: SimSiam, config: dict, step: int = 0, epoch: int = 0, extra: dict | None = None
) -> None:
    from .io import atomic_output

    with atomic_output(path) as tmp:
        torch.save(lightning_checkpoint(model, config, step, epoch, extra), tmp)


# Plain containers Lightning writes into checkpoints (its ``AttributeDict`` is a dict subclass);
# they are rebuilt as plain dicts. Nothing else that is not plain data may be unpickled.
_LIGHTNING_CONTAINERS: list[Any] = [
    (dict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "lightning_fabric.utilities.data.AttributeDict"),
    (dict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (dict, "lightning.pytorch.utilities.parsing.AttributeDict"),
]


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint with torch's weights-only unpickler (never a full unpickling)."""
    path = Path(path)
    if path.is_dir():
        raise ModelError("is a folder, not a checkpoint file (trained_model names the .ckpt file)", path)
    if not path.exists():
        raise ModelError("checkpoint file does not exist", path)
    if not path.is_file():
        raise ModelError("not a regular file (a device or a pipe), not a checkpoint file", path)
    try:
        with torch.serialization.safe_globals(_LIGHTNING_CONTAINERS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"(Can only [^\n]*?but got [^\n]*)", text)
        detail = found.group(1) if found else ""
        raise ModelError(
            f"checkpoint holds pickled objects that are not plain data ({detail or 'unsupported global'}); "
            "refusing to load it (it could run code)",
            path,
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise ModelError(f"not a readable PyTorch checkpoint, truncated or corrupt ({first})", path) from None
    if not isinstance(ckpt, dict):
        raise ModelError(f"checkpoint is a {type(ckpt).__name__}, expected a Lightning checkpoint dict", path)
    return ckpt


def _stored_config(ckpt: dict, contrastive: bool, path: Path) -> dict:
    """The CryoSiam config the checkpoint was trained with (``backbone_config`` or ``config``)."""
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
    if not isinstance(network, dict):
        raise ModelError(f"hyper_parameters['{section}']['parameters']['network'] is not a mapping", path)
    return cfg


# Dimensions a checkpoint's config may leave out, read from its weights: (key, weight, axis).
_DIMS_IN_WEIGHTS = (
    ("dim", "encoder.fc.6.weight", 0),
    ("pred_dim", "predictor.0.weight", 0),
    ("in_channels", "encoder.conv1.weight", 1),
    ("conv1_t_size", "encoder.conv1.weight", -1),
)


def _checked_network(stored: dict, state: dict[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """The network a checkpoint describes, complete and valid, its size bounded by the weights present.

    Nothing is allocated for the network here: an enormous network in a small file is refused
    before it is built (:func:`load_model` then builds it on the meta device to compare shapes).
    """
    from pydantic import ValidationError

    network = {k: v for k, v in stored.items() if k in NETWORK_KEYS}
    for key, weight, axis in _DIMS_IN_WEIGHTS:
        tensor = state.get(weight)
        if key not in network and isinstance(tensor, torch.Tensor) and tensor.ndim >= 2:
            network[key] = int(tensor.shape[axis])
            log.info(
                "%s: %s %d read from the weights (the checkpoint's config leaves it out)", path.name, key, network[key]
            )
    try:
        full = NetworkConfig.model_validate(network, strict=False).model_dump()
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelError(f"the checkpoint's parameters.network is not valid ({where}: {first['msg']})", path) from None
    blocks = {m.group(1) for k in state if (m := re.match(r"encoder\.(layer\d+\.\d+)\.", k))}
    if sum(full["num_layers"]) != len(blocks):
        raise ModelError(
            f"state_dict does not fit the network in its config: num_layers {full['num_layers']} asks "
            f"for {sum(full['num_layers'])} residual blocks, the weights hold {len(blocks)}",
            path,
        )
    return full


def _fit_report(expected: dict[str, torch.Tensor], state: dict[str, Any]) -> list[str]:
    """What keeps ``state`` from loading into a network whose state_dict is ``expected`` (empty: it fits)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if isinstance(state.get(k), torch.Tensor) and tuple(state[k].shape) != tuple(v.shape)
    ]
    wrong_type = [
        k
        for k, v in expected.items()
        if isinstance(state.get(k), torch.Tensor) and state[k].is_floating_point() != v.is_floating_point()
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if not_tensors:
        parts.append(f"{len(not_tensors)} entries that are not tensors (e.g. {', '.join(not_tensors[:3])})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:2])})")
    if wrong_type:
        parts.append(f"{len(wrong_type)} tensors of the wrong kind of number (e.g. {', '.join(wrong_type[:3])})")
    return parts


def load_model(
    path: str | Path,
    contrastive: bool = True,
    run_config: Config | None = None,
    masking: bool = True,
    given_only: bool = False,
) -> tuple[SimSiam, dict]:
    """Build the network a CryoSiam checkpoint describes, load its weights strictly, eval mode.

    Returns (model, network config). A checkpoint that lacks keys, does not fit, or holds
    non-finite weights raises a :class:`ModelError` that says which keys. The network is first
    built on the meta device (no memory) and compared with the weights, so a small file cannot
    make it allocate more than its own weights. With ``run_config``, a ``parameters.network.dim``
    set there must equal the checkpoint's, and the input contract is compared
    (:func:`check_input_contract`; ``masking``: whether the run masks patches by ``masking_type``;
    ``given_only``: only keys the run's config sets, e.g. for ``embed``, whose patches were cut earlier).
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    stored = _stored_config(ckpt, contrastive, path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict) or not state:
        raise ModelError("checkpoint has no 'state_dict'", path)
    state = {(k[len(STATE_PREFIX) :] if k.startswith(STATE_PREFIX) else k): v for k, v in state.items()}
    full = _checked_network(stored["parameters"]["network"], state, path)
    # Older MONAI versions built the downsample convolution without a bias; follow the file.
    has_downsample = any(".downsample.0.weight" in k for k in state)
    bias_downsample = any(".downsample.0.bias" in k for k in state) or not has_downsample
    try:
        with torch.device("meta"):
            model = build_simsiam(full, bias_downsample=bias_downsample)
    except Exception as err:  # MONAI raises ValueError/TypeError/KeyError for bad shapes
        raise ModelError(f"cannot build the network in the checkpoint's config ({err})", path) from None
    problems = _fit_report(model.state_dict(), state)
    if problems:
        raise ModelError("state_dict does not fit the network in its config: " + "; ".join(problems), path)
    not_finite = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if not_finite:
        raise ModelError(f"{len(not_finite)} weights hold NaN or Inf values (e.g. {', '.join(not_finite[:3])})", path)
    model.load_state_dict(state, strict=True, assign=True)  # the file's tensors become the weights
    model.float().eval()
    if run_config is not None:
        _check_dim(run_config, full["dim"], path)
        check_input_contract(stored, run_config, path, masking, given_only)
    log.info(
        "loaded %s: %s ResNet %s, filters %s, dim %d, %s",
        path.name,
        full["block_type"],
        full["num_layers"],
        full["num_filters"],
        full["dim"],
        "contrastive (normalized predictor output)" if contrastive else "projector output",
    )
    return model, full


def _check_dim(cfg: Config, dim: int, path: Path) -> None:
    net_cfg = cfg.parameters.network
    if "dim" in net_cfg.model_fields_set and net_cfg.dim != dim:
        raise ConfigError(
            f"parameters.network.dim is {net_cfg.dim} but the checkpoint {path.name} has dim {dim}",
            cfg.origin("parameters.network.dim"),
        )


# --------------------------------------------------------------------------------------------
# the input contract


def run_input_contract(cfg: Config, masking: bool = True, given_only: bool = False) -> dict[str, Any]:
    """What this run feeds the network (its :func:`~.patch_contract.patch_contract`), keyed as in the
    checkpoint's stored config (``given_only``: only the keys its config sets)."""
    contract = patch_contract(cfg).input_values(masking)
    if given_only:
        return {k: v for k, v in contract.items() if cfg.is_set(k)}
    return contract


def _same(stored: Any, run: Any) -> bool:
    if isinstance(run, list):
        return isinstance(stored, (list, tuple)) and [float(s) for s in stored] == [float(r) for r in run]
    try:
        return float(stored) == float(run)
    except (TypeError, ValueError):
        return False


def check_input_contract(
    stored: dict, cfg: Config, path: Path, masking: bool = True, given_only: bool = False
) -> list[str]:
    """Compare the input the checkpoint was trained on (patch size, normalization, masking, as its
    stored config records them) with this run's; warn once, clearly, on a difference.

    Like a MONAI bundle's metadata: the network cannot tell that it is fed patches of another
    size or scale, its embeddings just mean less. Returns the differences (one text each).
    """
    differences, unrecorded = [], []
    for key, run_value in run_input_contract(cfg, masking, given_only).items():
        stored_value = dotted_value(stored, key)
        if stored_value is None:
            unrecorded.append(key)
        elif not _same(stored_value, run_value):
            differences.append(f"{key} {stored_value!r} in training, {run_value!r} here ({cfg.origin(key)})")
    if differences:
        log.warning(
            "%s: this run's input differs from what the model was trained on: %s. Its embeddings may "
            "not mean what they should; use the training values (docs/config.md)",
            path.name,
            "; ".join(differences),
        )
    if unrecorded:
        log.info("%s: the checkpoint does not record %s; not compared", path.name, ", ".join(unrecorded))
    return differences
