"""Task suites: the task interface (``base``), tinyworld (``tinyworld``) and the real-model suite (``real``).

``load_suite(model_name)`` gives the suite that belongs to a model: the world a tinyworld checkpoint was trained
on, or the real-model suite for any other model.
"""

from __future__ import annotations

from pathlib import Path

from steerlab.tasks.base import Example, TaskSuite, exact_match, normalize_answer

__all__ = ["Example", "TaskSuite", "exact_match", "load_suite", "normalize_answer"]


def load_suite(model_name: str = "tinyworld") -> TaskSuite:
    """The task suite for ``model_name`` (as given to :func:`steerlab.models.load_model`)."""
    from steerlab.models.tinyworld import TINYWORLD_DIR
    from steerlab.tasks.tinyworld import TinyworldSuite

    if model_name == "tinyworld":
        return TinyworldSuite.from_checkpoint(TINYWORLD_DIR)
    if Path(model_name).is_dir() and (Path(model_name) / "world.json").is_file():
        return TinyworldSuite.from_checkpoint(model_name)
    from steerlab.tasks.real import RealSuite

    return RealSuite()
