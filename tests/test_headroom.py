import random

import pytest
import torch

from steerlab import headroom
from steerlab.world import ATTRIBUTES, Example

torch.set_num_threads(1)


def test_split_accuracy_counts_each_group():
    ex = [Example("mcqa", f"p{i}", "A", {"hidden": i % 2 == 0}) for i in range(4)]
    finals = {"base": ["A", "B", "A", "A"], "rlvr": ["A", "A", "B", "B"]}
    t = headroom.split_accuracy(ex, finals, lambda e: "hidden" if e.meta["hidden"] else "known")
    assert t.loc["base", "hidden"] == 1.0 and t.loc["base", "known"] == 0.5 and t.loc["base", "all"] == 0.75
    assert t.loc["rlvr", "hidden"] == 0.5 and t.loc["rlvr", "known"] == 0.5
    assert t.loc["n"].tolist() == [2, 2, 4]
    chains = [Example("reasoning", "reason : 1 + 2 + 3 =", "1 + 2 = 3 ; 3 + 3 = 6 ; so 6", {"uses_unseen": u})
              for u in (True, False)]
    t = headroom.split_accuracy(chains, {"crl": ["6", "5"]}, lambda e: str(e.meta["uses_unseen"]))
    assert t.loc["crl", "True"] == 1.0 and t.loc["crl", "False"] == 0.0  # the number after "so" is compared
    with pytest.raises(ValueError, match="answers for 4 examples"):
        headroom.split_accuracy(ex, {"base": ["A"]}, lambda e: "x")


def test_answer_probe_reads_a_recalled_fact_and_not_a_random_label(tinyworld):
    """Closed-book answers are recalled by the model, so a probe on the last residual reads them; the same prompts
    with answers drawn at random carry nothing a probe can read (near chance, 1/8)."""
    model, world = tinyworld
    rng = random.Random(3)
    facts = [p for p in world.known_facts() if p[1] == "color"]
    real = [world.closed_book(rng, rng.choice(facts)) for _ in range(320)]
    t = headroom.answer_probe(model, real, ["blocks.0.hook_resid_post", "blocks.3.hook_resid_post"])
    assert t.loc["blocks.3.hook_resid_post", "model_acc"] > 0.95
    assert t.loc["blocks.3.hook_resid_post", "probe_acc"] > 0.9
    assert t["n_test"].iloc[0] == 96 and t["n_train"].iloc[0] == 224
    noise = [Example(e.task, e.prompt, rng.choice(ATTRIBUTES["color"]), e.meta) for e in real]
    t = headroom.answer_probe(model, noise, ["blocks.3.hook_resid_post"])
    assert t.loc["blocks.3.hook_resid_post", "probe_acc"] < 0.3 and t["model_acc"].iloc[0] < 0.3
    with pytest.raises(ValueError, match="reasoning"):
        headroom.answer_probe(model, [world.reasoning(rng)], ["blocks.3.hook_resid_post"])
