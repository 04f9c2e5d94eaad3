"""cyto_ssrl: how positive:negative imbalance in the unlabeled pre-training pool shapes SSRL for cervical cytology."""

__version__ = "0.1.0"
