"""The pipeline's stages, in the order they run."""

from workbench.stages import data, evaluation, export, merge, train
from workbench.stages.base import Stage

STAGE_ORDER = ["data", "train", "merge", "export", "eval"]
STAGES: dict[str, Stage] = {module.STAGE.name: module.STAGE for module in (data, train, merge, export, evaluation)}
