"""Checking attribution graphs by intervention, the ground-truth source path, and the control-model analysis.

* Faithfulness: ablate each of a graph's top feature nodes in the local replacement model (SAE errors
  frozen, everything downstream recomputed, attention live) and compare the actual change of the target
  logit with the change the graph predicts (minus the node's total attribution along the graph's edges).
* Ground truth: on the knowledge-conflict task the answer depends on the source marker (``trusted`` /
  ``rumor`` / ``report``); the pruned graph must hold a path from that token through a knowledge-source
  feature (one whose activation tells the sources apart on held-out prompts) to the answer logit.
* Ground truth on any model: the pruned graph of a fact or conflict prompt must hold a path from the *subject*
  token (the last token of ``meta['subject']``, placed by decoded token offsets) to the answer logit
  (:func:`subject_path_survey`).
* Control model and universality: which SAE features a control policy picks and where, and how they
  relate to the directions end-to-end RL fine-tuning changed (needs ``steerlab.control``).
* :func:`feature_explanations` (the MI words on feature nodes) and :func:`summary` (notebook 05's metrics).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import networkx as nx
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from steerlab.circuits.graph import (AttributionGraph, GraphConfig, build_graph, frozen_hook_names, prune,
                                     token_position)
from steerlab.circuits.io import to_networkx
from steerlab.explain import mi as explain
from steerlab.world import SOURCES, Example, World


def feature_explanations(model: HookedTransformer, saes: Mapping[int, object], words: Sequence[str] | None = None,
                         n_words: int = 5) -> dict[tuple[int, int], str]:
    """``{(layer, feature): "w1 w2 ..."}``: the MI explanation words (``steerlab.explain``) of every feature,
    over ``words`` (default: ``explain``'s default vocabulary; tinyworld passes its world's lexicon)."""
    cfg = explain.ExplainConfig(top_n=n_words)
    out = {}
    for l, sae in saes.items():
        ex = explain.explain(model, sae, words=words, cfg=cfg, progress=False)
        out.update({(l, f): " ".join(ws) for f, ws in enumerate(ex.all_words(n_words))})
    return out


def answer_token(model: HookedTransformer, prompt: str, answer: str) -> int:
    """The first token the model would write for ``answer`` after ``prompt`` (tokenised together, so a
    subword tokenizer's leading-space piece is found as the model sees it)."""
    n = model.to_tokens(prompt).shape[1]
    return int(model.to_tokens(prompt + " " + answer.strip())[0, n])



# ------------------------------------------------------------------------------------------- faithfulness
def predicted_ablation_effects(graph: AttributionGraph, edge_mask: Tensor | None = None,
                               logit_index: int = 0) -> Float[Tensor, "n_feat"]:
    """Change of target logit ``logit_index`` the graph predicts when each feature is set to zero.

    The graph is linear: ``d logit / d a_s`` is the sum over paths of edge weights divided by the
    activations of the intermediate features (an edge is ``a_s * d pre_t / d a_s`` and an active
    feature passes ``pre_t`` on unchanged), so ablating ``s`` changes the logit by ``-a_s d logit / d a_s``.
    ``edge_mask`` (from :func:`steerlab.graph.prune`) restricts the paths to the kept edges."""
    A = graph.adjacency_matrix if edge_mask is None else graph.adjacency_matrix * edge_mask
    F = graph.n_features
    scaled = A.clone()
    scaled[:F] = A[:F] / graph.activation_values[:, None]  # row t: d pre_t / d a_s * a_s / a_t
    w = torch.zeros(A.shape[0])
    w[graph.logit_offset + logit_index] = 1.0
    total = torch.zeros(A.shape[0])
    current = w
    for _ in range(A.shape[0]):
        current = current @ scaled
        if not current.any():
            break
        total += current
    return -total[:F]


def replacement_hooks(saes: Mapping[int, object], graph: AttributionGraph, ablate: Sequence[int]) -> list:
    """Hooks splicing every SAE with its clean error frozen; batch row ``b`` zeroes feature node ``ablate[b]``
    (an index into ``graph.active_features``; -1 ablates nothing)."""
    feats = graph.active_features
    hooks = []
    for l in graph.layers:
        rows = [(b, int(feats[i, 1]), int(feats[i, 2])) for b, i in enumerate(ablate) if i >= 0 and feats[i, 0] == l]

        def fn(x, hook, sae=saes[l], rows=rows):
            err = (x[0] - sae.decode(sae.encode(x[0]))).detach()  # row 0 is always the clean prompt
            a = sae.encode(x)
            for b, p, f in rows:
                a[b, p, f] = 0.0
            return sae.decode(a) + err

        hooks.append((f"blocks.{l}.hook_resid_post", fn))
    return hooks


def frozen_hooks(model: HookedTransformer, tokens: Tensor) -> list:
    """Hooks that hold every attention pattern and LayerNorm scale at its value on ``tokens`` [1, pos]
    (circuit-tracer's ``freeze_attention`` intervention), broadcast over the batch."""
    names = set(frozen_hook_names(model))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)

    def fn(t, hook):
        c = cache[hook.name]
        if c.shape[0] != t.shape[0] and c.shape[1:] == t.shape[1:]:  # Gemma's q/k norms flatten (batch, pos, head)
            return c.repeat(t.shape[0] // c.shape[0], *([1] * (c.dim() - 1)))  # batch-major: one copy per row
        return c.expand_as(t)

    return [(n, fn) for n in names]


@torch.no_grad()
def actual_ablation_effects(model: HookedTransformer, saes: Mapping[int, object], graph: AttributionGraph,
                            nodes: Sequence[int], logit_index: int = 0, demean: bool = True,
                            freeze_attention: bool = True) -> Float[Tensor, "n"]:
    """Actual change of the target logit when each feature node in ``nodes`` is zeroed (one batched forward).

    With ``freeze_attention`` the attention patterns and LayerNorm scales stay at their clean values (the
    graph's own assumption, and circuit-tracer's default for interventions); MLPs, SAE encoders (ReLU,
    top-k) and everything downstream are recomputed either way."""
    tokens = torch.tensor([graph.input_ids] * (len(nodes) + 1))
    hooks = replacement_hooks(saes, graph, [-1] + list(nodes))
    if freeze_attention:
        hooks += frozen_hooks(model, tokens[:1])
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens)[:, -1]
    tgt = logits[:, graph.logit_tokens[logit_index]]
    if demean:
        tgt = tgt - logits.mean(-1)
    return tgt[1:] - tgt[0]


@dataclass
class Faithfulness:
    """Per-prompt Pearson correlations of predicted vs actual ablation effects, and the pooled pairs."""

    per_prompt: list[float]
    predicted: list[float]
    actual: list[float]

    @property
    def mean(self) -> float:
        return float(np.nanmean(self.per_prompt)) if self.per_prompt else float("nan")

    @property
    def pooled(self) -> float:
        return float(np.corrcoef(self.predicted, self.actual)[0, 1]) if len(self.actual) > 2 else float("nan")


def build_graphs(model: HookedTransformer, saes: Mapping[int, object], examples: Sequence[Example],
                 cfg: GraphConfig) -> list[AttributionGraph]:
    """One graph per example, the target being the gold answer's first token (:func:`answer_token`)."""
    return [build_graph(model, saes, ex.prompt, targets=[answer_token(model, ex.prompt, ex.answer)], cfg=cfg)
            for ex in examples]


def faithfulness(model: HookedTransformer, saes: Mapping[int, object], graphs: Sequence[AttributionGraph],
                 top_n: int = 20, cfg: GraphConfig | None = None, use_pruned: bool = True,
                 freeze_attention: bool = True) -> Faithfulness:
    """For each graph, take the ``top_n`` feature nodes by influence and compare the predicted and the actual
    ablation effects on the (first) target logit; ``use_pruned`` predicts along the pruned graph's edges."""
    cfg = cfg or GraphConfig()
    per, pred_all, act_all = [], [], []
    for g in graphs:
        pr = prune(g, cfg.node_threshold, cfg.edge_threshold)
        top = pr.influence[: g.n_features].argsort(descending=True)[:top_n].tolist()
        pred = predicted_ablation_effects(g, pr.edge_mask if use_pruned else None)[top]
        act = actual_ablation_effects(model, saes, g, top, demean=cfg.demean_logits, freeze_attention=freeze_attention)
        per.append(float(np.corrcoef(pred.numpy(), act.numpy())[0, 1]))
        pred_all += pred.tolist()
        act_all += act.tolist()
    return Faithfulness(per, pred_all, act_all)


# ------------------------------------------------------------------------------------------- ground truth
def source_marker_position(tokens: Sequence[str]) -> int:
    """Position of the knowledge-source word (``trusted`` / ``rumor`` / ``report``) in a token list."""
    for i, t in enumerate(tokens):
        if t in SOURCES:
            return i
    raise ValueError(f"no source marker {sorted(SOURCES)} in {list(tokens)}: not an open-book prompt")


def _auroc_columns(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One-vs-rest AUROC of every column of ``x`` [n, m] for binary labels ``y`` [n] (ties averaged)."""
    from scipy.stats import rankdata

    r = rankdata(x, axis=0)
    n1, n0 = y.sum(), len(y) - y.sum()
    return (r[y == 1].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n0)


@torch.no_grad()
def knowledge_source_features(model: HookedTransformer, saes: Mapping[int, object], world: World,
                              n_per_source: int = 40, min_auroc: float = 0.9, seed: int = 7
                              ) -> dict[tuple[int, int, int], float]:
    """Feature nodes ``(layer, position, feature)`` whose activation tells the knowledge source apart.

    On ``n_per_source`` conflict prompts per source (fresh draws: the template is fixed, so positions line
    up), each node's one-vs-rest AUROC is computed for every source; a node at or after the source marker
    whose best AUROC (or 1 - AUROC) reaches ``min_auroc`` is a knowledge-source feature. Returns node -> AUROC."""
    rng = random.Random(seed)
    exs = [world.open_book(rng, s, True) for s in SOURCES for _ in range(n_per_source)]
    tokens = model.to_tokens([e.prompt for e in exs])
    marker = source_marker_position(model.to_str_tokens(exs[0].prompt))
    names = [f"blocks.{l}.hook_resid_post" for l in saes]
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    labels = np.array([list(SOURCES).index(e.meta["source"]) for e in exs])
    out: dict[tuple[int, int, int], float] = {}
    for l, sae in saes.items():
        acts = sae.encode(cache[f"blocks.{l}.hook_resid_post"])[:, marker:]  # [n, pos', d_sae]
        flat = acts.reshape(len(exs), -1).numpy()
        alive = (flat > 0).any(0)
        best = np.zeros(flat.shape[1])
        for k in range(len(SOURCES)):
            auc = _auroc_columns(flat[:, alive], (labels == k).astype(int))
            best[alive] = np.maximum(best[alive], np.maximum(auc, 1 - auc))
        for j in np.flatnonzero(best >= min_auroc):
            p, f = divmod(int(j), acts.shape[2])
            out[(l, p + marker, f)] = float(best[j])
    return out


@dataclass
class SourcePath:
    """A path ``token embedding -> ... -> knowledge-source feature -> ... -> logit`` (node ids) or None."""

    found: bool
    path: list[str] | None
    source_feature: str | None
    n_source_features_in_graph: int


def ground_truth_path(G: nx.DiGraph, source_nodes: Mapping[tuple[int, int, int], float]) -> SourcePath:
    """Look in a (pruned) graph of an open-book prompt for the path from the source-marker token through a
    knowledge-source feature to the target logit; the most influential such feature is chosen."""
    marker = source_marker_position(G.graph["input_tokens"])
    src = next(n for n, d in G.nodes(data=True) if d["kind"] == "embedding" and d["position"] == marker)
    tgt = next(n for n, d in G.nodes(data=True) if d["kind"] == "logit")
    cands = [n for n, d in G.nodes(data=True) if d["kind"] == "feature"
             and (d["layer"], d["position"], d["feature"]) in source_nodes]
    reach_from, reach_to = nx.descendants(G, src), nx.ancestors(G, tgt)
    on_path = sorted((n for n in cands if n in reach_from and n in reach_to),
                     key=lambda n: -G.nodes[n]["influence"])
    if not on_path:
        return SourcePath(False, None, None, len(cands))
    ks = on_path[0]
    path = nx.shortest_path(G, src, ks) + nx.shortest_path(G, ks, tgt)[1:]
    return SourcePath(True, path, ks, len(cands))


@dataclass
class SourcePathSurvey:
    """Ground-truth path check over conflict prompts: one row per (prompt, node threshold)."""

    table: "object"  # pandas DataFrame: source, uses, answer, node_threshold, found, path, source_feature
    rate: dict  # node_threshold -> share of prompts with the path


def source_path_survey(model: HookedTransformer, saes: Mapping[int, object], world: World, n_per_source: int,
                       source_nodes: Mapping[tuple[int, int, int], float], cfg: GraphConfig,
                       thresholds: Sequence[float] = (0.8,), seed: int = 11, explanations=None) -> SourcePathSurvey:
    """Build a graph for ``n_per_source`` conflict prompts of each source (target: the model's own answer)
    and look for the ground-truth path at ``cfg.node_threshold`` and at each extra node threshold."""
    import pandas as pd

    from steerlab.core.run import next_words

    rng = random.Random(seed)
    exs = [world.open_book(rng, s, True) for _ in range(n_per_source) for s in SOURCES]
    answers = next_words(model, [e.prompt for e in exs])
    rows = []
    for ex, ans in zip(exs, answers):
        g = build_graph(model, saes, ex.prompt, targets=[ans], cfg=cfg)
        for nt in [cfg.node_threshold, *thresholds]:
            G = to_networkx(g, prune(g, nt, cfg.edge_threshold), explanations, model.cfg.n_layers, model.tokenizer)
            sp = ground_truth_path(G, source_nodes)
            rows.append(dict(source=ex.meta["source"], uses=ex.meta["uses"], answer=ans, node_threshold=nt,
                             found=sp.found, path=" -> ".join(sp.path or []), source_feature=sp.source_feature,
                             feature_words=G.nodes[sp.source_feature]["explanation"] if sp.found else ""))
    df = pd.DataFrame(rows)
    return SourcePathSurvey(df, df.groupby("node_threshold")["found"].mean().to_dict())


def subject_path(G: nx.DiGraph, subject_pos: int) -> SourcePath:
    """The path, in a (pruned) graph, from the subject token's embedding (position ``subject_pos``) to the target
    logit through the most influential feature node that lies on such a path (``source_feature``)."""
    tgt = next(n for n, d in G.nodes(data=True) if d["kind"] == "logit")
    src = next((n for n, d in G.nodes(data=True) if d["kind"] == "embedding" and d["position"] == subject_pos), None)
    if src is None:
        return SourcePath(False, None, None, 0)
    reach_from, reach_to = nx.descendants(G, src), nx.ancestors(G, tgt)
    on_path = sorted((n for n, d in G.nodes(data=True) if d["kind"] == "feature" and n in reach_from
                      and n in reach_to), key=lambda n: -G.nodes[n]["influence"])
    if not on_path:
        return SourcePath(False, None, None, 0)
    ks = on_path[0]
    return SourcePath(True, nx.shortest_path(G, src, ks) + nx.shortest_path(G, ks, tgt)[1:], ks, len(on_path))


def subject_path_survey(model: HookedTransformer, saes: Mapping[int, object], examples: Sequence[Example],
                        cfg: GraphConfig, thresholds: Sequence[float] = (0.8,), explanations=None) -> SourcePathSurvey:
    """For each example with a ``meta['subject']`` (facts, conflicts), build the graph of the model's own answer
    (its top next token) and look for a path from the subject's last token (its last occurrence in the prompt,
    placed by :func:`steerlab.circuits.graph.token_position`) to that logit, at ``cfg.node_threshold`` and at each
    extra node threshold. Table columns: task, subject, subject_pos, answer, node_threshold, found, n_features_on_paths,
    path, feature_words."""
    import pandas as pd

    from steerlab.core.run import last_token_logits

    ids = last_token_logits(model, [e.prompt for e in examples]).argmax(-1).tolist()
    rows = []
    for ex, tok in zip(examples, ids):
        pos = token_position(model, ex.prompt, ex.meta["subject"])
        g = build_graph(model, saes, ex.prompt, targets=[int(tok)], cfg=cfg)
        for nt in dict.fromkeys([cfg.node_threshold, *thresholds]):
            G = to_networkx(g, prune(g, nt, cfg.edge_threshold), explanations, model.cfg.n_layers, model.tokenizer)
            sp = subject_path(G, pos)
            rows.append(dict(task=ex.task, subject=ex.meta["subject"], subject_pos=pos,
                             answer=model.tokenizer.decode([int(tok)]), node_threshold=nt, found=sp.found,
                             n_features_on_paths=sp.n_source_features_in_graph, path=" -> ".join(sp.path or []),
                             feature_words=G.nodes[sp.source_feature]["explanation"] if sp.found else ""))
    df = pd.DataFrame(rows)
    return SourcePathSurvey(df, df.groupby("node_threshold")["found"].mean().to_dict())


def node_table(G: nx.DiGraph, n: int = 15, kind: str | None = "feature"):
    """The ``n`` most influential nodes (of ``kind``; None = all) as a DataFrame."""
    import pandas as pd

    cols = ("kind", "layer", "position", "token", "feature", "activation", "influence", "explanation")
    rows = [dict(node=k, **{c: d.get(c) for c in cols}) for k, d in G.nodes(data=True) if kind is None or d["kind"] == kind]
    if not rows:  # e.g. a pruned graph whose influence all runs through error nodes
        return pd.DataFrame(columns=["node", *cols])
    return pd.DataFrame(rows).sort_values("influence", ascending=False).head(n).reset_index(drop=True)


def faithfulness_figure(results: Mapping[str, Faithfulness]):
    """Scatter of predicted vs actual ablation effects, one panel per task."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False)
    for ax, (name, f) in zip(axes[0], results.items()):
        ax.scatter(f.predicted, f.actual, s=10, alpha=0.6)
        lo, hi = min(f.predicted + f.actual), max(f.predicted + f.actual)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_title(f"{name}: r per prompt {f.mean:.2f}, pooled {f.pooled:.2f}")
        ax.set_xlabel("predicted change of target logit")
        ax.set_ylabel("actual change (ablation)")
    fig.tight_layout()
    return fig


def mean_graph_scores(graphs: Sequence[AttributionGraph]) -> dict[str, float]:
    """``residual_replacement_score`` and ``residual_completeness_score`` averaged over graphs: circuit-tracer's
    formulas on residual-SAE, first-order graphs, named so as not to claim its meaning
    (:class:`steerlab.circuits.graph.GraphScores`)."""
    from steerlab.circuits.graph import graph_scores

    scores = [graph_scores(g) for g in graphs]
    return {"residual_replacement_score": float(np.mean([s.residual_replacement for s in scores])),
            "residual_completeness_score": float(np.mean([s.residual_completeness for s in scores]))}


# ------------------------------------------------------------------------------------------- control model
@dataclass
class ControlAnalysis:
    """choices: one row per (policy, prompt, step, layer, chosen feature) with its explanation words;
    metrics: per policy ``control_<name>_base_acc``, ``_steered_acc``, ``_branch_rate`` (share of prompts
    whose correctness the policy's choices flip) and ``_distinct_features``; steered: for the first branch
    point of each single-token policy, the features of the steered graph the chosen feature acts through
    (its node's strongest out-edges) next to the same features' activations in the unsteered graph."""

    choices: "object"
    metrics: dict
    steered: "object" = None


def control_analysis(model: HookedTransformer, saes: Mapping[int, object], world: World, policy_dir,
                     explanations: Mapping[tuple[int, int], str], n: int = 20, seed: int = 0) -> ControlAnalysis | None:
    """Which features each shipped control policy (``policy_dir/<name>/cfg.json``) picks, and where its
    choices decide correctness. ``None`` when there are no policies; a policy trained on other SAEs is skipped
    (logged). The task is read from the folder name (``reasoning`` else multiple choice)."""
    import pandas as pd

    from steerlab import control
    from steerlab.control import rl
    from steerlab.evals import control as rl_eval
    from steerlab.world import score

    if world is None:  # the held-out sets below are tinyworld's
        return None
    policies = control.load_policies(policy_dir, dict(saes), model)
    if not policies:
        return None
    rows, metrics, steered_rows = [], {}, []
    for name, policy in policies.items():
        task = "reasoning" if "reason" in name else "mcqa"
        exs = world.eval_sets(n, seed=12345 + seed)[f"{task}_heldout"][:n]
        base = rl_eval.answers(model, exs)
        steered = rl_eval.answers(model, exs, policy, saes)
        ok_b = [score(e, c) for e, c in zip(exs, base)]
        ok_s = [score(e, c) for e, c in zip(exs, steered)]
        chosen = rl_eval.chosen_features(model, policy, saes, [e.prompt for e in exs], rl.tokens_for(exs))
        for i, steps in enumerate(chosen):
            for st in steps:
                for f in st["features"]:
                    noop = f >= policy.cfg.d_sae
                    rows.append(dict(policy=name, task=task, prompt=i, step=st["step"], token=st["token"],
                                     layer=st["layer"], feature="no-op" if noop else f,
                                     explanation="" if noop else explanations.get((st["layer"], f), ""),
                                     branch_point=ok_b[i] != ok_s[i], steered_correct=ok_s[i]))
        branch = [i for i in range(len(exs)) if ok_b[i] != ok_s[i]]
        if task == "mcqa" and branch:
            first = [r for r in rows if r["policy"] == name and r["prompt"] == branch[0]]
            steered_rows += _acts_through(model, saes, policy, exs[branch[0]], first, explanations, name)
        feats = {(r["layer"], r["feature"]) for r in rows if r["policy"] == name and r["feature"] != "no-op"}
        metrics.update({f"control_{name}_base_acc": float(np.mean(ok_b)),
                        f"control_{name}_steered_acc": float(np.mean(ok_s)),
                        f"control_{name}_branch_rate": float(np.mean([a != b for a, b in zip(ok_b, ok_s)])),
                        f"control_{name}_distinct_features": len(feats)})
    return ControlAnalysis(pd.DataFrame(rows), metrics, pd.DataFrame(steered_rows)) if rows else None


def _acts_through(model, saes, policy, ex: Example, chosen: list[dict], explanations, name: str,
                  n_edges: int = 8) -> list[dict]:
    """The strongest out-edges of the chosen feature's node in the steered graph of ``ex`` (greedy policy)."""
    from steerlab import control

    hooks = control.policy_hooks(policy, saes, greedy=True)
    g_s = build_graph(model, saes, ex.prompt, cfg=GraphConfig(max_n_logits=1), fwd_hooks=hooks)
    g_u = build_graph(model, saes, ex.prompt, cfg=GraphConfig(max_n_logits=1))
    Gs = to_networkx(g_s, None, explanations, model.cfg.n_layers, model.tokenizer)
    Gu = to_networkx(g_u, None, explanations, model.cfg.n_layers, model.tokenizer)
    out = []
    for c in chosen:
        if c["feature"] == "no-op" or c["step"] != 0:
            continue
        node = f"{c['layer']}_{c['feature']}_{g_s.n_pos - 1}"
        if node not in Gs:
            continue
        edges = sorted(Gs.out_edges(node, data="weight"), key=lambda e: -abs(e[2]))[:n_edges]
        for _, t, w in edges:
            out.append(dict(policy=name, chosen=node, chosen_words=Gs.nodes[node]["explanation"], target=t,
                            weight=w, target_words=Gs.nodes[t]["explanation"],
                            steered_act=Gs.nodes[t]["activation"],
                            unsteered_act=Gu.nodes[t]["activation"] if t in Gu else 0.0))
    return out


# ------------------------------------------------------------------------------------------------ summary
def summary(faith: Mapping[str, Faithfulness], faith_live: Mapping[str, Faithfulness], scores: Mapping[str, float],
            graph: AttributionGraph, pruned: nx.DiGraph, build_seconds: float, json_round_trip: bool,
            node_threshold: float, source_survey: SourcePathSurvey | None = None, n_source_nodes: int = 0,
            subject_survey: SourcePathSurvey | None = None, control: ControlAnalysis | None = None,
            transfer: Mapping[str, float] | None = None) -> dict:
    """Notebook 05's metrics: ``faithfulness_<task>`` (mean per-prompt r), ``_pooled``, ``_live_attention`` for each
    task of ``faith``; the graph scores (``residual_replacement_score``, ``residual_completeness_score``); the
    ground-truth source path (``ground_truth_path_*``, tinyworld) and the subject path (``subject_path_rate``,
    ``subject_path_rate_nt08``) when surveyed; the first graph's size and build time; the control-model and
    transfer metrics when measured."""
    out: dict = {}
    for name in faith:
        out.update({f"faithfulness_{name}": faith[name].mean, f"faithfulness_{name}_pooled": faith[name].pooled,
                    f"faithfulness_{name}_live_attention": faith_live[name].mean})
    out.update(scores)
    if source_survey is not None:
        out.update(ground_truth_path_found=source_survey.rate[node_threshold] == 1.0,
                   ground_truth_path_rate=source_survey.rate[node_threshold],
                   ground_truth_path_rate_nt08=source_survey.rate[0.8], n_knowledge_source_nodes=n_source_nodes)
    if subject_survey is not None:
        out.update(subject_path_rate=subject_survey.rate[node_threshold],
                   subject_path_rate_nt08=subject_survey.rate.get(0.8, float("nan")))
    out.update(graph_n_features=graph.n_features, graph_n_backward=graph.n_backward, graph_build_seconds=build_seconds,
               graph_nodes_pruned=pruned.number_of_nodes(), graph_edges_pruned=pruned.number_of_edges(),
               json_round_trip=json_round_trip, node_threshold=node_threshold)
    return {**out, **(control.metrics if control else {}), **(transfer or {})}


def graph_prompts(suite, n: int, seed: int = 0) -> tuple[Example, dict[str, list]]:
    """The prompts notebook 05 builds graphs for: one conflict prompt to look at, and ``n`` prompts per task for the
    faithfulness check. tinyworld (a suite with a ``world``): a ``report`` conflict, then conflicts of every source
    and multiple choice (``{"conflict", "mcqa"}``), drawn from one RNG in that order. Another suite: a conflict of
    its ``eval`` split, then ``{"conflict", "fact"}`` (conflicts and closed-book facts: ``faithfulness_fact``)."""
    world = getattr(suite, "world", None)
    if world is not None:
        rng = random.Random(seed)
        ex = world.open_book(rng, "report", True)
        conflict = [world.open_book(rng, rng.choice(["trusted", "rumor", "report"]), True) for _ in range(n)]
        return ex, {"conflict": conflict, "mcqa": [world.mcqa(rng) for _ in range(n)]}
    first = suite.conflicts(n + 1, seed=seed)
    return first[0], {"conflict": first[1:], "fact": suite.facts(n, seed=seed)}
