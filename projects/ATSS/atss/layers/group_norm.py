"""GroupNorm that computes in fp32 under autocast on every device."""

import torch
from torch import Tensor, nn

__all__ = ["GroupNormFP32"]


class GroupNormFP32(nn.GroupNorm):
    """``nn.GroupNorm`` whose input is cast to fp32 when it arrives in a lower precision.

    CUDA autocast already runs ``group_norm`` in fp32; CPU autocast does not (torch's CPU
    autocast lists leave it out), so under bf16 on the CPU the head's GN would compute its
    means and variances from bf16 values (8 significant bits) and normalise in bf16. This
    layer applies CUDA's rule on every device: (N, C, H, W) in fp16 or bf16 -> the same shape
    in fp32. In fp32 (and fp64) it is ``nn.GroupNorm`` itself (same parameters and state dict,
    same trace for the exports).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype not in (torch.float16, torch.bfloat16):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())
