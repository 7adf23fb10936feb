"""``python -m scae``: the ``scae`` command (also under torchrun: ``torchrun ... -m scae fit IN OUT``)."""

from .cli import run

run()
