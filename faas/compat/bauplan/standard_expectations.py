"""``bauplan.standard_expectations``: faas's own (:mod:`faas.standard_expectations`)."""

from faas.standard_expectations import *  # noqa: F403
from faas.standard_expectations import __all__  # noqa: F401
