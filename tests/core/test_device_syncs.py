"""visattn adds no device sync to a denoiser call once a generation runs.

A host read of a CUDA tensor (``.item()``, ``.tolist()``, ``float()``, a data-dependent shape) waits for every
kernel queued before it, and the stock denoising loops make none per step: the CPU queues the next step's kernels
while the GPU runs this one. The denoiser hook reads each call's timestep; where it is no view of the scheduler's
timesteps (Flux's ``t / 1000``), the step is taken from the scheduler's ``step_index`` and checked later without
waiting (``visattn.state.DenoiserHook._check_later``). The GPU session runs these (``benchmarks/gpu_session.sh``, its
``tests`` step); on the CPU they skip.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import visattn
from visattn.tiny import call_kwargs, tiny_pipeline

STEPS = 4


def _syncs_per_call(pipe, key: str, effects: tuple) -> list[int]:
    """The synchronizing CUDA operations in each denoiser call (torch's sync debug mode, only while the denoiser's
    forward runs: its hooks, visattn's among them, run inside it)."""
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    counts: list[int] = []
    kwargs = call_kwargs(key, prompt=["a red cat", "a red dog"], num_inference_steps=STEPS, output_type="latent")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = [0]

        def before(module, args, kwargs):
            seen[0] = len(caught)
            torch.cuda.set_sync_debug_mode("warn")

        def after(module, args, kwargs, output):
            torch.cuda.set_sync_debug_mode("default")
            counts.append(sum("synchroniz" in str(w.message) for w in caught[seen[0] :]))

        handles = [
            denoiser.register_forward_pre_hook(before, with_kwargs=True),
            denoiser.register_forward_hook(after, with_kwargs=True),
        ]
        try:
            with visattn.attach(pipe, *effects):
                pipe(**kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
            for handle in handles:
                handle.remove()
    return counts


@pytest.mark.gpu
@pytest.mark.parametrize("key", ["flux", "sd3", "qwen_image"])
def test_an_attached_edit_adds_no_device_sync_after_the_first_step(key):
    pipe = tiny_pipeline(key).to("cuda")
    p2p = visattn.PromptToPrompt.replace("a red cat", "a red dog", cross_steps=0.5, self_steps=0.5)
    stock = _syncs_per_call(pipe, key, ())
    edited = _syncs_per_call(pipe, key, (p2p,))
    assert len(edited) == len(stock) >= STEPS
    per_step = len(stock) // STEPS
    # The first step's calls read what only the tensors tell (the timestep before the scheduler has a step_index,
    # a new generation's position ids); every later call syncs exactly as often as the stock one.
    assert edited[per_step:] == stock[per_step:]
