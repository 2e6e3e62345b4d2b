"""Optional spconv backend behind pointlift's own conv modules (same classes, same state dict).

When the "spconv" backend is selected, a pointlift conv runs spconv's implementation with the
weight converted on the fly from torch's Conv3d layout (cout, cin, kx, ky, kz) to spconv's
KRSC layout (cout, kx, ky, kz, cin). spconv's kernel maps live in the shared coordinate
manager (`backend_state["spconv"]`), so its transposed convs find the maps of their strided
convs. Where spconv would behave differently or cannot help, `try_forward` returns None and the
pure path runs: grouped/depthwise convs (spconv has none), 1x1 convs (a plain matmul),
strided convs whose kernel differs from their stride (spconv places more output sites than
unique(floor(c/s))) and transposed convs whose strided conv did not run in spconv.

spconv's CPU build asks torch for the current CUDA stream even without CUDA; on CPU-only
machines `get_current_stream` is replaced by a function returning 0 (the null stream).
"""

from __future__ import annotations

import functools

import torch

from pointlift.errors import PointliftConfigError
from pointlift.sparse.backend import SPCONV_MISSING

_SPCONV = None


def _import_spconv():
    global _SPCONV
    if _SPCONV is None:
        try:
            import spconv.pytorch as spconv_torch
            from spconv.pytorch import cppcore, ops
        except ImportError as error:
            raise PointliftConfigError(f"{SPCONV_MISSING} (import failed: {error})") from None

        if not torch.cuda.is_available():
            for module in (cppcore, ops):
                module.get_current_stream = lambda: 0
        _SPCONV = spconv_torch
    return _SPCONV


def _state(manager) -> dict:
    return manager.backend_state.setdefault("spconv", {"indice_dict": {}, "owner": {}})


def _key(kind: str, in_stride: int, out_stride: int, kernel_size: int, dilation: int) -> str:
    return f"{kind}_{in_stride}_{out_stride}_k{kernel_size}_d{dilation}"


@functools.lru_cache(maxsize=None)
def _even(n: int) -> int:
    return n + (n % 2)


def _spatial_shape(coords: torch.Tensor, even: bool) -> list[int]:
    """Smallest grid holding the coords; even sizes so a 2x2x2 stride-2 conv keeps the last row."""
    shape = (coords[:, 1:].max(0).values + 1).tolist() if len(coords) else [1, 1, 1]
    return [_even(int(v)) if even else int(v) for v in shape]


def _impl(module, spconv_torch, indice_key: str):
    """spconv twin of a pointlift module, without parameters (the weight is set per call)."""
    cache = module.__dict__.setdefault("_spconv_twins", {})
    if indice_key not in cache:
        k, d = module.kernel_size, module.dilation
        if module.transposed:
            twin = spconv_torch.SparseInverseConv3d(module.in_channels, module.out_channels, k, indice_key=indice_key, bias=False)
        elif module.stride == 1:
            twin = spconv_torch.SubMConv3d(
                module.in_channels, module.out_channels, k, dilation=d, padding=d * (k - 1) // 2, bias=False, indice_key=indice_key
            )
        else:
            twin = spconv_torch.SparseConv3d(
                module.in_channels, module.out_channels, k, stride=module.stride, bias=False, indice_key=indice_key
            )
        del twin.weight
        cache[indice_key] = twin
    return cache[indice_key]


def try_forward(module, x):
    """Run `module` (a pointlift sparse conv) through spconv, or return None to use the pure path."""
    if module.groups != 1 or module.kernel_size == 1:
        return None
    spconv_torch = _import_spconv()
    manager = x.manager
    state = _state(manager)
    k, d, s = module.kernel_size, module.dilation, module.stride
    if module.transposed:
        out_stride = x.stride // s
        key = _key("down", out_stride, x.stride, k, d)
        if key not in state["indice_dict"]:
            return None
    elif s == 1:
        out_stride = x.stride
        key = _key("subm", x.stride, x.stride, k, d)
    else:
        out_stride = x.stride * s
        key = _key("down", x.stride, out_stride, k, d)
        if k != s or d != 1:
            return None
        if out_stride in manager.coords and state["owner"].get(out_stride) != key:
            return None  # the pure path already placed these sites, in its own order
    twin = _impl(module, spconv_torch, key)
    twin.weight = module.weight.permute(0, 2, 3, 4, 1).contiguous()  # (cout, kx, ky, kz, cin)
    twin.train(module.training)
    coords = x.coords
    tensor = spconv_torch.SparseConvTensor(
        x.features,
        coords.int(),
        _spatial_shape(coords, even=not module.transposed and s > 1),
        x.batch_size,
        indice_dict=state["indice_dict"],
    )
    out = twin(tensor)
    state["indice_dict"].update(out.indice_dict)
    if not module.transposed and s > 1 and out_stride not in manager.coords:
        manager.coords[out_stride] = out.indices.long()
        state["owner"][out_stride] = key
    features = out.features
    if module.bias is not None:
        features = features + module.bias
    return x.replace(features, stride=out_stride)
