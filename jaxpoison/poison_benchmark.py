"""The attack benchmark under its earlier name: everything is in `jaxpoison.benchmarks`
(the transfer-learning setting of the paper's Table 1 is `jaxpoison.benchmarks.transfer`).
Kept so that `from jaxpoison import poison_benchmark` and its names keep working."""

from jaxpoison import benchmarks as _benchmarks
from jaxpoison.benchmarks.common import _config_dict  # noqa: F401

__all__ = _benchmarks.__all__


def __getattr__(name):
  return getattr(_benchmarks, name)


def __dir__():
  return _benchmarks.__dir__()
