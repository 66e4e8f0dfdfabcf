"""The analyses the chapters share, in one namespace (``from cna_utils import analysis as an``):

* ``depth``: the paper's layer ranges scaled to this model (``depth_map``, ``scale_layer``, LoRA layers);
* ``study``: the cases, head, showcase case and CNA chapters 2-4 start from (``prepare_study``, ``cna_cases``);
* ``experiments``: Tables 5 and 6 and the importance-vs-effect check;
* ``lora_analysis``: Tables 9-10 and the LoRA CNA.
"""
from __future__ import annotations

from .depth import *  # noqa: F401,F403
from .depth import __all__ as _depth
from .experiments import *  # noqa: F401,F403
from .experiments import __all__ as _experiments
from .lora_analysis import *  # noqa: F401,F403
from .lora_analysis import __all__ as _lora
from .study import *  # noqa: F401,F403
from .study import __all__ as _study

__all__ = _depth + _study + _experiments + _lora
