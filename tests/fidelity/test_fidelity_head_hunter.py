"""HeadHunter's defaults against the authors' search (issue 28).

The references are transcriptions written here from reading cvlab-kaist/HeadHunter ``pipeline_distributed.py``:
``generate_images`` (each prompt generated alone, ``seed = p_idx`` on a CPU generator, ``guidance_scale=0.0``, the
perturbation on ``perturb_heads_2 + [(layer, head)]`` at ``perturb_guidance_scale=3.0`` with the identity map
``attention_identity@scale=1.0``) and ``select_topk_heads`` (method ``"pickscore"``: candidates not yet selected,
sorted by descending score, the first ``TOP_K``; ``run.sh`` passes ``--top_k 3``). Their pipeline argument
``perturb_heads`` is stood in for by visattn's PAG on the same heads: what is compared is the search around it.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np
import torch

import visattn
from visattn.commands import hunt as hunt_command
from visattn.guidance import HeadSet, head_hunter, hunt_heads
from visattn.tiny import tiny_pipeline

PROMPTS = ["a red circle", "a blue square"]
CALL = {"num_inference_steps": 2}
GUIDANCE_SCALE = 3.0  # the authors' perturb_guidance_scale


@functools.cache
def pipeline():
    return tiny_pipeline("unet")


def authors_generate(pipe, prompts, heads) -> np.ndarray:
    """``generate_images`` for one head set: one call per prompt, seed = prompt index, CFG off."""
    images = []
    effect = HeadSet(heads).effect(scale=GUIDANCE_SCALE, strength=1.0)
    with visattn.attach(pipe, effect):
        for p_idx, prompt in enumerate(prompts):
            gen = torch.Generator(device="cpu").manual_seed(p_idx)
            out = pipe(prompt, negative_prompt="", guidance_scale=0.0, generator=gen, output_type="np", **CALL)
            images.append(out.images[0])
    return np.stack(images)


def authors_select_topk(scores: dict, exclude_heads, top_k: int = 3) -> list:
    """``select_topk_heads(method="pickscore")`` on one round's averaged scores."""
    exclude_set = set(exclude_heads)
    sorted_heads = sorted([(k, v) for k, v in scores.items() if k not in exclude_set], key=lambda x: -x[1])
    return [pair for pair, _ in sorted_heads[:top_k]]


def test_defaults_are_the_authors_search_settings():
    parameters = inspect.signature(hunt_heads).parameters
    assert parameters["heads_per_round"].default == 3 == head_hunter.AUTHORS_HEADS_PER_ROUND
    assert parameters["guidance_scale"].default == 0.0 == head_hunter.AUTHORS_SEARCH_GUIDANCE
    assert parameters["seeds"].default is None
    assert parameters["scale"].default == GUIDANCE_SCALE and parameters["strength"].default == 1.0
    # the command line's defaults (kept in its own module so it parses without importing torch)
    assert hunt_command.AUTHORS_HEADS_PER_ROUND == head_hunter.AUTHORS_HEADS_PER_ROUND
    assert hunt_command.AUTHORS_SEARCH_GUIDANCE == head_hunter.AUTHORS_SEARCH_GUIDANCE


def test_evaluations_generate_what_the_authors_generate():
    """Every candidate's images: CFG off, prompt i from seed i (batched here, one call per prompt there)."""
    pipe = pipeline()
    candidates = HeadSet.all_heads(pipe, ["mid"])
    seen: list[np.ndarray] = []

    def record(images, prompts):
        assert prompts == PROMPTS
        seen.append(np.asarray(images))
        return float(np.asarray(images).mean())

    result = hunt_heads(pipe, PROMPTS, record, candidates, rounds=1, heads_per_round=1, progress=False, **CALL)
    assert len(seen) == 1 + len(candidates)  # the baseline, then every candidate in order
    differences = [
        np.abs(seen[1 + k] - authors_generate(pipe, PROMPTS, [pair])).max() for k, pair in enumerate(candidates)
    ]
    print(f"HeadHunter evaluation images: max |visattn - authors| = {max(differences):.3g}")
    assert max(differences) <= 1e-5
    assert result.heads.metadata["guidance_scale"] == 0.0 and result.heads.metadata["seeds"] == [[0, 1]]


def test_top_three_per_round_as_select_topk_heads():
    pipe = pipeline()
    result = hunt_heads(pipe, PROMPTS, "contrast", rounds=2, progress=False, **CALL)
    selected: list = []
    for record in result.history:
        expected = authors_select_topk(record.scores, selected)
        assert list(record.heads) == expected and len(expected) == 3
        selected += expected
    assert list(result.heads.pairs) == selected and len(selected) == 6
    assert [(h["layer"], h["head"]) for h in result.heads.metadata["history"]] == selected
    # every candidate is tried in round 1, the ones left in round 2
    assert len(result.scores[0]) == 14 and len(result.scores[1]) == 14 - 3
