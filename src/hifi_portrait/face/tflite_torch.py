"""Run a small float TFLite graph in torch (differentiable, batched), e.g. mediapipe's blendshape model.

The ``.tflite`` flatbuffer is read with the schema module that ships with LiteRT (``ai_edge_litert``); weights
(float16 or float32) become float32 buffers and the operators are evaluated in order. Only the operators of
``face_blendshapes.tflite`` (an MLP-Mixer) are supported: elementwise arithmetic, MEAN/SUM, 1x1 CONV_2D,
TRANSPOSE, RESHAPE, STRIDED_SLICE, CONCATENATION, LOGISTIC; anything else raises ``NotImplementedError``.

The graph's batch dimension (the first) is taken from the input, so ``(B, ...)`` inputs run as one batch; the
constants that hard-code a batch of 1 (reshape shapes, slices) are adapted. Agreement with LiteRT is tested
(``tests/face/test_blendshape_reader.py``).
"""

from __future__ import annotations

import numpy as np
import torch

_ACTIVATIONS = {0: lambda x: x, 1: torch.relu, 3: lambda x: torch.clamp(x, -1, 1), 4: lambda x: torch.clamp(x, 0, 6)}


def _load(model: bytes):
    from ai_edge_litert import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(bytearray(model), 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16}
    dtypes[schema.TensorType.INT32] = np.int32
    return m, names, dtypes


class TFLiteGraph(torch.nn.Module):
    """A TFLite model (one subgraph, one input, one output) as a torch module."""

    def __init__(self, model: bytes) -> None:
        super().__init__()
        m, names, dtypes = _load(model)
        g = m.subgraphs[0]
        self.inputs, self.outputs = list(g.inputs), list(g.outputs)
        if len(self.inputs) != 1 or len(self.outputs) != 1:
            raise NotImplementedError("only one-input, one-output TFLite graphs are supported")
        self.consts: dict[int, np.ndarray] = {}
        for i, t in enumerate(g.tensors):
            data = m.buffers[t.buffer].data if t.buffer < len(m.buffers) else None
            if data is not None and len(data):
                arr = np.frombuffer(bytes(bytearray(data)), dtype=dtypes[t.type]).reshape(
                    list(t.shape) if t.shape is not None else []
                )
                self.consts[i] = arr
        self.ops = []
        for op in g.operators:
            code = m.operatorCodes[op.opcodeIndex]
            name = names[max(code.builtinCode, code.deprecatedBuiltinCode)]
            opts = vars(op.builtinOptions) if op.builtinOptions is not None else {}
            self.ops.append((name, [int(i) for i in op.inputs], [int(i) for i in op.outputs], opts))
        for i, arr in self.consts.items():
            if arr.dtype != np.int32:
                self.register_buffer(f"c{i}", torch.from_numpy(arr.astype(np.float32)), persistent=False)

    def _const(self, i: int) -> torch.Tensor | np.ndarray:
        arr = self.consts[i]
        return arr if arr.dtype == np.int32 else getattr(self, f"c{i}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        vals: dict[int, object] = {self.inputs[0]: x}

        def get(i: int):
            return vals[i] if i in vals else self._const(i)

        for name, ins, outs, opts in self.ops:
            a = [get(i) for i in ins if i >= 0]
            act = _ACTIVATIONS[opts.get("fusedActivationFunction", 0)]
            if name == "DEQUANTIZE":
                y = a[0]
            elif name in ("ADD", "SUB", "MUL", "DIV"):
                fn = {"ADD": torch.add, "SUB": torch.sub, "MUL": torch.mul, "DIV": torch.div}[name]
                y = act(fn(a[0], a[1]))
            elif name == "SQUARED_DIFFERENCE":
                y = (a[0] - a[1]) ** 2
            elif name in ("MEAN", "SUM"):
                axes = [int(v) % a[0].dim() for v in np.atleast_1d(a[1])]
                fn = torch.mean if name == "MEAN" else torch.sum
                y = fn(a[0], dim=axes, keepdim=bool(opts.get("keepDims", False)))
            elif name in ("SQRT", "RSQRT", "NEG", "LOGISTIC"):
                y = {"SQRT": torch.sqrt, "RSQRT": torch.rsqrt, "NEG": torch.neg, "LOGISTIC": torch.sigmoid}[name](a[0])
            elif name == "RESHAPE":
                shape = [int(v) for v in np.asarray(a[1]).reshape(-1)]
                y = a[0].reshape([batch, *shape[1:]])
            elif name == "TRANSPOSE":
                y = a[0].permute([int(v) for v in a[1]])
            elif name == "CONCATENATION":
                parts = [t.expand(batch, *t.shape[1:]) if t.shape[0] != batch else t for t in a]
                y = act(torch.cat(parts, dim=int(opts["axis"])))
            elif name == "CONV_2D":
                w, b = a[1], a[2] if len(a) > 2 else None
                if tuple(w.shape[1:3]) != (1, 1) or opts.get("strideW", 1) != 1 or opts.get("strideH", 1) != 1:
                    raise NotImplementedError("only 1x1, stride 1 convolutions are supported")
                y = torch.einsum("bhwi,oi->bhwo", a[0], w[:, 0, 0, :])
                y = act(y + b if b is not None else y)
            elif name == "STRIDED_SLICE":
                y = self._strided_slice(a[0], a[1], a[2], a[3], opts)
            else:
                raise NotImplementedError(f"TFLite operator {name} is not supported")
            vals[outs[0]] = y
        return vals[self.outputs[0]]

    @staticmethod
    def _strided_slice(x: torch.Tensor, begin, end, strides, opts) -> torch.Tensor:
        index, squeeze = [], []
        for d in range(len(begin)):
            if d == 0:  # the batch dimension: always whole
                index.append(slice(None))
                continue
            b = None if opts["beginMask"] >> d & 1 else int(begin[d])
            e = None if opts["endMask"] >> d & 1 else int(end[d])
            s = int(strides[d])
            if opts["shrinkAxisMask"] >> d & 1:
                index.append(int(begin[d]))
                squeeze.append(d)
            else:
                index.append(slice(b, e, s))
        return x[tuple(index)]
