"""The noise-prediction network ε_θ(x_t, t[, y]): the U-Net of section 3.1 and table 2 (eqs. 16-17).

Structure (section 3.1.1):

1. input projection: a 3×3 convolution to ``ch`` channels;
2. encoder: one level per entry of ``ch_mult``; each level has ``num_res_blocks`` pre-activation residual
   blocks (each followed by self-attention if the level's resolution is in ``attn_resolutions``) and, except
   the last level, a stride-2 3×3 convolution that halves the resolution;
3. middle block: residual block → self-attention → residual block;
4. decoder: mirror of the encoder, ``num_res_blocks + 1`` residual blocks per level, each taking the
   channel concatenation of the running features and one stored encoder feature map (skip connection),
   followed by attention where the encoder had it, and, except the top level, nearest ×2 up-sampling
   followed by a 3×3 convolution;
5. output head: GroupNorm → SiLU → 3×3 convolution back to the image's channels.

Conditioning: the sinusoidal embedding of eq. (16) (width ``ch``) goes through MLP_t
(Linear ch→4ch, SiLU, Linear 4ch→4ch); in the class-conditional variant a learned embedding with K+1 rows
(row K is the null token ∅) goes through its own MLP_y and is added element-wise (eq. 17). The resulting
context vector e_ctx is projected (SiLU → Linear) into every residual block and added after its first
convolution.

With ``in_channels=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
image_size=32`` and no class embedding the network has exactly 35,746,307 parameters, the size of the
original DDPM CIFAR-10 model. That count requires attention after *every* residual block of the 16×16
level (2 in the encoder, 3 in the decoder), as in DDPM; one attention block per level would give fewer.

Two details that change no parameter count follow DDPM's original TensorFlow code by default and can be
switched to the variant of later code bases (improved DDPM): the time-embedding frequencies
(``time_embed_freq_shift``: 1 → 10000^(−i/(half−1)), DDPM; 0 → 10000^(−i/half)) and the padding of the
stride-2 down-sampling convolution (``downsample_padding``: ``"tf_same"`` → one zero row/column at the
bottom/right, DDPM; ``"symmetric"`` → one on every side). With the defaults, the weights of DDPM's published
checkpoints (converted by :mod:`diffusion.convert`) reproduce DDPM's network exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNet", "timestep_embedding"]

GROUPNORM_GROUPS = 32
GROUPNORM_EPS = 1e-6
TIME_EMBED_FREQ_SHIFTS = (0, 1)
DOWNSAMPLE_PADDINGS = ("tf_same", "symmetric")


def timestep_embedding(t: torch.Tensor, dim: int, freq_shift: int = 0) -> torch.Tensor:
    """Sinusoidal timestep embedding e_raw of eq. (16).

    ``e_raw[2i] = sin(t · ω_i)`` and ``e_raw[2i+1] = cos(t · ω_i)`` for ``i = 0 … half-1``, ``half = dim/2``,
    with frequencies ``ω_i = 10000^(−i/(half − freq_shift))`` (sine and cosine interleaved as eq. 16
    writes them). ``freq_shift=0`` is eq. (16) literally, ω_i = 1/10000^(2i/dim), the lowest frequency being
    10000^(−(half−1)/half); ``freq_shift=1`` is DDPM's original code (diffusers' ``freq_shift=1``), whose
    frequencies run exactly from 1 down to 1/10000.

    Args:
        t: timesteps, shape (B,), integer indices 0 … T-1 or float (respaced models pass the original
            schedule's indices, which may be fractional after rescaling).
        dim: embedding width, a positive even integer (at least 4 when ``freq_shift=1``).
        freq_shift: 0 or 1, see above.

    Returns:
        float32 tensor of shape (B, dim) on ``t``'s device.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even integer, got {dim!r}")
    if freq_shift not in TIME_EMBED_FREQ_SHIFTS or isinstance(freq_shift, bool):
        raise ValueError(f"freq_shift must be 0 or 1, got {freq_shift!r}")
    half = dim // 2
    if half - freq_shift < 1:
        raise ValueError(f"dim must be at least {2 * (freq_shift + 1)} with freq_shift={freq_shift}, got {dim}")
    if t.dim() != 1:
        raise ValueError(f"t must be a 1-D tensor of timesteps (B,), got shape {tuple(t.shape)}")
    i = torch.arange(half, device=t.device, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * i / (half - freq_shift))  # ω_i = 10000^(−i/(half − shift))
    angles = t.to(torch.float32)[:, None] * freqs[None, :]
    return torch.stack((torch.sin(angles), torch.cos(angles)), dim=-1).reshape(t.shape[0], dim)


def _group_norm(channels: int, groups: int = GROUPNORM_GROUPS) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=GROUPNORM_EPS)


def _zero_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Pre-activation residual block (section 3.1.2): GN → SiLU → conv, + proj(e_ctx), GN → SiLU →
    dropout → conv, added to the input (through a 1×1 convolution when the channel count changes)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, norm_groups: int = GROUPNORM_GROUPS):
        super().__init__()
        self.norm1 = _group_norm(in_ch, norm_groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch))
        self.norm2 = _group_norm(out_ch, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero_(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(emb)[:, :, None, None].to(h.dtype)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H·W positions (section 3.1.2): GN, 1×1 conv to Q, K, V,
    softmax(QKᵀ/√d_k)V per head, zero-initialised 1×1 output projection, residual connection. The 1×1
    convolutions keep their ``Conv2d`` parameters (DDPM's checkpoint layout) and are computed as matrix
    products over the tokens."""

    def __init__(self, channels: int, num_heads: int, norm_groups: int = GROUPNORM_GROUPS):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _group_norm(channels, norm_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero_(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        heads, hw = self.num_heads, height * width
        # The 1×1 convolutions are applied as matrix products on the (B, HW, C) tokens (their weights viewed
        # as C_out × C_in): the same function, without the per-call layout conversions of a CPU convolution.
        tokens = self.norm(x).reshape(b, c, hw).transpose(1, 2)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)  # (B, HW, 3C)
        # (3, B, heads, HW, d_k), contiguous along d_k: the layout the fused attention kernel takes
        q, k, v = qkv.reshape(b, hw, 3, heads, c // heads).permute(2, 0, 3, 1, 4).contiguous().unbind(dim=0)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(QKᵀ/√d_k) V
        out = F.linear(out.transpose(1, 2).reshape(b, hw, c), self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(b, c, height, width)


class Downsample(nn.Module):
    """Stride-2 3×3 convolution halving the resolution (section 3.1.2).

    ``padding="tf_same"``: TensorFlow's ``'SAME'`` padding of DDPM's original code, which for an even input,
    kernel 3 and stride 2 adds one zero row and column at the bottom and right only (output pixel j sees
    input pixels 2j … 2j+2); ``padding="symmetric"``: one zero row/column on every side (pixels 2j−1 … 2j+1).
    Both give H/2 × W/2 and have the same parameters.
    """

    def __init__(self, channels: int, padding: str = "tf_same"):
        super().__init__()
        if padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, got {padding!r}")
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1 if padding == "symmetric" else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "tf_same":
            x = F.pad(x, (0, 1, 0, 1))  # (left, right, top, bottom)
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour ×2 up-sampling followed by a 3×3 convolution (section 3.1.2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A residual block optionally followed by self-attention; the unit of the encoder and decoder."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, attn: bool, num_heads: int,
                 norm_groups: int = GROUPNORM_GROUPS):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout, norm_groups)
        self.attn = AttnBlock(out_ch, num_heads, norm_groups) if attn else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class UNet(nn.Module):
    """ε_θ(x_t, t[, y]) of section 3.1 / table 2, with the time embedding of eq. (16) and the
    class-conditional context e_ctx = MLP_t(e_t) + MLP_y(v_y) of eq. (17).

    Args:
        in_channels: image channels (3 for CIFAR-10/CelebA, 1 for MNIST digits).
        ch: base channel count C (a multiple of ``norm_groups``); the time embedding is C wide and the
            context vector 4C wide.
        ch_mult: channel multiplier of each resolution level; level ``i`` works at
            ``image_size / 2**i``.
        num_res_blocks: N, residual blocks per encoder level (the decoder has N+1).
        attn_resolutions: feature-map resolutions (side lengths) at which self-attention follows every
            residual block; each must be reached by some level.
        dropout: dropout probability between the two convolutions of each residual block.
        image_size: side length of the (square) input; divisible by ``2**(len(ch_mult)-1)``.
        num_classes: K for the class-conditional variant (embedding of K+1 rows, row K = null token ∅),
            ``None`` for an unconditional model.
        num_heads: attention heads (must divide every attended channel count).
        out_channels: output channels, default ``in_channels`` (ε has the image's shape).
        time_embed_freq_shift: 1 (default): the frequencies 10000^(−i/(half−1)) of DDPM's original code;
            0: 10000^(−i/half), eq. (16) as written (see :func:`timestep_embedding`).
        downsample_padding: ``"tf_same"`` (default): DDPM's TensorFlow 'SAME' padding of the stride-2
            convolution (one row/column at the bottom/right); ``"symmetric"``: one on every side
            (see :class:`Downsample`).
        norm_groups: groups of every GroupNorm, default DDPM's 32. At C = 32 that makes every group one
            channel, i.e. instance normalisation, which removes each channel's per-image mean: the output head
            is exactly blind to it (``tests/test_unet.py``), so the network can hardly pass the per-image colour
            of x_t through, and ε̂'s per-image mean error becomes a colour cast of x̂_0 amplified by
            √((1−ᾱ_t)/ᾱ_t) (``diffusion.metrics.eps_error``'s ``channel_mean_mse`` measures that error). C/4
            groups keep DDPM's 4 channels per group.

    ``forward(x, t, y=None)``: ``x`` float (B, in_channels, image_size, image_size); ``t`` timestep indices
    (B,) in [0, T) (float allowed); ``y`` LongTensor (B,) in [0, K], ``None`` meaning ∅ for a conditional
    model. Returns a tensor of shape (B, out_channels, image_size, image_size).
    """

    def __init__(
        self,
        in_channels: int,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        image_size: int = 32,
        num_classes: int | None = None,
        num_heads: int = 1,
        out_channels: int | None = None,
        time_embed_freq_shift: int = 1,
        downsample_padding: str = "tf_same",
        norm_groups: int = GROUPNORM_GROUPS,
    ):
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("ch", ch)
        _check_positive_int("norm_groups", norm_groups)
        if ch % norm_groups:
            raise ValueError(f"ch must be divisible by norm_groups={norm_groups} (GroupNorm groups), got {ch}")
        ch_mult = tuple(ch_mult)
        if not ch_mult:
            raise ValueError("ch_mult must list at least one channel multiplier, got an empty sequence")
        for m in ch_mult:
            _check_positive_int("ch_mult entries", m)
        _check_positive_int("num_res_blocks", num_res_blocks)
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        _check_positive_int("image_size", image_size)
        factor = 2 ** (len(ch_mult) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size must be divisible by 2**(len(ch_mult)-1) = {factor} for {len(ch_mult)} levels, "
                f"got {image_size}"
            )
        if num_classes is not None:
            _check_positive_int("num_classes", num_classes)
        _check_positive_int("num_heads", num_heads)
        if isinstance(time_embed_freq_shift, bool) or time_embed_freq_shift not in TIME_EMBED_FREQ_SHIFTS:
            raise ValueError(f"time_embed_freq_shift must be 0 or 1, got {time_embed_freq_shift!r}")
        if downsample_padding not in DOWNSAMPLE_PADDINGS:
            raise ValueError(f"downsample_padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, "
                             f"got {downsample_padding!r}")
        out_channels = in_channels if out_channels is None else out_channels
        _check_positive_int("out_channels", out_channels)
        resolutions = [image_size // 2**i for i in range(len(ch_mult))]
        attn_resolutions = tuple(attn_resolutions)
        for r in attn_resolutions:
            if r not in resolutions:
                raise ValueError(
                    f"attn_resolutions entry {r!r} is not reached by any level; resolutions are {resolutions}"
                )
        attended = [ch * m for m, r in zip(ch_mult, resolutions) if r in attn_resolutions]
        attended.append(ch * ch_mult[-1])  # the middle block always attends
        for c in attended:
            if c % num_heads:
                raise ValueError(f"num_heads must divide every attended channel count {sorted(set(attended))}, "
                                 f"got {num_heads}")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.ch = ch
        self.ch_mult = ch_mult
        self.num_res_blocks = num_res_blocks
        self.attn_resolutions = attn_resolutions
        self.image_size = image_size
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.time_embed_freq_shift = time_embed_freq_shift
        self.downsample_padding = downsample_padding
        self.norm_groups = norm_groups
        emb_dim = 4 * ch

        # eq. (16) → MLP_t; eq. (17) adds MLP_y(v_y).
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.class_embed = nn.Embedding(num_classes + 1, emb_dim)
            self.class_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        self.input_conv = nn.Conv2d(in_channels, ch, 3, padding=1)

        # Encoder. skip_channels records the channels of every feature map pushed for the decoder.
        self.down = nn.ModuleList()
        skip_channels = [ch]
        cur = ch
        for level, (mult, res) in enumerate(zip(ch_mult, resolutions)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(Stage(cur, ch * mult, emb_dim, dropout, res in attn_resolutions, num_heads, norm_groups))
                cur = ch * mult
                skip_channels.append(cur)
            level_module = nn.Module()
            level_module.blocks = blocks
            if level != len(ch_mult) - 1:
                level_module.downsample = Downsample(cur, downsample_padding)
                skip_channels.append(cur)
            self.down.append(level_module)

        self.mid_res1 = ResBlock(cur, cur, emb_dim, dropout, norm_groups)
        self.mid_attn = AttnBlock(cur, num_heads, norm_groups)
        self.mid_res2 = ResBlock(cur, cur, emb_dim, dropout, norm_groups)

        # Decoder: N+1 residual blocks per level, each over a skip concatenation.
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch_mult))):
            out = ch * ch_mult[level]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                skip = skip_channels.pop()
                blocks.append(Stage(cur + skip, out, emb_dim, dropout, resolutions[level] in attn_resolutions,
                                    num_heads, norm_groups))
                cur = out
            level_module = nn.Module()
            level_module.blocks = blocks
            if level != 0:
                level_module.upsample = Upsample(cur)
            self.up.append(level_module)

        self.out_norm = _group_norm(cur, norm_groups)
        self.out_conv = _zero_(nn.Conv2d(cur, out_channels, 3, padding=1))

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        if x.dim() != 4:
            raise ValueError(f"x must be a 4-D tensor (B, C, H, W), got shape {tuple(x.shape)}")
        b, c, height, width = x.shape
        if c != self.in_channels:
            raise ValueError(f"x must have {self.in_channels} channels (in_channels), got {c}")
        if height != self.image_size or width != self.image_size:
            raise ValueError(
                f"x must be {self.image_size}×{self.image_size} (image_size), got {height}×{width}"
            )
        if t.dim() != 1 or t.shape[0] != b:
            raise ValueError(f"t must have shape ({b},) matching x's batch, got {tuple(t.shape)}")
        if y is None:
            return
        if self.num_classes is None:
            raise ValueError("y must be None for an unconditional model (num_classes=None)")
        if y.dim() != 1 or y.shape[0] != b:
            raise ValueError(f"y must have shape ({b},) matching x's batch, got {tuple(y.shape)}")
        if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
            raise ValueError(f"y must be an integer tensor of class indices, got dtype {y.dtype}")
        # Data-dependent range check: only in eager mode, so that torch.compile sees no graph break.
        if torch.compiler.is_compiling() or not y.numel():
            return
        if y.is_cuda:  # checked on the device: no host sync, allowed inside CUDA-graph capture
            torch._assert_async(((y >= 0) & (y <= self.num_classes)).all(),
                                f"y must hold class indices in [0, {self.num_classes}]")
            return
        lo, hi = torch.stack((y.min(), y.max())).tolist()  # one host sync (CPU tensors)
        if lo < 0 or hi > self.num_classes:
            raise ValueError(
                f"y must hold class indices in [0, {self.num_classes}] (index {self.num_classes} is the "
                f"null token), got values in [{lo}, {hi}]"
            )

    def context_embedding(self, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """e_ctx = MLP_t(e_raw(t)) (+ MLP_y(v_y) for a conditional model), eqs. (16)-(17); shape (B, 4·ch).

        For a conditional model ``y=None`` selects the null token ∅ (index ``num_classes``). The sinusoidal
        embedding is computed in float32 and meets the MLP in the MLP's dtype (float64 for a float64 network)."""
        raw = timestep_embedding(t, self.ch, self.time_embed_freq_shift)
        emb = self.time_mlp(raw.to(self.time_mlp[0].weight.dtype))
        if self.num_classes is not None:
            if y is None:
                y = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            emb = emb + self.class_mlp(self.class_embed(y))
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict ε (or whatever the diffusion's mean type asks) for x_t at timestep indices t, class y."""
        self._check_inputs(x, t, y)
        emb = self.context_embedding(t, y)

        h = self.input_conv(x)
        skips = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb)
                skips.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
                skips.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)

        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat((h, skips.pop()), dim=1), emb)
            if hasattr(level, "upsample"):
                h = level.upsample(h)

        return self.out_conv(F.silu(self.out_norm(h)))
