"""The pipeline's stages, in the order they run."""

from workbench.core.common import STAGE_ORDER  # noqa: F401 - the stages in order, with their modules
from workbench.core.recipe import Recipe
from workbench.pipeline.stages import bench, data, eval, export, merge, report, reward, train, tune
from workbench.pipeline.stages.base import Stage

STAGES: dict[str, Stage] = {
    module.STAGE.name: module.STAGE for module in (data, train, reward, tune, merge, export, eval, bench, report)
}


def needs_of(name: str, recipe: Recipe) -> tuple[str, ...]:
    """The stages `name` reads, among those this recipe has."""
    return tuple(need for need in STAGES[name].needs if STAGES[need].wanted(recipe))


def stages_of(recipe: Recipe) -> list[str]:
    """The stages this recipe runs, in order."""
    return [name for name in STAGE_ORDER if STAGES[name].wanted(recipe)]
