import json

import pytest
import torch

from steerlab import models
from steerlab import sae as S
from steerlab.sae.train import harvest

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tw():
    return models.load_tinyworld()


@pytest.fixture(scope="module")
def trained(tw, tmp_path_factory):
    model, world = tw
    cfg = S.SAETrainConfig(layers=(0, 1), d_sae=64, k=8, training_tokens=24576, batch_tokens=512,
                           n_batches_in_buffer=64, log_every=2, lr=5e-3)
    rows = S.token_rows(world.training_stream(3), model.tokenizer, 600, cfg.context_size)
    out = tmp_path_factory.mktemp("saes")
    return S.train_saes(model, rows, cfg, out), out


def test_token_rows_layout(tw):
    model, world = tw
    rows = S.token_rows(world.training_stream(0), model.tokenizer, 5, 24)
    assert rows.shape == (5, 24)
    assert (rows[:, 0] == model.tokenizer.bos_token_id).all()
    text = next(world.training_stream(0)).split()
    assert model.tokenizer.convert_ids_to_tokens(rows[0, 1: 1 + len(text)].tolist()) == text
    assert (rows[0, 1 + len(text):] == model.tokenizer.pad_token_id).all()


def test_config_errors():
    with pytest.raises(ValueError, match="architecture"):
        S.SAETrainConfig(architecture="gated")
    with pytest.raises(ValueError, match="n_batches_in_buffer"):
        S.SAETrainConfig(n_batches_in_buffer=2, batch_tokens=4096)
    with pytest.raises(ValueError, match="k=600"):
        S.SAETrainConfig(k=600, d_sae=512)


def test_training_writes_saelens_format_and_learns(trained, tw):
    res, out = trained
    model, _ = tw
    assert set(res.saes) == {0, 1}
    for layer, path in res.paths.items():
        spec = json.loads((path / "cfg.json").read_text())
        assert spec["metadata"]["hook_name"] == f"blocks.{layer}.hook_resid_post"
        assert spec["metadata"]["model_fingerprint"] == S.model_fingerprint(model)
        assert (path / "sae_weights.safetensors").is_file()
        curve = res.curves[layer]["fvu"]
        assert len(curve) >= 10 and curve[-1] < 0.8 * curve[0]  # it learned something
        assert res.curves[layer]["l0"][-1] <= 8 + 1e-6
    recipe = json.loads((out / "training.json").read_text())
    assert recipe["config"]["d_sae"] == 64
    assert S.load_recipe(out) == S.SAETrainConfig(layers=(0, 1), d_sae=64, k=8, training_tokens=24576,
                                                  batch_tokens=512, n_batches_in_buffer=64, log_every=2, lr=5e-3)
    assert S.load_recipe("tinyworld").k == 32  # the shipped SAEs' recipe
    sae = S.load_sae(out, layer=1, model=model)
    assert sae.cfg.d_sae == 64 and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def test_load_recipe_names_a_bad_file(tmp_path):
    with pytest.raises(ValueError, match="training.json"):
        S.load_recipe(tmp_path)
    (tmp_path / "training.json").write_text('{"config": {"d_sae": 64, "colour": 1}}')
    with pytest.raises(ValueError, match="not a steerlab SAE recipe"):
        S.load_recipe(tmp_path)


def test_encode_pre_topk_matches_topk_code(trained, tw):
    res, _ = trained
    sae = res.saes[0]
    x = torch.randn(7, sae.cfg.d_in) * 3
    z_pre = S.encode_pre_topk(sae, x)
    z = sae.encode(x)
    assert z_pre.shape == (7, 64) and (z_pre >= 0).all()
    top = z_pre.topk(sae.cfg.k, dim=-1).indices
    kept = torch.zeros_like(z_pre, dtype=torch.bool).scatter_(-1, top, True)
    assert torch.equal(kept & (z_pre > 0), z > 0)  # the SAE's own code is the top-k of the pre-top-k code
    with pytest.raises(ValueError, match="d_in"):
        S.encode_pre_topk(sae, torch.randn(2, 5))


def test_splice_keeps_bos_and_changes_the_rest(trained, tw):
    res, _ = trained
    model, _ = tw
    sae = res.saes[1]
    tokens = model.to_tokens("question : the")
    seen = {}
    hooks = S.splice_hooks(sae) + [(sae.cfg.metadata.hook_name, lambda x, hook: seen.setdefault("x", x.clone()))]
    _, cache = model.run_with_cache(tokens, names_filter=sae.cfg.metadata.hook_name)
    with model.hooks(fwd_hooks=hooks):
        model(tokens)
    clean = cache[sae.cfg.metadata.hook_name]
    assert torch.allclose(seen["x"][:, 0], clean[:, 0])
    assert torch.allclose(seen["x"][:, 1:], sae(clean)[:, 1:], atol=1e-5)


def test_bad_inputs_say_what_to_fix(trained, tw):
    res, out = trained
    model, _ = tw
    sae = res.saes[0]
    other = models.build_model(models.ModelConfig(seed=123), model.tokenizer)  # same shape, other weights
    with pytest.raises(ValueError, match="another 'tinyworld' checkpoint"):
        S.check_fits(other, sae)
    narrow = models.build_model(models.ModelConfig(d_model=64, n_layers=2, d_mlp=256), model.tokenizer)
    with pytest.raises(ValueError, match="d_in=128"):
        S.check_fits(narrow, sae)
    moved = S.load_sae(out, layer=0)
    moved.cfg.metadata.hook_name = "blocks.9.hook_resid_post"
    with pytest.raises(ValueError, match="does not have"):
        S.check_fits(model, moved)
    with pytest.raises(FileNotFoundError, match="train one"):
        S.load_sae(out, layer=3)
    with pytest.raises(ValueError, match="layer 7 does not exist"):
        S.train_saes(model, torch.zeros(2, S.SAETrainConfig().context_size, dtype=torch.long), S.SAETrainConfig(layers=(7,)),
                     out / "x")


def test_pretrained_release_offline_error():
    with pytest.raises((ConnectionError, ValueError), match="offline default|pretrained_saes.yaml"):
        S.load_sae("gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre")


# ---------------------------------------------------------------------------- any model: a subword tokenizer
_CORPUS = ["the weather in the mountains turned cold overnight", "a recipe needs flour, butter and patience",
           "sparse autoencoders rewrite activations as few latents", "the orchestra tuned before the concert began",
           "interest rates rose and the markets fell sharply", "planets orbit the sun on elliptical paths"] * 4


@pytest.fixture(scope="module")
def subword(tmp_path_factory):
    """A 2-layer HookedTransformer with a BPE tokenizer (subwords, not one token per word) and a residual stream
    scaled far from norm sqrt(d_model), as a real model's is."""
    from tokenizers import Tokenizer, models as tkm, pre_tokenizers, trainers, decoders
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bpe = Tokenizer(tkm.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)  # reloaded: TL 3.x fails on an in-memory tokenizer (ECOSYSTEM)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_ctx=64, d_head=8, n_heads=4, d_vocab=len(tok),
                                  act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg, tokenizer=tok, default_padding_side="right")
    with torch.no_grad():
        model.W_E.mul_(40.0)  # residual norms ~40x a unit-scale init
    return model


def test_token_rows_on_a_subword_tokenizer(subword):
    tok = subword.tokenizer
    text = "sparse autoencoders rewrite activations"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # subwords: more tokens than words
    rows = S.token_rows([text, "the orchestra"], tok, 2, 48)
    assert rows.shape == (2, 48) and (rows[:, 0] == tok.bos_token_id).all()
    assert rows[0, 1: 1 + len(ids)].tolist() == ids and (rows[0, 1 + len(ids):] == tok.pad_token_id).all()
    assert tok.decode(rows[0, 1: 1 + len(ids)].tolist()) == text
    packed = S.token_rows(_CORPUS, tok, 3, 16, pack=True)
    assert (packed[:, 0] == tok.bos_token_id).all() and not (packed == tok.pad_token_id).any()
    flat = sum((tok(t, add_special_tokens=False)["input_ids"] + tok("\n\n", add_special_tokens=False)["input_ids"]
                for t in _CORPUS), [])
    assert packed[:, 1:].flatten().tolist() == flat[: 3 * 15]  # the text continues from row to row
    with pytest.raises(ValueError, match="ran out"):
        S.token_rows(["a b"], tok, 2, 8)


def test_dashboards_decode_subword_tokens_with_spaces(subword):
    from steerlab.viz import dashboards as viz

    tok = subword.tokenizer
    ids = [tok.bos_token_id] + tok("the orchestra tuned", add_special_tokens=False)["input_ids"]
    pieces = viz.token_strings(tok, ids)
    assert len(pieces) == len(ids) and pieces[0] == "<bos>"
    assert "".join(pieces[1:]) == "the orchestra tuned"  # spaces kept, no byte-level "Ġ" markers
    assert not any("Ġ" in p for p in pieces)


def test_normalised_training_saves_an_sae_for_raw_activations(subword, tmp_path):
    rows = S.token_rows(_CORPUS * 8, subword.tokenizer, 150, 24, pack=True)
    cfg = S.SAETrainConfig(layers=(0,), d_sae=64, k=8, training_tokens=12288, batch_tokens=256, context_size=24,
                           n_batches_in_buffer=16, lr=5e-3, log_every=4, normalize_activations="expected_average_only_in",
                           b_dec_init="mean")
    res = S.train_saes(subword, rows, cfg, tmp_path)
    scale = res.curves[0]["scaling_factor"]
    assert scale < 0.2  # the residual is far from norm sqrt(d_model): the factor really rescales
    sae = S.load_sae(tmp_path, layer=0, model=subword)
    assert sae.cfg.normalize_activations == "none"  # folded into the weights, not applied at run time
    acts = harvest(subword, rows[:40], (0,))[0]
    recon = sae.decode(sae.encode(acts)).detach()
    assert recon.norm(dim=-1).mean() == pytest.approx(float(acts.norm(dim=-1).mean()), rel=0.15)  # raw scale
    ev = 1 - ((recon - acts) ** 2).sum() / ((acts - acts.mean(0)) ** 2).sum()
    assert ev > 0.5
    from steerlab.sae.metrics import reconstruction_stats

    assert reconstruction_stats(sae, subword, rows[:40]).explained_variance == pytest.approx(float(ev), abs=1e-4)
    with pytest.raises(ValueError, match="normalize_activations"):
        S.SAETrainConfig(normalize_activations="layer_norm")


def test_harvest_drops_position_0_bos_and_pad(subword):
    tok = subword.tokenizer
    rows = S.token_rows(["the weather", "a recipe needs flour"], tok, 2, 12)
    real = int((~torch.isin(rows, torch.tensor([tok.bos_token_id, tok.pad_token_id]))).sum())
    acts = harvest(subword, rows, (0, 1))
    assert acts[0].shape == acts[1].shape == (real, 32)
    _, cache = subword.run_with_cache(rows, names_filter="blocks.1.hook_resid_post")
    assert torch.allclose(acts[1][0], cache["blocks.1.hook_resid_post"][0, 1])


def test_a_huge_bos_activation_does_not_move_explained_variance(tw):
    """Gemma's first position has a residual norm ~13x the others: every statistic must leave it out."""
    from steerlab.sae.metrics import reconstruction_stats

    model, world = tw
    sae = S.load_sae(layer=S.DEFAULT_LAYER, model=model)
    rows = S.token_rows(world.training_stream(4), model.tokenizer, 40, 24)
    base = reconstruction_stats(sae, model, rows)

    def blow_up(x, hook):
        x = x.clone()
        x[:, 0] *= 1000.0
        return x

    with model.hooks(fwd_hooks=[(sae.cfg.metadata.hook_name, blow_up)]):
        huge = reconstruction_stats(sae, model, rows)
        no_bos_id = rows.clone()
        no_bos_id[:, 0] = rows[0, 1]  # position 0 without the <bos> id: excluded by position, not by id
        by_pos = reconstruction_stats(sae, model, no_bos_id)
    assert huge.explained_variance == pytest.approx(base.explained_variance, abs=1e-6)
    assert huge.n_tokens == base.n_tokens == by_pos.n_tokens
    assert by_pos.explained_variance > 0.5


def test_splice_on_a_left_padded_batch_keeps_bos_and_padding_where_they_are():
    """On a rotary model prompts of different lengths share a left-padded batch, so <bos> is not at position 0:
    the splice keeps the clean residual at every <bos> and pad position that steerlab's run functions announce,
    and the answers of a longer and a shorter prompt equal their unpadded one-prompt answers."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from steerlab.core import run
    from steerlab.models.paths import DATA_DIR
    from steerlab.models.tokenizer import load_tokenizer

    tok = load_tokenizer(DATA_DIR / "tinyworld" / "tokenizer")
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, d_head=4, n_heads=4, d_mlp=32, d_vocab=len(tok), n_ctx=32,
                                  act_fn="gelu", normalization_type="RMS", positional_embedding_type="rotary",
                                  rotary_dim=4, seed=0, default_prepend_bos=True)
    model = HookedTransformer(cfg, tokenizer=tok)
    assert run.pads_left(model)

    class Zero:  # an "SAE" that reconstructs nothing: every spliced position becomes 0
        cfg = type("C", (), {"metadata": type("M", (), {"hook_name": "blocks.0.hook_resid_post"})()})()

        def __call__(self, x):
            return torch.zeros_like(x)

    prompts = ["question : the red ? answer :", "question : a ?"]
    seen = []
    hooks = S.splice_hooks(Zero()) + [("blocks.1.hook_resid_pre", lambda x, hook: seen.append(x.clone()))]
    batched = run.last_token_logits(model, prompts, hooks)
    x = seen[0]  # [2, pos], rows in the batch's order (shorter prompt first, left-padded)
    tokens = run.batches(model, prompts, 8)[0][1]
    special = run.special_mask(model, tokens)
    assert special[0, :4].all() and not special[0, 4:].any()  # three pads, then <bos>, in the shorter row
    assert special[1, 0] and special[1].sum() == 1
    assert (x[special].abs().sum(-1) > 0).all()  # kept clean
    assert (x[~special] == 0).all()  # spliced (zeros)
    alone = torch.cat([run.last_token_logits(model, [p], hooks) for p in prompts])
    assert torch.allclose(batched, alone, atol=1e-4)
