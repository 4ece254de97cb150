"""The attack benchmark under its earlier name: everything is in `jaxpoison.benchmarks`
(the transfer-learning setting of the paper's Table 1 is `jaxpoison.benchmarks.transfer`).
Kept so that `from jaxpoison import poison_benchmark` and its names keep working."""

from jaxpoison.benchmarks import *  # noqa: F401,F403
from jaxpoison.benchmarks import __all__  # noqa: F401
from jaxpoison.benchmarks.common import _config_dict  # noqa: F401
