"""Every lab's checks; importing this package registers them."""
from . import lab01, lab02, lab03, lab04, lab05, lab06, lab07, lab08  # noqa: F401
