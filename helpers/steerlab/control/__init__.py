"""Control-model RL (CRL, Cho et al. arXiv 2602.10437): a small policy that adds SAE features to the residual
stream token by token with the model frozen (``policy``), its PPO/GRPO training and RLVR beside it (``rl``),
and the universality analyses (``universality``).

``from steerlab.control import ControlConfig, new_policy``.
"""

from steerlab.control.policy import (MASK_RULES, Action, ControlConfig, ControlPolicy, Trace, candidates,
                                     feature_hooks, hook_name, load_policies, load_policy, new_policy,
                                     policy_hooks, rebind, save_policy, steer)

__all__ = ["MASK_RULES", "Action", "ControlConfig", "ControlPolicy", "Trace", "candidates", "feature_hooks",
           "hook_name", "load_policies", "load_policy", "new_policy", "policy_hooks", "rebind", "save_policy",
           "steer"]
