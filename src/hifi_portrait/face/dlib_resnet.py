"""dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) re-implemented in PyTorch.

dlib's Python wheel here is built without BLAS, so its network takes ~110 ms per face on one core; the same
weights in PyTorch take a fraction of that and use the cores we give them. The weights are read directly from
dlib's file (no pickling; a small reader of dlib's binary serialization), the architecture is the one of dlib's
``dnn_face_recognition_ex.cpp``, and ``tests/face/test_dlib_resnet.py`` checks that the descriptors equal dlib's own
on real face chips.

Network (forward order, 150x150 RGB chip in): conv 7x7/2 (32) -> affine -> relu -> max-pool 3x3/2 -> 3 residual
blocks (32) -> down-block + 3 blocks (64) -> down-block + 2 blocks (128) -> down-block + 2 blocks (256) ->
down-block (256) -> global average -> linear 256->128 (no bias). A block is conv3x3-affine-relu-conv3x3-affine
plus the input, then relu; a down-block's first conv has stride 2 and its shortcut is a 2x2/2 average pool.
dlib adds tensors of different shapes by zero-padding the smaller one (channels and the bottom/right border),
which the down-blocks rely on.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hifi_portrait.errors import ModelFilesMissingError

logger = logging.getLogger(__name__)

#: dlib's chip geometry for this model (``get_face_chip_details(shape, size, padding)``).
CHIP_SIZE = 150
CHIP_PADDING = 0.25
#: Serializes changes of torch's process-wide thread count (see :meth:`DlibResNetTorch.__call__`).
_TORCH_THREADS_LOCK = threading.Lock()


@dataclass
class _Conv:
    weight: np.ndarray  # (out, in, kh, kw)
    bias: np.ndarray  # (out,)
    stride: int
    padding: int


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """dlib's integer encoding: a control byte (low 4 bits = byte count, bit 7 = negative), little-endian bytes."""
    ctrl = data[pos]
    n = ctrl & 0x0F
    value = int.from_bytes(data[pos + 1 : pos + 1 + n], "little")
    return (-value if ctrl & 0x80 else value), pos + 1 + n


def _float(data: bytes, pos: int) -> tuple[float, int]:
    """dlib's portable float: mantissa and base-2 exponent as two integers."""
    mantissa, pos = _varint(data, pos)
    exponent, pos = _varint(data, pos)
    return float(mantissa) * 2.0**exponent, pos


def _tensor(data: bytes, pos: int) -> tuple[np.ndarray, int]:
    """dlib tensor (version 2): 4 dims then raw little-endian float32 values."""
    version, pos = _varint(data, pos)
    if version != 2:
        raise ValueError(f"unsupported dlib tensor version {version}")
    dims = []
    for _ in range(4):
        d, pos = _varint(data, pos)
        dims.append(d)
    count = int(np.prod(dims))
    values = np.frombuffer(data, dtype="<f4", count=count, offset=pos).astype(np.float32)
    return values.reshape(dims), pos + 4 * count


def _find_name(data: bytes, pos: int, names: tuple[bytes, ...]) -> tuple[bytes, int]:
    """The next length-prefixed layer name among ``names`` at or after ``pos``; returns (name, position after it)."""
    pattern = re.compile(b"|".join(re.escape(bytes([0x01, len(n)]) + n) for n in names))
    match = pattern.search(data, pos)
    if match is None:
        return b"", -1
    return match.group(0)[2:], match.end()


def read_dlib_resnet(path: str | Path) -> dict:
    """Read the weights of ``dlib_face_recognition_resnet_model_v1.dat``.

    Returns a dict with ``mean`` (RGB input means, 0..255), ``convs`` (29 :class:`_Conv` in forward order, each
    followed in the network by the affine in ``affines``), ``affines`` (29 ``(gamma, beta)``) and ``fc``
    (``(256, 128)``, ``out = x @ fc``).
    """
    data = Path(path).read_bytes()
    if not data.startswith(b"\x01\x01\x01\x0dloss_metric_"):
        raise ModelFilesMissingError(f"{path} is not dlib's face recognition ResNet model file")
    name, pos = _find_name(data, 0, (b"input_rgb_image_sized",))
    if pos < 0:
        raise ValueError(f"{path}: no input layer found")
    mean = []
    for _ in range(3):
        value, pos = _float(data, pos)
        mean.append(value)
    convs: list[_Conv] = []
    affines: list[tuple[np.ndarray, np.ndarray]] = []
    fc = None
    while True:
        name, pos = _find_name(data, pos, (b"con_4", b"con_5", b"affine_", b"fc_2", b"fc_3"))
        if pos < 0:
            break
        if name.startswith(b"fc_"):  # fc_ writes its output and input sizes before the parameters
            _, pos = _varint(data, pos)
            _, pos = _varint(data, pos)
        params, pos = _tensor(data, pos)
        flat = params.reshape(-1)
        if name.startswith(b"con_"):
            fields = []
            for _ in range(7):
                v, pos = _varint(data, pos)
                fields.append(v)
            n_out, kh, kw, sy, sx, py, px = fields
            if sy != sx or py != px:
                raise ValueError(f"{path}: unsupported anisotropic conv {fields}")
            n_w = flat.size - n_out
            n_in = n_w // (n_out * kh * kw)
            convs.append(_Conv(flat[:n_w].reshape(n_out, n_in, kh, kw), flat[n_w:].copy(), sy, py))
        elif name == b"affine_":
            half = flat.size // 2
            affines.append((flat[:half].copy(), flat[half:].copy()))
        else:
            fc = params.reshape(params.shape[0], params.shape[1]).copy()
            break
    if len(convs) != 29 or len(affines) != 29 or fc is None:
        raise ValueError(
            f"{path}: expected 29 convolutions, 29 affines and a linear layer, got "
            f"{len(convs)}, {len(affines)}, {fc is not None}"
        )
    return {"mean": np.array(mean, dtype=np.float32), "convs": convs, "affines": affines, "fc": fc}


def _stages() -> list[tuple[int, bool]]:
    """(channels, is_down_block) of the 16 residual blocks in forward order."""
    return (
        [(32, False)] * 3
        + [(64, True)]
        + [(64, False)] * 3
        + [(128, True)]
        + [(128, False)] * 2
        + [(256, True)]
        + [(256, False)] * 2
        + [(256, True)]
    )


class DlibResNetTorch:
    """The dlib ResNet in PyTorch (CPU, float32, inference only).

    Args:
        path: ``dlib_face_recognition_resnet_model_v1.dat``.
        num_threads: ``torch.set_num_threads`` value used while running (``None`` leaves torch's setting).
    """

    def __init__(self, path: str | Path, num_threads: int | None = None) -> None:
        import torch

        weights = read_dlib_resnet(path)
        self.num_threads = num_threads
        self.mean = torch.from_numpy(weights["mean"]).view(1, 3, 1, 1)
        #: the layers as in dlib's file: ``convs`` ``(weight (O, I, k, k), bias (O,), stride, padding)`` and
        #: ``affines`` ``(gamma, beta)`` each ``(1, O, 1, 1)`` (used by hifi_portrait.training.recognizers)
        self.convs = [
            (torch.from_numpy(c.weight.copy()), torch.from_numpy(c.bias), c.stride, c.padding)
            for c in weights["convs"]
        ]
        self.affines = [
            (torch.from_numpy(g).view(1, -1, 1, 1), torch.from_numpy(b).view(1, -1, 1, 1))
            for g, b in weights["affines"]
        ]
        # for inference each affine (dlib's frozen batch norm) is folded into its conv, and the weights are kept in
        # channels-last layout (about 25 % faster on CPU than the default layout)
        self._fused = []
        for conv, (gamma, beta) in zip(weights["convs"], weights["affines"], strict=True):
            weight = torch.from_numpy(conv.weight * gamma[:, None, None, None])
            bias = torch.from_numpy(conv.bias * gamma + beta)
            self._fused.append((weight.contiguous(memory_format=torch.channels_last), bias, conv.stride, conv.padding))
        self.fc = torch.from_numpy(weights["fc"])

    def _conv_affine(self, x, i: int):
        import torch.nn.functional as F

        weight, bias, stride, pad = self._fused[i]
        return F.conv2d(x, weight, bias, stride=stride, padding=pad)

    @staticmethod
    def _add_padded(a, b):
        """dlib's ``add_prev``: elementwise sum, the smaller tensor zero-padded (channels, bottom, right)."""
        import torch.nn.functional as F

        shape = [max(sa, sb) for sa, sb in zip(a.shape, b.shape, strict=True)]

        def pad(t):
            return F.pad(t, (0, shape[3] - t.shape[3], 0, shape[2] - t.shape[2], 0, shape[1] - t.shape[1]))

        return pad(a) + pad(b)

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """128-d descriptors (not normalized, as dlib returns them) of ``(N, 150, 150, 3)`` RGB uint8 chips."""
        import torch

        if not self.num_threads:
            return self._forward(chips)
        # torch's thread count is process-wide: set it only around our call, one call at a time
        with _TORCH_THREADS_LOCK:
            previous = torch.get_num_threads()
            torch.set_num_threads(self.num_threads)
            try:
                return self._forward(chips)
            finally:
                torch.set_num_threads(previous)

    def _forward(self, chips: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
            x = ((x - self.mean) / 256.0).contiguous(memory_format=torch.channels_last)
            x = F.relu(self._conv_affine(x, 0))
            x = F.max_pool2d(x, 3, 2)
            i = 1
            for _channels, down in _stages():
                y = F.relu(self._conv_affine(x, i))
                y = self._conv_affine(y, i + 1)
                i += 2
                shortcut = F.avg_pool2d(x, 2, 2) if down else x
                x = F.relu(self._add_padded(y, shortcut))
            x = x.mean(dim=(2, 3))
            out = x @ self.fc
        return out.numpy().astype(np.float32)
