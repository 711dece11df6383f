"""On a GPU, a Prompt-to-Prompt edit leaves its source rows exactly a plain generation's.

The shared joint call (``interception._shared_call``) computes the target's own queries apart; on the CPU that call
runs over every row (the source's queries there come out of SDPA's CPU kernel bit for bit as the stock call gave
them), elsewhere only the target rows are computed apart, since a GPU kernel may tile a call of fewer queries
otherwise. Text-block edits (``kernels.core._run_text_block_edits``) leave the stock call's source rows alone. The
GPU session runs this (``benchmarks/gpu_session.sh``, its ``tests`` step); on the CPU it skips.
"""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.tiny import call_kwargs, tiny_pipeline

EDITS = {
    # every step's joint calls shared (the source rows' queries and keys over the target's values)
    "swap, every step": lambda: visattn.PromptToPrompt.replace(
        "a red cat", "a red dog", cross_steps=1.0, self_steps=1.0
    ),
    # the authors' schedule: text-block edits (attention over block values and their sums) after the self steps
    "refine, authors' schedule": lambda: visattn.PromptToPrompt.refine("a red cat", "a red fluffy cat"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("key", ["flux", "sd3"])
@pytest.mark.parametrize("kind", list(EDITS))
def test_an_edited_generation_keeps_the_plain_generation_as_its_source_bit_for_bit(key, dtype, kind):
    pipe = tiny_pipeline(key).to("cuda", dtype)
    p2p = EDITS[kind]()

    def generate():
        generator = p2p.generator(0, 1, device="cuda")
        return pipe(**call_kwargs(key, prompt=p2p.prompts, generator=generator, output_type="latent"))[0]

    with torch.no_grad():
        plain = generate()
        with visattn.attach(pipe, p2p):
            edited = generate()
    torch.testing.assert_close(edited[0], plain[0], rtol=0, atol=0)
    assert not torch.equal(edited[1], plain[1])  # the target is edited
