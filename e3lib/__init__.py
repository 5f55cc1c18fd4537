"""e3lib: ViT, V-MoE and Efficient Ensembles of Experts (E³) with their ablations,
training, evaluation, FLOPs accounting, sweep aggregation and reports."""

__version__ = "0.1.0"
