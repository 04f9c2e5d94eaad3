"""Stage 4: downstream evaluation of registered backbones (metrics, probes, fine-tuning, representation analyses)."""
