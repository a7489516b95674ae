"""Plain helpers shared by the test modules (fixtures live in conftest.py). Test modules never import each other."""

from __future__ import annotations

import os
import signal

import torch

import variants

HEADS = 2
DIM_HEAD = 16
MAX_SEQ_LEN = 4096

# A sweep small enough for a test: tiny model, tiny causal MQAR, two speed lengths, one accuracy length and seed.
TINY_SWEEP = [
    "model=tiny",
    "~sweep.accuracy",
    "+sweep.accuracy={mqar:{seq_lens:[32],directions:[causal],vocab_size:32,num_train:256,num_val:32,num_test:32,"
    "batch_size:32}}",
    "sweep.seeds=[0]",
    "optim.max_steps=20",
    "optim.val_every=10",
    "optim.warmup_steps=2",
    "sweep.seq_lens=[32,64]",
    "sweep.repeats=2",
    "sweep.timing={rounds:2,max_rounds:2}",  # paired rounds at test cost: two processes per timed point
    "sweep.warmup=1",
    "sweep.batch_size=2",
    "sweep.maps=false",
    "sweep.decode_lens=[]",
    "sweep.cross=null",  # tests of the encoder-decoder points set their own
    "sweep.baselines=[]",  # each test says which variants it measures; test_sweep checks the baselines
]

# The maps probe at test size: one sequence per case, one module seed, a trained model of a few steps.
TINY_MAPS = [
    "approximation.batch=1",
    "approximation.budget_seeds=[0]",
    "approximation.trained.seq_len=32",
    "approximation.trained.max_seq_len=128",
    "approximation.trained.steps=3",
    "approximation.trained.task_args={num_train:32,num_val:8,num_test:8,batch_size:8}",
]


def build_variant(name: str, **overrides) -> variants.Attention:
    """Build ``name`` at test size with its default hyperparameters."""
    kwargs = {"heads": HEADS, "dim_head": DIM_HEAD, "max_seq_len": MAX_SEQ_LEN} | overrides
    return variants.build(name, **kwargs)


def qkv(batch: int, seq: int, *, seed: int = 0, scale: float = 1.0, requires_grad: bool = False):
    """Seeded ``(B, H, N, Dh)`` q, k, v."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [torch.randn(batch, HEADS, seq, DIM_HEAD, generator=gen) * scale for _ in range(3)]
    for t in tensors:
        t.requires_grad_(requires_grad)
    return tensors


def values_and_grads(fn, q, k, v, mask, weights):
    """Output and q/k/v gradients of ``sum(out * weights)`` over real query rows."""
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    real = torch.ones(out.shape[0], out.shape[2], dtype=torch.bool) if mask is None else mask
    (out * weights * real[:, None, :, None]).sum().backward()
    return out.detach(), *(torch.zeros_like(t) if t.grad is None else t.grad for t in (q, k, v))


def die(*, how: str) -> None:
    """A worker function that fails the way ``how`` says (a signal's name, or an exception's)."""
    if how == "MemoryError":
        raise MemoryError("simulated")
    os.kill(os.getpid(), getattr(signal, how))


def echo(*, value: object) -> dict:
    """A worker function that answers at once."""
    return {"value": value}


def sleep_then_echo(*, seconds: float, value: object) -> dict:
    """A worker function that takes ``seconds``."""
    import time

    started = time.time()
    time.sleep(seconds)
    return {"value": value, "started": started, "ended": time.time()}


def write_pid_then_sleep(*, path: str) -> dict:
    """A worker function that says who it is and then runs far longer than any test."""
    import time
    from pathlib import Path

    Path(path).write_text(str(os.getpid()))
    time.sleep(600)
    return {}


def torch_threads() -> dict:
    """A worker function that reports the torch threads it was given."""
    return {"threads": torch.get_num_threads()}


def padding_mask(batch: int, seq: int) -> torch.Tensor:
    """All tokens real except the last third of the last sequence."""
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[-1, seq * 2 // 3 :] = False
    return mask


def assert_same(ours, reference, mask, *, atol=1e-5, rtol=1e-5):
    """Outputs at real query rows and all q, k, v gradients agree (``values_and_grads`` tuples)."""
    real = slice(None) if mask is None else mask[:, None, :, None].expand_as(ours[0])
    torch.testing.assert_close(ours[0][real], reference[0][real], atol=atol, rtol=rtol, msg="out")
    for name, mine, theirs in zip("qkv", ours[1:], reference[1:], strict=True):
        torch.testing.assert_close(mine, theirs, atol=atol, rtol=rtol, msg=f"grad {name}")


def loaded_modules(*, prefix: str) -> dict:
    """The modules a worker has already imported whose names start with ``prefix``."""
    import sys

    return {"modules": sorted(name for name in sys.modules if name.startswith(prefix))}


def speed_record(variant, n, tok, mib, *, fp="cpu-A", causal=False, status="ok") -> dict:
    """A speed point as the sweep stores it (inference at 3x the training rate); failed: no numbers."""
    record = {
        "variant": variant,
        "probe": "speed",
        "seq_len": n,
        "status": status,
        "hardware": "cpu",
        "hardware_info": {"fingerprint": fp},
        "config": {"causal": causal},
    }
    if status == "ok":
        record |= {"train_tokens_per_s": tok, "infer_tokens_per_s": 3 * tok, "peak_memory_mib": mib}
    return record


def accuracy_records(variant, accs, *, n=384, direction="bidirectional", fp="cpu-A") -> list[dict]:
    """One lookup accuracy run per seed with the given test (and validation) accuracies."""
    return [
        {
            "variant": variant,
            "probe": "accuracy",
            "seq_len": n,
            "status": "ok",
            "task": "lookup",
            "direction": direction,
            "seed": seed,
            "lr": 1e-3,
            "hardware": "cpu",
            "hardware_info": {"fingerprint": fp},
            "test_acc": acc,
            "val_acc": acc,
            "steps": 100,
            "params": 1000,
        }
        for seed, acc in enumerate(accs)
    ]


# The lean feature-map kernel in small pieces, so a short sequence still spans several chunks and groups; causally
# with the backward pass in one loop (the forward keeps each group's key summary) or two (autograd maps take either).
DIRECTIONS_AND_PASSES = [(False, 2), (True, 1), (True, 2)]


def feature_kernel_in_small_pieces(monkeypatch, *, chunk_elements: int = 1000, passes: int = 2) -> None:
    import variants._linear as kernel

    monkeypatch.setattr(kernel, "CHUNK_ELEMENTS", chunk_elements)  # several chunks in the bidirectional passes
    monkeypatch.setattr(kernel, "MIN_ROWS", 1)
    monkeypatch.setattr(kernel, "chunks_per_group", lambda *shape: 2)  # causal: carried across groups
    monkeypatch.setattr(kernel, "one_backward_pass", lambda *shape: passes == 1)
