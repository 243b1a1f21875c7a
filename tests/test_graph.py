"""Attribution graphs: batched edges equal a per-target reference, node order, pruning, scores, JSON."""

import math

import pytest
import torch
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from steerlab.circuits import graph as G
from steerlab.circuits import io as GI
from steerlab.models import TINYWORLD_DIR, ModelConfig, build_model
from steerlab.sae import encoder_preactivation
from steerlab.models.tokenizer import load_tokenizer

PROMPT = "context : rumor says the city is paris . question : the city ? answer :"


@pytest.fixture(scope="module")
def tiny():
    """A random 2-layer model (d_model 16) with random TopK SAEs (d_sae 24, k 4) at both layers; layer 1's
    rescales activations by decoder norms (as the shipped SAEs do)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layers=2, d_model=16, n_heads=2, d_mlp=32, n_ctx=32, seed=0),
                        load_tokenizer(TINYWORLD_DIR / "tokenizer"))
    saes = {}
    for l in (0, 1):
        cfg = TopKSAEConfig(d_in=16, d_sae=24, k=4, dtype="float32", device="cpu", rescale_acts_by_decoder_norm=l == 1)
        cfg.metadata.hook_name = f"blocks.{l}.hook_resid_post"
        saes[l] = TopKSAE(cfg)
        with torch.no_grad():
            saes[l].b_enc.add_(0.5)  # keep the top-k activations positive
            saes[l].W_dec.mul_(torch.linspace(0.5, 2.0, 24)[:, None])  # decoder norms differ
    return model, saes


def _reference_edges(model, saes, g, layer_idx):
    """Edges into the features of SAE layer ``layer_idx`` (or the logits if it equals len(layers)), one backward per
    target, through the whole model with the source layer spliced as leaf activations (the simple way)."""
    layers, tokens = g.layers, torch.tensor([g.input_ids])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    src_l = None if layer_idx == 0 else layers[layer_idx - 1]
    if layer_idx < len(layers):
        tgt_rows = [i for i in range(g.n_features) if g.active_features[i, 0] == layers[layer_idx]][::7]
    else:
        tgt_rows = list(range(g.logit_offset, g.adjacency_matrix.shape[0]))
    ref = torch.zeros(len(tgt_rows), g.adjacency_matrix.shape[1])
    for r, row in enumerate(tgt_rows):
        if src_l is None:
            leaf = cache["blocks.0.hook_resid_pre"].clone().requires_grad_(True)
            hooks = [("blocks.0.hook_resid_pre", lambda t, hook: leaf)]
        else:
            x = cache[f"blocks.{src_l}.hook_resid_post"][0]
            acts = saes[src_l].encode(x).detach()
            err = (x - saes[src_l].decode(acts)).detach()
            leaf, err = acts.clone().requires_grad_(True), err.clone().requires_grad_(True)
            hooks = [(f"blocks.{src_l}.hook_resid_post", lambda t, hook: (saes[src_l].decode(leaf) + err)[None])]
        hooks += G._freeze_hooks(model)
        store = {}
        if row < g.n_features:
            l, q, f = g.active_features[row].tolist()
            hooks.append((f"blocks.{l}.hook_resid_post", lambda t, hook: store.setdefault("y", t)))
            with model.hooks(fwd_hooks=hooks):
                model(tokens)
            value = encoder_preactivation(saes[l], store["y"][0, q])[f]
        else:
            with model.hooks(fwd_hooks=hooks):
                lg = model(tokens)[0, -1]
            value = lg[g.logit_tokens[row - g.logit_offset]] - lg.mean()
        grad, *grad_err = torch.autograd.grad(value, [leaf] if src_l is None else [leaf, err])
        if src_l is None:
            t0 = g.token_index(0)
            ref[r, t0: t0 + g.n_pos] = (grad[0] * leaf[0]).sum(-1).detach()
        else:
            j = layers.index(src_l)
            for i in range(g.n_features):
                l, p, f = g.active_features[i].tolist()
                if l == src_l:
                    ref[r, i] = grad[p, f] * acts[p, f]
            ref[r, g.error_index(j, 0): g.error_index(j, 0) + g.n_pos] = (grad_err[0] * err).sum(-1).detach()
    return tgt_rows, ref


def test_batched_edges_equal_per_target_reference(tiny):
    model, saes = tiny
    g = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(batch_size=7))
    for layer_idx in (0, 1, 2):
        rows, ref = _reference_edges(model, saes, g, layer_idx)
        cols = slice(0, g.error_index(0, 0)) if layer_idx else slice(g.token_index(0), g.logit_offset)
        assert torch.allclose(g.adjacency_matrix[rows][:, cols], ref[:, cols], atol=1e-4, rtol=1e-3)


def test_node_order_shapes_and_backward_count(tiny):
    model, saes = tiny
    g1 = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(batch_size=1))
    g64 = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(batch_size=64))
    P, F = g1.n_pos, g1.n_features
    assert P == len(PROMPT.split()) + 1 and F == 2 * P * 4  # top-k: k features at every position and layer
    n = F + 3 * P + len(g1.logit_tokens)
    assert g1.adjacency_matrix.shape == (n, n) and g1.logit_offset == n - len(g1.logit_tokens)
    assert torch.allclose(g1.adjacency_matrix, g64.adjacency_matrix, atol=1e-5)
    assert g1.n_backward == F + len(g1.logit_tokens) and g64.n_backward == 2 * math.ceil(F / 2 / 64) + 1
    # error and token rows have no inputs; layer-0 features read tokens only, logits read the last layer only
    A = g1.adjacency_matrix
    assert not A[F: g1.logit_offset].any()
    l0 = (g1.active_features[:, 0] == 0).nonzero().flatten()
    assert not A[l0][:, :g1.token_index(0)].any() and A[l0][:, g1.token_index(0):g1.logit_offset].any()
    assert not A[g1.logit_offset:, l0].any()
    assert (g1.active_features[:, 0].diff() >= 0).all()  # sorted by layer


def _hand_graph(A, n_feat_layer0=2):
    """A hand-made graph: 1 SAE layer, 2 positions, features given by rows of ``A`` (last node = logit)."""
    F = n_feat_layer0
    feats = torch.tensor([[0, 1, f] for f in range(F)])
    return G.AttributionGraph("a b", ["<bos>", "a"], [2, 5], [0], feats, torch.ones(F), torch.ones(F, 2),
                              torch.tensor(A, dtype=torch.float), [7], torch.tensor([1.0]))


# node order: f0, f1, err@0, err@1, tok@0, tok@1, logit
HAND = [[0, 0, 0, 0, 0, 3.0, 0],
        [0, 0, 0, 0, 0, 1.0, 0],
        [0] * 7, [0] * 7, [0] * 7, [0] * 7,
        [6.0, 0.1, 0, 2.0, 0, 0, 0]]


def test_influence_and_scores_by_hand():
    g = _hand_graph(HAND)
    norm = G.normalize_matrix(g.adjacency_matrix)
    infl = G.compute_influence(norm, g.logit_weights())
    # logit row normalised: f0 6/8.1, f1 0.1/8.1, err@1 2/8.1; tok@1 receives f0's and f1's share (their rows are 1)
    assert infl[0].item() == pytest.approx(6 / 8.1) and infl[3].item() == pytest.approx(2 / 8.1)
    assert infl[5].item() == pytest.approx(6.1 / 8.1)
    s = G.graph_scores(g)
    assert s.residual_replacement == pytest.approx(6.1 / 8.1)  # tokens / (tokens + errors)
    # completeness: logit row has error share 2/8.1, feature rows 0; weights: influence + logit weight
    out = infl + g.logit_weights()
    assert s.residual_completeness == pytest.approx(float(((1 - norm[:, 2:4].sum(1)) * out).sum() / out.sum()))
    assert not hasattr(s, "replacement") and not hasattr(s, "completeness")  # names that claim circuit-tracer's meaning


def test_cumulative_influence_by_hand():
    """circuit-tracer's cumulative share: nodes sorted by influence (largest first), running sum over the total."""
    g = _hand_graph(HAND)
    infl = G.compute_influence(G.normalize_matrix(g.adjacency_matrix), g.logit_weights())
    # influence x 8.1: f0 6, f1 0.1, err@0 0, err@1 2, tok@0 0, tok@1 6.1, logit 0; total 14.2
    # order tok@1, f0, err@1, f1, then the zeros: shares 6.1, 12.1, 14.1, 14.2 (of 14.2), zeros at 1
    expected = [12.1 / 14.2, 1.0, 1.0, 14.1 / 14.2, 1.0, 6.1 / 14.2, 1.0]
    assert G.cumulative_influence(infl).tolist() == pytest.approx(expected)
    assert G.prune(g).cumulative_scores.tolist() == pytest.approx(expected)


def test_prune_drops_weak_feature_keeps_tokens_and_logits():
    g = _hand_graph(HAND)
    pr = G.prune(g, node_threshold=0.8, edge_threshold=0.98)
    assert pr.node_mask.tolist() == [True, False, False, False, True, True, True]  # err@1 below the 0.8 share
    assert pr.edge_mask[6, 0] and pr.edge_mask[0, 5] and not pr.edge_mask[6, 1]
    assert pr.cumulative_scores.max() == pytest.approx(1.0)


def test_networkx_and_json_round_trip(tiny, tmp_path):
    model, saes = tiny
    g = G.build_graph(model, saes, PROMPT)
    pr = G.prune(g)
    nxg = GI.to_networkx(g, pr, explanations={(0, 1): "alpha beta"}, n_model_layers=2, tokenizer=model.tokenizer)
    assert nxg.number_of_nodes() == int(pr.node_mask.sum()) and nxg.number_of_edges() > 0
    kinds = {d["kind"] for _, d in nxg.nodes(data=True)}
    assert {"feature", "embedding", "logit"} <= kinds
    data = GI.to_json(nxg, node_threshold=0.8)
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert {"node_id", "feature", "layer", "ctx_idx", "feature_type", "jsNodeId", "clerp", "influence"} <= set(data["nodes"][0])
    path = tmp_path / "g.json"
    path.write_text(__import__("json").dumps(data))
    back = GI.from_json(path)
    assert set(back.nodes) == set(nxg.nodes) and set(back.edges) == set(nxg.edges)
    keys = ("kind", "layer", "position", "feature", "explanation", "token")
    for n, d in nxg.nodes(data=True):
        assert {k: d[k] for k in keys} == {k: back.nodes[n][k] for k in keys}
        assert back.nodes[n]["influence"] == pytest.approx(d["influence"])  # raw, from steerlab_influence
        assert back.nodes[n]["cumulative_influence"] == pytest.approx(d["cumulative_influence"])  # JSON influence
    for s, t, d in nxg.edges(data=True):
        assert back.edges[s, t]["weight"] == pytest.approx(d["weight"])
    with pytest.raises(ValueError, match="missing"):
        GI.from_json({"nodes": []})


def test_config_and_layer_errors(tiny):
    model, saes = tiny
    with pytest.raises(ValueError, match="node_threshold"):
        G.GraphConfig(node_threshold=1.5)
    with pytest.raises(ValueError, match="subset"):
        G.build_graph(model, {5: saes[0]}, PROMPT)


# ------------------------------------------------------------------------------- a tiny Gemma-3-architecture model
@pytest.fixture(scope="module")
def tiny_gemma():
    """A random 3-layer model with Gemma 3's options (RMS norms before and after attention and MLP, q/k norms,
    gated GELU MLP, rotary, local and global attention, grouped KV heads), float64, and random TopK SAEs at
    layers 0 and 1 (so block 2 lies between the last SAE layer and the logits)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tok = load_tokenizer(TINYWORLD_DIR / "tokenizer")
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, d_head=8, n_heads=4, n_key_value_heads=2, d_mlp=64, d_vocab=len(tok), n_ctx=64,
        act_fn="gelu_pytorch_tanh", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8,
        use_qk_norm=True, use_normalization_before_and_after=True, gated_mlp=True, final_rms=True,
        use_local_attn=True, window_size=4, attn_types=["local", "global", "local"], rotary_base_local=10000,
        original_architecture="Gemma3ForCausalLM", dtype=torch.float64, seed=0, default_prepend_bos=True)
    model = HookedTransformer(cfg, tokenizer=tok)
    torch.manual_seed(1)
    with torch.no_grad():  # norm weights away from 1, so a missing freeze shows
        for name, p in model.named_parameters():
            if name.endswith(".w"):
                p.uniform_(0.5, 1.5)
    saes = {}
    for l in (0, 1):
        scfg = TopKSAEConfig(d_in=32, d_sae=48, k=6, dtype="float64", device="cpu")
        scfg.metadata.hook_name = f"blocks.{l}.hook_resid_post"
        saes[l] = TopKSAE(scfg).to(torch.float64)
        with torch.no_grad():
            saes[l].b_enc.add_(0.5)
    return model, saes


def test_gemma_norm_scales_are_frozen(tiny_gemma):
    model, _ = tiny_gemma
    names = set(G.frozen_hook_names(model))
    for l in range(3):
        assert {f"blocks.{l}.{n}.hook_scale" for n in ("ln1", "ln2", "ln1_post", "ln2_post", "attn.q_norm",
                                                        "attn.k_norm")} <= names
        assert f"blocks.{l}.attn.hook_pattern" in names
    assert "ln_final.hook_scale" in names


def test_graph_is_linear_on_a_gemma_architecture(tiny_gemma):
    """Scaling one feature node's activation by (1 + eps) moves the demeaned target logit by eps times its edge, in
    the frozen model: every attention pattern and every normalisation scale held (collected here from
    ``hook_dict``, independently of ``frozen_hook_names``), SAE errors held, everything else recomputed."""
    model, saes = tiny_gemma
    g = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(max_n_logits=1, exclude_bos=True))
    assert not (g.active_features[:, 1] == 0).any()  # no feature node at BOS
    tokens = torch.tensor([g.input_ids])
    frozen = [n for n in model.hook_dict if n.endswith("hook_scale") or n.endswith("hook_pattern")]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    x1 = cache["blocks.1.hook_resid_post"][0]
    a1 = saes[1].encode(x1)
    a1[0] = 0.0  # BOS is error, as in the graph
    err = x1 - saes[1].decode(a1)
    row = g.logit_offset
    layer1 = (g.active_features[:, 0] == 1).nonzero().flatten()
    nodes = layer1[g.adjacency_matrix[row, layer1].abs().argsort(descending=True)[:4]].tolist()
    eps = 1e-5
    for i in nodes:
        _, p, f = g.active_features[i].tolist()
        scaled = a1.clone()
        scaled[p, f] *= 1 + eps
        hooks = [(n, lambda t, hook: cache[hook.name]) for n in frozen]
        hooks.append(("blocks.1.hook_resid_post", lambda t, hook, a=scaled: (saes[1].decode(a) + err)[None]))
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            lg = model(tokens)[0, -1]
        clean = cache["unembed.hook_out"][0, -1] if "unembed.hook_out" in cache else model(tokens)[0, -1]
        t = g.logit_tokens[0]
        actual = (lg[t] - lg.mean()) - (clean[t] - clean.mean())
        predicted = eps * g.adjacency_matrix[row, i]
        assert float(actual) == pytest.approx(float(predicted), rel=1e-3, abs=1e-12)


def test_feature_node_cap_moves_the_rest_into_the_error_nodes(tiny):
    model, saes = tiny
    full = G.build_graph(model, saes, PROMPT)
    capped = G.build_graph(model, saes, PROMPT, cfg=G.GraphConfig(max_feature_nodes=10))
    assert capped.n_features == 2 * 10 < full.n_features  # 10 per SAE layer
    assert (capped.active_features[:, 0] == 0).sum() == 10
    # the logit row's total input (features + errors + tokens) is the same: the dropped features joined the errors
    assert float(capped.adjacency_matrix[capped.logit_offset].sum()) == pytest.approx(
        float(full.adjacency_matrix[full.logit_offset].sum()), rel=1e-4)


def test_token_position_finds_a_text_by_decoded_offsets(tiny):
    model, _ = tiny
    words = ["<bos>"] + PROMPT.split()
    assert G.token_position(model, PROMPT, "paris") == words.index("paris")
    assert G.token_position(model, PROMPT, "the city", occurrence=0) == words.index("city")  # the first copy ...
    assert G.token_position(model, PROMPT, "city") == len(words) - 1 - words[::-1].index("city")  # ... the last copy
    with pytest.raises(ValueError, match="does not occur"):
        G.token_position(model, PROMPT, "london")
