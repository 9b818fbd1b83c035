"""Deformable convolutions (DCNv1 and modulated DCNv2) on ``torchvision.ops.deform_conv2d``.

Detectron2's ``DeformConv`` / ``ModulatedDeformConv`` run only on its CUDA kernels (on CPU the
modulated op fails in forward, the plain one in backward) and cannot be saved after
``torch.jit.trace``. torchvision's operator has CPU and CUDA kernels both ways and is a
TorchScript op. The modules here are drop-in replacements: Detectron2's constructor signatures,
parameter names, shapes, initialisation and offset/mask layout, so state dicts and
offset-predicting convs are interchangeable. The layout, for a ``kh x kw`` kernel with K points
``k = i * kw + j`` and deformable group ``g``: ``offset[:, g * 2K + 2k]`` is the y and
``offset[:, g * 2K + 2k + 1]`` the x displacement of point ``k`` in input pixels, and
``mask[:, g * K + k]`` multiplies its bilinearly sampled value.
"""

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

__all__ = ["DeformConv", "ModulatedDeformConv", "DeformConvWithOffset", "deform_conv2d_grid_sample"]


def deform_conv2d_grid_sample(
    x, offset, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), mask=None
):
    """
    ``torchvision.ops.deform_conv2d`` written with ``grid_sample`` and a 1x1 convolution, ops
    that ONNX runtimes implement. Same arguments, layouts and result (bilinear sampling with
    zeros outside the input), at a higher memory cost: (N, C·kh·kw, H_out, W_out) columns.
    """
    n, c, h, w = x.shape
    out_c, c_per_group, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2], offset.shape[-1]
    dg = offset.shape[1] // (2 * k)
    off = offset.reshape(n, dg, k, 2, ho, wo)
    dev, dt = x.device, x.dtype
    ki = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dilation[0]  # (K,)
    kj = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dilation[1]
    oy = torch.arange(ho, device=dev, dtype=dt) * stride[0] - padding[0]
    ox = torch.arange(wo, device=dev, dtype=dt) * stride[1] - padding[1]
    ys = oy[None, None, None, :, None] + ki[None, None, :, None, None] + off[:, :, :, 0]
    xs = ox[None, None, None, None, :] + kj[None, None, :, None, None] + off[:, :, :, 1]
    # Pixel centre p maps to (2p + 1) / size - 1 with align_corners=False.
    grid = torch.stack([(2 * xs + 1) / w - 1, (2 * ys + 1) / h - 1], dim=-1)
    grid = grid.reshape(n * dg, k * ho, wo, 2)
    sampled = nn.functional.grid_sample(
        x.reshape(n * dg, c // dg, h, w),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    ).reshape(n, dg, c // dg, k, ho, wo)
    if mask is not None:
        sampled = sampled * mask.reshape(n, dg, 1, k, ho, wo)
    cols = sampled.reshape(n, c * k, ho, wo)
    groups = c // c_per_group
    return nn.functional.conv2d(
        cols, weight.reshape(out_c, c_per_group * k, 1, 1), bias, groups=groups
    )


class _DeformConvBase(nn.Module):
    """
    Attributes and parameters shared by :class:`DeformConv` and :class:`ModulatedDeformConv`,
    named as in Detectron2 so that state dicts load in both directions. Subclasses set
    ``default_bias`` and ``supports_bias``; the constructor is that of Detectron2's classes.
    """

    default_bias = True
    supports_bias = True

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        deformable_groups=1,
        bias=None,
        norm=None,
        activation=None,
    ):
        """
        Arguments are those of :class:`detectron2.layers.DeformConv` /
        :class:`detectron2.layers.ModulatedDeformConv`:

        Args:
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as in
                :class:`nn.Conv2d`.
            deformable_groups (int): number of groups of input channels that share offsets
                (and masks).
            bias (bool or None): add a learnable bias (initialised to 0); None: the class
                default (False for :class:`DeformConv`, which has none, True for
                :class:`ModulatedDeformConv`).
            norm (nn.Module, optional): a normalization layer applied after the convolution.
            activation (callable(Tensor) -> Tensor, optional): applied after ``norm``.
        """
        super().__init__()
        bias = self.default_bias if bias is None else bool(bias)
        name = type(self).__name__
        assert self.supports_bias or not bias, f"{name} has no bias (as in Detectron2)"
        assert in_channels % groups == 0, f"in_channels={in_channels} not divisible by {groups=}"
        assert out_channels % groups == 0, f"out_channels={out_channels} not divisible by {groups=}"
        assert (
            in_channels % deformable_groups == 0
        ), f"in_channels={in_channels} not divisible by {deformable_groups=}"
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        # Stored as pairs for both classes (Detectron2's modulated op keeps ints, which its own
        # empty-input branch cannot zip over); torchvision accepts either.
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.with_bias = bias
        self.norm = norm
        self.activation = activation

        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None

        # Same initialisation as Detectron2 (callers such as ResNet blocks usually re-initialise).
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.constant_(self.bias, 0)

    @property
    def num_sampling_points(self):
        """int: kernel_h * kernel_w, the number of sampling points per deformable group."""
        return self.kernel_size[0] * self.kernel_size[1]

    def _check_offset(self, offset, mask):
        num_points = self.deformable_groups * self.num_sampling_points
        # torchvision infers the number of deformable groups from the offset channels, so a
        # mismatch would silently run a different op; fail loudly instead.
        if offset.shape[1] != 2 * num_points:
            raise ValueError(
                f"offset must have 2 * deformable_groups * kh * kw = {2 * num_points} channels, "
                f"got {offset.shape[1]}"
            )
        if mask is not None and mask.shape[1] != num_points:
            raise ValueError(
                f"mask must have deformable_groups * kh * kw = {num_points} channels, "
                f"got {mask.shape[1]}"
            )

    def _deform_conv(self, x, offset, mask):
        if not torch.jit.is_tracing():
            # Under tracing the shapes are traced values and the check would become a constant.
            self._check_offset(offset, mask)
        # torchvision handles empty batches itself, so no special case as in Detectron2.
        # ONNX has no runnable deformable conv (DeformConv-19 has no onnxruntime kernel), so
        # the ONNX exporter records the same computation in standard ops instead.
        op = deform_conv2d_grid_sample if torch.onnx.is_in_onnx_export() else deform_conv2d
        x = op(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self):
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.with_bias}"
        )


class DeformConv(_DeformConvBase):
    """
    Deformable convolution (DCNv1, :paper:`deformconv`): a drop-in replacement for
    :class:`detectron2.layers.DeformConv` (same constructor) that also runs backward on CPU and
    can be traced and saved. Like Detectron2's, it has no bias (``bias=True`` is refused).
    """

    default_bias = False
    supports_bias = False

    def forward(self, x, offset):
        """
        Args:
            x (Tensor): (N, C_in, H, W).
            offset (Tensor): (N, 2 * deformable_groups * kh * kw, H_out, W_out), layout as in
                the module docstring.

        Returns:
            Tensor: (N, C_out, H_out, W_out).
        """
        return self._deform_conv(x, offset, None)


class ModulatedDeformConv(_DeformConvBase):
    """
    Modulated deformable convolution (DCNv2, :paper:`deformconv2`): a drop-in replacement for
    :class:`detectron2.layers.ModulatedDeformConv` (same constructor, bias by default) that
    runs forward and backward on CPU and can be traced and saved.
    """

    def forward(self, x, offset, mask):
        """
        Args:
            x (Tensor): (N, C_in, H, W).
            offset (Tensor): (N, 2 * deformable_groups * kh * kw, H_out, W_out).
            mask (Tensor): (N, deformable_groups * kh * kw, H_out, W_out), usually in [0, 1]
                (the caller applies the sigmoid). Layouts as in the module docstring.

        Returns:
            Tensor: (N, C_out, H_out, W_out).
        """
        return self._deform_conv(x, offset, mask)


class DeformConvWithOffset(nn.Module):
    """
    A modulated deformable conv (DCNv2) together with the regular conv that predicts its
    offsets and mask from the same input, e.g. for the last conv of a head tower.

    ``conv_offset`` predicts ``3 * deformable_groups * kh * kw`` channels, split as in DCNv2
    (and Detectron2's ``DeformBottleneckBlock``): the first ``2 * dg * kh * kw`` channels are
    the offsets, the last ``dg * kh * kw`` channels go through a sigmoid to give the mask.
    ``conv_offset`` is zero-initialised, so at initialisation all offsets are 0 and the mask is
    ``sigmoid(0) = 0.5`` everywhere: the module starts as a regular convolution whose
    (bias-free) response is halved.
    """

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size=3,
        stride=1,
        padding=1,
        dilation=1,
        groups=1,
        deformable_groups=1,
        bias=True,
    ):
        """
        Args:
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias:
                as in :class:`nn.Conv2d`, for the deformable conv ``self.conv``.
            deformable_groups (int): number of groups of input channels with their own
                offsets and mask.
        """
        super().__init__()
        self.deformable_groups = deformable_groups
        kernel_size = _pair(kernel_size)
        self.num_offset_channels = 2 * deformable_groups * kernel_size[0] * kernel_size[1]
        # Same geometry as the deformable conv so the offsets have its output size.
        self.conv_offset = nn.Conv2d(
            in_channels,
            self.num_offset_channels * 3 // 2,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
        )
        self.conv = ModulatedDeformConv(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            deformable_groups=deformable_groups,
            bias=bias,
        )
        nn.init.constant_(self.conv_offset.weight, 0)
        nn.init.constant_(self.conv_offset.bias, 0)

    def forward(self, x):
        """
        Args:
            x (Tensor): (N, C_in, H, W).

        Returns:
            Tensor: (N, C_out, H_out, W_out).
        """
        offset_mask = self.conv_offset(x)
        offset = offset_mask[:, : self.num_offset_channels]
        mask = offset_mask[:, self.num_offset_channels :].sigmoid()
        return self.conv(x, offset, mask)
