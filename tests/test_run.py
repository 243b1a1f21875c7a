"""core.run on both models: left-padded batches on a rotary model give the tokens of one-prompt runs, steered
generations are the same with and without the KV cache and batched or not."""

import torch

from steerlab.core import hooks, run

PROMPTS = ["The capital of France is", "Q: What is 2 + 3?\nA:", "Once upon a time, in a small village by the sea,",
           "Water"]


def test_gemma_batches_prompts_of_any_length_left_padded(gemma):
    assert run.pads_left(gemma)
    (idx, tokens), = run.batches(gemma, PROMPTS, batch_size=16)
    assert sorted(idx) == [0, 1, 2, 3] and (tokens[:, -1] != gemma.tokenizer.pad_token_id).all()
    batched = run.complete(gemma, PROMPTS, 6)
    assert batched == [run.complete(gemma, [p], 6)[0] for p in PROMPTS]
    assert batched[0].startswith(" the capital")  # decoded text, leading space kept


def test_gemma_steered_generation_is_the_same_batched_cached_and_uncached(gemma):
    torch.manual_seed(0)
    steer = hooks.add_vector("blocks.6.hook_resid_post", torch.randn(gemma.cfg.d_model), 60.0,
                             "last_prompt+generated")
    batched = run.complete(gemma, PROMPTS, 5, steer)
    assert batched != run.complete(gemma, PROMPTS, 5), "the vector must change something for the test to mean anything"
    assert batched == [run.complete(gemma, [p], 5, steer)[0] for p in PROMPTS]
    assert batched == run.complete(gemma, PROMPTS, 5, steer, use_cache=False)


def test_tinyworld_groups_by_length_unpadded(tinyworld):
    model, world = tinyworld
    assert not run.pads_left(model)
    prompts = ["fact : " + w for w in ("a", "b c", "d")]
    for idx, tokens in run.batches(model, prompts, batch_size=8):
        assert (tokens != model.tokenizer.pad_token_id).all()
    assert sorted(i for idx, _ in run.batches(model, prompts, 8) for i in idx) == [0, 1, 2]
