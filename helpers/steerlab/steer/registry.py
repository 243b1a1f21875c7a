"""ONE steering contract, and the registry of steering methods by name (SAELens registers its SAE
architectures as config/class pairs by name; this module does the same for steering methods).

The contract
------------
A method is built once from ``(model, saes, config)`` by :func:`build` (``saes`` maps hook name -> SAE; a
config holds the features or vectors, positions and anything fitted) and then answers for a **signed strength**:

* ``method.hooks(strength) -> [(hook_name, fn)]``: forward hooks for ``with model.hooks(fwd_hooks=...)``
  (decoding methods return ``[]``);
* ``method.answer(examples, strength) -> list[str]``: the decoded greedy answers with the method applied
  (hook methods: :func:`steerlab.steer.decoding.greedy` under ``hooks(strength)``; decoding methods change how
  the answer is decoded). Examples are duck-typed (``prompt``, ``max_new_tokens``).

The sign of ``strength`` is the direction for methods with two (knowledge source: ``> 0`` toward context,
``< 0`` toward memory); its size is the method's own strength:

=============  ==========  ==================================================================================
name           kind        what ``strength`` s does
=============  ==========  ==================================================================================
``none``       hooks       nothing (the unsteered model)
``amplify``    features    ``X' = X + s z_S(X) W_dec[S]``                       (Wu et al. amplification)
``calibrate``  features    ``X' = X - z_S(X) W_dec[S] + s mean(W_dec[S])``      (Wu et al. calibration)
``clamp``      features    ``X' = X + (s - z_S(X)) W_dec[S]``
``add``        features    ``X' = X + s sum(W_dec[S])``
``enforce``    features    the released code's defence with magnitude ``m = s`` (:mod:`steerlab.steer.released`)
``actadd``     vector      ``X' = X + s v`` (v: one prompt pair's difference)
``meandiff``   vector      ``X' = X + s v`` (v: mean difference of two groups)
``learned``    vector      ``X' = X + |s| v_sign(s)`` (one fitted vector per direction)
``spare``      spare       SPARE's edit with ``alpha = |s|``, toward context for ``s > 0``, memory for ``s < 0``
``cad``        decoding    context-aware decoding with ``a = s``
``icl``        decoding    demonstrations answered with the context (``s > 0``) or memory (``s < 0``) value
=============  ==========  ==================================================================================

``z_S`` and ``W_dec`` are as in :mod:`steerlab.steer.features`. :func:`names` lists the methods (of a
``kind``); :func:`register` adds one.

Checks: :func:`build` with a ``model`` refuses a config whose hook the model lacks (naming the closest hooks it
has); ``hooks`` and ``answer`` refuse a NaN or infinite ``strength``; feature ids must be integers in
``[0, d_sae)`` of the hook's SAE (:mod:`steerlab.core.hooks`, checks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Sequence

from torch import Tensor

from steerlab.core.hooks import Hook, add_vector, check_hook_names, check_positions, check_strength
from steerlab.steer import decoding, features as feat, released, spare as spare_mod

KINDS = ("hooks", "features", "vector", "spare", "decoding")


# ---------------------------------------------------------------------------------------------- configs
@dataclass
class NoConfig:
    """The unsteered model: no fields."""


@dataclass
class FeatureConfig:
    """A feature edit at one hook through that hook's SAE."""

    hook_name: str  # TransformerLens hook the SAE reads and the edit writes
    features: Sequence[int]  # S: SAE feature ids (non-empty)
    positions: str = "all"  # steerlab.core.hooks.POSITIONS
    read: str = "encoder"  # how z_S is read: steerlab.steer.features.READS

    def __post_init__(self) -> None:
        if len(self.features) == 0:
            raise ValueError("the feature set S is empty: pick at least one feature")
        check_positions(self.positions)
        if self.read not in feat.READS:
            raise ValueError(f"read must be one of {feat.READS} (got {self.read!r})")


@dataclass
class EnforceConfig:
    """The released code's defence (``steerlab.steer.released``) at one hook through that hook's SAE."""

    hook_name: str  # TransformerLens hook the SAE reads and the edit writes
    features: Sequence[int]  # S: SAE feature ids (non-empty)
    positions: str = "all"  # steerlab.core.hooks.POSITIONS (the released code: every position)

    def __post_init__(self) -> None:
        if len(self.features) == 0:
            raise ValueError("the feature set S is empty: pick at least one feature")
        check_positions(self.positions)


@dataclass
class VectorConfig:
    """A vector added at one hook; ``negative`` (optional) is used instead of ``-vector`` for strengths < 0."""

    hook_name: str  # TransformerLens hook the vector is added to
    vector: Tensor  # [d_model]
    positions: str = "last_prompt"  # steerlab.core.hooks.POSITIONS
    negative: Tensor | None = None  # [d_model]: the vector toward the other direction (learned vectors)

    def __post_init__(self) -> None:
        check_positions(self.positions)
        if self.vector.ndim != 1:
            raise ValueError(f"vector must be [d_model] (got shape {tuple(self.vector.shape)})")


@dataclass
class SpareConfig:
    """SPARE's fitted features and targets (``steerlab.steer.spare.fit_layers``)."""

    fits: Sequence  # SpareFit per edited layer
    positions: str = "last_prompt"  # where the edit applies (SPARE: the last prompt position)

    def __post_init__(self) -> None:
        check_positions(self.positions)
        if not self.fits:
            raise ValueError("SPARE needs at least one fitted layer (steerlab.steer.spare.fit_layers)")


@dataclass
class CADConfig:
    """Context-aware decoding: how to drop the context from a prompt."""

    free_prompt: Callable  # example -> the same question without its context


@dataclass
class ICLConfig:
    """In-context demonstrations: solved examples with both answers."""

    demos: Sequence  # examples with meta["context_value"] and meta["memory_value"]
    n_demos: int = 3  # demonstrations put before each query
    separator: str = "\n\n"  # text between demonstrations and the query

    def __post_init__(self) -> None:
        if self.n_demos < 1 or len(self.demos) < self.n_demos:
            raise ValueError(f"ICL needs n_demos >= 1 demos (got n_demos={self.n_demos}, {len(self.demos)} demos)")


# ---------------------------------------------------------------------------------------------- methods
class SteeringMethod:
    """Base class: a method built from ``(model, saes, cfg)``; subclasses set ``kind`` and ``hooks``."""

    kind: ClassVar[str] = "hooks"

    def __init__(self, model, saes: Mapping[str, object] | None, cfg) -> None:
        self.model, self.saes, self.cfg = model, dict(saes or {}), cfg
        if model is not None:  # a hook the model lacks fails here, not at the first forward pass
            names = [cfg.hook_name] if hasattr(cfg, "hook_name") else []
            check_hook_names(model, names + [f.hook_name for f in getattr(cfg, "fits", ())])

    def hooks(self, strength: float) -> list[Hook]:
        return []

    def answer(self, examples: Sequence, strength: float) -> list[str]:
        return decoding.greedy(self.model, examples, self.hooks(strength))

    def _sae(self, hook_name: str):
        if hook_name not in self.saes:
            raise KeyError(f"no SAE for {hook_name}: pass saes={{{hook_name!r}: sae}} (have {sorted(self.saes)})")
        return self.saes[hook_name]


class NoSteering(SteeringMethod):
    pass


class _FeatureMethod(SteeringMethod):
    kind = "features"
    edit: ClassVar[Callable]

    def hooks(self, strength: float) -> list[Hook]:
        c, strength = self.cfg, check_strength(strength)
        return type(self).edit(c.hook_name, self._sae(c.hook_name), c.features, strength, c.positions, read=c.read)


class Amplify(_FeatureMethod):
    edit = staticmethod(feat.amplify)


class Calibrate(_FeatureMethod):
    edit = staticmethod(feat.calibrate)


class Clamp(_FeatureMethod):
    edit = staticmethod(feat.clamp)


class Add(_FeatureMethod):
    def hooks(self, strength: float) -> list[Hook]:
        c, strength = self.cfg, check_strength(strength)
        return feat.add(c.hook_name, self._sae(c.hook_name), c.features, strength, c.positions)


class Enforce(SteeringMethod):
    kind = "features"

    def hooks(self, strength: float) -> list[Hook]:
        c, strength = self.cfg, check_strength(strength)
        return released.enforce(c.hook_name, self._sae(c.hook_name), c.features, strength, c.positions)


class VectorMethod(SteeringMethod):
    kind = "vector"

    def hooks(self, strength: float) -> list[Hook]:
        c, strength = self.cfg, check_strength(strength)
        if strength < 0 and c.negative is not None:
            return add_vector(c.hook_name, c.negative, -strength, c.positions)
        return add_vector(c.hook_name, c.vector, strength, c.positions)


class Spare(SteeringMethod):
    kind = "spare"

    def hooks(self, strength: float) -> list[Hook]:
        strength = check_strength(strength)
        saes = {f.hook_name: self._sae(f.hook_name) for f in self.cfg.fits}
        toward = "context" if strength >= 0 else "memory"
        return spare_mod.spare_hooks(self.cfg.fits, saes, abs(strength), toward, self.cfg.positions)


class CAD(SteeringMethod):
    kind = "decoding"

    def answer(self, examples: Sequence, strength: float) -> list[str]:
        return decoding.cad(self.model, examples, self.cfg.free_prompt, check_strength(strength))


class ICL(SteeringMethod):
    kind = "decoding"

    def answer(self, examples: Sequence, strength: float) -> list[str]:
        key = "context_value" if check_strength(strength) >= 0 else "memory_value"
        demos = [(d.prompt, d.meta[key]) for d in list(self.cfg.demos)[: self.cfg.n_demos]]
        return decoding.icl(self.model, examples, demos, self.cfg.separator)


# ---------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Entry:
    """A registered method: its class and its config class."""

    method: type[SteeringMethod]
    config: type


REGISTRY: dict[str, Entry] = {}


def register(name: str, method: type[SteeringMethod], config: type) -> None:
    """Register a steering method class and its config class under ``name``."""
    if name in REGISTRY:
        raise ValueError(f"a steering method named {name!r} is already registered")
    if method.kind not in KINDS:
        raise ValueError(f"{method.__name__}.kind must be one of {KINDS} (got {method.kind!r})")
    REGISTRY[name] = Entry(method, config)


for _name, _method, _config in (("none", NoSteering, NoConfig), ("amplify", Amplify, FeatureConfig),
                                ("calibrate", Calibrate, FeatureConfig), ("clamp", Clamp, FeatureConfig),
                                ("add", Add, FeatureConfig), ("enforce", Enforce, EnforceConfig),
                                ("actadd", VectorMethod, VectorConfig),
                                ("meandiff", VectorMethod, VectorConfig), ("learned", VectorMethod, VectorConfig),
                                ("spare", Spare, SpareConfig), ("cad", CAD, CADConfig), ("icl", ICL, ICLConfig)):
    register(_name, _method, _config)


def names(kind: str | None = None) -> list[str]:
    """Registered method names (of one ``kind`` if given), in registration order."""
    return [n for n, e in REGISTRY.items() if kind is None or e.method.kind == kind]


def build(name: str, model=None, saes: Mapping[str, object] | None = None, **config) -> SteeringMethod:
    """The method ``name`` built from ``model``, ``saes`` and its config fields (``REGISTRY[name].config``)."""
    if name not in REGISTRY:
        raise KeyError(f"no steering method {name!r}; registered: {names()}")
    entry = REGISTRY[name]
    return entry.method(model, saes, entry.config(**config))
