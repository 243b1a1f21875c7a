"""Explaining SAE features: mutual-information explanations over a fixed vocabulary (``mi``, Wu et al.
arXiv 2502.15576) and the baselines beside them (max-activating tokens, the logit lens).

``from steerlab.explain import explain, ExplainConfig``.
"""

from steerlab.explain.mi import (EMBEDDINGS, ExplainConfig, Explanations, default_words, explain,
                                 feature_activations, feature_directions, logit_lens, max_activating, mi_explain,
                                 mi_explain_naive, score_std, side_by_side, token_strings, word_embeddings, word_tokens)

__all__ = ["EMBEDDINGS", "ExplainConfig", "Explanations", "default_words", "explain",
           "feature_activations", "feature_directions", "logit_lens", "max_activating", "mi_explain",
           "mi_explain_naive", "score_std", "side_by_side", "token_strings", "word_embeddings", "word_tokens"]
