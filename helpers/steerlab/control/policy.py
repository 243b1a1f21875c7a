"""The control model of CRL (Cho, Wu, Koshiyama, arXiv 2602.10437): a small policy that steers a frozen LM by
adding one SAE feature per token.

MDP, per generated token t and per controlled layer l (``blocks.{l}.hook_resid_post``):

* state  ``x_t`` = the residual stream at layer l at the current token, ``Float[d_model]``;
* action ``a_t`` = ``k`` SAE features (k = 1 by default) chosen among a candidate set (the *adaptive mask*,
  :func:`candidates`): ``mask="active"`` allows the features the SAE finds active at the current token,
  ``mask="all"`` every feature;
* effect ``x'_t = x_t + coef * sum_{a in a_t} W_dec[a]``.

By default (``noop=False``) this is the paper's action: one SAE feature is *always* added, at every steered token.
``noop=True`` is steerlab's variant: an extra action index ``d_sae`` means "no steering" (adds nothing), is always
allowed, and is what the KL reference policy favours (``noop_prior``). Action indices: ``0 .. d_sae - 1`` are SAE
features, ``d_sae`` is the no-op (present iff ``cfg.noop``).

The paper names its mask *Adaptive Feature Masking* ("encourages diverse feature discovery while preserving
single-feature interpretability") without defining it in any text reachable here; the authors' public steering hook
(github.com/seonglae/CorrSteer, ``corrsteer/steer.py``) hands the policy a running mean of the SAE codes of the
steered tokens so far in the generation, i.e. features active at the current token *or an earlier steered one*.
``mask="active"`` uses the current token only. See notebook 04, section 1.

Multi-layer control uses **one policy head per layer** (separate small MLPs, one value head each): each layer has
its own SAE and so its own dictionary of actions, so a shared trunk would share nothing semantic across the
output spaces, and separate heads keep each layer's choices readable on their own. The heads act in layer
order inside one forward pass, so a later layer's state already contains the earlier layers' edits.

Hooks steer the **last position of every forward call**: with the KV cache on (``evaluate.complete`` default,
and :func:`steerlab.rl.rollout`) that is the current token at every generation step, prompt included.

A checkpoint folder holds ``cfg.json`` (the :class:`ControlConfig`, ``noop`` included, with fingerprints of the SAEs
and model it was trained on) and ``policy.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from jaxtyping import Bool, Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from steerlab.core.activations import encoder_preactivation, fingerprint
from steerlab.core.hooks import check_features, check_strength
from steerlab.core.hooks import hook_name_for as hook_name  # re-exported: notebook 04 and rl.py use control.hook_name

MASK_RULES = ("active", "all")
log = logging.getLogger(__name__)


@dataclass
class ControlConfig:
    """A control policy: which layers it steers, its action space and its network sizes."""

    layers: tuple[int, ...] = (2,)  # residual layers steered (blocks.{l}.hook_resid_post), one head each
    d_model: int = 128  # residual stream width of the model
    d_sae: int = 512  # SAE dictionary size (same for every controlled layer)
    d_hidden: int = 256  # hidden width of the policy and value MLPs
    k: int = 1  # features added per token and layer (top-k; 1 keeps each step one readable feature)
    mask: str = "active"  # adaptive candidate mask: "active" (features active at the token) or "all"
    coef: float = 30.0  # steering coefficient c in x' = x + c W_dec[a] (residual-stream units)
    noop: bool = False  # False: the paper's action, a feature is always added; True: add a "no steering" action
    noop_prior: float = 0.9  # noop=True only: mass of the no-op in the reference policy of the KL penalty
    noop_init: float = 0.0  # noop=True only: initial logit of the no-op (features start at 0); > 0 starts near "no steering"
    sae_fingerprints: dict = field(default_factory=dict)  # str(layer) -> fingerprint of that SAE's W_dec
    model_fingerprint: str = ""  # fingerprint of the model's W_U ("" = not recorded)

    def __post_init__(self) -> None:
        self.layers = tuple(int(x) for x in self.layers)
        if not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0:
            raise ValueError(f"ControlConfig.layers must be distinct non-negative layer indices (got {self.layers})")
        for name in ("d_model", "d_sae", "d_hidden", "k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ControlConfig.{name} must be positive (got {getattr(self, name)})")
        if self.mask not in MASK_RULES:
            raise ValueError(f"ControlConfig.mask must be one of {MASK_RULES} (got {self.mask!r})")
        if self.k > self.d_sae:
            raise ValueError(f"ControlConfig.k={self.k} exceeds d_sae={self.d_sae}")
        if not 0.0 < self.noop_prior < 1.0:
            raise ValueError(f"ControlConfig.noop_prior must lie in (0, 1) (got {self.noop_prior})")
        check_strength(self.coef, "ControlConfig.coef")

    @property
    def n_actions(self) -> int:
        return self.d_sae + int(self.noop)


class Action(NamedTuple):
    """What a policy head did for a batch of states.

    Attributes:
        actions: ``[batch, k]`` chosen action indices (``d_sae`` = the no-op, only when ``cfg.noop``).
        logp: ``[batch]`` log-probability of the chosen set (Plackett-Luce for k > 1).
        entropy: ``[batch]`` entropy of the first draw's distribution.
        kl: ``[batch]`` KL(pi || reference) of the first draw's distribution.
        value: ``[batch]`` value estimate of the state.
    """

    actions: Int[Tensor, "batch k"]
    logp: Float[Tensor, " batch"]
    entropy: Float[Tensor, " batch"]
    kl: Float[Tensor, " batch"]
    value: Float[Tensor, " batch"]


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.Tanh(), nn.Linear(d_hidden, d_hidden), nn.Tanh(),
                         nn.Linear(d_hidden, d_out))


class ControlPolicy(nn.Module):
    """Policy and value heads, one pair per controlled layer (``heads[str(l)]``, ``values[str(l)]``).

    The state is RMS-normalised before the MLPs (residual norms grow with depth), so one learning rate fits
    every layer.
    """

    def __init__(self, cfg: ControlConfig):
        super().__init__()
        self.cfg = cfg
        self.heads = nn.ModuleDict({str(l): _mlp(cfg.d_model, cfg.d_hidden, cfg.n_actions) for l in cfg.layers})
        self.values = nn.ModuleDict({str(l): _mlp(cfg.d_model, cfg.d_hidden, 1) for l in cfg.layers})
        for head in self.heads.values():  # start near uniform over the candidates
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
            if cfg.noop:
                with torch.no_grad():
                    head[-1].bias[-1] = cfg.noop_init

    @staticmethod
    def _norm(x: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch d_model"]:
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6)

    def logits(self, layer: int, x: Float[Tensor, "batch d_model"], cand: Bool[Tensor, "batch n_actions"]
               ) -> Float[Tensor, "batch n_actions"]:
        """Action logits with non-candidates set to -inf."""
        return self.heads[str(layer)](self._norm(x)).masked_fill(~cand, float("-inf"))

    def value(self, layer: int, x: Float[Tensor, "batch d_model"]) -> Float[Tensor, " batch"]:
        return self.values[str(layer)](self._norm(x)).squeeze(-1)

    def reference_logp(self, cand: Bool[Tensor, "batch n_actions"]) -> Float[Tensor, "batch n_actions"]:
        """log pi_ref: with ``noop``, ``noop_prior`` on the no-op and the rest uniform over the other candidates
        (the penalty pulls toward "no steering"). Without a no-op (the paper's action) there is no "no steering" to
        pull toward and the reference is uniform over the candidates, so ``KL(pi || ref) = log |C| - H(pi)``: the
        penalty is then one more entropy bonus (tested)."""
        n_feat = cand[:, : self.cfg.d_sae].sum(-1, keepdim=True).clamp(min=1)
        if self.cfg.noop:
            ref = torch.where(cand, (1 - self.cfg.noop_prior) / n_feat, torch.zeros(()))
            ref[:, -1] = self.cfg.noop_prior
        else:
            ref = cand.float() / n_feat
        return ref.clamp(min=1e-12).log()

    def evaluate(self, layer: int, x: Float[Tensor, "batch d_model"], cand: Bool[Tensor, "batch n_actions"],
                 actions: Int[Tensor, "batch k"]) -> Action:
        """Log-probability, entropy, KL and value for given actions (used by the PPO update)."""
        logits = self.logits(layer, x, cand)
        logp_all = logits.log_softmax(-1)
        p = logp_all.exp()
        ent = -(p * logp_all.nan_to_num(0.0, neginf=0.0)).sum(-1)
        kl = (p * (logp_all - self.reference_logp(cand)).nan_to_num(0.0, neginf=0.0)).sum(-1)
        logp = torch.zeros(x.shape[0])
        taken = torch.zeros_like(cand)
        for j in range(actions.shape[1]):  # Plackett-Luce: draw j excludes the earlier draws
            lp = logits.masked_fill(taken, float("-inf")).log_softmax(-1)
            logp = logp + lp.gather(-1, actions[:, j: j + 1]).squeeze(-1)
            taken = taken.scatter(-1, actions[:, j: j + 1], True)
        return Action(actions, logp, ent, kl, self.value(layer, x))

    def act(self, layer: int, x: Float[Tensor, "batch d_model"], cand: Bool[Tensor, "batch n_actions"],
            greedy: bool = False, generator: torch.Generator | None = None) -> Action:
        """Choose ``k`` actions per state: the top-k logits (greedy) or a Gumbel top-k sample."""
        logits = self.logits(layer, x, cand)
        k = min(self.cfg.k, int(cand.sum(-1).min()))
        if not greedy:
            u = torch.rand(logits.shape, generator=generator).clamp(1e-9, 1 - 1e-9)
            logits = logits - torch.log(-torch.log(u))
        actions = logits.topk(k, -1).indices
        return self.evaluate(layer, x, cand, actions)


def candidates(sae, x: Float[Tensor, "batch d_model"], rule: str, noop: bool, k: int = 1
               ) -> Bool[Tensor, "batch n_actions"]:
    """The adaptive feature mask: which actions are allowed at each state, ``[batch, d_sae (+1 with noop)]``.

    ``rule="all"``: every feature. ``rule="active"``: the features with a positive SAE code at ``x``. With ``noop``
    the no-op (last column) is always allowed, so the mask is never empty. Without it (the paper's action: a
    feature is always added) the mask must offer ``k`` features: where fewer than ``k`` are active (a ReLU or
    JumpReLU SAE at a quiet token, a TopK SAE whose top pre-activations are all <= 0) it is topped up with the
    features of highest encoder pre-activation (:func:`steerlab.core.activations.encoder_preactivation`), the
    ones nearest to firing, so the policy never faces an empty (all ``-inf``, NaN) distribution.
    """
    if rule == "all":
        cand = torch.ones(x.shape[0], sae.W_dec.shape[0], dtype=torch.bool)
    elif rule == "active":
        with torch.no_grad():
            cand = sae.encode(x) > 0
            short = cand.sum(-1) < k
            if not noop and bool(short.any()):
                pre = encoder_preactivation(sae, x[short]).masked_fill(cand[short], float("inf"))
                top = pre.topk(k, -1).indices  # the active ones first (+inf), then the highest pre-activations
                cand[short] = cand[short].scatter(-1, top, True)
    else:
        raise ValueError(f"unknown mask rule {rule!r}; use one of {MASK_RULES}")
    if noop:
        cand = torch.cat([cand, torch.ones(x.shape[0], 1, dtype=torch.bool)], -1)
    return cand


def steer(x: Float[Tensor, "batch d_model"], W_dec: Float[Tensor, "d_sae d_model"], actions: Int[Tensor, "batch k"],
          coef: float) -> Float[Tensor, "batch d_model"]:
    """``x + coef * sum_k W_dec[actions]``; index ``d_sae`` (the no-op of a ``noop`` policy) adds nothing."""
    padded = torch.cat([W_dec, torch.zeros(1, W_dec.shape[1], dtype=W_dec.dtype)])
    return x + coef * padded[actions].sum(1)


@dataclass
class Trace:
    """Per-call records a policy hook appends to (one entry per hook call, in call order).

    Each entry: ``layer``, ``x`` ``[batch, d_model]`` the state, ``cand`` ``[batch, n_actions]``, and the
    :class:`Action`. During generation, call ``j`` of a layer is generation step ``j``.
    """

    steps: list = field(default_factory=list)

    def clear(self) -> None:
        self.steps.clear()


def _as_dict(saes, layers) -> dict:
    if not isinstance(saes, dict):
        if len(layers) != 1:
            raise ValueError(f"the policy steers layers {layers}: pass saes as a dict layer -> SAE")
        saes = {layers[0]: saes}
    missing = [l for l in layers if l not in saes]
    if missing:
        raise ValueError(f"no SAE given for controlled layer(s) {missing}")
    return saes


def policy_hooks(policy: ControlPolicy, saes, greedy: bool = True, trace: Trace | None = None,
                 generator: torch.Generator | None = None, override: Callable | None = None
                 ) -> list[tuple[str, callable]]:
    """Hooks that let ``policy`` steer the model: ``[(blocks.{l}.hook_resid_post, fn)]`` for each layer.

    ``saes`` is a dict layer -> SAE (or one SAE for a one-layer policy). Each hook edits the last position of
    its input (the current token under the KV cache). ``greedy`` takes the policy's top-k; otherwise it
    samples. Every call is appended to ``trace`` when one is given. ``override(layer, call, actions)``, when
    given, may replace the chosen actions ``[batch, k]`` of the ``call``-th call of that layer's hook since the
    hooks were made (in one batch of generation, call ``j`` is step ``j``) by returning new ones, or return None to
    keep them: the branch-point analysis
    (:func:`steerlab.evals.control.branch_points`) swaps one token's feature this way. Apply with
    ``model.hooks(fwd_hooks=...)``.
    """
    cfg = policy.cfg
    saes = _as_dict(saes, cfg.layers)
    hooks = []
    n_calls = {layer: 0 for layer in cfg.layers}
    for layer in cfg.layers:
        sae = saes[layer]

        def fn(resid, hook, layer=layer, sae=sae):
            x = resid[:, -1].detach()
            cand = candidates(sae, x, cfg.mask, cfg.noop, cfg.k)
            with torch.no_grad():
                out = policy.act(layer, x, cand, greedy, generator)
            call, n_calls[layer] = n_calls[layer], n_calls[layer] + 1
            if override is not None:
                new = override(layer, call, out.actions)
                if new is not None:
                    out = out._replace(actions=new.to(out.actions))
            if trace is not None:
                trace.steps.append({"layer": layer, "x": x, "cand": cand, "action": out})
            resid = resid.clone()
            resid[:, -1] = steer(x, sae.W_dec.detach(), out.actions, cfg.coef)
            return resid

        hooks.append((hook_name(layer), fn))
    return hooks


def feature_hooks(sae, layer: int, feature: int, coef: float) -> list[tuple[str, callable]]:
    """Fixed steering with one feature: add ``coef * W_dec[feature]`` at the last position of every call
    (``feature`` an integer in ``[0, d_sae)``, ``coef`` finite; a negative ``coef`` subtracts the feature)."""
    [feature] = check_features([feature], sae.W_dec.shape[0], "feature")
    direction = check_strength(coef, "coef") * sae.W_dec[feature].detach()

    def fn(resid, hook):
        resid = resid.clone()
        resid[:, -1] = resid[:, -1] + direction
        return resid

    return [(hook_name(layer), fn)]


def new_policy(cfg: ControlConfig, saes, model=None, seed: int = 0) -> ControlPolicy:
    """A fresh policy for these SAEs (and model), recording their fingerprints in the config."""
    saes = _as_dict(saes, cfg.layers)
    cfg = dataclasses.replace(cfg, sae_fingerprints={str(l): fingerprint(saes[l].W_dec) for l in cfg.layers},
                              model_fingerprint=fingerprint(model.W_U) if model is not None else "")
    for l in cfg.layers:
        if tuple(saes[l].W_dec.shape) != (cfg.d_sae, cfg.d_model):
            raise ValueError(f"SAE of layer {l} has W_dec {tuple(saes[l].W_dec.shape)}; the config says "
                             f"(d_sae, d_model) = ({cfg.d_sae}, {cfg.d_model})")
    torch.manual_seed(seed)
    return ControlPolicy(cfg)


def save_policy(policy: ControlPolicy, path: str | Path, **extra) -> Path:
    """Write ``cfg.json`` (config + ``extra`` metadata such as training stats) and ``policy.safetensors``,
    atomically (:func:`steerlab.core.runs.atomic_folder`): a failed save leaves the previous policy as it was."""
    from steerlab.core.runs import atomic_folder

    path = Path(path)
    with atomic_folder(path) as tmp:
        save_file({k: v.detach().contiguous() for k, v in policy.state_dict().items()}, str(tmp / "policy.safetensors"))
        (tmp / "cfg.json").write_text(json.dumps({"config": dataclasses.asdict(policy.cfg), **extra}, indent=1))
    return path


def load_policy(path: str | Path, sae=None, model=None, noop: bool | None = None) -> ControlPolicy:
    """Load a policy folder; refuse an SAE (or dict layer -> SAE) or model other than those it was trained on.

    The action space comes from ``cfg.json`` (``noop``: whether index ``d_sae`` is a "no steering" action), so a
    policy trained with a no-op is loaded with one. ``noop`` (when given) is the action space the caller expects:
    a policy of the other kind is refused, as are weights whose action count does not match their ``cfg.json``.
    """
    path = Path(path)
    try:
        spec = json.loads((path / "cfg.json").read_text())
        cfg = ControlConfig(**spec["config"])
        state = load_file(str(path / "policy.safetensors"))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, SafetensorError) as err:
        raise ValueError(f"{path} is not a control-policy folder (cfg.json + policy.safetensors): {err}") from err
    if noop is not None and cfg.noop != noop:
        raise ValueError(f"policy {path} was trained with noop={cfg.noop} ("
                         f"{'a no-op action beside the features' if cfg.noop else 'a feature always added'}); this run "
                         f"asks for noop={noop}: load a policy trained with noop={noop} or retrain it")
    policy = ControlPolicy(cfg)
    want = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    if want != {k: tuple(v.shape) for k, v in state.items()}:
        raise ValueError(f"policy {path}: policy.safetensors does not fit its cfg.json (d_sae={cfg.d_sae}, noop="
                         f"{cfg.noop}: {cfg.n_actions} actions per head); a cfg.json without \"noop\" predates the "
                         "paper-action default (add \"noop\": true for a no-op policy) or retrain")
    if sae is not None:
        saes = _as_dict(sae, cfg.layers)
        for l in cfg.layers:
            got = fingerprint(saes[l].W_dec)
            if got != cfg.sae_fingerprints.get(str(l)):
                raise ValueError(f"policy {path} was trained on another SAE for layer {l} (fingerprint "
                                 f"{cfg.sae_fingerprints.get(str(l))}, given {got}); load the SAE named in "
                                 f"its cfg.json or retrain the policy")
    if model is not None:
        if model.cfg.d_model != cfg.d_model or max(cfg.layers) >= model.cfg.n_layers:
            raise ValueError(f"policy {path} needs d_model={cfg.d_model} and layers {cfg.layers}; the model has "
                             f"d_model={model.cfg.d_model}, {model.cfg.n_layers} layers")
        if cfg.model_fingerprint and fingerprint(model.W_U) != cfg.model_fingerprint:
            raise ValueError(f"policy {path} was trained on another model (W_U fingerprint differs); "
                             "use the model it was trained on or retrain the policy")
    policy.load_state_dict(state)
    policy.eval()
    return policy


def load_policies(policy_dir: str | Path, saes, model=None) -> dict[str, ControlPolicy]:
    """Every policy folder ``policy_dir/<name>/`` (a relative path is taken from the repository root) that fits
    ``saes`` (dict layer -> SAE) and ``model``, by folder name; a policy trained on other SAEs or another model is
    skipped with a logged warning that says why."""
    from steerlab.core.runs import REPO_ROOT

    root = Path(policy_dir) if Path(policy_dir).is_absolute() else Path(REPO_ROOT) / policy_dir
    policies = {}
    for folder in sorted(p.parent for p in root.glob("*/cfg.json")):
        try:
            policies[folder.name] = load_policy(folder, sae=saes, model=model)
        except (ValueError, KeyError) as err:
            log.warning("skipping policy %s: %s", folder, err)
    return policies


def rebind(policy: ControlPolicy, saes, layer_map: dict[int, int], model=None) -> ControlPolicy:
    """A copy of ``policy`` whose head for layer ``l`` steers layer ``layer_map[l]`` instead (layers not in the
    map keep their place), with the SAEs ``saes`` (dict layer -> SAE) of the new layers.

    This is the universality probe of CRL: the head keeps its weights, so it reads the new layer's residual
    stream as if it were the old one and picks action *indices*; those index the new SAE's dictionary, whose
    features are unrelated unless the SAEs share a basis. It is only defined where shapes allow: the new SAEs must
    have ``W_dec`` of shape ``(d_sae, d_model)`` of the policy (a ``ValueError`` says which does not). The new
    config records the new SAEs' (and model's) fingerprints, so :func:`load_policy` checks the rebound policy
    against them.
    """
    cfg = policy.cfg
    unknown = [l for l in layer_map if l not in cfg.layers]
    if unknown:
        raise ValueError(f"layer_map moves layer(s) {unknown} that the policy does not steer (it steers {cfg.layers})")
    new_layers = tuple(int(layer_map.get(l, l)) for l in cfg.layers)
    if len(set(new_layers)) != len(new_layers):
        raise ValueError(f"layer_map {layer_map} sends two heads to one layer ({cfg.layers} -> {new_layers})")
    saes = _as_dict(saes, new_layers)
    for old, new in zip(cfg.layers, new_layers):
        shape = tuple(saes[new].W_dec.shape)
        if shape != (cfg.d_sae, cfg.d_model):
            raise ValueError(f"cannot move the head of layer {old} to layer {new}: that SAE has W_dec {shape}, the "
                             f"policy's actions index (d_sae, d_model) = ({cfg.d_sae}, {cfg.d_model}); use an SAE of "
                             "that width or train a policy for it")
    if model is not None and (model.cfg.d_model != cfg.d_model or max(new_layers) >= model.cfg.n_layers):
        raise ValueError(f"the rebound policy needs d_model={cfg.d_model} and layers {new_layers}; the model has "
                         f"d_model={model.cfg.d_model}, {model.cfg.n_layers} layers")
    out = new_policy(dataclasses.replace(cfg, layers=new_layers), saes, model)  # records the new fingerprints
    if model is None:
        out.cfg.model_fingerprint = cfg.model_fingerprint
    rename = {str(o): str(n) for o, n in zip(cfg.layers, new_layers)}
    state = {}
    for key, value in policy.state_dict().items():
        kind, layer, rest = key.split(".", 2)  # heads.<layer>.<param> / values.<layer>.<param>
        state[f"{kind}.{rename[layer]}.{rest}"] = value.clone()
    out.load_state_dict(state)
    out.eval()
    return out
