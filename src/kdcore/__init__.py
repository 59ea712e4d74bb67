"""kdcore: the experiment library of kd-capacity (models, data, KD methods, training, analysis)."""

__version__ = "0.1.0"
