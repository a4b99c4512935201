"""The local coordinator: this replica always leads."""

from pydantic import BaseModel, ConfigDict


class LocalCoordinatorConfig(BaseModel):
    """No settings: a single replica leads its own pull receivers."""

    model_config = ConfigDict(extra="forbid")
