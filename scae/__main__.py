"""``python -m scae``: the ``scae`` command (also under torchrun: ``torchrun ... -m scae fit IN OUT``)."""

import sys

from .cli import main

sys.exit(main())
