"""Context-parallel runs of tiny denoisers on CPU: N gloo processes on 127.0.0.1, diffusers' ``enable_parallelism``.

:func:`run_on_ranks` spawns the processes (a free port, one torch thread each, a timeout) and returns what a
module-level function returns on each rank. :func:`parallel_cases` runs named cases (a tiny model, an attach
order, a set of effects) on every rank, and :func:`single_process_case` runs the same case in this process, the
oracle the split runs are compared against.

Two workarounds, for CPU test runs only: diffusers 0.42.1's ``enable_parallelism`` divides by
``torch.accelerator.device_count()``, which is 0 on a CPU build, so the workers report one device; and its native
ring path needs a log-sum-exp its native forward op does not return (it raises), so the workers give that op one
(:func:`_native_forward_with_lse`: torch's SDPA for the output, the log-sum-exp of the same logits beside it) and
stock ring runs on CPU. visattn's own ring path (``visattn.parallel.ring_attention``) does not use that op.
"""

from __future__ import annotations

import os
import queue
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: how long the test waits for every rank
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world: int, port: int, results: Any, fn: Callable, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    # CPU builds report no accelerator, and diffusers divides the world by the device count.
    torch.accelerator.device_count = lambda: 1
    try:
        results.put((rank, fn(rank, world, *args)))
    except BaseException:  # noqa: BLE001 - the parent reports it
        results.put((rank, RuntimeError(traceback.format_exc())))
    finally:
        dist.destroy_process_group()


def run_on_ranks(fn: Callable, *args: Any, world: int = 2, timeout: float = TIMEOUT_S) -> list[Any]:
    """``[fn(rank, world, *args) for each rank]``, each on its own gloo process; results must pickle by value
    (numpy arrays, numbers, strings). Raises the first rank's error with its traceback."""
    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [context.Process(target=_worker, args=(r, world, port, results, fn, args)) for r in range(world)]
    for process in processes:
        process.start()
    gathered: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(gathered) < world:
            try:
                rank, value = results.get(timeout=1.0)
                gathered[rank] = value
                continue
            except queue.Empty:
                pass
            dead = [r for r, p in enumerate(processes) if r not in gathered and p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"rank {dead[0]} exited with code {processes[dead[0]].exitcode} and no result")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"context-parallel run: {world - len(gathered)} rank(s) gave no result in {timeout} s"
                )
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    for rank in sorted(gathered):
        if isinstance(gathered[rank], RuntimeError):
            raise RuntimeError(f"rank {rank} failed:\n{gathered[rank]}")
    return [gathered[rank] for rank in range(world)]


def _native_forward_with_lse(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                             enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):  # fmt: skip
    """diffusers' native forward op (``[B, N, H, D]`` in and out), also returning the log-sum-exp (``[B, N, H]``)
    its ring template asks for: the stock op raises there. Test harness only (see the module docstring)."""
    stock = _STOCK_NATIVE_FORWARD[0]
    out = stock(ctx, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, False, _save_ctx,
                _parallel_config)  # fmt: skip
    if not return_lse:
        return out
    if attn_mask is not None or is_causal or dropout_p or enable_gqa:
        raise ValueError("the CPU ring harness computes the log-sum-exp of plain attention only")
    q, k = query.permute(0, 2, 1, 3).float(), key.permute(0, 2, 1, 3).float()
    logits = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    return out, torch.logsumexp(logits, dim=-1).permute(0, 2, 1)


_STOCK_NATIVE_FORWARD: list = []


def cpu_ring() -> None:
    """Let diffusers' native backend run ring attention on CPU (see the module docstring); idempotent."""
    from diffusers.models import attention_dispatch

    if not _STOCK_NATIVE_FORWARD:
        _STOCK_NATIVE_FORWARD.append(attention_dispatch._native_attention_forward_op)
        attention_dispatch._native_attention_forward_op = _native_forward_with_lse


# --- the cases ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One context-parallel run: a tiny model, its effects, and when visattn is attached.

    Attributes:
        model: a key of :data:`MODELS`: ``"wan"`` (self- and cross-attention, video), ``"flux"`` (joint
            text-image attention), ``"hunyuan_video"`` (joint, split with the plan visattn ships), ``"minimax_h3"``
            (joint over one packed sequence, split as one stream by diffusers' plan).
        effects: names of :data:`EFFECTS`; empty for the stock model (``order="none"``) or no effect.
        order: ``"none"`` (visattn not attached), ``"after"`` or ``"before"`` ``enable_parallelism``.
        ulysses, ring: the context-parallel degrees.
    """

    model: str
    effects: tuple[str, ...] = ()
    order: str = "after"
    ulysses: int = 2
    ring: int = 1

    @property
    def name(self) -> str:
        return f"{self.model}-{'+'.join(self.effects) or 'none'}-{self.order}-u{self.ulysses}r{self.ring}"


def _tokens(words: list[str], length: int):
    from visattn.words import PromptTokens

    return PromptTokens(" ".join(words), tuple(words), tuple((i,) for i in range(len(words))), (), length)


def _effects(names: tuple[str, ...], text_length: int, role: str, kernel_size: int | tuple[int, ...] = 3) -> list:
    """The named effects; ``role`` is where the grid effects act (``"self"`` for Wan, ``"joint"`` for Flux)."""
    import visattn

    source = [f"w{i}" for i in range(text_length)]
    target = [*source[:1], "x1", *source[2:]]
    makers = {
        "pag": lambda: visattn.PerturbedAttentionGuidance(scale=2.0, layers=role),
        "pag_head": lambda: visattn.PerturbedAttentionGuidance(scale=2.0, layers=role, heads={".": [1]}),
        "seg": lambda: visattn.SmoothedEnergyGuidance(scale=2.0, sigma=2.0, layers=role),
        "neighborhood": lambda: visattn.NeighborhoodAttention(kernel_size=kernel_size, layers=role),
        "radial": lambda: visattn.RadialAttention(dense_steps=None, block_size=4, decay_factor=0.2, layers=role),
        "decay": lambda: visattn.ExtrapolationDecay(train_size=2, factor=0.5, layers=role),
        "entropy": lambda: visattn.EntropyScaling(train_tokens=8, layers=role),
        "stg": lambda: visattn.SpatioTemporalSkipGuidance(scale=2.0, mode="identity", layers=role),
        "maps": lambda: visattn.AttentionMaps(prompt=_tokens(source, text_length), drop_special=False),
        "p2p": lambda: visattn.PromptToPrompt(
            _tokens(source, text_length), _tokens(target, text_length), cross_steps=1.0, self_steps=1.0
        ),
        "p2p_blend": lambda: visattn.PromptToPrompt(
            _tokens(source, text_length),
            _tokens(target, text_length),
            cross_steps=1.0,
            self_steps=1.0,
            local_blend=visattn.LocalBlend("x1"),
        ),
    }
    return [makers[name]() for name in names]


#: every effect a case may name
EFFECTS = (
    "pag", "pag_head", "seg", "stg", "neighborhood", "radial", "decay", "entropy", "maps", "p2p", "p2p_blend"
)  # fmt: skip

#: text tokens of the tiny inputs (even, so that a joint family's text splits across 2 ranks)
TEXT_TOKENS = 8


def _wan_inputs(generator: torch.Generator) -> dict[str, Any]:
    """A 3x8x8 latent video (3x4x4 tokens after 2x2 patches) and 8 text tokens, batch 2."""
    return {
        "hidden_states": torch.randn(2, 4, 3, 8, 8, generator=generator),
        "timestep": torch.tensor([500.0, 500.0]),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 32, generator=generator),
    }


def _flux_inputs(generator: torch.Generator) -> dict[str, Any]:
    """4x4 packed latent tokens with their (0, h, w) ids and 8 text tokens, batch 2."""
    height, width = 4, 4
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = torch.arange(height)[:, None]
    ids[..., 2] = torch.arange(width)[None, :]
    return {
        "hidden_states": torch.randn(2, height * width, 16, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 32, generator=generator),
        "pooled_projections": torch.randn(2, 32, generator=generator),
        "timestep": torch.full((2,), 0.5),
        "guidance": torch.full((2,), 3.5),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(TEXT_TOKENS, 3),
    }


@dataclass(frozen=True)
class _TinyModel:
    """A tiny denoiser of the core tiny pipelines, its inputs, and the role of its grid layers."""

    key: str
    inputs: Callable[[torch.Generator], dict[str, Any]]
    grid_role: str
    #: the tiny denoiser's key, where the case's key names a variant of its inputs (``None``: ``key``)
    denoiser: str | None = None
    #: text positions the text effects address (Framepack's image tokens join its text)
    text_length: int = TEXT_TOKENS
    #: NeighborhoodAttention's window (Framepack's 2-frame window cannot take 3 frames)
    kernel_size: int | tuple[int, ...] = 3


#: the models the cases run: Wan (self- and cross-attention, text replicated) and Flux (joint attention)
MODELS = (_TinyModel("wan", _wan_inputs, "self"), _TinyModel("flux", _flux_inputs, "joint"))


def _hunyuan_video_inputs(generator: torch.Generator) -> dict[str, Any]:
    """A 3x8x8 latent video (3x4x4 tokens after 2x2 patches) and 8 text tokens, the last 3 of the second row
    padding (the prompt mask the forward and its token refiner read must stay right on every rank), batch 2."""
    return {
        "hidden_states": torch.randn(2, 4, 3, 8, 8, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 32, generator=generator),
        "encoder_attention_mask": torch.tensor([[1] * TEXT_TOKENS, [1] * (TEXT_TOKENS - 3) + [0] * 3]),
        "pooled_projections": torch.randn(2, 32, generator=generator),
        "guidance": torch.full((2,), 6000.0),
    }


def _wan_vace_inputs(generator: torch.Generator) -> dict[str, Any]:
    """Wan's inputs with a control video of the same grid (24 channels: inactive + reactive latents and the folded
    mask), one VACE layer."""
    return {
        **_wan_inputs(generator),
        "control_hidden_states": torch.randn(2, 24, 3, 8, 8, generator=generator),
        "control_hidden_states_scale": torch.ones(1),
    }


def _motif_video_inputs(generator: torch.Generator) -> dict[str, Any]:
    """A 3x8x8 latent video with its text-to-video condition (zero reference latents and mask, 9 channels) and 8
    text tokens, the last 3 of the second row padding, batch 2."""
    latents = torch.randn(2, 4, 3, 8, 8, generator=generator)
    return {
        "hidden_states": torch.cat([latents, torch.zeros(2, 5, 3, 8, 8)], dim=1),
        "timestep": torch.tensor([500, 500]),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 32, generator=generator),
        "encoder_attention_mask": torch.tensor([[1] * TEXT_TOKENS, [1] * (TEXT_TOKENS - 3) + [0] * 3]),
    }


def _kandinsky5_inputs(generator: torch.Generator) -> dict[str, Any]:
    """A 4x8x8 latent video (4x4x4 tokens after 2x2 patches, frames split) with its text-to-video condition (zero
    reference latents and mask, 9 channels, ``[B, F, H, W, C]``), 8 text tokens and a pooled embedding, batch 2."""
    latents = torch.randn(2, 4, 8, 8, 4, generator=generator)
    return {
        "hidden_states": torch.cat([latents, torch.zeros(2, 4, 8, 8, 5)], dim=-1),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 32, generator=generator),
        "timestep": torch.tensor([500.0, 500.0]),
        "pooled_projections": torch.randn(2, 16, generator=generator),
        "visual_rope_pos": [torch.arange(4), torch.arange(4), torch.arange(4)],
        "text_rope_pos": torch.arange(TEXT_TOKENS),
        "scale_factor": (1.0, 2.0, 2.0),
    }


def _kandinsky6_inputs(generator: torch.Generator) -> dict[str, Any]:
    """Kandinsky 5's latent video and text (the last 3 text tokens of the second row padding, a boolean mask) with 3
    audio latent tokens (replicated on every rank, so 6 in each Ulysses call: not the text's 8, see the plan), batch
    2."""
    inputs = _kandinsky5_inputs(generator)
    return {
        "hidden_states": inputs["hidden_states"],
        "encoder_hidden_states": inputs["encoder_hidden_states"],
        "pooled_projections": inputs["pooled_projections"],
        "timestep": inputs["timestep"],
        "audio_hidden_states": torch.randn(2, 3, 4, generator=generator),
        "encoder_attention_mask": torch.tensor([[True] * TEXT_TOKENS, [True] * (TEXT_TOKENS - 3) + [False] * 3]),
    }


def _framepack_inputs(generator: torch.Generator) -> dict[str, Any]:
    """A 2x8x8 latent window (2x4x4 tokens) after its packed history (vanilla sampling: a clean prefix and 1x frame,
    2 frames at 2x, 8 at 4x: 32 + 4 + 2 tokens), 2 image tokens and 8 text tokens, the last 6 of the second row
    padding, batch 2: several rows, so the forward builds one key mask over [latents, condition], and its padding
    reaches into the first rank's share of the condition (the whole mask, not cut, would then mask other keys)."""
    prefix, i4, i2, i1, window = torch.arange(1 + 8 + 2 + 1 + 2).split([1, 8, 2, 1, 2])
    return {
        "hidden_states": torch.randn(2, 4, 2, 8, 8, generator=generator),
        "timestep": torch.tensor([500.0, 500.0]),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 32, generator=generator),
        "encoder_attention_mask": torch.tensor([[1] * TEXT_TOKENS, [1] * (TEXT_TOKENS - 6) + [0] * 6]),
        "pooled_projections": torch.randn(2, 32, generator=generator),
        "image_embeds": torch.randn(2, 2, 16, generator=generator),
        "indices_latents": window,
        "guidance": torch.full((2,), 10000.0),
        "latents_clean": torch.randn(2, 4, 2, 8, 8, generator=generator),
        "indices_latents_clean": torch.cat([prefix, i1]),
        "latents_history_2x": torch.randn(2, 4, 2, 8, 8, generator=generator),
        "indices_latents_history_2x": i2,
        "latents_history_4x": torch.randn(2, 4, 8, 8, 8, generator=generator),
        "indices_latents_history_4x": i4,
    }


def _framepack_one_row_inputs(generator: torch.Generator) -> dict[str, Any]:
    """:func:`_framepack_inputs`' second row alone: with one row the forward passes no key mask and crops the
    condition to its valid tokens (2 image and 2 text tokens)."""
    inputs = _framepack_inputs(generator)
    # The frame indices are shared by the batch (1-D, no batch axis).
    return {name: value if name.startswith("indices") else value[1:] for name, value in inputs.items()}


#: models split with the plan visattn ships for their family (diffusers ships none): HunyuanVideo (joint
#: [video, text] attention, both split after its token refiner), Wan-VACE (Wan with VACE control blocks) and
#: Motif-Video (joint [video, text] attention, text cross-attention and decoder blocks, a padded prompt)
MODELS += (
    _TinyModel("hunyuan_video", _hunyuan_video_inputs, "joint"),
    _TinyModel("wan_vace", _wan_vace_inputs, "self"),
    _TinyModel("motif_video", _motif_video_inputs, "joint"),
    _TinyModel("kandinsky5", _kandinsky5_inputs, "self"),
    _TinyModel("kandinsky6", _kandinsky6_inputs, "self"),
    # Framepack's text positions: its 2 image tokens, then the text
    _TinyModel("hunyuan_video_framepack", _framepack_inputs, "joint", text_length=10, kernel_size=(1, 3, 3)),
    _TinyModel(
        "framepack_one_row",
        _framepack_one_row_inputs,
        "joint",
        denoiser="hunyuan_video_framepack",
        text_length=10,
        kernel_size=(1, 3, 3),
    ),
)


def _minimax_h3_inputs(generator: torch.Generator) -> dict[str, Any]:
    """A packed [8 text | 6 audio (3 stereo latents) | 3x4x4 video] t2va sequence of 62 rows (even, so that diffusers'
    plan splits it across 2 ranks at the first block), batch 2."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import MiniMaxH3PrepareLayoutStep

    position_ids, token_tags, video_indices, audio_indices, text_indices, _, _ = (
        MiniMaxH3PrepareLayoutStep.build_packed_sequence(
            text_token_tags=torch.ones(TEXT_TOKENS, dtype=torch.long),
            num_latent_frames=3,
            latent_height=8,
            latent_width=8,
            num_audio_latents=3,
            patch_size=(1, 2, 2),
            audio_channels=2,
            audio_tag=2,
            video_tag=0,
        )
    )
    return {
        "hidden_states": torch.randn(2, video_indices.numel(), 96, generator=generator),  # 24 channels x 1x2x2
        "audio_hidden_states": torch.randn(2, audio_indices.numel(), 32, generator=generator),
        "encoder_hidden_states": torch.randn(2, TEXT_TOKENS, 32, generator=generator),
        "timestep": torch.tensor([0.4]),
        "timestep_indices": torch.zeros(position_ids.shape[0], dtype=torch.long),
        "token_tags": token_tags,
        "position_ids": position_ids,
        "video_indices": video_indices,
        "audio_indices": audio_indices,
        "text_indices": text_indices,
    }


#: MiniMax-H3 with diffusers' own plan, which splits its one packed sequence (text, audio and video rows scattered
#: into it) at the first block: its joint calls are one stream, gathered in sequence order
MODELS += (_TinyModel("minimax_h3", _minimax_h3_inputs, "joint"),)


def _model(key: str) -> _TinyModel:
    found = next((model for model in MODELS if model.key == key), None)
    if found is None:
        raise ValueError(f"model must be one of {[model.key for model in MODELS]}; got {key!r}")
    return found


def _model_and_inputs(key: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    from visattn.tiny import tiny_denoiser

    model = _model(key)
    inputs = model.inputs(torch.Generator().manual_seed(0))
    return tiny_denoiser(model.denoiser or key), {**inputs, "return_dict": False}


def _prediction(output: Any) -> np.ndarray:
    """The prediction of a ``return_dict=False`` forward: the first element of its tuple, or the bare tensor
    Kandinsky 5 returns (whose first element would be the first batch row only)."""
    prediction = output if isinstance(output, torch.Tensor) else output[0]
    return prediction.float().numpy()


def _run_case(model: torch.nn.Module, inputs: dict[str, Any], case: Case, parallel: Callable | None) -> dict:
    """Run one case; ``parallel`` enables context parallelism on the model (``None``: one process)."""
    import visattn

    tiny = _model(case.model)
    effects = _effects(case.effects, tiny.text_length, tiny.grid_role, tiny.kernel_size)
    handle = None
    if case.order == "before":
        handle = visattn.attach(model, *effects)
    if parallel is not None:
        parallel(model)
    if case.order == "after":
        handle = visattn.attach(model, *effects)
    result: dict[str, Any] = {}
    try:
        with torch.no_grad():
            result["output"] = _prediction(model(**inputs))
        maps = next((effect for effect in effects if isinstance(effect, visattn.AttentionMaps)), None)
        if maps is not None:
            per_word = maps.maps()
            result["maps"] = np.stack([per_word[word].float().numpy() for word in sorted(per_word)])
        blends = [effect.local_blend for effect in effects if getattr(effect, "local_blend", None) is not None]
        if blends:
            result["mask"] = blends[0].mask.float().numpy()
    except ValueError as error:
        result["error"] = str(error)
    finally:
        if handle is not None:
            handle.detach()
    if parallel is not None and case.order != "none":
        # Detach restores the stock context-parallel model exactly.
        with torch.no_grad():
            result["after_detach"] = _prediction(model(**inputs))
    return result


def parallel_cases(rank: int, world: int, cases: tuple[Case, ...]) -> dict[str, dict]:
    """Run every case on this rank, each on a fresh context-parallel model (a :func:`run_on_ranks` function)."""
    from diffusers import ContextParallelConfig

    from visattn.parallel import enable_context_parallelism

    if any(case.ring > 1 for case in cases):
        cpu_ring()
    results = {}
    for case in cases:
        model, inputs = _model_and_inputs(case.model)

        def parallel(model: torch.nn.Module, case: Case = case) -> None:
            config = ContextParallelConfig(ulysses_degree=case.ulysses, ring_degree=case.ring)
            # The class's own _cp_plan, or the one visattn ships for its family.
            enable_context_parallelism(model, config)

        results[case.name] = _run_case(model, inputs, case, parallel)
    return results


def single_process_case(case: Case) -> dict:
    """The case in this process, unsplit: the oracle of the context-parallel runs."""
    model, inputs = _model_and_inputs(case.model)
    return _run_case(model, inputs, case, None)


class CaseRuns:
    """The results of ``cases``: one split run on ``world`` processes (made on first use, shared by every test of
    a module) and each case's single-process oracle, both cached."""

    def __init__(self, cases: tuple[Case, ...], world: int = 2) -> None:
        self.cases, self.world = cases, world
        self._split: list[dict[str, dict]] | None = None
        self._single: dict[Case, dict] = {}

    def ranks(self, case: Case) -> list[dict]:
        """Each rank's results of ``case``."""
        if self._split is None:
            self._split = run_on_ranks(parallel_cases, self.cases, world=self.world)
        return [results[case.name] for results in self._split]

    def single(self, case: Case) -> dict:
        """``case`` in this process, unsplit."""
        if case not in self._single:
            self._single[case] = single_process_case(case)
        return self._single[case]


# --- a pipeline call, and gradients ----------------------------------------------------------------------------


def _wan_pipeline_images(effect_names: tuple[str, ...], parallel: Callable | None, two_stages: bool) -> np.ndarray:
    """The tiny Wan pipeline's video (CFG on: one named call per branch) with ``effect_names`` attached; with
    ``two_stages``, Wan 2.2's split: ``transformer`` for the high-noise steps, ``transformer_2`` for the rest."""
    import visattn
    from visattn.tiny import call_kwargs, tiny_denoiser, tiny_pipeline
    from visattn.tiny.video_pipelines import TEXT_TOKENS as PIPELINE_TEXT_TOKENS

    pipe = tiny_pipeline("wan")
    kwargs = call_kwargs("wan", guidance_scale=5.0)
    if two_stages:
        pipe.register_modules(transformer_2=tiny_denoiser("wan", seed=1))
        pipe.register_to_config(boundary_ratio=0.5)
        kwargs |= {"num_inference_steps": 4, "guidance_scale_2": 3.0}
    if parallel is not None:
        parallel(pipe.transformer)
        if two_stages:
            parallel(pipe.transformer_2)
    effects = _effects(effect_names, PIPELINE_TEXT_TOKENS, "self")
    with visattn.attach(pipe, *effects), torch.no_grad():
        return np.asarray(pipe(**kwargs).frames, dtype=np.float32)


def parallel_pipeline(rank: int, world: int, effect_names: tuple[str, ...], two_stages: bool = False) -> np.ndarray:
    """The tiny Wan pipeline on a Ulysses split of its transformer(s) (a :func:`run_on_ranks` function): every
    rank runs the same call with the same seed."""
    from diffusers import ContextParallelConfig

    def parallel(model: torch.nn.Module) -> None:
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))

    return _wan_pipeline_images(effect_names, parallel, two_stages)


def single_process_pipeline(effect_names: tuple[str, ...], two_stages: bool = False) -> np.ndarray:
    """:func:`parallel_pipeline` in this process, unsplit: its oracle."""
    return _wan_pipeline_images(effect_names, None, two_stages)


def _text_gradient(effect_names: tuple[str, ...], parallel: Callable | None) -> np.ndarray:
    """The gradient of a fixed projection of the tiny Wan transformer's output with respect to its text embeddings
    (what null-text inversion optimizes), with ``effect_names`` attached."""
    import visattn

    model, inputs = _model_and_inputs("wan")
    if parallel is not None:
        parallel(model)
    text = inputs["encoder_hidden_states"].clone().requires_grad_(True)
    weights = torch.randn(inputs["hidden_states"].shape, generator=torch.Generator().manual_seed(1))
    with visattn.attach(model, *_effects(effect_names, TEXT_TOKENS, "self")):
        out = model(**{**inputs, "encoder_hidden_states": text})[0]
    (out * weights).sum().backward()
    return text.grad.numpy()


def parallel_text_gradient(rank: int, world: int, effect_names: tuple[str, ...], ring: bool = False) -> np.ndarray:
    """:func:`_text_gradient` on a Ulysses split, or a ring split with ``ring`` (a :func:`run_on_ranks` function).
    The text is replicated, so each rank holds the part of the gradient that flows through its shard: summed over
    ranks, the whole gradient."""
    from diffusers import ContextParallelConfig

    if ring:
        cpu_ring()
    degrees = {"ring_degree": world} if ring else {"ulysses_degree": world}

    def parallel(model: torch.nn.Module) -> None:
        model.enable_parallelism(config=ContextParallelConfig(**degrees))

    return _text_gradient(effect_names, parallel)


def single_process_text_gradient(effect_names: tuple[str, ...]) -> np.ndarray:
    """:func:`parallel_text_gradient` in this process, unsplit: its oracle."""
    return _text_gradient(effect_names, None)
