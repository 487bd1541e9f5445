"""The project's exception types: library code raises these, never SystemExit.

Each message is complete and names the file or the config key at fault. Only the stage scripts'
command-line entry (`common.run_cli`) turns them into one line on stderr and an exit code, so a
notebook or a service can catch them with `except MakeupError` (or `except Exception`).

Nothing here imports anything: every module can use these types.
"""

from __future__ import annotations


class MakeupError(Exception):
    """Base of every error the project raises on purpose (bad config, bad input, unsafe file)."""


class ConfigError(MakeupError, ValueError):
    """A config file, override or setting that does not fit the stage's schema. The message names the key."""


class InputError(MakeupError):
    """A missing or unusable input: a folder, an image, a video, a dataset with too few pairs."""


class CheckpointError(MakeupError):
    """A checkpoint that is missing, unreadable, of the wrong kind, or that needs pickle to load."""


class ModelError(MakeupError):
    """A base model (Stable Diffusion folder or hub id) or trained weights that cannot be loaded."""
