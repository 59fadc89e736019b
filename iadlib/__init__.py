"""iadlib: a thin, fast library for industrial visual anomaly detection (backs the iad-book).

>>> import iadlib
>>> ds = iadlib.get_dataset("elpv", category="mono")
>>> model = iadlib.get_model("patchcore", coreset_ratio=0.01).fit(ds.train)
>>> scores, maps = model.predict(ds.test)
"""

from .data import get_dataset, list_datasets
from .models import get_model, list_models, load_model

__version__ = "0.1.0"

__all__ = ["__version__", "get_dataset", "get_model", "list_datasets", "list_models", "load_model"]
