"""The memory a training run needs, counted before anything is allocated, and what the machine has.

llm.c prints the size of each buffer as it allocates it; here the same sizes come from the layout
alone (config.param_shapes, config.act_shapes), so a run too big for the machine stops at once
instead of failing in an allocation minutes later.
"""

from .config import Tensors, act_shapes, grad_act_shapes, param_shapes

MiB = 1 << 20
GiB = 1 << 30


def run_memory(config, B, T, precision="fp32"):
    """Bytes of each buffer a training step of (B, T) allocates -> {what: bytes}.

    As model.GPT2 allocates them: parameters, their gradients, AdamW's m and v, the activations
    (no (B,T,Vp) probs: the fused classifier), the activations' gradients (config.grad_act_shapes:
    one layer's worth, no dlogits), and the sampler's KV cache. float32, but with precision "bf16"
    the parameters, gradients and activations (not model.FP32_ACTS) in 2 bytes, plus the fp32
    master weights.
    """
    from .model import FP32_ACTS
    N = Tensors.count(param_shapes(config))
    acts = act_shapes(config, B, T)
    grads = grad_act_shapes(config, B, T)
    L, C, maxT = config.num_layers, config.channels, config.max_seq_len
    if precision != "bf16":
        return {"parameters": 4 * N, "gradients": 4 * N, "AdamW m and v": 8 * N,
                "activations": 4 * Tensors.count(acts), "activation gradients": 4 * Tensors.count(grads),
                "sampler KV cache": 4 * L * maxT * 3 * C}

    def mixed(shapes):
        wide = Tensors.count({n: sh for n, sh in shapes.items() if n in FP32_ACTS})
        return 4 * wide + 2 * (Tensors.count(shapes) - wide)
    return {"parameters (bf16)": 2 * N, "master weights": 4 * N, "gradients (bf16)": 2 * N, "AdamW m and v": 8 * N,
            "activations": mixed(acts), "activation gradients": mixed(grads), "sampler KV cache": 4 * L * maxT * 3 * C}


def _meminfo_available():
    """MemAvailable of /proc/meminfo in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available():
    """What a cgroup v2 memory limit leaves (memory.max - memory.current) in bytes, or None."""
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as f:
            return int(limit) - int(f.read().strip())
    except (OSError, ValueError):
        return None


def available_bytes(device="cpu"):
    """Free memory where the run's buffers go: the GPU's free memory for "cuda", else available
    RAM (the smaller of MemAvailable and a cgroup limit). None when it cannot be told."""
    if device == "cuda":
        try:
            from numba import cuda
            return int(cuda.current_context().get_memory_info()[0])
        except Exception:  # no driver, the simulator...: the allocation itself will tell
            return None
    known = [b for b in (_meminfo_available(), _cgroup_available()) if b is not None]
    return min(known) if known else None


def gpu_memory_line():
    """-lg's line (train_gpt2.cu prints NVML's utilisation there): the current GPU's memory in use
    and its total, from the driver; None without a GPU to ask."""
    try:
        from numba import cuda
        free, total = cuda.current_context().get_memory_info()
    except Exception:  # no driver, the simulator...
        return None
    return f"memory: {(total - free) / MiB:,.0f} MiB of {total / MiB:,.0f} MiB in use ({100 * (total - free) / total:.1f}%)"


def describe(sizes):
    """One line: each buffer in MiB, and the total."""
    parts = ", ".join(f"{what} {n / MiB:,.0f} MiB" for what, n in sizes.items())
    return f"{parts} = {sum(sizes.values()) / GiB:,.2f} GiB"


def check_memory(sizes, available, where):
    """Raise MemoryError (one line) when the buffers need more than `available` bytes."""
    need = sum(sizes.values())
    if available is not None and need > available:
        raise MemoryError(f"this run needs {need / GiB:,.2f} GiB of memory ({describe(sizes)}), but "
                          f"{where} has only {available / GiB:,.2f} GiB available: use a smaller "
                          f"model, -b or -t")
