"""Aligning a source prompt's text tokens with a target prompt's, for cross-attention control.

Prompt-to-Prompt (Hertz et al., 2022) copies the source prompt's cross-attention maps into the target prompt's
generation through a token mapping:

* word swap (``replace``): word ``i`` of the source takes the place of word ``i`` of the target; when the two
  words have different token counts, the source word's attention mass is spread evenly over the target word's
  tokens (the authors' ``get_replacement_mapper``).
* refinement (``refine``): words are added or removed, so the words are aligned first by a global alignment
  (Needleman-Wunsch with the authors' scores: match +1, mismatch -1, gap 0, i.e. a longest common subsequence of
  words); target words with no source counterpart keep their own maps (the authors' ``get_refinement_mapper``,
  which aligns token ids the same way).

The authors align the token ids of the prompt alone and map the padding after it position by position. Here the
text sequence can hold more than one tokenizer's tokens (SD3 appends T5 tokens to CLIP's) and template tokens
(HunyuanVideo), so the mapping is built around anchors: the token runs of aligned word pairs. The tokens that
belong to no word between two anchors (end-of-text, padding, the start of the next tokenizer's part, template
tokens) are matched from both ends inward, so the structure next to the words stays aligned and only the padding
in the middle shifts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .words import PromptTokens

# The authors' alignment scores (``seq_aligner.ScoreParams(gap=0, match=1, mismatch=-1)``).
GAP, MATCH, MISMATCH = 0, 1, -1


def align_words(source: Sequence[str], target: Sequence[str]) -> tuple[int | None, ...]:
    """For each target word, the index of the source word aligned with it, or ``None`` (an added word).

    A Needleman-Wunsch global alignment with the scores of Hertz et al. (match +1, mismatch -1, gap 0): since a
    mismatch scores below two gaps, only equal words (compared case-insensitively) are ever aligned, and the
    alignment is a longest common subsequence. Ties go to the earliest match, as in the authors' traceback.

    >>> align_words(["a", "cat"], ["a", "fluffy", "cat"])
    (0, None, 1)
    >>> align_words(["a", "fluffy", "cat"], ["a", "cat"])
    (0, 2)
    """
    src = [word.lower() for word in source]
    tgt = [word.lower() for word in target]
    rows, cols = len(src) + 1, len(tgt) + 1
    score = [[0] * cols for _ in range(rows)]
    for i in range(1, rows):
        score[i][0] = score[i - 1][0] + GAP
    for j in range(1, cols):
        score[0][j] = score[0][j - 1] + GAP
    for i in range(1, rows):
        for j in range(1, cols):
            diagonal = score[i - 1][j - 1] + (MATCH if src[i - 1] == tgt[j - 1] else MISMATCH)
            score[i][j] = max(score[i][j - 1] + GAP, score[i - 1][j] + GAP, diagonal)
    mapping: list[int | None] = [None] * len(tgt)
    i, j = len(src), len(tgt)
    # Walk back preferring a gap in the source (target word unaligned), then a dropped source word, then the
    # diagonal: among equally good alignments this keeps the earliest matches, like the authors' traceback.
    while i > 0 and j > 0:
        if score[i][j] == score[i][j - 1] + GAP:
            j -= 1
        elif score[i][j] == score[i - 1][j] + GAP:
            i -= 1
        else:
            if src[i - 1] == tgt[j - 1]:
                mapping[j - 1] = i - 1
            i, j = i - 1, j - 1
    return tuple(mapping)


@dataclass(frozen=True)
class TokenMap:
    """How target text positions take their attention from source text positions.

    Target position ``target_index[k]`` receives ``weight[k]`` times the source's probability at
    ``source_index[k]`` (a target position may receive several terms: a swapped word with fewer tokens).

    Attributes:
        length: the text sequence length (the same for source and target).
        source_index, target_index, weight: the terms of the mapping.
        mapped: per target position, whether any source position maps to it; unmapped positions (the tokens of
            added words) keep the target's own attention.
    """

    length: int
    source_index: tuple[int, ...]
    target_index: tuple[int, ...]
    weight: tuple[float, ...]
    mapped: tuple[bool, ...]

    @classmethod
    def identity(cls, length: int) -> TokenMap:
        positions = tuple(range(length))
        return cls(length, positions, positions, (1.0,) * length, (True,) * length)

    def tensors(
        self, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(source_index, target_index, weight, mapped)`` as tensors on ``device``."""
        return (
            torch.tensor(self.source_index, dtype=torch.long, device=device),
            torch.tensor(self.target_index, dtype=torch.long, device=device),
            torch.tensor(self.weight, dtype=torch.float32, device=device),
            torch.tensor(self.mapped, dtype=torch.bool, device=device),
        )

    def source_of(self, target_position: int) -> tuple[int, ...]:
        """The source positions that feed ``target_position`` (empty for an unmapped position)."""
        return tuple(s for s, t in zip(self.source_index, self.target_index) if t == target_position)


def _runs(positions: Sequence[int]) -> list[list[int]]:
    """Contiguous runs of sorted positions: one run per part of the text sequence a word appears in."""
    runs: list[list[int]] = []
    for position in sorted(positions):
        if runs and position == runs[-1][-1] + 1:
            runs[-1].append(position)
        else:
            runs.append([position])
    return runs


def _match_inward(source: list[int], target: list[int]) -> list[tuple[int, int]]:
    """Pairs matching two gaps from both ends toward the middle (the surplus in the middle stays unmatched)."""
    count = min(len(source), len(target))
    head = (count + 1) // 2
    tail = count - head
    pairs = list(zip(source[:head], target[:head]))
    if tail:
        pairs += list(zip(source[len(source) - tail :], target[len(target) - tail :]))
    return pairs


def token_map(source: PromptTokens, target: PromptTokens, word_pairs: Sequence[tuple[int, int]]) -> TokenMap:
    """The token-level mapping induced by aligned word pairs ``(source word index, target word index)``.

    Each aligned word's token runs (one per tokenizer part of the sequence) are paired in order; runs of equal
    length map token to token, otherwise every source token of the run feeds every target token with weight
    ``1 / len(target run)`` (the authors' word-swap rule, which keeps the word's total attention mass). Tokens of
    no word are matched between consecutive anchors from both ends inward (see the module docstring).

    Raises:
        ValueError: the two prompts were tokenized for text sequences of different lengths.
    """
    if source.length != target.length:
        raise ValueError(
            f"source and target text sequences differ in length ({source.length} vs {target.length}); "
            "tokenize both prompts for the same pipeline call"
        )
    terms: list[tuple[int, int, float]] = []
    anchors: list[tuple[int, int, int, int]] = []  # (source start, source stop, target start, target stop)
    for s_word, t_word in word_pairs:
        for s_run, t_run in zip(_runs(source.word_tokens[s_word]), _runs(target.word_tokens[t_word])):
            if len(s_run) == len(t_run):
                terms += [(s, t, 1.0) for s, t in zip(s_run, t_run)]
            else:
                terms += [(s, t, 1.0 / len(t_run)) for s in s_run for t in t_run]
            anchors.append((s_run[0], s_run[-1] + 1, t_run[0], t_run[-1] + 1))
    anchors.sort()
    source_words = {p for positions in source.word_tokens for p in positions}
    target_words = {p for positions in target.word_tokens for p in positions}
    s_prev = t_prev = 0
    for s_start, s_stop, t_start, t_stop in [*anchors, (source.length, source.length, target.length, target.length)]:
        if t_start < t_prev:
            # A non-monotone anchor (an alignment crossing another); its gap is empty.
            continue
        s_gap = [p for p in range(s_prev, s_start) if p not in source_words]
        t_gap = [p for p in range(t_prev, t_start) if p not in target_words]
        terms += [(s, t, 1.0) for s, t in _match_inward(s_gap, t_gap)]
        s_prev, t_prev = max(s_prev, s_stop), max(t_prev, t_stop)
    terms.sort(key=lambda term: (term[1], term[0]))
    mapped = [False] * target.length
    for _, t, _ in terms:
        mapped[t] = True
    return TokenMap(
        length=target.length,
        source_index=tuple(s for s, _, _ in terms),
        target_index=tuple(t for _, t, _ in terms),
        weight=tuple(w for _, _, w in terms),
        mapped=tuple(mapped),
    )


def word_pairs(source: Sequence[str], target: Sequence[str], mode: str) -> list[tuple[int, int]]:
    """Aligned ``(source word, target word)`` index pairs: position by position for ``"replace"`` (same word
    count required), by :func:`align_words` for ``"refine"``.

    Raises:
        ValueError: ``"replace"`` with different word counts (naming the words; ``refine`` handles that), or an
            unknown ``mode``.
    """
    if mode == "replace":
        if len(source) != len(target):
            raise ValueError(
                f"replace (a word swap) needs as many words in the target as in the source; the source has "
                f"{len(source)} {list(source)} and the target {len(target)} {list(target)}. To add or remove "
                "words use PromptToPrompt.refine(source, target, ...)"
            )
        return [(i, i) for i in range(len(source))]
    if mode == "refine":
        return [(s, t) for t, s in enumerate(align_words(source, target)) if s is not None]
    raise ValueError(f"mode={mode!r} is not one of 'replace', 'refine'")
