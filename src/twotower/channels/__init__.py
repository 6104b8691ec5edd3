"""Multi-channel retrieval: channel kinds, calibration, quotas, merge with attribution, learned
channel weights (MISSION.md §B). The Python API mirrors ``twotower channels`` and
``twotower serve --channels``."""
from twotower.channels.config import ChannelsConfig, load_channels_config, validate_channels
from twotower.channels.merge import Merger
from twotower.channels.service import (ChannelService, build_channels, learn_weights,
                                       open_service, replay)

__all__ = ["ChannelsConfig", "load_channels_config", "validate_channels", "Merger",
           "ChannelService", "build_channels", "learn_weights", "open_service", "replay"]
