"""The pipeline's stages, in the order they run."""

from workbench.common import STAGE_ORDER  # noqa: F401 - the stages in order, with their modules
from workbench.stages import bench, data, eval, export, merge, report, train
from workbench.stages.base import Stage

STAGES: dict[str, Stage] = {
    module.STAGE.name: module.STAGE for module in (data, train, merge, export, eval, bench, report)
}
