"""Typed run configurations (section 3.3): YAML files in ``configs/`` loaded into dataclasses.

A config file has the top-level keys ``name`` (default: the file's stem) and the sections ``model``,
``diffusion``, ``data`` and ``train``; a missing section or key takes the default below. Command-line
overrides are strings ``"section.key=value"`` (``"model.ch=64"``, ``"train.sample_every=[100, 200]"``)
whose value is parsed as YAML. An unknown key or a value of the wrong type raises ``ValueError`` naming
the full key; ints are accepted where floats are expected, lists where tuples are, and a number written
like ``1e-4`` (which YAML 1.1 reads as a string) where a float is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["Config", "DataConfig", "DiffusionConfig", "ModelConfig", "TrainConfig", "build_diffusion",
           "build_model", "config_from_checkpoint", "config_from_dict", "config_to_dict", "load_config",
           "parse_override"]

MODEL_KINDS = ("unet", "mlp")
COMPILE_MODES = (False, True, "model", "step")  # True = "step" (see diffusion.train)


@dataclass
class ModelConfig:
    """The network: ``kind="unet"`` is the U-Net of section 3.1 / table 2; ``kind="mlp"`` the small
    ``diffusion.toy.ToyMLP`` (width ``hidden``) of the 2-D notebook, which ignores the U-Net fields.
    ``time_embed_freq_shift`` (1: DDPM's frequencies 10000^(−i/(half−1)); 0: 10000^(−i/half)) and
    ``downsample_padding`` (``"tf_same"``: DDPM's TensorFlow padding; ``"symmetric"``) are two U-Net details
    of ``diffusion.unet.UNet``, and ``norm_groups`` its GroupNorm groups (DDPM: 32; at C = 32 that is instance
    normalisation, blind to each image's colour, so reduced-width models keep DDPM's 4 channels per group with
    C/4); the defaults are DDPM's."""

    kind: str = "unet"
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    class_cond: bool = False
    num_heads: int = 1
    hidden: int = 128
    time_embed_freq_shift: int = 1
    downsample_padding: str = "tf_same"
    norm_groups: int = 32


@dataclass
class DiffusionConfig:
    """The forward process and objective (section 3.3.2): T, the β schedule β_1 … β_T (eq. 1), the model's
    output parameterisation, the reverse-process variance and the loss (eq. 14 or 13); ``decoder_variance``:
    the σ_1² of the decoder term L_0 for ``var_type="fixed_large"`` (``"ddpm_code"``: β̃_2, DDPM's code;
    ``"paper"``: β_1, see ``diffusion.gaussian_diffusion.DecoderVariance``)."""

    num_timesteps: int = 1000
    schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    mean_type: str = "eps"
    var_type: str = "fixed_large"
    loss_type: str = "simple"
    decoder_variance: str = "ddpm_code"


@dataclass
class DataConfig:
    """Dataset name (``diffusion.data.DATASET_NAMES`` or ``toy:<name>``), data root (None: ``$DDPM_DATA_ROOT``
    or ``<repo>/data``), random horizontal flips during training, and an optional training resolution
    ``image_size`` (average-pooled from the native size; None keeps it)."""

    name: str = "cifar10"
    root: str | None = None
    hflip: bool = True
    image_size: int | None = None


@dataclass
class TrainConfig:
    """Optimisation (section 3.3.2): Adam with linear warm-up then constant lr, gradient-norm clipping, EMA,
    label dropout ``p_uncond`` to the null class for guidance; ``ema_warmup``: EMA decay
    min(ema_decay, (1+n)/(10+n)) after n updates (``diffusion.ema``; for short runs); ``compile``: False,
    "model"/True (compile the network) or "step" (compile the loss computation and the update); ``bf16``,
    ``channels_last`` and ``compile`` apply on CUDA only; logging every ``log_every`` steps, sample grids at
    the steps in ``sample_every``, a checkpoint every ``ckpt_every`` steps and, when ``ckpt_every_minutes``
    is set, also once that many minutes of wall time passed since the last one (the last ``keep_last`` kept;
    when checkpoints are written changes nothing that is trained)."""

    batch_size: int = 128
    lr: float = 2e-4
    adam_betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    total_steps: int = 800000
    p_uncond: float = 0.1
    seed: int = 0
    grad_accum: int = 1
    bf16: bool = True
    channels_last: bool = True
    compile: bool | str = False
    log_every: int = 100
    sample_every: tuple[int, ...] = ()
    ckpt_every: int = 5000
    ckpt_every_minutes: float | None = None
    keep_last: int = 3


@dataclass
class Config:
    name: str = "config"
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig, "train": TrainConfig}


# ----------------------------------------------------------------------------------------------------------
# typed conversion


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(key: str, value, tp):
    """``value`` converted to the annotation ``tp`` or a ValueError naming ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def wrong():
        return ValueError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for inner in args:
            if inner is type(None):
                continue
            try:
                return _coerce(key, value, inner)
            except ValueError:
                pass
        raise wrong()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise wrong()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(f"{key}[{i}]", v, args[0]) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{key}: expected {len(args)} values ({_type_name(tp)}), got {value!r}")
        return tuple(_coerce(f"{key}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if tp is float:
        if isinstance(value, bool):
            raise wrong()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise wrong() from None
        raise wrong()
    if tp is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in this module, not in the input


def _build_section(section: str, raw) -> object:
    cls = SECTIONS[section]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{section}: expected a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            raise ValueError(f"unknown key {section}.{key}; valid keys of {section!r}: {', '.join(names)}")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _check(cond: bool, key: str, allowed: str, value) -> None:
    if not cond:
        raise ValueError(f"{key} must be {allowed}, got {value!r}")


def _validate(cfg: Config) -> None:
    """Range and choice checks that the types alone do not express."""
    from diffusion.data import DATASET_NAMES
    from diffusion.gaussian_diffusion import DecoderVariance, LossType, ModelMeanType, ModelVarType
    from diffusion.schedules import SCHEDULES
    from diffusion.toy import TOY_NAMES
    from diffusion.unet import DOWNSAMPLE_PADDINGS, TIME_EMBED_FREQ_SHIFTS

    m, d, data, t = cfg.model, cfg.diffusion, cfg.data, cfg.train
    _check(m.kind in MODEL_KINDS, "model.kind", f"one of {', '.join(MODEL_KINDS)}", m.kind)
    for key in ("ch", "num_res_blocks", "num_heads", "hidden"):
        _check(getattr(m, key) >= 1, f"model.{key}", "a positive integer", getattr(m, key))
    _check(len(m.ch_mult) >= 1 and all(v >= 1 for v in m.ch_mult), "model.ch_mult",
           "a non-empty list of positive integers", list(m.ch_mult))
    _check(all(v >= 1 for v in m.attn_resolutions), "model.attn_resolutions", "a list of positive integers",
           list(m.attn_resolutions))
    _check(0.0 <= m.dropout < 1.0, "model.dropout", "in [0, 1)", m.dropout)
    _check(m.time_embed_freq_shift in TIME_EMBED_FREQ_SHIFTS, "model.time_embed_freq_shift", "0 or 1",
           m.time_embed_freq_shift)
    _check(m.downsample_padding in DOWNSAMPLE_PADDINGS, "model.downsample_padding",
           f"one of {', '.join(DOWNSAMPLE_PADDINGS)}", m.downsample_padding)
    _check(d.num_timesteps >= 1, "diffusion.num_timesteps", "a positive integer", d.num_timesteps)
    _check(d.schedule in SCHEDULES, "diffusion.schedule", f"one of {', '.join(SCHEDULES)}", d.schedule)
    _check(0.0 < d.beta_start <= d.beta_end < 1.0, "diffusion.beta_start/beta_end",
           "0 < beta_start <= beta_end < 1", (d.beta_start, d.beta_end))
    for key, enum in (("mean_type", ModelMeanType), ("var_type", ModelVarType), ("loss_type", LossType),
                      ("decoder_variance", DecoderVariance)):
        allowed = [e.value for e in enum]
        _check(getattr(d, key) in allowed, f"diffusion.{key}", f"one of {', '.join(allowed)}", getattr(d, key))
    toy_names = tuple(f"toy:{n}" for n in TOY_NAMES)
    _check(data.name in DATASET_NAMES + toy_names, "data.name", f"one of {', '.join(DATASET_NAMES + toy_names)}",
           data.name)
    _check(data.image_size is None or data.image_size >= 1, "data.image_size", "null or a positive integer",
           data.image_size)
    _check((m.kind == "mlp") == (data.name in toy_names), "model.kind",
           "'mlp' exactly when data.name is a toy: dataset", (m.kind, data.name))
    _check(not (m.kind == "mlp" and m.class_cond), "model.class_cond", "false for kind 'mlp'", m.class_cond)
    for key in ("batch_size", "total_steps", "grad_accum", "log_every", "ckpt_every", "keep_last"):
        _check(getattr(t, key) >= 1, f"train.{key}", "a positive integer", getattr(t, key))
    _check(t.ckpt_every_minutes is None or t.ckpt_every_minutes > 0, "train.ckpt_every_minutes",
           "a positive number of minutes or null", t.ckpt_every_minutes)
    _check(t.warmup_steps >= 0, "train.warmup_steps", "a non-negative integer", t.warmup_steps)
    _check(t.lr > 0, "train.lr", "positive", t.lr)
    _check(all(0.0 <= b < 1.0 for b in t.adam_betas), "train.adam_betas", "two values in [0, 1)", list(t.adam_betas))
    _check(t.grad_clip > 0, "train.grad_clip", "positive", t.grad_clip)
    _check(0.0 <= t.ema_decay < 1.0, "train.ema_decay", "in [0, 1)", t.ema_decay)
    _check(0.0 <= t.p_uncond < 1.0, "train.p_uncond", "in [0, 1)", t.p_uncond)
    _check(t.compile in COMPILE_MODES, "train.compile", "false, true, 'model' or 'step'", t.compile)
    _check(all(s >= 1 for s in t.sample_every), "train.sample_every", "a list of positive steps",
           list(t.sample_every))


# ----------------------------------------------------------------------------------------------------------
# public API


def config_from_dict(d: dict) -> Config:
    """A validated :class:`Config` from a (possibly partial) nested dict, e.g. one stored in a checkpoint."""
    if not isinstance(d, dict):
        raise ValueError(f"a config must be a mapping, got {type(d).__name__}")
    valid = ["name", *SECTIONS]
    for key in d:
        if key not in valid:
            raise ValueError(f"unknown key {key}; valid top-level keys: {', '.join(valid)}")
    cfg = Config(name=_coerce("name", d.get("name", "config"), str),
                 **{section: _build_section(section, d.get(section)) for section in SECTIONS})
    _validate(cfg)
    return cfg


# What a config stored before these keys existed meant: such checkpoints were trained with this U-Net variant.
LEGACY_MODEL_KEYS = {"time_embed_freq_shift": 0, "downsample_padding": "symmetric"}


def config_from_checkpoint(d: dict) -> Config:
    """:func:`config_from_dict` of the config stored in a checkpoint; a U-Net config stored before
    ``model.time_embed_freq_shift``/``model.downsample_padding`` existed gets the variant it was trained with
    (``LEGACY_MODEL_KEYS``), not today's defaults."""
    model = d.get("model") if isinstance(d, dict) else None
    if (isinstance(model, dict) and model.get("kind", "unet") == "unet"
            and not any(k in model for k in LEGACY_MODEL_KEYS)):
        d = dict(d, model={**model, **LEGACY_MODEL_KEYS})
    return config_from_dict(d)


def config_to_dict(cfg: Config) -> dict:
    """Plain nested dict (lists instead of tuples) of ``cfg``: YAML-, JSON- and ``weights_only``-safe."""

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


def parse_override(text: str) -> tuple[list[str], object]:
    """``"model.ch=64"`` → (["model", "ch"], 64); the value is parsed with ``yaml.safe_load``."""
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"an override must look like section.key=value, got {text!r}")
    key, value = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path) or len(path) > 2:
        raise ValueError(f"an override key must be 'name' or 'section.key', got {key!r}")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"override {text!r}: the value is not valid YAML ({err})") from None
    return path, parsed


def _yaml_problem(err: Exception) -> str:
    """One line from a PyYAML error: what is wrong and where (1-based line and column)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}" + (f" ({context})" if context else "")


def load_config(path: str | Path, overrides=()) -> Config:
    """Load the YAML config at ``path`` and apply ``overrides`` (strings ``"section.key=value"``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a config file must be a mapping with the keys name, {', '.join(SECTIONS)}")
    raw.setdefault("name", path.stem)
    if isinstance(overrides, str):
        raise ValueError("overrides must be a list of 'section.key=value' strings, not one string")
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1:
            raw[keys[0]] = value
            continue
        section, key = keys
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r} in override {text!r}; valid sections: "
                             f"{', '.join(SECTIONS)}")
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section][key] = value
    try:
        return config_from_dict(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def build_model(cfg: Config, data_info=None):
    """The ε_θ network of ``cfg.model``.

    Args:
        cfg: the config.
        data_info: for ``kind="unet"`` an object with ``channels``, ``image_size`` and ``num_classes`` (an
            ``ImageData`` or a namespace); the class embedding (K + 1 rows, eq. 17) is built only when
            ``cfg.model.class_cond``. For ``kind="mlp"`` None (2-D data) or a tensor (n, dim) of the data.
    """
    m = cfg.model
    if m.kind == "mlp":
        from diffusion.toy import ToyMLP

        dim = 2 if data_info is None else int(data_info.shape[-1])
        return ToyMLP(dim=dim, hidden=m.hidden)
    from diffusion.unet import UNet

    missing = [a for a in ("channels", "image_size", "num_classes") if not hasattr(data_info, a)]
    if missing:
        raise ValueError(f"data_info must have channels, image_size and num_classes (e.g. an ImageData); "
                         f"missing {', '.join(missing)}")
    if m.class_cond and data_info.num_classes < 1:
        raise ValueError(f"model.class_cond is true but the dataset has num_classes={data_info.num_classes}; "
                         f"set model.class_cond=false for an unconditional dataset")
    return UNet(in_channels=data_info.channels, ch=m.ch, ch_mult=m.ch_mult, num_res_blocks=m.num_res_blocks,
                attn_resolutions=m.attn_resolutions, dropout=m.dropout, image_size=data_info.image_size,
                num_classes=data_info.num_classes if m.class_cond else None, num_heads=m.num_heads,
                time_embed_freq_shift=m.time_embed_freq_shift, downsample_padding=m.downsample_padding,
                norm_groups=m.norm_groups)


def build_diffusion(cfg: Config):
    """The ``GaussianDiffusion`` of ``cfg.diffusion`` (β schedule of eq. 1, objective eq. 14 or 13)."""
    from diffusion.gaussian_diffusion import create_diffusion

    d = cfg.diffusion
    return create_diffusion(schedule=d.schedule, num_timesteps=d.num_timesteps, beta_start=d.beta_start,
                            beta_end=d.beta_end, mean_type=d.mean_type, var_type=d.var_type, loss_type=d.loss_type,
                            decoder_variance=d.decoder_variance)
