"""The base class of every visattn effect and the mutable description of one attention call it acts on.

An effect contributes to an :class:`AttentionCall` in one of a few ways, following FlexAttention's split:
a pattern (which pairs attend), a score modifier (how logits change), an output blend (per-head identity
interpolation), changes to q/k/v, or a finished output. Effects that need the whole denoiser call (extra batch
branches for guidance, latent blending for edits) override :meth:`Effect.wrap_denoiser`. An effect that may answer
for a whole attention layer before anything is projected (a cache, as TGATE) overrides
:meth:`Effect.wrap_attention`; the layer's hook (:class:`visattn.interception.AttentionLayerHook`) calls it with
``call()`` computing the layer. Editing or reading the softmax's probabilities goes through the attention core's
probability stage (:attr:`AttentionCall.editors`, :attr:`AttentionCall.reads`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..context import CallContext, StepInfo
from ..kernels import Pattern, ScoreModifier, all_of, chain, run_request
from ..kernels.core import dense_attention
from ..kernels.probabilities import Editor, ProbabilityRead, serve_reads
from ..kernels.request import AttentionRequest
from ..layers import FAMILY_DEFAULT, ROLE_KEYWORDS, normalize_layers, select_layers
from ..steps import in_steps, normalize_steps

#: a function of a call's queries and keys returning the ones it attends with (see
#: :meth:`Effect.query_key_transform`)
QueryKeyTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _unchanged_query_key(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return q, k


#: :meth:`Effect.query_key_transform`'s answer for a call the effect leaves alone
UNCHANGED_QUERY_KEY: QueryKeyTransform = _unchanged_query_key

#: a function called at each attention call an effect only reads, returning the blocks of the call's final
#: probabilities it reads there, or ``None`` when it cannot say without its full path (see
#: :meth:`Effect.probability_reads`)
ProbabilityReader = Callable[[], Sequence[ProbabilityRead] | None]


def _no_reads() -> tuple[ProbabilityRead, ...]:
    return ()


#: :meth:`Effect.probability_reads`'s answer for a call the effect leaves alone
NO_READS: ProbabilityReader = _no_reads


@dataclass
class AttentionCall:
    """One attention call as effects see it; :meth:`run` sends it through the attention core."""

    ctx: CallContext
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    attn_mask: torch.Tensor | None = None
    patterns: list[Pattern] = field(default_factory=list)
    score_mods: list[ScoreModifier] = field(default_factory=list)
    identity_blend: torch.Tensor | None = None
    scale: float | None = None
    backend: str = "auto"
    use_dispatcher: bool = False
    dispatcher_backend: Any = None
    #: set by an effect that computed the attention output itself (``[B, H, Nq, Dv]``); the core is skipped.
    output: torch.Tensor | None = None
    #: natural-log log-sum-exp of the logits ``[B, H, Nq]`` the output was computed with, when known.
    lse: torch.Tensor | None = None
    #: the probability stage (:mod:`visattn.kernels.probabilities`): editors change the softmax's probabilities
    #: before they weight the values (Prompt-to-Prompt), reads receive blocks of the final probabilities
    #: (attention maps); the core runs both.
    editors: list[Editor] = field(default_factory=list)
    reads: list[ProbabilityRead] = field(default_factory=list)
    #: callbacks ``observer(call)`` run once the output is known (after the reads)
    observers: list[Callable[[AttentionCall], None]] = field(default_factory=list)
    #: a backward recomputation of a call already answered (context parallelism's Ulysses backward, see
    #: :mod:`visattn.parallel`): effects compute it as before but collect nothing again (maps, masks)
    replay: bool = False
    #: rows whose queries and keys are already those of another row (``{row: source row}``), as effects asked
    #: before the processor ran (:meth:`Effect.shared_query_key_rows`); empty otherwise
    shared_rows: dict[int, int] = field(default_factory=dict)

    def request(self, return_lse: bool = False) -> AttentionRequest:
        return AttentionRequest(
            q=self.q,
            k=self.k,
            v=self.v,
            pattern=all_of(self.patterns),
            score_mod=chain(self.score_mods),
            attn_mask=self.attn_mask,
            scale=self.scale,
            identity_blend=self.identity_blend,
            return_lse=return_lse,
            use_dispatcher=self.use_dispatcher,
            dispatcher_backend=self.dispatcher_backend,
            editors=tuple(self.editors),
            reads=tuple(self.reads),
        )

    def run(self) -> torch.Tensor:
        if self.output is None:
            if (
                not self.patterns
                and not self.score_mods
                and not self.editors
                and not self.reads
                and self.identity_blend is None
            ):
                # Plain attention over (maybe changed) q, k and v: the core's dense path, with the fewest steps.
                out = dense_attention(
                    self.q,
                    self.k,
                    self.v,
                    self.attn_mask,
                    self.scale,
                    self.backend,
                    self.use_dispatcher,
                    self.dispatcher_backend,
                )
                self.output, self.lse = out, None
            else:
                self.output, self.lse = run_request(self.request(), self.backend)
        elif self.reads:
            # The stock computation answered (only reads acted): serve them from the call's own logits.
            serve_reads(self.request(), self.reads, self.lse)
        for observer in self.observers:
            observer(self)
        return self.output


def _recording_init(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap a subclass constructor so that the outermost call records its arguments (for :meth:`Effect.copy_with`)
    and marks the instance constructed (after which a class with ``frozen_parameters`` refuses changes)."""

    @functools.wraps(init)
    def constructor(self: Effect, *args: Any, **kwargs: Any) -> None:
        outermost = "_constructing" not in self.__dict__
        if outermost:
            object.__setattr__(self, "_constructing", True)
        try:
            init(self, *args, **kwargs)
        finally:
            if outermost:
                object.__delattr__(self, "_constructing")
        if outermost:
            object.__setattr__(self, "_arguments", (type(self), _snapshot((args, kwargs))))
            object.__setattr__(self, "_constructed", True)

    return constructor


def _snapshot(value: Any) -> Any:
    """``value`` with its containers (dicts, lists, sets, tuples, nested) copied: a dict or list the user changes
    after construction must not leak into a copy or a pickle. What the containers hold is kept as given, so a
    LocalBlend or a callable stays the same object in every copy (they are configurations themselves)."""
    if type(value) is dict:
        return {key: _snapshot(item) for key, item in value.items()}
    if type(value) in (list, tuple, set, frozenset):
        return type(value)(_snapshot(item) for item in value)
    return value


def _rebuild(cls: type, args: tuple, kwargs: dict) -> Effect:
    """An effect built again from its constructor arguments (how frozen effects copy and pickle)."""
    return cls(*args, **kwargs)


class LayerRoles(Mapping[str, str]):
    """What :meth:`Effect.bind` sees of the model being attached: its attention layers' static roles
    (``name -> role``, in model order), the model's ``family``, and the attachment's run states (``runs``, by
    ``id(effect)``), so that ``effect.run_of(roles)`` reaches the effect's run state at bind."""

    def __init__(self, roles: Mapping[str, str], family: Any, runs: Mapping[int, Any]) -> None:
        self._roles = dict(roles)
        self.family = family
        self.runs = runs

    def __getitem__(self, name: str) -> str:
        return self._roles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._roles)

    def __len__(self) -> int:
        return len(self._roles)

    def __repr__(self) -> str:
        return f"LayerRoles({self._roles!r}, family={getattr(self.family, 'name', self.family)!r})"


class Effect:
    """Base class of visattn effects.

    An effect is a configuration a user can reuse: its constructor validates the parameters, which are fixed once
    it returns (:attr:`frozen_parameters`; :meth:`copy_with` builds a changed copy). What it learns while attached
    (layers, caches, counters, collected results) goes in its run state, one per attachment (:meth:`new_run`,
    reached with :meth:`run_of`), so one effect attached to several pipelines acts as independent copies.

    Args:
        layers: identifiers as in diffusers' ``pag_applied_layers`` plus ``"self"``/``"cross"``/``"joint"``
            (see :mod:`visattn.layers`); ``None`` acts on every layer of the roles in :attr:`roles`;
            ``FAMILY_DEFAULT`` (perturbation guidance) the attached model family's default, resolved per
            attachment.
        steps: a fraction ``f`` (the first ``f`` of the schedule) or a ``(start, stop)`` fraction range.
    """

    #: the roles this effect acts on when ``layers`` does not say otherwise
    roles: tuple[str, ...] = ("self", "cross", "joint")
    #: whether an instance's attributes are fixed once its constructor returns (see :meth:`copy_with`); an effect
    #: keeps what it learns at run time in its per-attachment run state (:meth:`new_run`), never on itself
    frozen_parameters: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__dict__["__init__"])

    def __setattr__(self, name: str, value: Any) -> None:
        self._refuse_change(name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        self._refuse_change(name)
        object.__delattr__(self, name)

    def _refuse_change(self, name: str) -> None:
        if type(self).frozen_parameters and self.__dict__.get("_constructed", False):
            raise AttributeError(
                f"{type(self).__name__}.{name} cannot change: an effect's parameters are fixed once it is built, "
                f"since one effect may be attached to several pipelines; build another with "
                f"effect.copy_with({name}=...)"
            )

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A frozen effect is its configuration: copies and pickles rebuild it from its constructor arguments (checked
        # again), leaving out what it holds for its attachments (a read-only mapping or a weak set would not pickle).
        if type(self).frozen_parameters and "_arguments" in self.__dict__:
            cls, (args, kwargs) = self.__dict__["_arguments"]
            return _rebuild, (cls, args, kwargs)
        return super().__reduce_ex__(protocol)

    def copy_with(self, **changes: Any) -> Effect:
        """A new effect of the same class with the same constructor arguments except ``changes`` (validated by the
        constructor as usual). Raises TypeError naming a parameter the constructor does not take."""
        cls, arguments = self.__dict__["_arguments"]
        signature = inspect.signature(cls.__init__)
        unknown = sorted(set(changes) - set(signature.parameters) - {"self"})
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
        if unknown and not takes_any:
            raise TypeError(
                f"{cls.__name__}.copy_with: no parameter {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(name for name in signature.parameters if name != 'self')}"
            )
        bound = signature.bind_partial(None, *arguments[0], **arguments[1])
        given = dict(bound.arguments)
        given.pop(next(iter(signature.parameters)))  # self
        args, kwargs = [], {}
        for name, value in {**given, **changes}.items():
            kind = signature.parameters[name].kind if name in signature.parameters else inspect.Parameter.KEYWORD_ONLY
            if kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            elif kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[name] = value
        return cls(*args, **kwargs)

    def __init__(self, *, layers: str | Iterable[str] | None = None, steps=None) -> None:
        # FAMILY_DEFAULT (perturbation guidance) stays as given: each attachment resolves it against its own
        # model (layers_for), so one effect attached to an SD and an SD3 pipeline perturbs each one's default.
        self.layers = FAMILY_DEFAULT if layers is FAMILY_DEFAULT else normalize_layers(layers)
        # The roles a call must have at run time: the role keywords of ``layers``, else the effect's own roles.
        # Checked on every call too, since a module's static role can miss what its calls are (a new-style
        # attention module does not say that it is cross-attention). A family's default names no role keyword.
        explicit = () if self.layers is FAMILY_DEFAULT else self.layers or ()
        self._call_roles = tuple(layer for layer in explicit if layer in ROLE_KEYWORDS) or self.roles
        self.steps = normalize_steps(steps)

    # --- attach time -------------------------------------------------------------------------------------
    def layers_for(self, roles: Mapping[str, str]) -> tuple[str, ...] | None:
        """``layers`` for the model being attached (``roles``: a :class:`LayerRoles`): ``FAMILY_DEFAULT`` becomes
        the model family's default (:meth:`visattn.families.Family.default_pag_layers`); nothing is stored."""
        if self.layers is not FAMILY_DEFAULT:
            return self.layers
        family = getattr(roles, "family", None)
        if family is None:
            raise ValueError(
                f"{type(self).__name__}(layers=FAMILY_DEFAULT) is resolved against the attached model's family; "
                "bind it through visattn.attach"
            )
        return normalize_layers(family.default_pag_layers(dict(roles)))

    def use_family_defaults(self, family: Any, roles: Mapping[str, str]) -> None:
        """An attach-time check of the model's family (``roles``: its attention layers' static roles), before
        :meth:`bind`: raise ValueError to refuse a family the effect cannot work with. Nothing is stored on the
        effect; ``layers=FAMILY_DEFAULT`` is resolved per attachment by :meth:`layers_for`."""

    def needs(self) -> tuple[str, ...]:
        """The family facts this effect cannot work without (``"grid"``, ``"text"``, ``"words"``; see
        :meth:`visattn.families.Family.missing`): :func:`visattn.attach` refuses a model whose family lacks one."""
        return ()

    def bind(self, roles: Mapping[str, str]) -> frozenset[str]:
        """The attention layers this effect acts on among a denoiser's (``roles``: a :class:`LayerRoles`,
        ``name -> static role``): ``layers`` resolved. The attachment keeps the answer, so one effect attached to
        several pipelines acts on each one's own selection. What an override learns here belongs in the
        attachment's run state (``self.run_of(roles)``), never on the effect.

        Raises ValueError listing the available layers when an identifier matches nothing.
        """
        return frozenset(select_layers(roles, self.layers_for(roles), f"{type(self).__name__}(layers=...)"))

    def new_run(self) -> Any:
        """A fresh object for what this effect learns and keeps at run time in one attachment (caches, collected
        maps, per-generation masks, counters); ``None`` when it keeps nothing. :func:`visattn.attach` makes one per
        attachment, so one effect attached to several pipelines acts as several independent copies; call-time
        code reaches it with :meth:`run_of`."""
        return None

    def run_of(self, where: Any) -> Any:
        """This effect's run state in the attachment ``where`` belongs to: a :class:`~visattn.context.CallContext`,
        a :class:`~visattn.state.DenoiserState`, a :class:`LayerRoles` (at bind) or an
        :class:`~visattn.attachment.Attachment`.

        Raises KeyError when this effect is not part of that attachment (a call context built by hand).
        """
        try:
            return where.runs[id(self)]
        except KeyError:
            raise KeyError(
                f"{type(self).__name__} has no run state here: it is not one of the effects attached where this call "
                "runs (attach it with visattn.attach)"
            ) from None

    def attached(self, run: Any, roles: Mapping[str, str], pipeline: Any) -> Callable[[], None] | None:
        """Attach-time work of one attachment once its hooks are in place: fill ``run`` (this effect's run state
        there), hook what the effect needs on the pipeline (``None`` for a bare denoiser); returns what undoes it
        on detach. By default :meth:`prepare_pipeline`."""
        return self.prepare_pipeline(pipeline) if pipeline is not None else None

    def detached(self, run: Any) -> None:
        """Free what ``run`` (this effect's run state in an attachment being detached) holds that is of no use
        after detach (TGATE's caches); what a user reads after a generation (collected maps) stays readable."""

    def prepare_pipeline(self, pipeline: Any) -> Callable[[], None] | None:
        """Adjust the attached pipeline before it runs (Prompt-to-Prompt gives every prompt the same initial
        noise); returns what undoes it on detach, or ``None`` when the effect changes nothing there."""
        return None

    # --- call time -----------------------------------------------------------------------------------------
    def acts_on(self, ctx: CallContext) -> bool:
        # The layer is one this effect was bound to: a layer's hook holds only the effects that act on it.
        if ctx.role not in self._call_roles:
            return False
        return in_steps(self.steps, ctx.step.fraction)

    def apply(self, call: AttentionCall) -> None:
        """Contribute to one attention call (pattern, score modifier, blend, q/k/v, or output)."""

    def identity_only_rows(self, ctx: CallContext) -> slice | None:
        """The batch rows this effect's :meth:`apply` answers by their values in a call with context ``ctx`` (an
        identity blend of weight exactly 1 on every head and query), when that is all it does there: it reads no
        row's queries or keys and sets nothing else. ``slice(0, 0)`` when it does nothing in such a call; ``None``
        (the default) when it may do anything.

        Asked before the stock processor runs: when every effect of a layer answers, the layer's hook lets the
        processor project queries and keys for the other rows only, as diffusers' PAG processors do
        (:meth:`visattn.interception.AttentionLayerHook._plan_rows`).
        """
        return None

    def shared_query_key_rows(self, ctx: CallContext) -> dict[int, int] | None:
        """The batch rows whose attention this effect computes with another row's queries and keys in a call with
        context ``ctx``, as ``{row: source row}``, when that is all it does there (given :attr:`AttentionCall.
        shared_rows` holding them, its :meth:`apply` changes nothing); ``{}`` when it does nothing in such a call;
        ``None`` (the default) when it may do anything.

        Asked before the stock processor runs, as :meth:`identity_only_rows`: the layer's hook may then let the
        processor project those rows' queries and keys as copies of their source rows' (Prompt-to-Prompt's target
        rows attend with their source rows' queries and keys), instead of the effect copying them in the call.
        """
        return None

    def shared_query_span(self, ctx: CallContext) -> slice | None:
        """The queries at which the rows :meth:`shared_query_key_rows` names attend with their source rows' queries
        and keys, as a range of the call's queries; ``None`` (the default): every query. Asked only where that
        method named rows. The other queries of those rows attend with their own (in a joint call, Prompt-to-Prompt
        shares the image queries and leaves the text queries to the target's own)."""
        return None

    def query_key_transform(self, ctx: CallContext) -> QueryKeyTransform | None:
        """What this effect's :meth:`apply` does in a call with context ``ctx`` when all it does there is replace
        the call's queries and keys by a function of them (SEG blurs its rows' queries): that function, ``(q, k) ->
        (q, k)`` (new tensors; the given ones are never written to), or :data:`UNCHANGED_QUERY_KEY` when it does
        nothing in such a call; ``None`` (the default) when it may do anything.

        Asked once per call shape and plan facts (see :meth:`row_plan_key`), at the SDPA call: where every effect
        acting on a call answers, the layer's hook answers it with the stock SDPA function over the transformed
        queries and keys, without building the call's context each time."""
        return None

    def probability_reads(self, ctx: CallContext, device: torch.device) -> ProbabilityReader | None:
        """What this effect's :meth:`apply` does in a call with context ``ctx`` (its tensors on ``device``) when all
        it does there is read the call's final probabilities (:class:`~visattn.kernels.probabilities.ProbabilityRead`:
        attention maps): a function called at each such call returning the reads its :meth:`apply` would add, or
        ``None`` where it cannot say without running :meth:`apply` (its per-prompt plan is not made yet: that call
        takes the full path); :data:`NO_READS` when it does nothing in such a call; ``None`` (the default) when it
        may do anything.

        Asked once per call shape and plan facts (see :meth:`row_plan_key`), at the SDPA call: where every effect
        acting on a call answers this or :meth:`query_key_transform`, the layer's hook answers it with the stock
        SDPA function (over the transformed queries and keys) and serves the reads from that call's queries and
        keys, as the attention core serves reads of a call the stock computation answered, without building the
        call's context each time. Facts of the denoiser call (its prompt) are then not seen per attention call:
        an effect that checks them does so in :meth:`read_denoiser_call`."""
        return None

    def probability_editors(self, ctx: CallContext, device: torch.device) -> Sequence[Editor] | None:
        """What this effect's :meth:`apply` does in a call with context ``ctx`` (its tensors on ``device``) when all
        it does there is add editors of the call's probabilities (:attr:`AttentionCall.editors`: Prompt-to-Prompt's
        cross-attention edits, :class:`~visattn.kernels.probabilities.LinearEdit` s): those editors, the same
        objects for every such call; ``()`` when it does nothing in such a call; ``None`` (the default) when it may
        do anything.

        Asked as :meth:`probability_reads` is: where every effect acting on a call answers one of these methods and
        some adds editors, the layer's hook sends the call with them (and the reads) to the attention core directly,
        without building the call's context each time."""
        return None

    def row_plan_key(self, step: StepInfo) -> Hashable:
        """What of the denoiser's ``step`` decides this effect's answers to :meth:`acts_on`,
        :meth:`identity_only_rows` and :meth:`shared_query_key_rows`, beside the call's shapes, batch layout and the
        denoiser's inputs (grid, text length), which the layer's hook keys its plans by too. A layer reuses the plan
        it made for a call while every effect's key stays the same, asking the effects again when one changes.

        The default, the step itself, plans again at every step; an effect whose answers change at a few steps
        returns what they depend on (whether its step windows are open). Read once per denoiser call, and only of
        effects that override one of the two row methods.
        """
        return step

    def read_denoiser_call(self, state: Any) -> None:
        """Read facts of the running denoiser call (``state``: its :class:`~visattn.state.DenoiserState`) before it
        runs, once per call where the attachment acts; effects that only read such facts (AttentionMaps reads the
        pipeline call's prompt) override this rather than :meth:`wrap_denoiser`, since attention calls answered
        from a layer's plans (:meth:`probability_reads`) build no context that would carry them. May raise to
        refuse the call."""

    @property
    def reads_denoiser_call(self) -> bool:
        return type(self).read_denoiser_call is not Effect.read_denoiser_call

    def wrap_denoiser(self, forward: Callable[..., Any], args: tuple, kwargs: dict, state: Any) -> Any:
        """Run one denoiser call; effects that add batch branches or post-process predictions override this."""
        return forward(*args, **kwargs)

    @property
    def plans_rows(self) -> bool:
        """Whether this effect may say, before the processor runs or at its SDPA call, what it does there in a form the
        layer's hook plans (it overrides :meth:`identity_only_rows`, :meth:`shared_query_key_rows`,
        :meth:`query_key_transform`, :meth:`probability_reads` or :meth:`probability_editors`): its answers are then
        keyed by :meth:`row_plan_key`."""
        cls = type(self)
        return (
            cls.identity_only_rows is not Effect.identity_only_rows
            or cls.shared_query_key_rows is not Effect.shared_query_key_rows
            or cls.query_key_transform is not Effect.query_key_transform
            or cls.probability_reads is not Effect.probability_reads
            or cls.probability_editors is not Effect.probability_editors
        )

    @property
    def wraps_denoiser(self) -> bool:
        return type(self).wrap_denoiser is not Effect.wrap_denoiser

    def wrap_attention(self, call: Callable[[], Any], hidden_states: torch.Tensor, layer_name: str, state: Any) -> Any:
        """Run one attention layer's forward (``call()``), before anything is projected; an effect that may answer
        for a whole layer call (a cache: :class:`~visattn.effects.CrossAttentionCache`) overrides this."""
        return call()

    @property
    def wraps_attention(self) -> bool:
        return type(self).wrap_attention is not Effect.wrap_attention

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layers={self.layers}, steps={self.steps})"
