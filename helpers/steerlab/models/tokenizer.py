"""The word-level tokenizer of tinyworld, built with the ``tokenizers`` library.

Token ids follow :meth:`steerlab.world.World.vocabulary`: ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2,
``<eos>`` = 3, then every word of the world. It is saved with ``save_pretrained`` and always handed to
TransformerLens after a round trip through ``AutoTokenizer.from_pretrained`` (TL 3.x fails on an in-memory
``PreTrainedTokenizerFast``: ``KeyError: 'name_or_path'``, see ECOSYSTEM.md).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast


def build_tokenizer(vocabulary: list[str], save_dir: str | Path) -> PreTrainedTokenizerFast:
    """Build a word-level tokenizer over ``vocabulary``, save it in ``save_dir`` and load it back."""
    if vocabulary[:4] != ["<pad>", "<unk>", "<bos>", "<eos>"]:
        raise ValueError("vocabulary must start with <pad>, <unk>, <bos>, <eos> (World.vocabulary() does)")
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(save_dir))
    return load_tokenizer(save_dir)


def load_tokenizer(save_dir: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer saved by :func:`build_tokenizer`; the error names the folder if it is broken."""
    path = Path(save_dir)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path}: the tokenizer folder is missing or incomplete")
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a corrupt file
        raise ValueError(f"tokenizer in {path} could not be loaded ({err}); rebuild it with "
                         "steerlab.tokenizer.build_tokenizer") from err
    if tok.bos_token_id != 2 or tok.eos_token_id != 3 or tok.pad_token_id != 0:
        raise ValueError(f"tokenizer in {path} has unexpected special tokens (bos={tok.bos_token_id}, "
                         f"eos={tok.eos_token_id}, pad={tok.pad_token_id}); expected 2, 3, 0")
    return tok
