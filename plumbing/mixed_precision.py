"""Mixed precision on any device: autocast by name ("fp32", "bf16", "fp16"), train.py's choice ("auto": mixed on CUDA,
as the authors train, fp32 on a CPU), and the measured choice of the fastest precision for classify. The weights always
stay fp32.

Not the paper's method: vifi.classify and train.py call it so that one flag works on a CPU and on CUDA.
"""
import time
from typing import Union

import torch
import torch.nn.functional as F

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: Union[str, torch.device], precision: str):
    """torch.autocast in "bf16" or "fp16"; "fp32" runs as is. The weights stay fp32 either way."""
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def training_precision(device: Union[str, torch.device]) -> str:
    """train.py's "auto", for training and evaluation alike: the authors train and evaluate in fp16 with dynamic loss
    scaling (apex O1); on CUDA we autocast to bf16 where the GPU has it (no loss scale needed), else fp16 with a
    GradScaler. On a CPU, fp32: a reported figure must not depend on a choice made by timing the machine."""
    device = torch.device(device)
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


BF16_MIN_SPEEDUP = 1.25  # "auto" takes bf16 on a CPU only for a clear gain: below it, fp32's exactness is worth more
_cpu_bf16_speedup = {}  # intra-op threads -> measured bf16/fp32 speed ratio (measured once per process)


def _measure_cpu_bf16_speedup() -> float:
    """fp32 time / bf16-autocast time of one ViT-B/16-shaped linear layer (2 frames x 197 tokens, 768 -> 3072, the
    MLP's first matrix), best of 3 alternating runs after a warm-up: about 0.1 s, once per process."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(394, 768, generator=gen), torch.randn(3072, 768, generator=gen), torch.zeros(3072)

    def run(dtype):
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            start = time.perf_counter()
            F.linear(x, w, b)
            return time.perf_counter() - start

    run(None), run(torch.bfloat16)  # warm-up (oneDNN builds its kernel on the first call)
    fp32, bf16 = zip(*[(run(None), run(torch.bfloat16)) for _ in range(3)])
    return min(fp32) / min(bf16)


def inference_precision(device: Union[str, torch.device] = "cpu", requested: str = "auto") -> str:
    """The precision to run inference in on `device`: "fp32", "bf16" (autocast) or, when asked for, "fp16".

    An explicit request is returned as it is. "auto" gives bf16 on a CUDA GPU that supports it, and on a CPU only
    where bf16 measures faster: support is not enough. bf16 autocast (oneDNN) encoded ViT-B/16 frames about 3x as fast
    as fp32 on this project's AMD EPYC machines but 0.7x as fast on an Intel Xeon that also reports AVX512-BF16 (no
    AMX), where MKL's fp32 is as quick as bf16 gets (README, Benchmarks). So on a CPU "auto" times one ViT-B/16-shaped
    layer both ways (about 0.1 s, once per process and thread count) and takes bf16 from BF16_MIN_SPEEDUP up. The
    choice is printed when it is made. Predictions agree with fp32: the same top-1 on the embedded world's validation
    videos, vanilla and fine-tuned (README, Benchmarks)."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type == "cuda":
        choice = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        why = "bf16 supported by this GPU" if choice == "bf16" else "this GPU has no bf16"
    elif device.type != "cpu":
        return "fp32"
    else:
        threads = torch.get_num_threads()
        if threads in _cpu_bf16_speedup:
            return "bf16" if _cpu_bf16_speedup[threads] >= BF16_MIN_SPEEDUP else "fp32"
        supported = torch.backends.mkldnn.is_available() and getattr(
            torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
        speedup = _measure_cpu_bf16_speedup() if supported else 0.0
        _cpu_bf16_speedup[threads] = speedup
        choice = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
        why = (f"bf16 measured {speedup:.2f}x fp32 on this CPU, {threads} thread{'s' * (threads > 1)}" if supported
               else "this CPU has no fast bf16 (oneDNN)")
    print(f"inference precision: {choice} (auto: {why})", flush=True)
    return choice
