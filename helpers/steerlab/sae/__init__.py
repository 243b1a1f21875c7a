"""Sparse autoencoders: training with SAELens (``train``), loading and fit checks (``io``), splicing and
activation harvest (``codes``), decoder fine-tuning (``finetune``), model-agnostic quality metrics (``metrics``).

The names most notebooks need are re-exported here: ``from steerlab.sae import load_sae, train_saes``.
"""

from steerlab.core.activations import encode_pre_topk, encoder_preactivation, fingerprint, model_fingerprint
from steerlab.sae.codes import iter_activations, splice_hooks
from steerlab.sae.io import (DEFAULT_LAYER, DEFAULT_LAYERS, SAE_DIR, check_fits, default_layer, hook_name_for,
                             load_sae, load_saes, shipped_sae_dir)
from steerlab.sae.train import ARCHITECTURES, SAETrainConfig, TrainedSAEs, load_recipe, token_rows, train_saes

__all__ = ["ARCHITECTURES", "DEFAULT_LAYER", "DEFAULT_LAYERS", "default_layer", "shipped_sae_dir", "SAE_DIR", "SAETrainConfig", "TrainedSAEs", "check_fits",
           "encode_pre_topk", "encoder_preactivation", "fingerprint", "hook_name_for", "iter_activations",
           "load_recipe", "load_sae", "load_saes", "model_fingerprint", "splice_hooks", "token_rows", "train_saes"]
