"""The pipeline's stages, in the order they run."""

from workbench.stages import bench, data, evaluation, export, merge, report, train
from workbench.stages.base import Stage

STAGE_ORDER = ["data", "train", "merge", "export", "eval", "bench", "report"]
STAGES: dict[str, Stage] = {
    module.STAGE.name: module.STAGE for module in (data, train, merge, export, evaluation, bench, report)
}
