"""Argument checking and convolution geometry shared by every execution path."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from numbers import Integral

import torch

Pair = tuple[int, int]


def _pair(value: object, name: str, *, minimum: int) -> Pair:
    # The common spellings first: the checks below use the slower abstract Integral.
    if type(value) is int and value >= minimum:
        return (value, value)
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if min(value) >= minimum:
            return value  # type: ignore[return-value]
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int or a pair of ints, got {value!r}")
    if isinstance(value, Integral):
        pair = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, Integral) and not isinstance(v, bool) for v in value
    ):
        pair = (int(value[0]), int(value[1]))
    elif isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], Integral):
        pair = (int(value[0]), int(value[0]))
    else:
        raise TypeError(f"`{name}` must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        bound = "positive" if minimum > 0 else "non-negative"
        raise ValueError(f"`{name}` must be {bound}, got {value!r}")
    return pair


@dataclass(frozen=True)
class ConvGeometry:
    """Everything about one convolution call that does not depend on the input values.

    Padding is kept per side (top, bottom, left, right) because ``padding="same"`` with an even
    effective kernel pads one more on the bottom and right, as PyTorch does.
    """

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: Pair
    stride: Pair
    dilation: Pair
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    groups: int

    @cached_property
    def out_height(self) -> int:
        span = self.dilation[0] * (self.kernel[0] - 1) + 1
        return (self.height + self.pad_top + self.pad_bottom - span) // self.stride[0] + 1

    @cached_property
    def out_width(self) -> int:
        span = self.dilation[1] * (self.kernel[1] - 1) + 1
        return (self.width + self.pad_left + self.pad_right - span) // self.stride[1] + 1

    @cached_property
    def window(self) -> Pair:
        """Input extent (rows, columns) that one output pixel reads."""
        return (
            self.dilation[0] * (self.kernel[0] - 1) + 1,
            self.dilation[1] * (self.kernel[1] - 1) + 1,
        )

    @property
    def symmetric_padding(self) -> bool:
        return self.pad_top == self.pad_bottom and self.pad_left == self.pad_right


def check_conv_args(
    input: object,
    weight: object,
    bias: object,
    stride: object,
    padding: object,
    dilation: object,
    groups: object,
) -> ConvGeometry:
    """Validate ``F.conv2d`` arguments and return the geometry of the (batched) call.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument has the wrong value or shape.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"`input` must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"`weight` must be a torch.Tensor, got {type(weight).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"`bias` must be a torch.Tensor or None, got {type(bias).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(
            f"`input` must have shape (B, C, H, W) or (C, H, W), got shape {tuple(input.shape)}"
        )
    if weight.dim() != 4:
        raise ValueError(
            f"`weight` must have shape (C_out, C_in / groups, kH, kW), got shape {tuple(weight.shape)}"
        )
    if type(groups) is not int and (isinstance(groups, bool) or not isinstance(groups, Integral)) or groups < 1:
        raise ValueError(f"`groups` must be a positive int, got {groups!r}")
    groups = int(groups)
    out_channels, group_channels, kh, kw = weight.shape
    batch, channels, height, width = input.shape if input.dim() == 4 else (1, *input.shape)
    if out_channels % groups != 0:
        raise ValueError(
            f"`weight` must have C_out divisible by groups={groups}, got shape {tuple(weight.shape)}"
        )
    if group_channels * groups != channels:
        raise ValueError(
            f"`input` must have {group_channels * groups} channels (weight.shape[1]={group_channels} x"
            f" groups={groups}), got shape {tuple(input.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ValueError(f"`bias` must have shape ({out_channels},), got shape {tuple(bias.shape)}")
    stride_ = _pair(stride, "stride", minimum=1)
    dilation_ = _pair(dilation, "dilation", minimum=1)
    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride_ != (1, 1):
                raise ValueError(
                    f"`padding` 'same' requires stride 1, got stride={stride!r}"
                )
            total_h = dilation_[0] * (kh - 1)
            total_w = dilation_[1] * (kw - 1)
            pads = (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        else:
            raise ValueError(f"`padding` must be 'same', 'valid', an int or a pair, got {padding!r}")
    else:
        ph, pw = _pair(padding, "padding", minimum=0)
        pads = (ph, ph, pw, pw)
    # A kernel 1 wide has one tap whatever its dilation. Dilation 1 there keeps every F.conv2d call of
    # the engine (on gathered patches and bands, which can be 1 wide) out of PyTorch 2.14's out-of-bounds
    # read for a channels_last operand with a bias and an input narrower than the dilation.
    unit_dilation = tuple(d if k > 1 else 1 for d, k in zip(dilation_, (kh, kw)))
    geometry = ConvGeometry(
        batch, channels, height, width, out_channels, (kh, kw), stride_, unit_dilation, *pads, groups
    )
    if geometry.out_height < 1 or geometry.out_width < 1:
        raise ValueError(
            f"`weight` kernel {(kh, kw)} with dilation {dilation_} must fit in the padded input,"
            f" got input shape {tuple(input.shape)} and padding {padding!r}"
        )
    return geometry
