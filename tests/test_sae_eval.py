import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from steerlab import models
from steerlab import sae as S
from steerlab.evals import sae_quality as E

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tw():
    return models.load_tinyworld()


@pytest.fixture(scope="module")
def rows(tw):
    model, world = tw
    return S.token_rows(world.training_stream(5), model.tokenizer, 48, 24)


def _identity_sae(model, layer=1):
    """A hand-built SAE that reconstructs exactly: W_enc = [I, -I], W_dec = [I; -I] (ReLU splits the sign)."""
    d = model.cfg.d_model
    sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=2 * d, apply_b_dec_to_input=True))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    sae.cfg.metadata.hook_name = S.hook_name_for(layer)
    return sae


def _zero_sae(model, layer=1):
    sae = _identity_sae(model, layer)
    with torch.no_grad():
        sae.W_dec.zero_()
    return sae


def test_perfect_sae_scores_perfectly(tw, rows):
    model, _ = tw
    sae = _identity_sae(model)
    rec = E.reconstruction_stats(sae, model, rows)
    assert rec.explained_variance == pytest.approx(1.0, abs=1e-5)
    n_kept = int(((rows != 0) & (rows != 2)).sum())
    assert rec.n_tokens == n_kept
    assert 0 < rec.mean_l0 <= model.cfg.d_model  # each dimension fires through exactly one of its two latents
    down = E.downstream_loss(sae, model, rows)
    assert down["ce_spliced"] == pytest.approx(down["ce_clean"], abs=1e-4)
    assert down["kl_to_clean"] == pytest.approx(0.0, abs=1e-5)
    assert down["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    assert down["ce_zero"] > down["ce_clean"] + 0.5


def test_zero_decoder_recovers_nothing(tw, rows):
    model, _ = tw
    sae = _zero_sae(model)
    rec = E.reconstruction_stats(sae, model, rows)
    assert rec.explained_variance < 0.05  # x_hat = b_dec = 0: unexplained
    down = E.downstream_loss(sae, model, rows)
    assert down["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-3)  # same as zero ablation


def test_dead_and_dense(tw, rows):
    model, _ = tw
    sae = _identity_sae(model)
    with torch.no_grad():
        sae.b_enc[:10] = -1e6  # ten latents can never fire
        sae.b_enc[-5:] = 1e6  # five fire everywhere
    rec = E.reconstruction_stats(sae, model, rows)
    d_sae = 2 * model.cfg.d_model
    assert rec.dead_fraction >= 10 / d_sae
    assert rec.dense_fraction >= 5 / d_sae
    assert rec.firing_rate[:10].sum() == 0 and (rec.firing_rate[-5:] == 1).all()


def test_task_accuracy_shipped_sae_and_broken_sae(tw):
    model, world = tw
    good = E.task_accuracy(S.load_sae(layer=S.DEFAULT_LAYER), model, world, n=8)
    assert list(good.index) == list(E.TASK_SETS)
    assert good.loc["closed_book", "clean"] > 0.8
    assert good["drop"].max() <= 0.25
    assert (good["n"] == 8).all() and (good["drop_se"] >= 0).all()
    assert (good["drop"] - (good["clean"] - good["spliced"])).abs().max() < 1e-9
    bad = E.task_accuracy(_zero_sae(model, S.DEFAULT_LAYER), model, world, n=8)
    assert bad.loc["closed_book", "drop"] > 0.5  # a broken SAE shows up as a drop


def test_paired_drop_by_hand():
    # d = [1, 0, 0, -1, 1, 0, 0, 0]: mean 1/8, sample sd sqrt((3 * (7/8)^2 + 9/64 * ... )) computed below by hand
    clean = [1, 1, 0, 0, 1, 1, 1, 0]
    spliced = [0, 1, 0, 1, 0, 1, 1, 0]
    drop, se = E.paired_drop(clean, spliced)
    d = [1, 0, 0, -1, 1, 0, 0, 0]
    mean = sum(d) / 8
    var = sum((x - mean) ** 2 for x in d) / 7
    assert drop == pytest.approx(0.125) and se == pytest.approx((var / 8) ** 0.5)
    assert E.paired_drop([1, 0, 1], [1, 0, 1]) == (0.0, 0.0)  # no flips: no drop and no error
    with pytest.raises(ValueError, match="equal"):
        E.paired_drop([1, 0], [1])


def test_mcqa_split_matches_the_family_and_known_facts_beat_guessing(tw):
    """The two halves of mcqa_heldout add up to the family's accuracy; the model knows the known facts better than
    the 1/4 of guessing, and not the hidden ones."""
    model, world = tw
    sae = S.load_sae(layer=S.DEFAULT_LAYER)
    split = E.mcqa_split_accuracy(sae, model, world, n=80)
    assert list(split.index) == ["known facts", "hidden facts"] and split["n"].sum() == 80
    family = E.task_accuracy(sae, model, world, n=80).loc["mcqa_heldout"]
    for col in ("clean", "spliced"):
        assert (split[col] * split["n"]).sum() / 80 == pytest.approx(family[col])
    assert split.loc["known facts", "clean"] > 0.45 and split.loc["hidden facts", "clean"] < 0.4


def test_eval_rejects_misfit_sae(tw, rows):
    model, _ = tw
    sae = _identity_sae(model)
    sae.cfg.metadata.hook_name = "blocks.7.hook_resid_post"
    with pytest.raises(ValueError, match="does not have"):
        E.reconstruction_stats(sae, model, rows)


def test_recipe_sweep_trades_reconstruction_for_sparsity(tw, rows, tmp_path):
    """Variants of one recipe that differ only in k: the denser code reconstructs clearly better, each row is
    measured (L0 at most its k), carries the ``interpret`` columns and is written to its own folder; an
    impossible variant is refused before any training."""
    model, world = tw
    cfg = S.SAETrainConfig(d_sae=64, training_tokens=24576, batch_tokens=512, n_batches_in_buffer=64, lr=5e-3)
    widths = []
    table = E.recipe_sweep(model, world, cfg, ["k=1", {"k": 32}], layer=1, rows=rows, out_dir=tmp_path, n_tasks=8,
                           n_concept=10, interpret=lambda sae: widths.append(sae.cfg.d_sae) or {"width": sae.cfg.d_sae})
    assert list(table.index) == ["k1", "k32"] and widths == [64, 64] and list(table["width"]) == [64, 64]
    for label, k in (("k1", 1), ("k32", 32)):  # top-k keeps k latents; one whose pre-activation is not positive does not fire
        assert 0.75 * k <= table.loc[label, "mean_l0"] <= k
    assert table.loc["k32", "explained_variance"] > table.loc["k1", "explained_variance"] + 0.1
    assert set(table["worst_task"]) <= set(E.TASK_SETS) and (table["drop_se"] >= 0).all()
    assert 0 <= table["concepts_detected_fraction"].min() <= table["concepts_detected_fraction"].max() <= 1
    assert (tmp_path / "k1" / S.hook_name_for(1) / "cfg.json").exists()
    for bad in (["k=8", "k=65"], ["k=8", "width=2"], ["k=8", {"k": 8}]):  # a bad second variant stops the sweep
        with pytest.raises(ValueError, match="d_sae|fields|repeat"):                # before the first one trains
            E.recipe_sweep(model, world, cfg, bad, layer=1, rows=rows, out_dir=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_recipe_change_parses_and_names_variants():
    cfg = S.SAETrainConfig()
    assert E.recipe_change("d_sae=1024, seed=1", cfg) == {"d_sae": 1024, "seed": 1}
    assert E.recipe_change({"lr": "3e-4", "architecture": "batchtopk"}, cfg) == {"lr": 3e-4, "architecture": "batchtopk"}
    assert E.variant_label(E.recipe_change("d_sae=1024,seed=1", cfg)) == "d_sae1024_seed1"
    assert E.variant_label(E.recipe_change("architecture=standard,seed=2", cfg)) == "standard_seed2"
    # seed rows group with their recipe; bare seeds belong to the recipe in use
    assert [E.recipe_of(v) for v in ("used", "seed3", "standard", "standard_seed1", "seed1_standard", "k16",
                                   "d_sae1024_seed1", "seed12_k16")] == \
        ["used", "used", "standard", "standard", "standard", "k16", "d_sae1024", "k16"]
    for bad, match in (("dsae=3", "is not one"), ("k", "has no value"), ("k=1.5", "must be of type int"),
                       ("layers=1", "is not one"), ("", "changes nothing")):
        with pytest.raises(ValueError, match=match):
            E.recipe_change(bad, cfg)
