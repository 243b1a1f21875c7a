"""Rebuild the derived files of ``data/real/`` (the written data, ``facts.jsonl`` and ``topics.json``, are not built):

* ``kept``: ``facts_kept.json``, the facts the model answers closed-book (greedy) under two different draws of
  demonstrations, with the measured share;
* ``corpus``: ``corpus.jsonl``, English prose from the docstrings of this Python's standard library;
* ``measure``: the suite's rates (closed book, conflicts with context / memory, multiple choice, arithmetic) on
  the model, printed as JSON for ``data/real/README.md``.

Run ``python -m steerlab.tasks.build_real kept|corpus|measure [--model gemma-3-270m] [--backend hf|steerlab]``. ``kept`` and ``measure``
load the model (torch); ``corpus`` needs only the standard library (and the tokenizer, to count tokens).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import inspect
import io
import json
import logging
import pkgutil
import random
import re
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from steerlab.tasks.real import RealSuite, real_dir, split_of

log = logging.getLogger(__name__)
Generate = Callable[[Sequence[str], int], list[str]]

#: stdlib modules not imported for their docstrings: side effects on import (GUIs, browsers, printing)
SKIP_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__", "pydoc_data",
                "lib2to3", "ensurepip", "venv", "test", "idle", "pip", "distutils", "msilib", "winreg", "winsound", "_winapi", "nt"}


def generator(model_name: str = "gemma-3-270m", backend: str = "hf", gguf: str | Path | None = None,
              batch_size: int = 16) -> Generate:
    """A greedy ``generate(prompts, max_new_tokens) -> completions`` for ``model_name``.

    ``backend="steerlab"``: :func:`steerlab.models.load_model` and :func:`steerlab.core.run.complete`
    (TransformerLens, the model the notebooks use); ``"hf"``: HF ``generate`` on the model dequantized from its
    GGUF file (``gguf``, default the registry package's, assembled by :func:`steerlab.models.gguf.registry_gguf`),
    batched with left padding: same greedy text, several times faster on a CPU (``shared/ECOSYSTEM.md``)."""
    if backend == "steerlab":
        from steerlab.core.run import complete
        from steerlab.models import load_model

        model = load_model(model_name)
        return lambda prompts, k: [c for i in range(0, len(prompts), batch_size)
                                   for c in complete(model, list(prompts[i:i + batch_size]), k)]
    if backend != "hf":
        raise ValueError(f"backend={backend!r}; use 'hf' or 'steerlab'")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from steerlab.models import gguf as gguf_models

    path = Path(gguf) if gguf else gguf_models.registry_gguf(model_name)
    with gguf_models.offline():
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    tok.padding_side = "left"

    @torch.no_grad()
    def generate(prompts: Sequence[str], k: int) -> list[str]:
        out = []
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True)
            ids = hf.generate(**enc, max_new_tokens=k, do_sample=False, pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return out

    return generate


def run_examples(generate: Generate, examples: Sequence) -> list[str]:
    """Completions of ``examples`` (grouped by ``max_new_tokens``), in order."""
    out = [""] * len(examples)
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(e.max_new_tokens, []).append(i)
    for k, idx in groups.items():
        for i, c in zip(idx, generate([examples[i].prompt for i in idx], k)):
            out[i] = c
    return out


def build_kept(generate: Generate, data_dir: Path | None = None, draws: int = 2) -> dict:
    """Ask every fact closed-book ``draws`` times (demonstrations drawn from all facts of its relation, seeded by
    the fact id) and keep those answered right every time. Writes and returns ``facts_kept.json``."""
    data_dir = Path(data_dir or real_dir())
    suite = RealSuite(data_dir, kept_only=False)
    facts = suite.all_facts
    examples = []
    for f in facts:
        rng = random.Random(f.id)
        examples += [suite.closed_book(f, suite._demos(rng, f, facts)) for _ in range(draws)]
    completions = run_examples(generate, examples)
    right = [e.score(c) for e, c in zip(examples, completions)]
    kept = [f.id for i, f in enumerate(facts) if all(right[i * draws:(i + 1) * draws])]
    by_rel = {}
    for i, f in enumerate(facts):
        r = by_rel.setdefault(f.relation, [0, 0])
        r[0] += f.id in kept
        r[1] += 1
    result = {"kept": kept, "kept_share": round(len(kept) / len(facts), 4), "n_facts": len(facts),
              "draws": draws, "answer_accuracy": round(sum(right) / len(right), 4),
              "by_relation": {r: {"kept": k, "of": n} for r, (k, n) in sorted(by_rel.items())},
              "date": datetime.date.today().isoformat(),
              "how": "greedy, two demonstrations of the relation, kept if right under every draw of them"}
    (Path(data_dir) / "facts_kept.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def _docstrings(module, seen: set[int]) -> list[str]:
    """Docstrings of ``module`` and of the classes, functions and methods it holds that belong to its top-level
    package (so re-exports from private submodules count), each object once across calls (``seen``: ids)."""
    top = module.__name__.split(".")[0]
    docs = [inspect.getdoc(module) or ""]
    for _, obj in sorted(vars(module).items()):
        if id(obj) in seen or not str(getattr(obj, "__module__", None) or "").split(".")[0] == top:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj):
            seen.add(id(obj))
            docs.append(inspect.getdoc(obj) or "")
            if inspect.isclass(obj):
                docs += [inspect.getdoc(v) or "" for _, v in sorted(vars(obj).items())
                         if inspect.isfunction(v) or inspect.ismethoddescriptor(v)]
    return docs


_PROSE = re.compile(r"^[A-Z][^\n]*[a-z]")
_RULE = re.compile(r"^\s*[-=~^*]{3,}\s*$")  # a reST section underline


def prose_paragraphs(doc: str, min_words: int = 20, max_words: int = 80) -> list[str]:
    """The English-prose paragraphs of a docstring, joined to one line: no code (``>>>``, indented lines, many
    symbols), starting with a capital letter; long ones cut at sentence ends into pieces of at most
    ``max_words`` words (a piece with one longer sentence is dropped past ``max_words + 10``). With the
    defaults a text is about 25-115 Gemma tokens."""
    out = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.split("\n")
        if any(ln.startswith((" ", "\t", ">>>", "...")) or _RULE.match(ln) for ln in lines) or not _PROSE.match(para):
            continue
        text = " ".join(ln.strip() for ln in lines)
        if sum(ch in "{}[]()=_<>*`|#\\" for ch in text) > 0.03 * len(text):
            continue
        piece: list[str] = []
        for sent in re.split(r"(?<=[.!?])\s+", text):
            if piece and len(" ".join(piece + [sent]).split()) > max_words:
                out.append(" ".join(piece))
                piece = []
            piece.append(sent)
        if piece:
            out.append(" ".join(piece))
    return [p for p in out if min_words <= len(p.split()) <= max_words + 10]


#: third-party packages whose docstrings join the corpus, with their licences (all installed with steerlab)
PACKAGES = {"numpy": "BSD-3-Clause", "scipy": "BSD-3-Clause", "sklearn": "BSD-3-Clause", "pandas": "BSD-3-Clause",
            "networkx": "BSD-3-Clause", "sympy": "BSD-3-Clause", "matplotlib": "PSF-based matplotlib licence"}


def _modules(roots: Sequence[str]) -> list[str]:
    """Every importable module name under ``roots``, submodules included (``pkgutil``), minus ``SKIP_MODULES``,
    private and test modules."""
    names = set()
    for name in sorted(roots):
        if name in SKIP_MODULES or name.startswith("_"):
            continue
        names.add(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 (platform-specific modules are absent: skip them)
            continue
        for info in pkgutil.walk_packages(getattr(mod, "__path__", []), prefix=name + ".",
                                          onerror=lambda _: None):
            parts = info.name.split(".")
            if not any(p.startswith("_") or p in SKIP_MODULES or p.startswith(("test", "conftest")) for p in parts):
                names.add(info.name)
    return sorted(names)


def pack(pieces: Sequence[str], min_words: int = 25, max_words: int = 80) -> list[str]:
    """Consecutive short ``pieces`` joined into texts of ``min_words`` to ``max_words`` words (a short tail is
    dropped)."""
    out, cur = [], []
    for p in pieces:
        if cur and len(" ".join(cur + [p]).split()) > max_words:
            out.append(" ".join(cur))
            cur = []
        cur.append(p)
    if cur and len(" ".join(cur).split()) >= min_words:
        out.append(" ".join(cur))
    return out


def _sentence(line: str) -> str:
    line = line.strip()
    return line if line.endswith((".", "!", "?")) else line + "."


def build_corpus(data_dir: Path | None = None, count_tokens: Callable[[str], int] | None = None,
                 packages: dict[str, str] | None = None) -> dict:
    """Write ``corpus.jsonl`` (``{"text", "source"}`` per line, in module order, deduplicated): English prose of
    this Python's standard library: the prose paragraphs of every importable module's docstrings (modules,
    classes, functions, methods; :func:`_stdlib_modules`), short one-paragraph docstrings packed together per
    module, and the language-reference topics of ``pydoc_data.topics``; then the same from the docstrings of
    ``packages`` (``{import name: licence}``, default :data:`PACKAGES`). Returns its size per source."""
    import pydoc_data.topics

    data_dir = Path(data_dir or real_dir())
    rows: dict[str, str] = {}
    tag = f"python{sys.version_info.major}.{sys.version_info.minor}"
    packages = PACKAGES if packages is None else packages
    names = [(n, f"{tag} stdlib docstrings") for n in _modules(sys.stdlib_module_names)]
    for pkg, licence in packages.items():
        version = importlib.metadata.version({"sklearn": "scikit-learn"}.get(pkg, pkg))
        names += [(n, f"{pkg} {version} docstrings ({licence})") for n in _modules([pkg])]
    seen: set[int] = set()
    for name, where in names:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                mod = importlib.import_module(name)
        except BaseException:  # noqa: BLE001 (absent or failing modules are skipped)
            continue
        short = []
        for doc in _docstrings(mod, seen):
            long = prose_paragraphs(doc)
            for p in long:
                rows.setdefault(p, f"{where}: {name}")
            first = doc.split("\n\n")[0].replace("\n", " ").strip()
            if not long and 5 <= len(first.split()) < 20 and prose_paragraphs(first, min_words=5):
                short.append(_sentence(first))
        for p in pack(short):
            rows.setdefault(p, f"{where} (short ones packed): {name}")
    for topic, text in sorted(pydoc_data.topics.topics.items()):
        for p in prose_paragraphs(text):
            rows.setdefault(p, f"{tag} pydoc_data.topics: {topic}")
    with open(Path(data_dir) / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for text, src in rows.items():
            fh.write(json.dumps({"text": text, "source": src}, ensure_ascii=False) + "\n")
    info: dict[str, dict] = {}
    for text, src in rows.items():
        d = info.setdefault(src.split(":")[0].replace(" (short ones packed)", ""), {"texts": 0, "words": 0, "tokens": 0})
        d["texts"] += 1
        d["words"] += len(text.split())
        d["tokens"] += count_tokens(text) if count_tokens else 0
    return info


def measure(generate: Generate, n: int = 40, seed: int = 0, data_dir: Path | None = None) -> dict:
    """Greedy rates of the suite's tasks on ``n`` examples each: closed book, conflicts (EM with the context
    and with memory, per split), multiple choice and arithmetic."""
    from steerlab.core.text import exact_match

    suite = RealSuite(data_dir)
    out: dict = {}
    facts = suite.facts(n, seed)
    out["closed_book"] = sum(e.score(c) for e, c in zip(facts, run_examples(generate, facts))) / n
    for split in ("fit", "eval"):
        ex = suite.conflicts(n, seed, split)
        comp = run_examples(generate, ex)
        out[f"conflict_{split}_context"] = sum(exact_match(c, [e.meta["context_value"]]) for e, c in zip(ex, comp)) / n
        out[f"conflict_{split}_memory"] = sum(exact_match(c, (e.meta["memory_value"], *e.meta["memory_aliases"]))
                                              for e, c in zip(ex, comp)) / n
    for task in ("mcqa", "reasoning"):
        ex = getattr(suite, task)(n, seed)
        out[task] = sum(e.score(c) for e, c in zip(ex, run_examples(generate, ex))) / n
    out["n"] = n
    out["eval_conflict_pairs"] = len(suite.conflict_pairs("eval"))
    out["kept_facts"] = len(suite.kept_facts)
    out["splits_subjects"] = {s: len({f.subject for f in suite.kept_facts if split_of(f.subject) == s})
                              for s in ("fit", "select", "eval")}
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=("kept", "corpus", "measure"))
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n", type=int, default=40, help="examples per task for 'measure'")
    ap.add_argument("--backend", default="hf", choices=("hf", "steerlab"), help="how to generate (see generator)")
    ap.add_argument("--gguf", default=None, help="a GGUF file to load instead of the registry package's")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.what == "corpus":
        from transformers import AutoTokenizer

        from steerlab.models import gguf as gguf_models

        path = Path(args.gguf) if args.gguf else gguf_models.registry_gguf(args.model)
        with gguf_models.offline():
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        print(json.dumps(build_corpus(count_tokens=lambda t: len(tok(t, add_special_tokens=False)["input_ids"])),
                         indent=1))
        return
    gen = generator(args.model, args.backend, args.gguf, args.batch_size)
    res = build_kept(gen) if args.what == "kept" else measure(gen, args.n)
    if args.what == "kept":
        res = {k: v for k, v in res.items() if k != "kept"}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
