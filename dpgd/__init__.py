"""dpgd: differentially private dataset distillation guided by DP-generated data."""

from dpgd.results import DistilledDataset, load_distilled

__all__ = ["DistilledDataset", "load_distilled"]
__version__ = "0.1.0"
