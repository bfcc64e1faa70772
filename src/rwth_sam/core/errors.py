"""Exceptions whose messages are shown to the user as they are."""


class RwthSamError(Exception):
    """Base class: anything the user can fix gets one of these, with a message that says how."""


class WeightsError(RwthSamError):
    """A checkpoint could not be downloaded, verified or read."""


class InputError(RwthSamError, ValueError):
    """An image, labels layer or prompt cannot be used as given."""
