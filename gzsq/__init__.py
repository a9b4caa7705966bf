"""gzsq: zero-shot int8 quantization from learned weight statistics (GZSQ)."""
__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(spec, input_shape=None, trust_pickle: bool = False):
    """Python API: `zoo:NAME`, an .onnx/.pt2 path, or an nn.Module (with input_shape=(C, H, W))."""
    from gzsq.models import load_model as _load

    return _load(spec, input_shape=input_shape, trust_pickle=trust_pickle)
