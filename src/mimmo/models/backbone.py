"""The backbone protocol every method builds on: a stem, a list of stages and a linear head.

A method never edits a backbone after the fact. It asks a :class:`BackboneFactory` for a backbone with
the input channels and output units it needs (MIMO asks for ``M*C`` inputs and ``M*K`` outputs), and
attaches exits after the stages. Any network that can be written as ``head(pool(stages(stem(x))))``
fits: subclass :class:`Backbone`, fill the four attributes, and pass a factory to a method.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn


class Add(nn.Module):
    """Element-wise sum as a module, so that the cost counter sees residual additions."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class Backbone(nn.Module):
    """A network split into ``stem``, ``stages``, ``pool`` and ``head``.

    Subclasses set:
      * ``stem``: the first layer(s), reading the raw input (its first layer is the one whose input
        channels a multi-input method multiplies);
      * ``stages``: an ``nn.ModuleList``; early exits attach after every stage but the last;
      * ``pool``: turns the last stage's output into a flat (B, F) feature vector;
      * ``head``: ``nn.Linear(F, num_outputs)``;
      * ``stage_channels``: the channel (or feature) width of each stage's output;
      * ``feature_dim``: F, the head's input width.
    """

    stem: nn.Module
    stages: nn.ModuleList
    pool: nn.Module
    head: nn.Linear
    stage_channels: tuple[int, ...]
    feature_dim: int

    def features(self, x: Tensor) -> list[Tensor]:
        """Every stage's output, shallowest first."""
        return self.stage_outputs(self.stem(x))

    def stage_outputs(self, h: Tensor) -> list[Tensor]:
        """Every stage's output for a stem output ``h`` (methods that mix stem features start here)."""
        outputs = []
        for stage in self.stages:
            h = stage(h)
            outputs.append(h)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool(self.features(x)[-1]))

    def exit_adapter(self, stage_index: int) -> nn.Module:
        """The module that maps stage ``stage_index``'s output to the head's input width F.

        The default is the paper's adapter for convolutional stages: conv1x1 (with bias), BN, ReLU,
        global average pooling. Backbones whose stages are flat vectors override this.
        """
        return ConvExitAdapter(self.stage_channels[stage_index], self.feature_dim)


class ConvExitAdapter(nn.Sequential):
    """conv1x1 C_i -> F (with bias), BatchNorm, ReLU, global average pool, flatten.

    The modules are the paper's, and so are the parameters, the state_dict keys and the FLOPs count. The
    forward pass can skip materialising the wide (B, F, H, W) map (64x32x32 widened to 512x32x32 after
    stage 1 moves far more memory than it computes): see :func:`set_exit_path`. The fast path computes the
    same function (outputs, gradients and BN running statistics equal within float tolerance) and is taken
    only when nothing watches the submodules (forward hooks, e.g. the FLOPs counter), for float32/float64
    inputs and, under autocast, on a CPU: there it computes in float32 (more precisely than the reference's
    bfloat16) and returns the autocast dtype. Under torch.compile it runs as an eager island between the
    compiled graphs (measured faster than inductor's fusion of the reference path on a CPU).
    """

    def __init__(self, in_channels: int, out_features: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_features, kernel_size=1, bias=True),
            nn.BatchNorm2d(out_features),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self._fast_path_applies(x):
            return super().forward(x)
        return self._fast_forward(x)

    @torch.compiler.disable  # under torch.compile: an eager island between the compiled graphs
    def _fast_forward(self, x: Tensor) -> Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return self._fused_forward(x)
        # Under autocast: the fused path in float32, returning the autocast dtype as the reference's conv would
        with torch.autocast(x.device.type, enabled=False):
            return self._fused_forward(x.float()).to(torch.get_autocast_dtype(x.device.type))

    def _fast_path_applies(self, x: Tensor) -> bool:
        if _exit_path == "reference":
            return False
        if _exit_path == "auto" and not auto_fuses(x.device.type, self.training, self[0].in_channels,
                                                   self[0].out_channels):
            return False
        if torch.jit.is_scripting():
            return False
        if torch.is_autocast_enabled(x.device.type):
            if x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or (
                    _exit_path == "auto" and x.device.type not in _AUTO_FUSED_UNDER_AUTOCAST):
                return False
        elif x.dtype not in (torch.float32, torch.float64):
            return False
        if x.dim() != 4 or x.shape[0] * x.shape[2] * x.shape[3] < 2:
            return False
        if len(self) != 5 or _hooked(self):
            return False
        conv, bn, relu, pool, flatten = self
        return (type(conv) is nn.Conv2d and conv.kernel_size == (1, 1) and conv.stride == (1, 1)
                and conv.padding == (0, 0) and conv.groups == 1 and conv.bias is not None
                and type(bn) is nn.BatchNorm2d and bn.affine and bn.track_running_stats
                and type(relu) is nn.ReLU and type(pool) is nn.AdaptiveAvgPool2d and pool.output_size in (1, (1, 1))
                and type(flatten) is nn.Flatten and flatten.start_dim == 1 and flatten.end_dim == -1)

    def _fused_forward(self, x: Tensor) -> Tensor:
        conv, bn = self[0], self[1]
        if not bn.training:  # BN folded into the conv: mean over positions of ReLU(W' x + b')
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            shift = (conv.bias - bn.running_mean) * scale + bn.bias
            return _pool_relu_affine(_rows(x), conv.weight.flatten(1) * scale[:, None], shift, x.shape[0],
                                     x.shape[2] * x.shape[3])
        bn.num_batches_tracked.add_(1)  # exactly what BatchNorm2d.forward does in training
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        pooled, mean, variance = _FusedExitTrain.apply(x, conv.weight, conv.bias, bn.weight, bn.bias, bn.eps)
        count = x.shape[0] * x.shape[2] * x.shape[3]
        with torch.no_grad():  # running statistics: the unbiased batch variance, as F.batch_norm keeps them
            bn.running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
            bn.running_var.mul_(1.0 - momentum).add_(variance * (count / (count - 1)), alpha=momentum)
        return pooled


# ---------------------------------------------------------------------------------------------------------------
# The fast exit adapter: conv1x1 -> BatchNorm -> ReLU -> global average pool without the wide map.
# ---------------------------------------------------------------------------------------------------------------

EXIT_PATHS = ("auto", "fused", "reference")
_exit_path = "auto"
# Where "auto" takes the fused path, by device type and mode (measured: benchmarks/README.md). On a CPU both
# modes gain. On a GPU inference gains (BN folded into one matrix product: -8% MIMMO time per image on an H200)
# while a training step, bound there by launching kernels rather than by memory, loses (+15%): it keeps the
# reference path.
_AUTO_FUSED = {"cpu": ("train", "eval"), "cuda": ("eval",)}
# Under autocast the fused path computes in float32. On a CPU that beats the reference path's bfloat16 conv, BN,
# ReLU and pool; on a GPU the reference path in bfloat16 was already within the speed targets (not measured).
_AUTO_FUSED_UNDER_AUTOCAST = ("cpu",)
# Rows (image positions) per chunk of the fused computation. On a CPU a chunk's (rows, F) tile of the wide map
# stays in the cache (2048 x 512 float32 = 4 MiB); on an accelerator, where every chunk costs kernel launches,
# chunks are large.
FUSED_CHUNK_ROWS = 2048
FUSED_CHUNK_ROWS_ACCELERATOR = 1 << 18


def set_exit_path(path: str) -> None:
    """How every :class:`ConvExitAdapter` computes: ``"fused"`` (never materialises the wide map),
    ``"reference"`` (conv, BN, ReLU and pool one after the other) or ``"auto"`` (the default: fused on the
    devices where it measured faster). Outputs, gradients and BN running statistics are the same within float
    tolerance; only speed and memory differ."""
    global _exit_path
    if path not in EXIT_PATHS:
        raise ValueError(f"exit path must be one of {EXIT_PATHS}, got {path!r}")
    _exit_path = path


def get_exit_path() -> str:
    """The current setting of :func:`set_exit_path`."""
    return _exit_path


def auto_fuses(device_type: str, training: bool, in_channels: int = 1, out_features: int = 4) -> bool:
    """Whether ``"auto"`` takes the fused path on ``device_type`` in training (or eval) mode.

    In training the fused path also multiplies by the input's C_in x C_in covariance (forward and backward):
    cheap for the widening exits (64 -> 512, 128 -> 512), a third more arithmetic for 256 -> 512, where the
    reference path measured as fast. So training fuses when the exit widens at least 4 times."""
    if training and in_channels * 4 > out_features:
        return False
    return ("train" if training else "eval") in _AUTO_FUSED.get(device_type, ())


def _hooked(module: nn.Module) -> bool:
    """True if a forward hook watches a submodule of ``module`` (the FLOPs counter counts through hooks on the
    leaves, which the fast path does not call). Hooks on ``module`` itself see the same inputs and output."""
    from torch.nn.modules import module as module_globals

    if module_globals._global_forward_hooks or module_globals._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules() if m is not module)


def _rows(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B*H*W, C): a view for channels_last inputs, a copy otherwise."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _images_per_chunk(num_images: int, positions: int, device: torch.device) -> int:
    rows = FUSED_CHUNK_ROWS if device.type == "cpu" else FUSED_CHUNK_ROWS_ACCELERATOR
    return max(1, min(num_images, rows // positions))


def _pool_relu_affine(rows: Tensor, weight: Tensor, shift: Tensor, num_images: int, positions: int,
                      mask: Tensor | None = None) -> Tensor:
    """Per image, the mean over its ``positions`` rows of ReLU(rows @ weight.T + shift), chunk by chunk.

    ``rows`` (num_images*positions, C_in), ``weight`` (F, C_in), ``shift`` (F,) -> (num_images, F). Every chunk
    is computed into the same cache-sized buffer (fresh allocations of that size cost page faults). When
    ``mask`` (num_images*positions, F, bool) is given, it receives the ReLU mask z > 0."""
    step = _images_per_chunk(num_images, positions, rows.device)
    weight_t = weight.t()
    if torch.is_grad_enabled() and (rows.requires_grad or weight.requires_grad or shift.requires_grad):
        pooled = [torch.addmm(shift, rows[start * positions:(start + step) * positions], weight_t).relu_()
                  .unflatten(0, (-1, positions)).sum(1) for start in range(0, num_images, step)]
        return torch.cat(pooled).div_(positions)  # autograd-friendly (eval mode with gradients: rare)
    buffer = rows.new_empty(min(num_images, step) * positions, weight.shape[0])
    pooled = rows.new_empty(num_images, weight.shape[0])
    for start in range(0, num_images, step):
        stop = min(num_images, start + step)
        lo, hi = start * positions, stop * positions
        z = buffer[:hi - lo]
        torch.addmm(shift, rows[lo:hi], weight_t, out=z)
        if mask is not None:
            torch.gt(z, 0, out=mask[lo:hi])
        torch.sum(z.relu_().view(stop - start, positions, -1), dim=1, out=pooled[start:stop])
    return pooled.div_(positions)


class _FusedExitTrain(torch.autograd.Function):
    """conv1x1 (W, b) -> BatchNorm with batch statistics (gamma, beta) -> ReLU -> mean over positions.

    With rows xc = x - mean(x), the conv output's batch mean is mu = W mean(x) + b and its (biased) variance
    var_c = w_c^T Cov(x) w_c, so the BN output is z = a * (W xc) + beta with a = gamma / sqrt(var + eps): the
    batch statistics come from the input's mean and covariance, and z is only ever held one cache-sized chunk
    at a time. The backward pass is BatchNorm's training-mode gradient in the same terms, with G = dL/dz:
    dL/dy = a (G - S1/N - y_hat S2/N), S1 = sum_n G_n, S2 = sum_n G_n y_hat_n, y_hat = W xc / sqrt(var + eps).
    Returns the pooled features and, for the running statistics, the batch mean and biased variance.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, gamma: Tensor, beta: Tensor,
                eps: float) -> tuple[Tensor, Tensor, Tensor]:
        num_images, _, height, width = x.shape
        positions = height * width
        w = weight.flatten(1)  # (F, C_in)
        rows = _rows(x)
        x_mean = rows.mean(0)
        centred = rows - x_mean  # (N, C_in), contiguous
        covariance = (centred.t() @ centred).div_(rows.shape[0])  # (C_in, C_in), biased
        w_cov = w @ covariance  # (F, C_in)
        variance = (w_cov * w).sum(1).clamp_min_(0.0)  # of the conv output, per channel, biased
        mean = torch.addmv(bias, w, x_mean)  # of the conv output, per channel
        inv_std = torch.rsqrt(variance + eps)
        scale = gamma * inv_std  # a
        scaled_w = w * scale[:, None]  # diag(a) W
        needs_grad = any(ctx.needs_input_grad[:5])
        mask = torch.empty(rows.shape[0], w.shape[0], dtype=torch.bool, device=x.device) if needs_grad else None
        pooled = _pool_relu_affine(centred, scaled_w, beta, num_images, positions, mask)
        if needs_grad:
            ctx.save_for_backward(centred, w, w_cov, inv_std, scale, scaled_w, mask)
            ctx.sizes = (num_images, height, width, tuple(weight.shape))
        ctx.mark_non_differentiable(mean, variance)
        return pooled, mean, variance

    @staticmethod
    def backward(ctx, grad_pooled: Tensor, _grad_mean: Tensor, _grad_variance: Tensor) -> tuple:
        centred, w, w_cov, inv_std, scale, scaled_w, mask = ctx.saved_tensors
        num_images, height, width, weight_shape = ctx.sizes
        positions = height * width
        count = centred.shape[0]
        grad = grad_pooled.div(positions)  # dL/dz where z > 0, per image and channel
        step = _images_per_chunk(num_images, positions, centred.device)
        grad_rows = torch.empty_like(centred)  # becomes dL/dx as rows
        g_t_x = torch.zeros_like(w)  # sum_n G_n xc_n^T, (F, C_in)
        sum_g = torch.zeros_like(scale)  # S1
        buffer = centred.new_empty(min(num_images, step) * positions, w.shape[0])  # one chunk of G, reused
        for start in range(0, num_images, step):
            stop = min(num_images, start + step)
            lo, hi = start * positions, stop * positions
            g = buffer[:hi - lo]
            g.copy_(mask[lo:hi])
            g.view(stop - start, positions, -1).mul_(grad[start:stop, None, :])
            sum_g += g.sum(0)
            g_t_x.addmm_(g.t(), centred[lo:hi])
            torch.mm(g, scaled_w, out=grad_rows[lo:hi])
        sum_g_yhat = inv_std * (g_t_x * w).sum(1)  # S2 = dL/dgamma (dL/dbeta = S1)
        # dW = dL/dy^T xc = a (G^T xc - S2 / sqrt(var + eps) Cov w); dx = W^T dL/dy.
        grad_weight = scale[:, None] * (g_t_x - (sum_g_yhat * inv_std)[:, None] * w_cov)
        correction = w.t() @ (w * (scale * sum_g_yhat * inv_std / count)[:, None])  # (C_in, C_in)
        grad_rows.addmm_(centred, correction, alpha=-1.0)
        grad_rows.sub_(scaled_w.t() @ sum_g / count)
        grad_x = grad_rows.view(num_images, height, width, -1).permute(0, 3, 1, 2)
        grad_bias = torch.zeros_like(sum_g)  # BN with batch statistics cancels the conv bias: dL/db = 0 exactly
        return grad_x, grad_weight.view(weight_shape), grad_bias, sum_g_yhat, sum_g, None


class LinearExitAdapter(nn.Sequential):
    """Linear H_i -> F, BatchNorm1d, ReLU: the exit adapter for flat (MLP) stages."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU(inplace=True))


class BackboneFactory(Protocol):
    """Builds a fresh, independently initialised backbone for the given input channels and outputs.

    A factory may also define ``input_shape_for(data_shape) -> input_shape``: the shape of one input the
    backbone takes for data of ``data_shape`` (C, H, W), raising ValueError (naming the shape and what is
    allowed) for data it cannot take. The shipped factories do; see :func:`backbone_input_shape`.
    """

    def __call__(self, in_channels: int, num_outputs: int) -> Backbone: ...


def backbone_input_shape(factory: BackboneFactory, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one input that ``factory``'s backbones take for data of ``data_shape``: the factory's own
    ``input_shape_for`` (which checks that the data fits), or the data shape itself. A flat shape (F,) for
    image data means the images are flattened (C-major) before the method sees them."""
    convert = getattr(factory, "input_shape_for", None)
    return tuple(data_shape) if convert is None else tuple(convert(tuple(data_shape)))


def check_image_input(data_shape: tuple[int, ...], strides: tuple[int, ...], name: str) -> tuple[int, ...]:
    """``data_shape`` if it is an image (C, H, W) whose sides survive ``strides``; else ValueError."""
    if len(data_shape) != 3:
        raise ValueError(f"the {name} backbone takes images (C, H, W), got input shape {data_shape}")
    smallest = 1
    for stride in strides:
        smallest *= stride
    if min(data_shape[1:]) < smallest:
        raise ValueError(f"input size {data_shape[1:]} is too small for the {name} backbone (strides {strides}): "
                         f"height and width must be >= {smallest}")
    return data_shape


def check_backbone(backbone: nn.Module) -> Backbone:
    """Refuse a network that does not declare the parts the methods rely on."""
    missing = [name for name in ("stem", "stages", "pool", "head", "stage_channels", "feature_dim")
               if not hasattr(backbone, name)]
    if missing:
        raise TypeError(
            f"{type(backbone).__name__} is not a mimmo Backbone: it lacks {missing}. A backbone declares "
            "stem, stages (nn.ModuleList), pool, head (nn.Linear), stage_channels and feature_dim; "
            "see mimmo.models.Backbone.")
    if not isinstance(backbone.stages, nn.ModuleList) or len(backbone.stages) < 1:
        raise TypeError(f"{type(backbone).__name__}.stages must be a non-empty nn.ModuleList, "
                        f"got {type(backbone.stages).__name__}")
    if not isinstance(backbone.head, nn.Linear):
        raise TypeError(f"{type(backbone).__name__}.head must be nn.Linear, got {type(backbone.head).__name__}")
    if len(backbone.stage_channels) != len(backbone.stages):
        raise TypeError(f"{type(backbone).__name__}.stage_channels has {len(backbone.stage_channels)} "
                        f"entries for {len(backbone.stages)} stages")
    return backbone  # type: ignore[return-value]


def first_layer(module: nn.Module) -> nn.Module:
    """The first Conv2d or Linear inside ``module`` (the layer reading the raw input)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            return layer
    raise TypeError(f"{type(module).__name__} contains no Conv2d or Linear layer")


@torch.no_grad()
def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers and do not count)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
