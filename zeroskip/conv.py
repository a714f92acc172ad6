"""The sparse convolution: ``zeroskip.conv2d`` and its module ``zeroskip.SparseConv2d``."""

from __future__ import annotations

import copy as copy_module
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _profiler, autograd
from ._activity import block_any, sampled_density
from ._alloc import empty_strided
from ._cost import ImageCosts, choose, image_costs, sparse_can_win
from ._geometry import ConvGeometry, Pair, _pair, check_conv_args
from ._rows import box_fraction, row_boxes, run_rows
from ._tiles import default_tile_size, run_tiles, sample_activity, scan_activity
from .network import carry_conv, in_dense_forward

MODES = ("auto", "dense", "rows", "tiles")

# Without the native scan: above this sampled pixel density an image is treated as dense
# without a full activity check.
_DENSE_SAMPLE_DENSITY = 0.5
# With it, a sampled activity estimate must show dense wins even when lowered by this much.
_SAMPLE_MARGIN = 0.1


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {', '.join(MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _dense_reason(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str:
    """Why this call cannot take a sparse path at all, or ``""`` if it can (weights not checked)."""
    if x.shape[0] == 0 or x.numel() == 0:
        return "empty input"
    if not x.is_floating_point() or x.layout != torch.strided or x.device.type == "meta":
        # Meta tensors have no values to look at.
        return f"unsupported input {x.dtype}/{x.layout}/{x.device.type}"
    if weight.dtype != x.dtype or weight.device != x.device or (
        bias is not None and (bias.dtype != x.dtype or bias.device != x.device)
    ):
        return "mixed dtypes or devices"
    return ""


def parameters_finite(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether every weight and bias value is finite.

    Checked on every call, not cached: writes through ``.data`` leave no trace a cache could see.
    A sum is one vectorised pass; it is non-finite if any term is (or if it overflows, which only
    sends the call to the dense path).
    """
    total = weight.sum() if bias is None else weight.sum() + bias.sum()
    return bool(torch.isfinite(total))


# Output memory format per call signature; bounded because shapes vary without limit.
_OUTPUT_FORMATS: dict[tuple, bool] = {}
_OUTPUT_FORMATS_MAX = 256


def _dense_output_strides(x: torch.Tensor, weight: torch.Tensor, g: ConvGeometry) -> tuple[int, ...]:
    """Strides of the tensor ``F.conv2d`` returns for this call.

    The backend picks channels_last or contiguous from the strides, dtype and device of the input
    and weight (the meta device does not follow CPU's choice), so ask it once per call signature:
    convolve a corner of the input just large enough that every output dimension longer than one
    stays longer than one.
    """
    key = (x.shape, x.stride(), weight.shape, weight.stride(), x.dtype, x.device, g)
    channels_last = _OUTPUT_FORMATS.get(key)
    if channels_last is None:
        corner = x[:1, :, : g.window[0] + g.stride[0], : g.window[1] + g.stride[1]]
        # Only "same" pads asymmetrically.
        padding = (g.pad_top, g.pad_left) if g.symmetric_padding else "same"
        probe = F.conv2d(corner, weight, None, g.stride, padding, g.dilation, g.groups)
        channels_last = probe.is_contiguous(memory_format=torch.channels_last) and not probe.is_contiguous()
        if len(_OUTPUT_FORMATS) >= _OUTPUT_FORMATS_MAX:
            _OUTPUT_FORMATS.clear()
        _OUTPUT_FORMATS[key] = channels_last
    c, h, w = g.out_channels, g.out_height, g.out_width
    return (c * h * w, 1, w * c, c) if channels_last else (c * h * w, h * w, w, 1)


def _new_output(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, g: ConvGeometry, fill=None
) -> torch.Tensor:
    shape = (g.batch, g.out_channels, g.out_height, g.out_width)
    strides = _dense_output_strides(x, weight, g)
    out = empty_strided(shape, strides, x.dtype, x.device)
    if fill is not None:
        # Whole-network mode: the values a carried input gives the skipped outputs.
        fill(out)
    elif bias is None:
        out.zero_()
    else:
        out.copy_(bias.view(1, -1, 1, 1).expand(shape))
    return out


def _tile_fractions(active: torch.Tensor, g: ConvGeometry, tile: Pair) -> list[float]:
    """Per image, the fraction of output pixels inside active tiles (ragged edge tiles weighted)."""
    heights = torch.full((active.shape[1],), tile[0], dtype=torch.float32, device=active.device)
    widths = torch.full((active.shape[2],), tile[1], dtype=torch.float32, device=active.device)
    heights[-1] = g.out_height - tile[0] * (active.shape[1] - 1)
    widths[-1] = g.out_width - tile[1] * (active.shape[2] - 1)
    return ((active.float() * (heights[:, None] * widths[None, :])).sum((1, 2)) / (g.out_height * g.out_width)).tolist()


# Images per chunk of the activity check: its intermediate results stay small whatever the batch.
_CHUNK_BYTES = 16 << 20
# Memory a sparse call may use beside its output (padded input band, patches, results), as a
# fraction of the output, so that its peak stays close to the dense call's.
_MEMORY_FRACTION = 0.1
_MIN_BUDGET_BYTES = 1 << 20


def _budget(out: torch.Tensor) -> int:
    return max(_MIN_BUDGET_BYTES, int(_MEMORY_FRACTION * out.numel() * out.element_size()))


def _choose(mode: str, costs: ImageCosts, tile_fraction: float, boxes: list, g: ConvGeometry) -> tuple[str, float]:
    """The path for one image and the fraction of its output that path computes."""
    row_fraction = box_fraction(boxes, g)
    if mode == "rows":
        return ("rows", row_fraction) if row_fraction else ("fill", 0.0)
    if mode == "tiles":
        return ("tiles", tile_fraction) if tile_fraction else ("fill", 0.0)
    return choose(costs, tile_fraction, row_fraction, costs.boxes(boxes))


def _sampled_reason(x: torch.Tensor, g: ConvGeometry, tile: Pair, costs: ImageCosts) -> str:
    """Why a sample of the input already shows that no image can beat dense, or ``""``."""
    estimates = sample_activity(x, g, tile)
    if estimates is None:
        density = sampled_density(x)
        return f"sampled density {density.min().item():.2f}" if bool((density > _DENSE_SAMPLE_DENSITY).all()) else ""
    # The sample can miss activity, and a wrong dense exit costs speed-up: lower it first.
    lowered = [(max(0.0, t - _SAMPLE_MARGIN), max(0.0, r - _SAMPLE_MARGIN)) for t, r in estimates]
    if all(choose(costs, t, r)[0] == "dense" for t, r in lowered):
        return f"sampled activity {min(t for t, _ in estimates):.2f}"
    return ""


def _forward(x, weight, bias, padding, g: ConvGeometry, mode: str, tile_size, activity=None, fill=None):
    """Returns the output, what ran, the active fraction and the plan detail.

    ``activity`` (uint8 ``(B, H_out, W_out)``, from a carried input) replaces the activity check,
    and ``fill`` writes the values of the skipped outputs.
    """
    reason = "mode=dense" if mode == "dense" else _dense_reason(x, weight, bias)
    if not reason:
        costs = image_costs(g, x.element_size(), activity is None)
        if mode == "auto" and not sparse_can_win(costs, g.batch):
            reason = "layer too cheap to skip"
        elif not parameters_finite(weight, bias):
            # 0 * inf is NaN in the dense result, so no output can be skipped.
            reason = "non-finite weights"
    if reason:
        return F.conv2d(x, weight, bias, g.stride, padding, g.dilation, g.groups), "dense", 1.0, reason
    tile = tile_size if tile_size is not None else default_tile_size(g)
    tile = (min(tile[0], g.out_height), min(tile[1], g.out_width))
    if mode == "auto" and activity is None:
        reason = _sampled_reason(x, g, tile, costs)
        if reason:
            return F.conv2d(x, weight, bias, g.stride, padding, g.dilation, g.groups), "dense", 1.0, reason

    chosen: list[str] = []
    fractions: list[float] = []
    maps: list[tuple[int, torch.Tensor, list]] = []
    per_chunk = max(1, _CHUNK_BYTES // max(1, x[0].numel() * x.element_size()))
    for start in range(0, g.batch, per_chunk):
        if activity is None:
            active, rows = scan_activity(x[start : start + per_chunk], g, tile)
            columns, block = active, tile
        else:
            columns, block = activity[start : start + per_chunk], (1, 1)
            active, rows = block_any(columns, tile), columns.any(2)
        # The row path computes boxes cut out of the active region (see _rows.row_boxes).
        boxes = row_boxes(rows, columns, block, g.out_width, costs) if mode != "tiles" else [[]] * active.shape[0]
        for tile_fraction, image_boxes in zip(_tile_fractions(active, g, tile), boxes):
            path, fraction = _choose(mode, costs, tile_fraction, image_boxes, g)
            chosen.append(path)
            fractions.append(fraction)
        maps.append((start, active, boxes))
    if all(path == "dense" for path in chosen):
        # Decided before any output is allocated: an all-dense batch costs the check and nothing more.
        return F.conv2d(x, weight, bias, g.stride, padding, g.dilation, g.groups), "dense", 1.0, "cost model"

    out = _new_output(x, weight, bias, g, fill)
    tiles_run = 0
    row_images: list[int] = []
    row_boxes_run: list = []
    for start, active, boxes in maps:
        paths = chosen[start : start + active.shape[0]]
        local = [k for k, path in enumerate(paths) if path == "tiles"]
        if local:
            chunk = x[start : start + active.shape[0]]
            if len(local) < chunk.shape[0]:
                chunk, active = chunk[local], active[local]
            tiles_run += int(active.sum())
            run_tiles(chunk, weight, bias, out, g, tile, active, [start + k for k in local], _budget(out))
        local = [k for k, path in enumerate(paths) if path == "rows"]
        row_images += [start + k for k in local]
        row_boxes_run += [boxes[k] for k in local]

    detail = [f"tiles={tiles_run} tile={tile[0]}x{tile[1]}"] if tiles_run else []
    dense_images = [b for b, path in enumerate(chosen) if path == "dense"]
    if dense_images:
        index = torch.tensor(dense_images, device=x.device)
        out[index] = F.conv2d(x[index], weight, bias, g.stride, padding, g.dilation, g.groups)
    if row_images:
        run_rows(x, weight, bias, out, g, row_boxes_run, row_images, _budget(out))
        detail.append(f"boxes={sum(len(b) for b in row_boxes_run)}")
    ran = "+".join(sorted(set(chosen)))
    return out, ran, sum(fractions) / g.batch, " ".join(detail)


def _conv2d(
    input, weight, bias, stride, padding, dilation, groups, mode, tile_size=None, *, name=None
):
    _check_mode(mode)
    g = check_conv_args(input, weight, bias, stride, padding, dilation, groups)
    # Checked here, not where the tiles need it, so that a bad value fails on every path.
    tile_size = _pair(tile_size, "tile_size", minimum=1) if tile_size is not None else None
    if autograd.needs_grad(input, weight, bias) and not _dense_reason(input, weight, bias):
        # Forward sparse, backward dense: the Function calls back here with grad mode off.
        return autograd.conv2d(input, weight, bias, stride, padding, dilation, groups, mode, tile_size, name, g)
    timed = _profiler.recording()
    start = time.perf_counter() if timed else 0.0
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    carry = carry_conv(x, weight, bias, stride, padding, dilation, groups, g)
    if carry is None:
        out, ran, fraction, detail = _forward(x, weight, bias, padding, g, mode, tile_size)
    else:
        out, ran, fraction, detail = _forward(
            carry.values, weight, bias, padding, g, carry.mode(mode), tile_size or carry.tile_size,
            carry.activity, carry.fill,
        )
        if carry.mode(mode) != mode:
            detail = carry.dense_reason
        out = carry.finish(out)
    if unbatched:
        out = out.squeeze(0)
    if timed:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        _profiler.record(
            _profiler.CallRecord(
                name, tuple(input.shape), mode, ran, fraction, (time.perf_counter() - start) * 1e3, detail
            )
        )
    return out


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    *,
    mode: str = "auto",
    tile_size: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """2-D convolution that skips the outputs whose receptive field is all zeros.

    Same arguments and result as :func:`torch.nn.functional.conv2d`. Skipped outputs are
    exactly the bias (or zero); computed ones come from ``F.conv2d`` on the same values.

    Args:
        input: ``(B, C, H, W)`` or ``(C, H, W)``.
        weight: ``(C_out, C / groups, kH, kW)``.
        bias: ``(C_out,)`` or ``None``.
        stride, padding, dilation, groups: as in ``F.conv2d`` (``padding`` may be ``"same"`` or
            ``"valid"``).
        mode: ``"auto"`` picks per image between filling (all-zero image), tiles, rows and dense;
            ``"tiles"``, ``"rows"`` and ``"dense"`` force one path.
        tile_size: output tile ``(th, tw)`` for the tile path; chosen per layer when ``None``.

    Returns:
        ``(B, C_out, H_out, W_out)`` (or ``(C_out, H_out, W_out)``), with the dtype and memory
        format ``F.conv2d`` gives.

    Raises:
        TypeError, ValueError: bad arguments, naming the argument and the value received.
    """
    return _conv2d(input, weight, bias, stride, padding, dilation, groups, mode, tile_size)


def _untraceable(tool: str) -> str:
    return (
        f"{tool} cannot capture zeroskip.SparseConv2d: what it computes depends on the input's values at run time;"
        " call zeroskip.densify_(model) first (same parameters, plain nn.Conv2d)"
    )


class SparseConv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs :func:`zeroskip.conv2d`. Same constructor, plus ``mode`` and
    ``tile_size``; same parameters and ``state_dict`` keys.

    Example:
        >>> conv = SparseConv2d(3, 64, 7, stride=2, padding=3, bias=False)
        >>> y = conv(masked_frames)  # (B, 3, H, W) -> (B, 64, H/2, W/2)
    """

    def __init__(self, *args, mode: str = "auto", tile_size: int | tuple[int, int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode = _check_mode(mode)
        self.tile_size = tile_size

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, mode: str = "auto", tile_size=None, copy: bool = False) -> SparseConv2d:
        """Wrap an ``nn.Conv2d``'s parameters (shared, or copied with ``copy=True``).

        Args:
            conv: the module to convert; left unchanged.
            mode: as in :func:`zeroskip.conv2d`.
            copy: copy the parameters instead of sharing them.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"`conv` must be an nn.Conv2d, got {type(conv).__name__}")
        if nn.utils.parametrize.is_parametrized(conv):
            # Its parametrized weight is a property of the generated class, lost by the class swap below.
            raise TypeError(f"`conv` must not be parametrized (weight_norm, ...), got {type(conv).__name__}")
        sparse = cls.__new__(cls)
        nn.Module.__init__(sparse)
        # Take every attribute (hyper-parameters, hooks, buffers, parameters) without
        # re-initialising weights, then swap the class.
        sparse.__dict__.update(
            {key: copy_module.copy(value) if isinstance(value, dict) else value for key, value in conv.__dict__.items()}
        )
        if copy:
            for key, param in sparse._parameters.items():
                if param is not None:
                    sparse._parameters[key] = nn.Parameter(param.detach().clone(), param.requires_grad)
        sparse.mode = _check_mode(mode)
        sparse.tile_size = tile_size
        return sparse

    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(_untraceable("torch.jit.script"))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return self._forward_captured(input)
        if type(input) is torch.Tensor and (self.mode == "dense" or in_dense_forward()) and not _profiler.recording():
            # Nothing to skip and nothing to record: nn.Conv2d's own call, without zeroskip's overhead.
            return super().forward(input)
        return self._forward(input)

    # Under torch.compile a graph break: the plan depends on the input's values, so it runs eagerly.
    @torch.compiler.disable(reason=_untraceable("torch.compile(fullgraph=True) or torch.export(strict=True)"))
    def _forward_captured(self, input: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_exporting() or torch.jit.is_tracing():
            # A captured graph would replay one input's plan on every other input.
            raise RuntimeError(_untraceable("torch.export" if torch.compiler.is_exporting() else "torch.jit.trace"))
        return self._forward(input)

    def _forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode != "zeros":
            # Pad with the module's mode first, exactly as nn.Conv2d does, then convolve unpadded.
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding: object = 0
        else:
            padding = self.padding
        return _conv2d(
            input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups, self.mode,
            self.tile_size, name=getattr(self, "_zeroskip_name", None),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mode={self.mode!r}"
