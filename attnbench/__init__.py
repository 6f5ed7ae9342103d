"""attnbench: what attention modules cost and buy on timm backbones."""
from .attach import Attachment, attention_parameters, build
from .errors import AttnBenchError
from .measures.flops import count_flops
from .measures.memory import measure_activations, measure_saved_memory
from .measures.params import count_params
from .registry import get_module, list_modules, register

__version__ = "0.1.0"
__all__ = [
    "Attachment", "AttnBenchError", "attention_parameters", "build", "count_flops", "count_params",
    "get_module", "list_modules", "measure_activations", "measure_saved_memory", "register", "__version__",
]
